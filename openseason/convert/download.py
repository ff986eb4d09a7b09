"""`openseason download REPO_ID`: fetch a model from the Hugging Face Hub, then convert it.

Only the files conversion needs are fetched: config.json, the tokenizer files and one weight layout
(safetensors when the repository has them, else pytorch_model*.bin). config.json comes first, so an
unsupported architecture is refused before gigabytes of weights are downloaded. Offline — with
HF_HUB_OFFLINE set, or with the Hub unreachable — a model already in the local Hugging Face cache is
used; otherwise the call fails at once with a CheckpointError that says so.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..checkpoint import DEFAULT_SHARD_BYTES
from ..errors import CheckpointError
from ..tokenizer import TOKENIZER_FILES
from .families import family_for_hf_config
from .from_hf import convert_from_hf
from .hf_files import read_hf_config

META_FILES = ["config.json", *TOKENIZER_FILES]
ALL_WEIGHTS = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors",
               "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]


def hub_offline() -> bool:
    """HF_HUB_OFFLINE read now (huggingface_hub itself reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def weight_patterns(filenames: list[str], repo_id: str) -> list[str]:
    """One weight layout out of a repository's file list, safetensors preferred."""
    names = set(filenames)
    if "model.safetensors.index.json" in names:
        return ["model.safetensors.index.json", "model-*-of-*.safetensors"]
    if "model.safetensors" in names:
        return ["model.safetensors"]
    if "pytorch_model.bin.index.json" in names:
        return ["pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]
    if "pytorch_model.bin" in names:
        return ["pytorch_model.bin"]
    raise CheckpointError("the repository has no weights in a supported layout", where=f"hf://{repo_id}",
                          hint="expected model.safetensors, pytorch_model.bin or their sharded index; found "
                               f"{sorted(n for n in names if n.endswith(('.safetensors', '.bin', '.pt', '.gguf')))}")


def _hub_error(exc: Exception, repo_id: str, endpoint: Optional[str]) -> CheckpointError:
    from huggingface_hub import errors as hub

    here = f"hf://{repo_id}"
    if isinstance(exc, hub.GatedRepoError):
        return CheckpointError("the repository is gated", where=here,
                               hint="accept its license on the Hub and pass a token (--token or HF_TOKEN)")
    if isinstance(exc, hub.RepositoryNotFoundError):
        return CheckpointError("repository not found (or private)", where=here,
                               hint="check the spelling (owner/name); private repositories need a token")
    if isinstance(exc, hub.RevisionNotFoundError):
        return CheckpointError("revision not found", where=here, hint="check --revision (a branch, tag or commit)")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return CheckpointError(f"cannot reach the Hugging Face Hub at {endpoint or 'https://huggingface.co'} and "
                           f"the model is not in the local cache ({type(exc).__name__}: {first})", where=here,
                           hint="run on a machine with internet access, or convert a local copy with "
                                "`openseason convert from-hf HF_DIR OUT_DIR`")


def fetch(repo_id: str, *, revision: Optional[str] = None, hf_dir: Optional[str | Path] = None,
          cache_dir: Optional[str | Path] = None, token: Optional[str] = None, endpoint: Optional[str] = None,
          timeout: float = 10.0) -> Path:
    """Download what conversion needs into the Hugging Face cache (or `hf_dir`); returns that folder."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub import errors as hub

    common = dict(repo_id=repo_id, cache_dir=cache_dir, local_dir=hf_dir, token=token, endpoint=endpoint)
    local_only = hub_offline()
    try:
        if local_only:
            raise hub.LocalEntryNotFoundError("HF_HUB_OFFLINE is set")
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision, timeout=timeout)
        revision = info.sha or revision
        filenames = [s.rfilename for s in (info.siblings or [])]
        folder = Path(snapshot_download(**common, revision=revision, allow_patterns=META_FILES,
                                        etag_timeout=timeout))
        family_for_hf_config(read_hf_config(folder), f"hf://{repo_id}/config.json")
        return Path(snapshot_download(**common, revision=revision, etag_timeout=timeout,
                                      allow_patterns=META_FILES + weight_patterns(filenames, repo_id)))
    except CheckpointError:
        raise
    except (hub.RepositoryNotFoundError, hub.RevisionNotFoundError) as exc:
        raise _hub_error(exc, repo_id, endpoint) from None
    except Exception as exc:  # connection refused, DNS, timeouts, offline mode: try the local cache
        try:
            folder = Path(snapshot_download(**common, revision=revision, local_files_only=True,
                                            allow_patterns=META_FILES + ALL_WEIGHTS))
        except Exception:
            if local_only:
                raise CheckpointError(
                    "HF_HUB_OFFLINE is set and the model is not in the local Hugging Face cache",
                    where=f"hf://{repo_id}",
                    hint="unset HF_HUB_OFFLINE on a machine with internet access, or convert a local copy "
                         "with `openseason convert from-hf HF_DIR OUT_DIR`") from None
            raise _hub_error(exc, repo_id, endpoint) from None
        return folder


def download(repo_id: str, out_dir: str | Path, *, revision: Optional[str] = None,
             hf_dir: Optional[str | Path] = None, cache_dir: Optional[str | Path] = None,
             token: Optional[str] = None, endpoint: Optional[str] = None, timeout: float = 10.0,
             dtype=None, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Fetch `repo_id` from the Hugging Face Hub and convert it into our checkpoint at `out_dir`.

    The raw files go to the Hugging Face cache (or to `hf_dir` when given); conversion is exactly
    `convert_from_hf`, with the repository id and revision recorded in the run card. `timeout` bounds
    each request to the Hub in seconds. Returns `out_dir`.
    """
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise CheckpointError(f"{repo_id!r} is not a Hub repository id", hint="use OWNER/NAME, e.g. EleutherAI/pythia-70m")
    folder = fetch(repo_id, revision=revision, hf_dir=hf_dir, cache_dir=cache_dir, token=token,
                   endpoint=endpoint, timeout=timeout)
    return convert_from_hf(folder, out_dir, dtype=dtype, repo_id=repo_id, revision=revision,
                           max_shard_bytes=max_shard_bytes)
