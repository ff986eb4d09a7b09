"""PEFT checkpoints out of openseason: LoRA folded into plain weights (for `convert to-hf` and
`convert to-gguf`), or written as a Hugging Face PEFT adapter folder (`openseason export-peft`,
`convert to-hf --peft`) that `peft.PeftModel.from_pretrained` loads over the converted base.

    export_peft_checkpoint("runs/dolly-lora/final", "exports/dolly-lora-peft",
                           base_model="exports/pythia-70m-hf")
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import CheckpointError, ConfigError


def load_folded(ckpt_dir: str | Path, target: str):
    """The model of `ckpt_dir` as plain weights: a full checkpoint as is, a LoRA checkpoint with its
    branches folded in (the same merge as `openseason merge`). LLaMA-Adapter prompts cannot be folded:
    a CheckpointError saying what `target` (e.g. "GGUF") can take instead."""
    from ..checkpoint import is_peft_checkpoint, load_model
    from ..peft import merge

    model = load_model(ckpt_dir)
    if is_peft_checkpoint(ckpt_dir):
        try:
            merge(model)
        except ConfigError as exc:
            raise CheckpointError(f"cannot export a PEFT checkpoint to {target}: {exc.message}", where=str(ckpt_dir),
                                  hint=f"{target} holds plain weights; only LoRA checkpoints fold into them "
                                       "(`openseason merge CKPT --out DIR` does the same on disk)") from None
    return model


def tokenizer_dir(ckpt_dir: str | Path) -> Path:
    """Where the tokenizer files of `ckpt_dir` are: the checkpoint itself, else (a PEFT checkpoint
    saved without them) the full checkpoint at the bottom of its base chain."""
    from ..checkpoint import is_peft_checkpoint, root_base

    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / "tokenizer.json").is_file() and is_peft_checkpoint(ckpt_dir):
        return Path(root_base(ckpt_dir))
    return ckpt_dir


def export_peft_checkpoint(ckpt_dir: str | Path, out_dir: str | Path, *, base_model: Optional[str] = None) -> Path:
    """Write the LoRA checkpoint `ckpt_dir` as adapter_config.json + adapter_model.safetensors in
    `out_dir` (atomically), for `peft.PeftModel.from_pretrained(hf_base, out_dir)` where `hf_base` is
    the base checkpoint converted with `openseason convert to-hf`. `base_model` is recorded as
    base_model_name_or_path (the converted base's folder or Hub id; AutoPeftModel loads it from there).
    Returns `out_dir`."""
    from ..checkpoint import is_peft_checkpoint, load_model, read_peft_config, root_base
    from ..fileio import refuse_file
    from ..peft import export_peft
    from .keymap import refuse_overwrite

    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError("checkpoint directory not found", where=str(ckpt_dir))
    if not is_peft_checkpoint(ckpt_dir):
        raise CheckpointError("not a PEFT checkpoint (no peft.json): it holds full weights", where=str(ckpt_dir),
                              hint="convert it with `openseason convert to-hf CKPT HF_DIR` instead")
    methods = [m.get("method") for m in read_peft_config(ckpt_dir).get("methods", [])]
    if methods != ["lora"]:
        raise CheckpointError(f"only LoRA checkpoints export to the PEFT format; this one holds {methods}",
                              where=str(ckpt_dir),
                              hint="LLaMA-Adapter checkpoints load directly with openseason (LLM.load, generate, "
                                   "chat, serve)")
    refuse_file(out_dir)
    for source in (ckpt_dir, root_base(ckpt_dir)):
        refuse_overwrite(source, Path(out_dir))
    return export_peft(load_model(ckpt_dir), out_dir, base_model_name_or_path=base_model)
