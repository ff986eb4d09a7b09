"""What lm-eval touches outside the model while it runs: the Hugging Face Hub and git.

Two habits of lm-eval make `evaluate harness` hard to trust on an offline machine or outside a git
checkout: a task whose dataset lives on the Hub retries the network for half a minute and ends in a
bare ConnectionError, and every run asks `git describe` for a hash, which prints "fatal: not a git
repository" when there is none. `harness_environment()` fixes both for the length of a run:

- when the Hub's host cannot be reached (a 3-second probe), datasets and huggingface_hub are put in
  offline mode, so a cached dataset still loads and a missing one fails at once, with a message that
  names the dataset (`hub_error`); with an empty Hub cache, tasks that are not local are refused even
  before lm-eval indexes its built-in tasks (`refuse_builtin_tasks_offline`);
- lm-eval's git-hash function is swapped for one that asks git the same question with its stderr
  captured (the hash is still recorded when there is one).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlparse

from ..errors import OpenseasonError

PROBE_TIMEOUT_S = 3.0
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(endpoint: Optional[str] = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub's host opens within `timeout` seconds."""
    url = urlparse(endpoint or hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def cached_hub_datasets() -> list[str]:
    """The datasets in the local Hugging Face Hub cache (`datasets--ORG--NAME` folders)."""
    import huggingface_hub.constants

    cache = Path(huggingface_hub.constants.HF_HUB_CACHE)
    return sorted(p.name for p in cache.glob("datasets--*")) if cache.is_dir() else []


def refuse_builtin_tasks_offline(tasks: list[str]) -> None:
    """Fail before lm-eval indexes its built-in tasks (15-30 s) when none of them could load: the tasks
    are not local, the Hub is unreachable and the Hub cache holds no dataset at all."""
    if not tasks or hub_reachable() or cached_hub_datasets():
        return
    import huggingface_hub.constants

    raise OpenseasonError(f"harness task(s) {', '.join(tasks)} are not local tasks, lm-eval's built-in tasks read "
                          f"their datasets from the Hugging Face Hub ({hub_endpoint()}), which is unreachable from "
                          f"this machine, and the local cache ({huggingface_hub.constants.HF_HUB_CACHE}) holds no "
                          "dataset (so no built-in task could run; the names were not looked up)",
                          hint="run once where the Hub is reachable to fill the cache (HF_HOME), or write a local "
                               "task YAML (dataset_path: json) and pass --include-path DIR")


def quiet_git_hash() -> Optional[str]:
    """`git describe --always` in the current directory, as lm-eval records it, without git's stderr."""
    try:
        done = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def quiet_lm_eval_git() -> None:
    """Make lm-eval's evaluator record the git hash with quiet_git_hash (for a whole process)."""
    import lm_eval.evaluator

    lm_eval.evaluator.get_git_commit_hash = quiet_git_hash


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """datasets and huggingface_hub in offline mode (cache only), restored afterwards."""
    import datasets.config
    import huggingface_hub.constants

    saved_env = {k: os.environ.get(k) for k in _OFFLINE_ENV}
    saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    os.environ.update({k: "1" for k in _OFFLINE_ENV})
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def harness_environment(hub_needed: bool = True) -> Iterator[bool]:
    """Run lm-eval with a quiet git lookup and, when the Hub is unreachable, in offline mode.
    Yields whether the run is offline. `hub_needed=False` (every task is local) skips the probe."""
    import lm_eval.evaluator

    original = lm_eval.evaluator.get_git_commit_hash
    lm_eval.evaluator.get_git_commit_hash = quiet_git_hash
    try:
        if hub_needed and not hub_reachable():
            with _offline():
                yield True
        else:
            yield False
    finally:
        lm_eval.evaluator.get_git_commit_hash = original


def hub_error(exc: BaseException, tasks: list[str], offline: bool) -> OpenseasonError:
    """A clear error for a task whose dataset could not be fetched."""
    where = "the Hugging Face Hub is unreachable from this machine" if offline else "the download failed"
    return OpenseasonError(f"the dataset of harness task(s) {', '.join(tasks)} is not in the local cache and "
                           f"{where} ({hub_endpoint()}): {exc}",
                           hint="run once where the Hub is reachable to fill the cache (HF_HOME), or write a "
                                "local task YAML (dataset_path: json) and pass --include-path DIR")
