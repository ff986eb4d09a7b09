"""Reading a Hugging Face model directory: config.json and its weights in any of the usual layouts.

    config.json
    model.safetensors                               one file, or
    model.safetensors.index.json + shards           sharded safetensors, or
    pytorch_model.bin / pytorch_model.bin.index.json + shards   (read with weights_only=True)

Every problem (no config.json, malformed JSON, an unknown layout, a corrupt or truncated file, a
shard listed in the index but absent) becomes a CheckpointError that names the file, so the user
never sees a torch or safetensors traceback.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from rich.progress import track

from ..checkpoint import read_safetensors
from ..fileio import read_json_object
from ..errors import CheckpointError

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_LAYOUTS = (SAFE_INDEX, SAFE_SINGLE, BIN_INDEX, BIN_SINGLE)  # preferred first

# Buffers older transformers versions saved with the weights; they are recomputed, never learned.
STALE_SUFFIXES = (".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")


def read_json(path: Path) -> dict:
    """A JSON object from `path`; missing or malformed files name themselves in the error."""
    if not path.exists():
        raise CheckpointError(f"no {path.name}", where=str(path.parent),
                              hint="pass a Hugging Face model directory (config.json plus weights)")
    return read_json_object(path, CheckpointError)


def read_hf_config(hf_dir: Path) -> dict:
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise CheckpointError("Hugging Face model directory not found", where=str(hf_dir))
    return read_json(hf_dir / "config.json")


def weight_files(hf_dir: Path) -> tuple[list[Path], Path]:
    """The weight files to read and the file that lists them (the index, or the single file)."""
    for layout in WEIGHT_LAYOUTS:
        path = hf_dir / layout
        if not path.exists():
            continue
        if not layout.endswith(".index.json"):
            return [path], path
        index = read_json(path)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError("shard index has no 'weight_map' object", where=str(path))
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (hf_dir / n).exists()]
        if missing:
            raise CheckpointError(f"shard files listed in the index are missing: {missing}", where=str(path),
                                  hint="download every shard the index names")
        return [hf_dir / n for n in names], path
    present = sorted(p.name for p in hf_dir.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    raise CheckpointError(
        f"no weights found (looked for {', '.join(WEIGHT_LAYOUTS)})", where=str(hf_dir),
        hint=f"found {present} instead; rename or re-download" if present else
        "download the model's weight files next to its config.json")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_bin(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch pickle read with weights_only=True (no code from the file runs)."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise CheckpointError("unsafe PyTorch weights file: it holds objects other than tensors, and loading "
                                  "them would run code from the file (refused: weights_only=True)", where=str(path),
                                  hint="use the model's safetensors files, or a .bin that holds only tensors") from None
        raise CheckpointError(f"corrupt PyTorch weights file ({_first_line(exc)})", where=str(path),
                              hint="re-download the file") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors... for damaged files
        raise CheckpointError(f"corrupt or truncated PyTorch weights file ({_first_line(exc)})", where=str(path),
                              hint="re-download the file") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("expected a dict of tensor names to tensors", where=str(path))
    return state


def load_hf_state(hf_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Path], Path]:
    """All tensors of a Hugging Face directory, minus stale buffers.

    Returns (state, origin, listing): origin maps each key to the file it came from (for error
    messages); listing is the index file, or the single weights file.
    """
    files, listing = weight_files(Path(hf_dir))
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    # Reading a multi-shard model takes a while; show progress only then.
    for file in track(files, description="reading weights", transient=True, disable=len(files) < 2):
        part = read_safetensors(file) if file.suffix == ".safetensors" else read_bin(file)
        for key, tensor in part.items():
            if key.endswith(STALE_SUFFIXES):
                continue
            if key in state:
                raise CheckpointError(f"weight {key!r} appears in two files ({origin[key].name} and {file.name})",
                                      where=str(listing))
            state[key] = tensor
            origin[key] = file
    return state, origin, listing
