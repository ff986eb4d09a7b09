"""Shared test fixtures: the real data folder, tiny random models and tokenizers made on the spot."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("OPENSEASON_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; tests that need it skip with a visible reason when it is absent (CI fails then)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _private_catalog(tmp_path_factory):
    """Runs register their checkpoints in the catalog: keep that out of the user's own catalog."""
    if "OPENSEASON_CATALOG_DB" not in os.environ:
        os.environ["OPENSEASON_CATALOG_DB"] = str(tmp_path_factory.mktemp("catalog") / "catalog.sqlite")
    yield


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained on the spot (vocab 512, <|endoftext|> = EOS)."""
    from openseason.tokenizer import train_bpe

    texts = ["The quick brown fox jumps over the lazy dog. " * 3,
             "Instruction: add 2 and 3. Response: 5",
             "Below is an instruction that describes a task. Write a response that appropriately completes it.",
             "### Instruction:\n### Input:\n### Response:\n", "0123456789 + - * / = ? ! , ."] * 20
    return train_bpe(texts, vocab_size=512)
