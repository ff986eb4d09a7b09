"""The training loop: every method runs and writes its outputs; sample grids; a kill -9 mid-run
resumes bit-exactly (model, theta^-, EMA, Adam, curriculum step); hostile input at the CLI."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from openseason.cli import main
from openseason.consistency import sample_run, train_consistency
from openseason.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_every_method_trains_and_samples(tmp_path, tiny):
    teacher = tmp_path / "edm"
    train_consistency("digits", teacher, method="edm", max_steps=3, **tiny)
    for method in ("ct", "ict", "cd"):
        out = tmp_path / method
        extra = {"teacher": str(teacher)} if method == "cd" else {}
        result = train_consistency("digits", out, method=method, max_steps=3, **{**tiny, "sample_every": 2},
                                   **extra)
        assert result["steps"] == 3 and (out / "final" / "ema.safetensors").exists()
        assert (out / "final" / "target.safetensors").exists() == (method != "ict")
        assert (out / "samples" / "step-000002.png").exists() and (out / "loss.png").exists()
        rows = list(csv.DictReader(open(out / "metrics.csv")))
        assert [int(r["step"]) for r in rows] == [1, 2, 3]
    cd_card = (tmp_path / "cd" / "config.json").read_text()
    assert "ema_sha256" in cd_card
    grid = sample_run(tmp_path / "cd", steps=2, num=10, out=tmp_path / "grid.png")
    assert len(grid["sigmas"]) == 2
    with Image.open(tmp_path / "grid.png") as img:
        assert img.size[0] > 32
    sample_run(teacher, steps=2, num=4, out=tmp_path / "teacher.png")


def _weights(run_dir: Path) -> dict:
    d = run_dir / "final"
    out = {}
    for name in ("model", "target", "ema", "optimizer"):
        for k, v in load_file(str(d / f"{name}.safetensors")).items():
            out[f"{name}.{k}"] = v
    return out


def test_resume_after_kill_9_is_bit_exact(tmp_path, tiny):
    args = ["--data", "digits", "--method", "ct", "--max-steps", "60", "--save-every", "20", "--keep-last", "0",
            "--base", "8", "--batch-size", "16", "--log-every", "1", "--sample-every", "0"]
    want = tmp_path / "whole"
    train_consistency("digits", want, method="ct", max_steps=60, save_every=20, keep_last=0,
                      **{**tiny, "tensorboard": True})
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "openseason", "consistency", "train", *args, "--out", str(run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "step-000020").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "final").exists(), "the run finished before it could be killed"
    done = subprocess.run(cmd + ["--resume", "auto"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout
    a, b = _weights(want), _weights(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = [int(r["step"]) for r in csv.DictReader(open(run / "metrics.csv"))]
    assert rows == list(range(1, 61))
    with open(want / "metrics.csv") as h1, open(run / "metrics.csv") as h2:
        losses = lambda h: [(r["step"], r["loss"], r["num_steps"], r["mu"]) for r in csv.DictReader(h)]  # noqa: E731
        assert losses(h1) == losses(h2)
    assert (want / "tensorboard").is_dir()


def test_resume_with_other_options_is_refused(tmp_path, tiny):
    train_consistency("digits", tmp_path / "r", method="ct", max_steps=2, **tiny)
    with pytest.raises(ConfigError, match="different options"):
        train_consistency("digits", tmp_path / "r", resume="auto", method="ct", max_steps=2,
                          **{**tiny, "lr": 1e-3})
    with pytest.raises(Exception, match="not empty"):
        train_consistency("digits", tmp_path / "r", method="ct", max_steps=2, **tiny)


def _cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_cli_hostile_input(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _cli(capsys, "consistency", "train", "--data", str(empty), "--out", str(tmp_path / "o"))
    assert code == 2 and "no files" in err and "Traceback" not in err
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "data.csv").write_text("1,2,3")
    code, err = _cli(capsys, "consistency", "train", "--data", str(junk), "--out", str(tmp_path / "o2"))
    assert code == 2 and "data.csv" in err
    code, err = _cli(capsys, "consistency", "train", "--data", "digits", "--method", "cd", "--out", str(tmp_path / "o3"))
    assert code == 2 and "--teacher" in err
    code, err = _cli(capsys, "consistency", "train", "--data", "digits", "--method", "ict", "--mu0", "0.5",
                     "--out", str(tmp_path / "o4"))
    assert code == 2 and "does not apply" in err
    code, err = _cli(capsys, "consistency", "sample", str(tmp_path / "nothing"), "--steps", "1")
    assert code == 2 and "not a consistency run" in err


def test_cli_train_then_sample_and_steps_zero_refused(tmp_path, capsys):
    run = tmp_path / "run"
    code, _ = _cli(capsys, "consistency", "train", "--data", "digits", "--method", "ct", "--out", str(run),
                   "--max-steps", "2", "--base", "8", "--batch-size", "8", "--sample-every", "0")
    assert code == 0
    code, err = _cli(capsys, "consistency", "sample", str(run), "--steps", "0", "--out", str(tmp_path / "g.png"))
    assert code == 2 and "--steps" in err and not (tmp_path / "g.png").exists()
    code, err = _cli(capsys, "consistency", "sample", str(run), "--steps", "2", "--sigmas", "80",
                     "--out", str(tmp_path / "g.png"))
    assert code == 2 and "--sigmas" in err
    code, _ = _cli(capsys, "consistency", "sample", str(run), "--steps", "4", "--num", "16",
                   "--out", str(tmp_path / "g.png"))
    assert code == 0 and (tmp_path / "g.png").exists()
