"""Shared builders for the training tests: a tiny base checkpoint and a prepared directory."""
from __future__ import annotations

import json
import random
from pathlib import Path

from openseason.checkpoint import save_checkpoint
from openseason.config import Config
from openseason.model import GPT

REPO = Path(__file__).resolve().parents[2]


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


def wait_for_marker(proc, marker: Path, step: int, timeout: float = 120) -> None:
    """Wait until a driver subprocess writes `marker` (it reached `step`); fail if it exits first."""
    import time

    import pytest

    deadline = time.time() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"driver exited early: {proc.stderr.read()[-2000:]}")
        assert time.time() < deadline, f"driver never reached step {step}"
        time.sleep(0.02)


def kill_finetune_after_checkpoint(tmp_path: Path, base: Path, data: Path, method: str, args: dict,
                                   step: int = 5) -> Path:
    """Run finetune in a subprocess, SIGKILL it once `step` is done (step - 1 is on disk, `step` is not
    saved) and return the run directory, as a user's kill -9 would leave it."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    import torch

    marker = tmp_path / "reached"
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import time
        from pathlib import Path
        import torch
        from openseason.train.finetune import finetune

        torch.set_num_threads({torch.get_num_threads()})  # same float summation order as the reference

        def hang(step, row):
            if step == {step}:
                Path({str(marker)!r}).write_text("{step}")
                time.sleep(600)

        finetune({str(base)!r}, {str(data)!r}, {method!r}, {str(tmp_path / 'run')!r}, progress=False,
                 register=False, callbacks=[hang], **{args!r})
    """))
    proc = subprocess.Popen([sys.executable, str(driver)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for_marker(proc, marker, step)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    run = tmp_path / "run"
    assert (run / f"step-{step - 1:06d}").is_dir() and not (run / "final").exists()
    return run


COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def make_vision_encoder(path: Path, seed: int = 0) -> Path:
    """A randomly initialized tiny CLIP tower (32px) saved as a vision checkpoint."""
    import torch

    from openseason.vision import VisionConfig, VisionEncoder, save_vision_encoder

    torch.manual_seed(seed)
    return save_vision_encoder(path, VisionEncoder(VisionConfig.named("tiny-clip-vit")))


def make_mm_prepared(path: Path, n_images: int = 16, n_text: int = 8, seed: int = 0) -> Path:
    """Colored squares with "what color is it?" turns (image parts, relative paths) mixed with
    text-only addition turns: a prepared directory in the conversation-record shape."""
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    (path / "images").mkdir(exist_ok=True)
    rng = random.Random(seed)
    names = sorted(COLORS)
    rows = []
    for i in range(n_images):
        color = names[i % len(names)]
        image = Image.new("RGB", (40, 40), (255, 255, 255))
        x = rng.randint(0, 16)
        image.paste(COLORS[color], (x, x, x + 20, x + 20))
        image.save(path / "images" / f"{i}.png")
        rows.append({"id": f"img-{i}", "messages": [
            {"role": "user", "content": [{"type": "image", "path": f"images/{i}.png"},
                                         {"type": "text", "text": "What color is the square?"}]},
            {"role": "assistant", "content": color}]})
    for i in range(n_text):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"id": f"add-{i}", "messages": [{"role": "user", "content": f"add {a} and {b}"},
                                                     {"role": "assistant", "content": str(a + b)}]})
    rng.shuffle(rows)
    with open(path / "conversations.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def for_method(method: str, options: dict) -> dict:
    """`options` less the options of the other finetuning methods, which finetune() refuses: shared
    test settings name the tiny LoRA and LLaMA-Adapter sizes once, each run passes what applies."""
    import dataclasses

    from openseason.peft import canonical_method
    from openseason.train.options import METHOD_GROUPS, FinetuneOptions

    method = canonical_method(method)
    foreign = {f.name for f in dataclasses.fields(FinetuneOptions)
               if method not in METHOD_GROUPS.get(f.metadata.get("group"), (method,))}
    return {k: v for k, v in options.items() if k not in foreign}


def weights(final: Path) -> dict:
    """The weights a final checkpoint stores: peft_weights.safetensors if it has one, else the whole model."""
    from safetensors.torch import load_file

    name = "peft_weights.safetensors" if (final / "peft_weights.safetensors").exists() else "model.safetensors"
    return load_file(str(final / name))


def assert_same_weights(reference_final: Path, resumed_final: Path) -> dict:
    """The resumed run stored exactly the reference run's tensors (same keys, bit-equal); returns them."""
    import torch

    ref_w, got_w = weights(reference_final), weights(resumed_final)
    assert ref_w.keys() == got_w.keys()
    for key in ref_w:
        assert torch.equal(ref_w[key], got_w[key]), key
    return got_w
