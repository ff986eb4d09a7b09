"""SIGTERM and Ctrl-C save a checkpoint at the current step and exit 143 / 130; `--resume auto` then
ends with the weights of an uninterrupted run. Only the newest checkpoint keeps the optimizer state
(unless --keep-optimizer) and every file a run writes has the same mode."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openseason.checkpoint.training import OPTIMIZER_NAME
from openseason.errors import CheckpointError
from openseason.train.finetune import finetune
from openseason.train.pretrain import pretrain

from .helpers_train import REPO, make_base, make_prepared, wait_for_marker
from .test_pretrain_run import tokens  # noqa: F401 (the module's token directory fixture)

ARGS = dict(max_steps=7, save_every=2, micro_batch_size=4, grad_accum=2, seed=3, lr=3e-3, warmup_steps=2,
            eval_every=3, lora_dropout=0.1)


def _flags(args: dict) -> list[str]:
    return [x for k, v in args.items() for x in ("--" + k.replace("_", "-"), str(v))]


def _weights(final: Path) -> dict[str, torch.Tensor]:
    return load_file(str(final / "peft_weights.safetensors"))


@pytest.fixture()
def setup(tmp_path, tiny_tokenizer):
    return make_base(tmp_path / "base", tiny_tokenizer), make_prepared(tmp_path / "data")


def _signal_cli_run(tmp_path: Path, argv: list[str], signum: int, step: int) -> subprocess.CompletedProcess:
    """`openseason finetune ARGV` in a subprocess, sent `signum` by os.kill while step `step` ends."""
    marker, go = tmp_path / "reached", tmp_path / "go"
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import importlib, sys, time
        from pathlib import Path
        import torch
        from openseason.cli import main

        ft = importlib.import_module("openseason.train.finetune")  # the module (the package exports the function)

        torch.set_num_threads({torch.get_num_threads()})  # the same float summation order as the reference
        train = ft.train

        def hold(step, row):  # stand still at the end of step {step} until the test has sent the signal
            if step == {step}:
                Path({str(marker)!r}).write_text("ready")
                deadline = time.time() + 120
                while not Path({str(go)!r}).exists() and time.time() < deadline:
                    time.sleep(0.01)

        def train_with_hold(*args, **kwargs):
            return train(*args, **{{**kwargs, "callbacks": [*kwargs.get("callbacks", ()), hold]}})

        ft.train = train_with_hold
        sys.exit(main({argv!r}))
    """))
    proc = subprocess.Popen([sys.executable, str(driver)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_marker(proc, marker, step)
    os.kill(proc.pid, signum)
    go.write_text("go")
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_the_current_step_and_resume_equals_an_uninterrupted_run(tmp_path, setup, signum, status):
    base, data = setup
    reference = finetune(base, data, "lora", tmp_path / "ref", progress=False, register=False, **ARGS)
    run = tmp_path / "run"
    done = _signal_cli_run(tmp_path, ["finetune", str(base), "--data", str(data), "--out", str(run),
                                      "--method", "lora", *_flags(ARGS)], signum, step=3)
    assert done.returncode == status, done.stderr[-2000:]
    name = signal.Signals(signum).name
    assert f"openseason: {name} at step 3: saved {run / 'step-000003'}; continue with --resume auto" in done.stderr
    assert "Traceback" not in done.stderr
    # step 3 is not a --save-every step: it was written because of the signal, with its optimizer state
    assert (run / "step-000003" / OPTIMIZER_NAME).exists() and not (run / "final").exists()
    assert (run / "step-000002").is_dir() and not (run / "step-000002" / OPTIMIZER_NAME).exists()

    resumed = finetune(base, data, "lora", run, progress=False, register=False, resume="auto", **ARGS)
    assert resumed["steps"] == 7
    ref_w, got_w = _weights(reference["final"]), _weights(resumed["final"])
    assert ref_w.keys() == got_w.keys() and all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
    steps = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [str(i) for i in range(1, 8)]


def test_optimizer_state_only_in_the_newest_checkpoint(tmp_path, setup):
    base, data = setup
    run = tmp_path / "run"
    finetune(base, data, "lora", run, progress=False, register=False, **ARGS)
    has = {p.name: (p / OPTIMIZER_NAME).exists() for p in sorted(run.iterdir()) if p.is_dir()
           and (p.name.startswith("step-") or p.name == "final")}
    assert has == {"step-000002": False, "step-000004": False, "step-000006": False, "final": True}
    # an older step is still an ordinary checkpoint, but it cannot be resumed exactly: said so
    from openseason.checkpoint import load_model

    assert load_model(run / "step-000004") is not None
    with pytest.raises(CheckpointError, match="holds no optimizer state") as err:
        finetune(base, data, "lora", run, progress=False, register=False, resume=str(run / "step-000004"), **ARGS)
    assert "--keep-optimizer" in str(err.value)

    kept = tmp_path / "kept"
    finetune(base, data, "lora", kept, progress=False, register=False, keep_optimizer=True, **ARGS)
    assert all((kept / name / OPTIMIZER_NAME).exists() for name in ("step-000002", "step-000004", "step-000006",
                                                                     "final"))
    # the newest may be a step-XXXXXX: then the final (the same step) gives it up
    exact = tmp_path / "exact"
    finetune(base, data, "lora", exact, progress=False, register=False, **{**ARGS, "max_steps": 6})
    assert (exact / "step-000006" / OPTIMIZER_NAME).exists() and not (exact / "final" / OPTIMIZER_NAME).exists()


def test_pretraining_keeps_the_distributed_optimizer_state_only_in_the_newest(tmp_path, tokens):  # noqa: F811
    run = tmp_path / "run"
    pretrain("tiny-neox", tokens, run, seq_len=32, micro_batch_size=2, max_steps=3, save_every=1, progress=False,
             register=False)
    # final and step-000003 are the same step; the step-XXXXXX is the one `--resume auto` reads
    assert [p.name for p in sorted(run.iterdir()) if (p / "dcp").is_dir()] == ["step-000003"]
    assert all((run / name / "model.safetensors").exists() for name in ("step-000001", "step-000002", "final"))


def test_files_written_by_a_run_have_one_mode(tmp_path, setup):
    base, data = setup
    old = os.umask(0o022)
    try:
        finetune(base, data, "lora", tmp_path / "run", progress=False, register=False, **ARGS)
    finally:
        os.umask(old)
    modes = {}
    for path in (tmp_path / "run").rglob("*"):
        kind = "dir" if path.is_dir() else "file"
        modes.setdefault((kind, oct(stat.S_IMODE(path.stat().st_mode))), []).append(path.name)
    assert {k for k in modes} == {("dir", "0o755"), ("file", "0o644")}, modes
    assert "metrics.csv" in modes[("file", "0o644")] and "preflight.json" in modes[("file", "0o644")]
