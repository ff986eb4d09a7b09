"""Reference log-probabilities for the DPO family: computed once, before training, stored in the run
directory with fingerprints, reused on resume, recomputed when stale.

    OUT/reference_logps.safetensors   "logps" [N, 3] float64: chosen, rejected, KTO mismatch per pair
                                      metadata "fingerprint": JSON of what they were computed from

The reference is the model as loaded, BEFORE the method is applied: the SFT checkpoint for full
finetuning, the base with no adapter for LoRA / LLaMA-Adapter (a fresh LoRA or adapter is the identity
at initialization, so this is the same as disabling it). Only one model is ever in memory.

The fingerprint holds sha256 of the pairs file, of the tokenizer files, of the reference checkpoint's
weight files (every level of a PEFT chain), the prompt style and max_length. Any difference means
the cache is stale: it is recomputed (and the reason printed), never silently reused.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from ..fileio import hash_files as _hash_files

CACHE_NAME = "reference_logps.safetensors"


def checkpoint_fingerprint(checkpoint) -> str:
    """sha256 over the weight files of `checkpoint` and, for PEFT, every checkpoint below it."""
    from ..checkpoint.full import weight_files
    from ..checkpoint.peft import PEFT_WEIGHTS_NAME, base_chain

    files = []
    for level in base_chain(checkpoint):
        peft = level / PEFT_WEIGHTS_NAME
        files.extend([peft] if peft.exists() else weight_files(level))
    return _hash_files(files)

def tokenizer_fingerprint(checkpoint) -> str:
    return _hash_files(p for p in Path(checkpoint).iterdir() if p.name.startswith(("tokenizer", "special_tokens")))

def fingerprint(*, data_file_hash: str, checkpoint, style: str, max_length: int, kto: bool) -> dict:
    return {"format": 1, "data": data_file_hash, "tokenizer": tokenizer_fingerprint(checkpoint),
            "reference": checkpoint_fingerprint(checkpoint), "prompt_style": style, "max_length": int(max_length),
            "kto_mismatch": bool(kto)}

@torch.no_grad()
def compute_reference_logps(model, examples: list[dict], pad_id: int, batch_size: int = 8, device="cpu",
                            progress: bool = False) -> torch.Tensor:
    """[N, 3] float64: the model's sequence log-probabilities of each pair's chosen and rejected
    completion and of (prompt i, chosen completion of pair i+1 mod N)."""
    from ..data.preferences import collate_pairs
    from .objectives.logps import sequence_logps

    was_training = model.training
    model.eval()
    out = torch.zeros(len(examples), 3, dtype=torch.float64)
    n = len(examples)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        batch = collate_pairs([examples[i] for i in idx], pad_id, [examples[(i + 1) % n] for i in idx])
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        sums, _ = sequence_logps(model, batch)
        out[idx] = sums.double().cpu().view(3, len(idx)).T
    model.train(was_training)
    return out

def cached_reference_logps(out_dir, model, examples, pad_id: int, expected: dict, *, batch_size: int = 8,
                           device="cpu") -> tuple[torch.Tensor, str]:
    """(reference log-probabilities, "reused" | "computed" | "recomputed: <why>") via OUT/CACHE_NAME."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = Path(out_dir) / CACHE_NAME
    status = "computed"
    if path.exists():
        try:
            with safe_open(str(path), "pt") as handle:
                stored = json.loads((handle.metadata() or {}).get("fingerprint", "{}"))
                cached = handle.get_tensor("logps")
            if stored == expected and cached.shape[0] == len(examples):
                return cached, "reused"
            changed = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
            status = f"recomputed: stale cache ({', '.join(changed) or 'size'} changed)"
        except Exception as exc:  # unreadable cache: recompute
            status = f"recomputed: unreadable cache ({exc})"
        print(f"openseason: reference log-probabilities {status}")
    logps = compute_reference_logps(model, examples, pad_id, batch_size, device)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"logps": logps.contiguous()}, str(tmp), metadata={"fingerprint": json.dumps(expected, sort_keys=True)})
    tmp.replace(path)
    return logps, status

def load_fingerprint(path) -> Optional[dict]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return json.loads((handle.metadata() or {}).get("fingerprint", "{}"))
