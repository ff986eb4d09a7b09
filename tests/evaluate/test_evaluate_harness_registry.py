"""lm-eval integration that leaves lm-eval working: its own models stay registered after importing ours,
its own command line runs the "openseason" model, offline Hub tasks fail at once and clearly, and no
"fatal: not a git repository" leaks out of lm-eval's git lookup."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openseason.errors import OpenseasonError

pytest.importorskip("lm_eval")

REPO = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("GIT_DIR", None)
    return env


def test_importing_ours_keeps_lm_evals_own_models(tmp_path):
    # A fresh interpreter: in this one, other tests may already have filled lm-eval's registry.
    code = ("import openseason.evaluate.harness as h\n"
            "from lm_eval.api.registry import get_model, model_registry\n"
            "print(sorted(k for k in ('hf', 'dummy', 'openseason') if k in model_registry))\n"
            "print(get_model('hf').__name__, get_model('openseason') is h.OpenseasonLM)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["['dummy', 'hf', 'openseason']", "HFLM True"]


def test_entry_point_names_the_registered_class():
    import tomllib

    from openseason.evaluate.harness import OpenseasonLM

    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["lm_eval.models"]
    module, _, attr = spec["openseason"].partition(":")
    import importlib

    assert getattr(importlib.import_module(module), attr) is OpenseasonLM


def test_lm_evals_own_cli_runs_the_openseason_model(tmp_path, task_dir, hf_and_ours):
    from openseason.evaluate.harness import run_harness

    _hf_dir, _hf, ckpt = hf_and_ours
    cwd = tmp_path / "not-a-repo"  # lm-eval asks git for a hash here: nothing may leak
    cwd.mkdir()
    done = subprocess.run([sys.executable, "-m", "openseason.evaluate.harness_cli", "--model", "openseason",
                           "--model_args", f"pretrained={ckpt}", "--tasks", "tiny_choice",
                           "--include_path", str(task_dir), "--device", "cpu", "--batch_size", "2"],
                          capture_output=True, text=True, env=_env(), cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fatal" not in done.stdout and "fatal" not in done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("|tiny_choice"))
    cli_acc = float(re.split(r"\s*\|\s*", row)[7])
    ours = run_harness(ckpt, ["tiny_choice"], include_path=str(task_dir), batch_size=2, device="cpu")
    assert cli_acc == pytest.approx(ours["results"]["tiny_choice"]["acc,none"], abs=1e-4)


def test_model_args_typos_and_auto_batch_are_errors(hf_and_ours):
    from openseason.evaluate.harness import OpenseasonLM

    _hf_dir, _hf, ckpt = hf_and_ours
    with pytest.raises(OpenseasonError, match="unknown model_args for the openseason model: pretrianed"):
        OpenseasonLM.create_from_arg_string(f"pretrianed={ckpt}")
    with pytest.raises(OpenseasonError, match="batch_size must be a whole number"):
        OpenseasonLM.create_from_arg_obj({"pretrained": str(ckpt)}, {"batch_size": "auto"})
    lm = OpenseasonLM.create_from_arg_obj({"pretrained": str(ckpt)}, {"batch_size": "3", "device": "cpu"})
    assert lm._batch_size == 3


def test_offline_hub_task_fails_at_once_naming_the_dataset(monkeypatch, tmp_path, task_dir, hf_and_ours):
    import datasets.config
    import lm_eval.tasks

    from openseason.evaluate import harness_env
    from openseason.evaluate.harness import run_harness

    _hf_dir, _hf, ckpt = hf_and_ours
    local = (task_dir / "task0.yaml").read_text()
    assert "task: tiny_choice" in local and "dataset_path: json" in local
    (tmp_path / "hub.yaml").write_text(local.replace("task: tiny_choice", "task: hub_mc")
                                       .replace("dataset_path: json", "dataset_path: no-such-org/no-such-dataset"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(harness_env, "hub_reachable", lambda *a, **k: False)
    original = lm_eval.tasks.TaskManager  # indexing the built-in tasks is slow and beside the point here
    monkeypatch.setattr(lm_eval.tasks, "TaskManager",
                        lambda include_path=None, **kw: original(include_path=include_path, include_defaults=False))
    was_offline = datasets.config.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(OpenseasonError, match=r"hub_mc is not in the local cache and the Hugging Face Hub is "
                                              r"unreachable.*no-such-org/no-such-dataset"):
        run_harness(ckpt, ["hub_mc"], include_path=str(tmp_path), device="cpu")
    assert time.monotonic() - start < 20
    assert datasets.config.HF_HUB_OFFLINE == was_offline and "HF_HUB_OFFLINE" not in os.environ


def test_builtin_tasks_offline_with_an_empty_cache_fail_before_indexing_or_loading(monkeypatch, tmp_path):
    import huggingface_hub.constants
    import lm_eval.tasks

    from openseason.evaluate import harness_env
    from openseason.evaluate.harness import run_harness

    monkeypatch.setattr(harness_env, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    made = []
    original = lm_eval.tasks.TaskManager
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda *a, **kw: made.append(kw) or original(*a, **kw))
    with pytest.raises(OpenseasonError, match=r"hellaswag are not local tasks.*unreachable.*holds no dataset"):
        run_harness(tmp_path / "no-checkpoint-here", ["hellaswag"])  # the model would load last: never
    assert made == []
    (tmp_path / "empty-cache" / "datasets--Rowan--hellaswag").mkdir(parents=True)
    assert harness_env.cached_hub_datasets() == ["datasets--Rowan--hellaswag"]
    harness_env.refuse_builtin_tasks_offline(["hellaswag"])  # something cached: let lm-eval look


def test_quiet_git_hash_prints_nothing_outside_a_repository(tmp_path, capfd, monkeypatch):
    from openseason.evaluate.harness_env import quiet_git_hash

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert quiet_git_hash() is None
    out, err = capfd.readouterr()
    assert out == err == ""
