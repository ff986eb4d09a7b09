"""Which Hugging Face architectures convert, and the key-map module for each of our families."""
from __future__ import annotations

from types import ModuleType

from ..errors import CheckpointError
from . import gpt_neox, llama, mpt

FAMILIES: dict[str, ModuleType] = {"gpt_neox": gpt_neox, "llama": llama, "mpt": mpt}
ARCHITECTURES: dict[str, ModuleType] = {m.ARCHITECTURE: m for m in FAMILIES.values()}
for _m in FAMILIES.values():
    ARCHITECTURES.update({name: _m for name in getattr(_m, "OTHER_ARCHITECTURES", ())})
SUPPORTED = tuple(ARCHITECTURES)


def family_for_hf_config(hf: dict, where: str) -> ModuleType:
    """The key-map module for a config.json, from `architectures` (or `model_type` when that is absent)."""
    archs = hf.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    for arch in archs:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    if not archs:
        for module in FAMILIES.values():
            if hf.get("model_type") == module.MODEL_TYPE:
                return module
    named = ", ".join(map(str, archs)) if archs else f"model_type {hf.get('model_type')!r}"
    raise CheckpointError(f"unsupported architecture {named}", where=where,
                          hint=f"supported architectures: {', '.join(SUPPORTED)}")


def family_for_config(family: str, where: str) -> ModuleType:
    if family not in FAMILIES:
        raise CheckpointError(f"no Hugging Face export for family {family!r}", where=where,
                              hint=f"supported families: {', '.join(FAMILIES)}")
    return FAMILIES[family]
