"""Fingerprints of checkpoint weights: which base a PEFT checkpoint was trained on.

A PEFT checkpoint holds only its own small weights and a path to its base. Another base of the same
shape (pythia-160m vs pythia-160m-deduped, a base finetuned again in place, a different step of the
same run) loads without any error and silently gives a different model, so peft.json records the
fingerprint of the base it was trained on and loading compares it (peft.py).

Hashing every byte of a 7B base would add tens of seconds to every load, so the fingerprint of a
full checkpoint reads each safetensors file's header (every tensor's name, dtype, shape and offsets)
and, per tensor, all bytes of small tensors (norms, biases: up to SMALL_TENSOR_BYTES) and SAMPLES
evenly spaced 64-byte pieces of larger ones. Training, conversion or another seed changes every
sampled piece; what it cannot see is an edit confined to bytes between the pieces of a large matrix.
A PEFT checkpoint's fingerprint (peft.weights_fingerprint) hashes its whole (small) weight file and
its own base's fingerprint.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from ..errors import CheckpointError

FORMAT = "sampled-v1"
SMALL_TENSOR_BYTES = 64 * 1024
SAMPLES = 64
PIECE = 64


def _safetensors_digest(path: Path, digest) -> None:
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise CheckpointError("not a safetensors file (shorter than its header length)", where=str(path))
        (size,) = struct.unpack("<Q", raw)
        header_bytes = handle.read(size)
        try:
            header = json.loads(header_bytes)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError("not a safetensors file (unreadable header)", where=str(path)) from None
        digest.update(header_bytes)
        data_start = 8 + size
        for name in sorted(k for k in header if k != "__metadata__"):
            begin, end = header[name]["data_offsets"]
            length = end - begin
            if length <= SMALL_TENSOR_BYTES:
                spans = [(begin, length)]
            else:
                step = (length - PIECE) // (SAMPLES - 1)
                spans = [(begin + i * step, PIECE) for i in range(SAMPLES)]
            for offset, count in spans:
                handle.seek(data_start + offset)
                digest.update(handle.read(count))


def full_fingerprint(directory: str | Path) -> str:
    """The fingerprint of a full checkpoint's weight files (PEFT levels: peft.weights_fingerprint)."""
    from .full import weight_files

    digest = hashlib.sha256()
    for file in weight_files(Path(directory)):
        digest.update(file.name.encode())
        _safetensors_digest(file, digest)
    return f"{FORMAT}:{digest.hexdigest()}"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
