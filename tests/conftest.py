"""Shared test fixtures: the real data folder, tiny random models and tokenizers made on the spot."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
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


CHAT_TEXTS = ["Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.",
              "### Instruction:\n### Input:\n### Response:\n### End\nInput:\n",
              "A chat between a curious user and an artificial intelligence assistant. USER: ASSISTANT:",
              "[INST] <<SYS>>\n<</SYS>>\n\n [/INST] system user assistant",
              "Be nice. Hi Hello! What is 2+2? 4 Add these numbers 2, 3 The sum is 5. Thanks! You're welcome.",
              "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ? ! , . ' \n\n"] * 10
CHAT_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>",
                 "<|prompter|>")


@pytest.fixture(scope="session")
def bpe_chat_tokenizer():
    """GPT-NeoX-like: byte-level BPE, no BOS added, <|endoftext|> = EOS, chat markers as special tokens."""
    from openseason.tokenizer import train_bpe

    return train_bpe(CHAT_TEXTS, vocab_size=400, special_tokens=CHAT_SPECIALS)


@pytest.fixture(scope="session")
def sp_chat_tokenizer():
    """LLaMA-like: BPE over a Metaspace pre-tokenizer (sentencepiece's '▁'), <unk>, <s> = BOS (added),
    </s> = EOS."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    from openseason.tokenizer import Tokenizer

    backend = HFTokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *CHAT_SPECIALS[1:]],
                                  show_progress=False)
    backend.train_from_iterator(CHAT_TEXTS, trainer=trainer)
    return Tokenizer(backend, bos_id=backend.token_to_id("<s>"), eos_id=backend.token_to_id("</s>"), add_bos=True)


@pytest.fixture(scope="session")
def open_flamingo_src():
    """OpenFlamingo's `src.helpers`, `src.flamingo_lm`, `src.utils` and `train.train_utils` modules.

    open_flamingo is installed with --no-deps; its package __init__ imports the model factory, which
    needs open_clip (not installed), so the two packages are registered as bare namespaces and only the
    modules we compare against are imported (they need torch, einops and einops-exts)."""
    spec = importlib.util.find_spec("open_flamingo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_flamingo is a test-only peer: pip install --no-deps open_flamingo einops-exts")
    root = spec.submodule_search_locations[0]
    packages = (("open_flamingo", root), ("open_flamingo.src", f"{root}/src"), ("open_flamingo.train", f"{root}/train"))
    saved = {name: sys.modules.get(name) for name, _ in packages}
    for name, path in packages:
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [path]
            sys.modules[name] = package
    src = types.SimpleNamespace(helpers=importlib.import_module("open_flamingo.src.helpers"),
                                flamingo_lm=importlib.import_module("open_flamingo.src.flamingo_lm"),
                                utils=importlib.import_module("open_flamingo.src.utils"))
    # train_utils imports wandb at module level and never calls it with report_to_wandb off
    stub = "wandb" not in sys.modules
    if stub:
        sys.modules["wandb"] = types.ModuleType("wandb")
    try:
        src.train_utils = importlib.import_module("open_flamingo.train.train_utils")
    finally:
        if stub:
            sys.modules.pop("wandb", None)
    yield src
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
