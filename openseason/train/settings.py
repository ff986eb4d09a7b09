"""What a resumed run must share with the checkpoint it resumes: the run's settings, compared by name.

Every training checkpoint stores the settings that decide its numbers (learning-rate schedule, batch
geometry, sequence length, method, objective, a fingerprint of the data, seed) in trainer_state.json.
A resume compares them with the new run's and stops, naming each difference (old -> new), unless
`--allow-changes`; then it says what changed and goes on with the new values.

Some settings cannot change at all, because the checkpoint would not even load into the new run
(the method and the shape of its weights, the objective): those are refused with `--allow-changes` too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..errors import CheckpointError, ConfigError
from ..fileio import hash_files

# Settings a resume can never change, and why (the checkpoint holds weights of another kind or shape).
STRUCTURAL = {
    "method": "a checkpoint of one method holds other weights than another's",
    "objective": "the data order and the saved state belong to the checkpoint's objective",
    "lora_rank": "the LoRA weights have the checkpoint's rank",
    "lora_targets": "the LoRA weights are on the checkpoint's layers",
    "adapter_prompt_length": "the adapter prompts have the checkpoint's length",
    "adapter_layers": "the adapters are on the checkpoint's layers",
    "mm_mode": "the visual modules are those of the checkpoint's mode",
    "early_layers": "the visual gates are on the checkpoint's layers",
    "visual_blocks": "the visual query has the checkpoint's blocks",
    "xattn_every": "the cross-attention blocks are on the checkpoint's layers",
    "perceiver_depth": "the resampler has the checkpoint's layers",
    "num_latents": "the resampler has the checkpoint's latents",
}
LABELS = {"batch": "batch (examples or samples per optimizer step)", "data": "data fingerprint",
          "max_length": "max_length (tokens per example)", "seq_len": "seq_len (tokens per sample)"}


def data_fingerprint(data: str | Path) -> str:
    """sha256 of a prepared directory's record files (*.jsonl) and stored prompt style, or of one file."""
    path = Path(data)
    if not path.is_dir():
        return hash_files([path])
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix == ".jsonl" or p.name == "prompt_style.json"))
    return hash_files(files)


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a sha256: its prefix is enough to tell two apart
    if isinstance(value, float):
        return f"{value:.6g}"  # 0.0003, not 0.00030000000000000003 (lr / 10)
    return repr(value) if isinstance(value, str) else str(value)


def differences(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(name, old, new) for each setting present in both with a different value, in `new`'s order."""
    out = []
    for name, value in new.items():
        if name in old and _normal(old[name]) != _normal(value):
            out.append((name, old[name], value))
    return out


def _normal(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_resume(checkpoint: Path, state: dict, settings: Optional[dict], allow_changes: bool) -> list[str]:
    """Compare the settings stored in a checkpoint's trainer state with the new run's `settings`.

    Returns the changes (as "name: old -> new" lines) when they are allowed; raises CheckpointError
    for a structural change and ConfigError for other changes without `allow_changes`."""
    old = state.get("settings")
    if not settings or not old:
        return []
    changed = differences(old, settings)
    structural = [(n, a, b) for n, a, b in changed if n in STRUCTURAL]
    if structural:
        name, a, b = structural[0]
        hint = STRUCTURAL[name]
        if name == "method":
            hint = (f"{hint}. To go on from it with --method {b}, fold it into full weights (`openseason merge "
                    f"{checkpoint} --out MERGED`) and finetune MERGED into a new --out")
        else:
            hint += "; start a new run (a new --out, or --overwrite) to change it"
        lines = "; ".join(f"{n}: {_show(x)} -> {_show(y)}" for n, x, y in structural)
        raise CheckpointError(f"cannot resume this {old.get('method', '')} checkpoint with a different "
                              f"{', '.join(n for n, _, _ in structural)} ({lines})", where=str(checkpoint), hint=hint)
    lines = [f"{LABELS.get(n, n)}: {_show(a)} -> {_show(b)}" for n, a, b in changed]
    if lines and not allow_changes:
        raise ConfigError("resuming would change the run's settings:\n    " + "\n    ".join(lines),
                          where=str(checkpoint),
                          hint="resume with the checkpoint's settings, or pass --allow-changes to go on with the "
                               "new ones (the run then no longer equals an uninterrupted one)")
    return lines


def check_allow_changes(allow_changes: bool, resume) -> None:
    """--allow-changes only means something when resuming."""
    if allow_changes and not resume:
        raise ConfigError("--allow-changes applies only with --resume",
                          hint="it lets a resumed run differ from its checkpoint's settings")
