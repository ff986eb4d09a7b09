"""Any Hugging Face Hub dataset id through the `datasets` library, read with one of our sources.

`openseason data prepare hub databricks/databricks-dolly-15k --as dolly --out DIR` downloads the
split with `datasets`, writes it to a JSONL file in the output directory's cache and reads that with
the named source, so filters, rejects and reports work exactly as for local files. Offline (no
network, or HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set) it fails at once with a clear message.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from ...errors import DataError, OpenseasonError

NAME = "hub"
DEFAULT_STYLE = None
MODES = ()


def _check_online(timeout: float = 3.0) -> None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            raise DataError(f"{var} is set, so Hub datasets cannot be downloaded",
                            hint="download the dataset's files elsewhere and pass them as local paths")
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exc:
        raise DataError(f"cannot reach the Hugging Face Hub at {host} ({exc}); this machine looks offline",
                        hint="pass local files instead: openseason data prepare SOURCE FILE... --out DIR") from None


def fetch(dataset_id: str, cache_dir, split: str = "train", config=None) -> Path:
    """Download `dataset_id` and write it as JSONL under cache_dir; returns the file."""
    _check_online()
    try:
        import datasets
    except ImportError:
        raise OpenseasonError("the `datasets` library is not installed", hint="pip install datasets") from None
    try:
        ds = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as exc:  # datasets raises many types for missing ids, splits and network problems
        raise DataError(f"cannot load Hub dataset {dataset_id!r} split {split!r}: {exc}",
                        hint="check the id and --split on https://huggingface.co/datasets") from None
    out = Path(cache_dir) / f"{dataset_id.replace('/', '__')}.{split}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        for row in ds:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return out
