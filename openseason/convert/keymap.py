"""The family-independent half of conversion: walk our parameter names, ask the family module which
Hugging Face tensors each one comes from, and check names and shapes before anything is written.

A family module (gpt_neox.py, llama.py) provides:

    ARCHITECTURE, MODEL_TYPE      the transformers class and model_type it reads and writes
    ALIASES                       other HF names accepted on input -> the name we use
    config_from_hf(hf, where)     Config keyword arguments from a config.json dict
    config_to_hf(config)          a config.json dict from our Config
    hf_names(key, config)         the HF tensor names our parameter `key` is made of
    from_hf(key, tensors, config) our tensor from those HF tensors
    to_hf(key, tensor, config)    those HF tensors from our tensor
    ignorable_hf(config)          HF names that may be present and are dropped (tied copies)

Because the mapping is driven by our model's own parameter list, a weight that one side has and
the other lacks is reported, never silently skipped.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch

from ..checkpoint import build_model, model_state_for_saving
from ..config import Config
from ..errors import CheckpointError


def rename(key: str, top: dict[str, str], per_layer: dict[str, str], layer_prefix: str) -> str:
    """Map `blocks.{i}.<suffix>` through `per_layer` (prefixing `layer_prefix`) and others through `top`."""
    if key.startswith("blocks."):
        _, index, suffix = key.split(".", 2)
        if suffix in per_layer:
            return layer_prefix.format(i=index) + per_layer[suffix]
    elif key in top:
        return top[key]
    raise KeyError(key)


def expected_state(config: Config) -> dict[str, torch.Tensor]:
    """Our parameters as meta tensors (names and shapes, no memory)."""
    return model_state_for_saving(build_model(config))


def _list(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    return f"{keys[:limit]}{f' and {len(keys) - limit} more' if len(keys) > limit else ''}"


def state_from_hf(family: ModuleType, config: Config, hf_state: dict[str, torch.Tensor],
                  origin: dict[str, Path], listing: Path) -> dict[str, torch.Tensor]:
    """Our state dict from a Hugging Face one, after checking every name and shape."""
    hf_state = dict(hf_state)
    for alias, name in family.ALIASES.items():
        if alias in hf_state and name not in hf_state:
            hf_state[name] = hf_state.pop(alias)
            origin[name] = origin.get(alias, listing)
    for name in family.ignorable_hf(config):
        hf_state.pop(name, None)

    ours = expected_state(config)
    wanted: dict[str, tuple[int, ...]] = {}
    for key, meta in ours.items():
        for name, tensor in zip(family.hf_names(key, config), family.to_hf(key, meta, config)):
            wanted[name] = tuple(tensor.shape)

    problems = []
    missing = set(wanted) - set(hf_state)
    unexpected = set(hf_state) - set(wanted)
    if missing:
        problems.append(f"missing weight keys {_list(missing)}")
    if unexpected:
        files = sorted({origin.get(k, listing).name for k in unexpected})
        problems.append(f"unexpected weight keys {_list(unexpected)} (in {', '.join(files)})")
    mismatched = [f"{name} in {origin.get(name, listing).name}: file has {tuple(hf_state[name].shape)}, "
                  f"config.json implies {shape}"
                  for name, shape in wanted.items() if name in hf_state and tuple(hf_state[name].shape) != shape]
    if mismatched:
        more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        problems.append(f"shape mismatch for {'; '.join(mismatched[:3])}{more}")
    if problems:
        raise CheckpointError("; ".join(problems), where=str(listing),
                              hint="the weights do not match config.json (wrong config, a partial download, "
                                   "or a model variant this converter does not support)")

    return {key: family.from_hf(key, [hf_state[n] for n in family.hf_names(key, config)], config)
            for key in ours}


def state_to_hf(family: ModuleType, config: Config, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict from ours (already checked against the config)."""
    out: dict[str, torch.Tensor] = {}
    for key in expected_state(config):
        for name, tensor in zip(family.hf_names(key, config), family.to_hf(key, state[key], config)):
            out[name] = tensor.contiguous()
    return out


def refuse_overwrite(source: Path, target: Path) -> None:
    """Writing replaces the target directory as a whole, so it must not be (or contain) the source."""
    source, target = Path(source).resolve(), Path(target).resolve()
    if source == target or target in source.parents:
        raise CheckpointError("the output directory is the input directory (or contains it); writing would "
                              "delete the input", where=str(target), hint="choose a different output directory")


# -- reading config.json values ------------------------------------------------------------------------
def hf_value(hf: dict, key: str, where: str, default=None, required: bool = False):
    if key in hf and hf[key] is not None:
        return hf[key]
    if required:
        raise CheckpointError(f"config.json has no {key!r}", where=where,
                              hint="is this the config.json of a causal language model?")
    return default


def rope_settings(hf: dict, where: str, legacy_fraction: str | None, legacy_base: str,
                  default_fraction: float = 1.0) -> tuple[float, float]:
    """(rotary fraction, base) from either transformers 5's `rope_parameters` or the older top-level keys."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or params.get("type") or scaling.get("rope_type") or scaling.get("type")
    if rope_type not in (None, "default"):
        raise CheckpointError(f"rope type {rope_type!r} (scaled rotary embeddings) is not supported", where=where,
                              hint="only plain rotary embeddings convert; remove rope scaling or use another model")
    fraction = params.get("partial_rotary_factor")
    if fraction is None and legacy_fraction:
        fraction = hf.get(legacy_fraction)
    if fraction is None:
        fraction = hf.get("partial_rotary_factor", default_fraction)
    base = params.get("rope_theta")
    if base is None:
        base = hf.get(legacy_base, hf.get("rope_theta", 10000.0))
    return float(fraction), float(base)


def first_id(value):
    """config.json may give eos_token_id as a list (several stop ids); we keep the first."""
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def torch_dtype_name(state: dict[str, torch.Tensor]) -> str:
    for tensor in state.values():
        if tensor.is_floating_point():
            return str(tensor.dtype).replace("torch.", "")
    return "float32"
