"""Shared builders for the training tests: a tiny base checkpoint and a prepared directory."""
from __future__ import annotations

import json
import random
from pathlib import Path

from openseason.checkpoint import save_checkpoint
from openseason.config import Config
from openseason.model import GPT


def make_base(path: Path, tokenizer, name: str = "tiny-llama") -> Path:
    model = GPT(Config.from_name(name))
    model.init_weights()
    return save_checkpoint(path, model, tokenizer=tokenizer)


def make_prepared(path: Path, n: int = 64, seed: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(path / "conversations.jsonl", "w") as handle:
        for i in range(n):
            a, b = rng.randint(0, 30), rng.randint(0, 30)
            handle.write(json.dumps({"id": f"add-{i}", "messages": [
                {"role": "user", "content": f"add {a} and {b}"},
                {"role": "assistant", "content": str(a + b)}]}) + "\n")
    (path / "prompt_style.json").write_text(json.dumps({"name": "plain"}))
    return path
