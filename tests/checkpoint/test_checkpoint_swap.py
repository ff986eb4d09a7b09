"""Crash-safe replacement of a checkpoint directory: a SIGKILL between the renames of the swap, and
staging directories of killed writers, are repaired by the next load or save."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from openseason import fileio
from openseason.checkpoint import find_resume, load_model, save_checkpoint, save_train_checkpoint, step_dir

from .helpers_checkpoint import same_weights, tiny_model

REPO = Path(__file__).resolve().parents[2]

# Saves checkpoint B over A and SIGKILLs itself inside the swap, right after stage argv[2].
KILLER = textwrap.dedent("""
    import os, signal, sys
    from openseason import fileio
    from openseason.checkpoint import save_checkpoint
    from openseason.config import Config
    from openseason.model import GPT
    import torch

    path, stage, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(seed)
    model = GPT(Config.from_name("tiny-neox"))
    model.init_weights()
    fileio._swap_hook = lambda at: os.kill(os.getpid(), signal.SIGKILL) if at == stage else None
    save_checkpoint(path, model)
    print("not killed")
""")


def _kill_during_swap(path: Path, stage: str, seed: int) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(path), stage, str(seed)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_kill_between_the_renames_rolls_forward(tmp_path):
    path = tmp_path / "run"
    a, b = tiny_model(1), tiny_model(2)
    save_checkpoint(path, a)
    _kill_during_swap(path, "old", seed=2)
    # the kill landed between the renames: no checkpoint at the path, both copies beside it
    assert not path.exists()
    assert [n.split("-")[0] for n in _siblings(path)] == [".run.new", ".run.old"]
    loaded = load_model(path)            # finds the newest complete checkpoint
    assert same_weights(loaded, b)
    assert _siblings(path) == []         # and cleans the leftovers


def test_kill_before_the_old_one_moves_keeps_the_previous(tmp_path):
    path = tmp_path / "run"
    a = tiny_model(1)
    save_checkpoint(path, a)
    _kill_during_swap(path, "new", seed=2)
    assert path.exists() and len(_siblings(path)) == 1      # the staged, complete B is left over
    assert same_weights(load_model(path), a)
    save_checkpoint(path, tiny_model(3))                    # the next save removes the dead writer's copy
    assert _siblings(path) == []
    assert same_weights(load_model(path), tiny_model(3))


def test_kill_of_a_first_save_leaves_no_half_checkpoint(tmp_path):
    path = tmp_path / "fresh"
    _kill_during_swap(path, "new", seed=2)     # nothing at the path yet; the staged copy is complete
    assert not path.exists()
    assert same_weights(load_model(path), tiny_model(2))
    assert _siblings(path) == []


def test_stale_staging_dirs_of_dead_writers_are_removed(tmp_path):
    path = tmp_path / "run"
    save_checkpoint(path, tiny_model(1))
    dead = _dead_pid()
    stale = path.with_name(f".run.tmp-{fileio._host()}-{dead}")
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 4096)            # a half-written checkpoint
    live = path.with_name(f".run.tmp-{fileio._host()}-{os.getpid()}")  # ours: must survive recovery
    other_host = path.with_name(f".run.tmp-elsewhere-{dead}")         # another machine's: not ours to judge
    live.mkdir(), other_host.mkdir()
    fileio.recover_dir(path)
    assert not stale.exists() and live.exists() and other_host.exists()
    assert same_weights(load_model(path), tiny_model(1))


def test_resume_auto_repairs_an_interrupted_step(tmp_path):
    out = tmp_path / "out"
    model = tiny_model(1)
    save_train_checkpoint(step_dir(out, 10), model, None, {"step": 10})
    final = step_dir(out, 20)
    save_train_checkpoint(final, model, None, {"step": 20})
    # simulate the kill between the renames while step 20 was being rewritten
    dead = _dead_pid()
    os.replace(final, final.with_name(f".{final.name}.old-{fileio._host()}-{dead}"))
    assert find_resume(out, "auto") == final
    assert _siblings(final) == []


def test_swap_replaces_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "run"
    save_checkpoint(path, tiny_model(1))
    save_checkpoint(path, tiny_model(2))
    assert same_weights(load_model(path), tiny_model(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run"
    save_checkpoint(path, tiny_model(1))
    import openseason.checkpoint.full as full

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(full, "write_checkpoint_metadata", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_model(2))
    assert same_weights(load_model(path), tiny_model(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
