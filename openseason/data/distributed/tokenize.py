"""`data tokenize --engine ray`: the same token shards as one process, tokenized where the data is.

1. the sources' checksums and the newlines of every byte range, in parallel (line numbers);
2. encode (one task per range): `read_documents` over the range and `_encode_unit` (the
   single-process tokenization: documents followed by EOS), saved as tokens + document offsets;
3. write (one task per shard): the shard's documents, in the order `unit_documents` decided (the
   single-process order, shuffled or not), cut out of the ranges' token files and written with
   `_write_shard`; then the driver writes the manifest with `write_manifest`.

Resume: the shard markers of the single-process path (a shard that exists is skipped) and the
encoded ranges under OUT/.ray-work, removed when the manifest is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import DataError
from ...fileio import atomic_open, io_error, lock_directory
from ..tokenize import (DocRef, _check_resume_settings, _claim_token_dir, _encode_unit, _shard_done, _write_shard,
                        expand_sources, jsonl_source, load_tokenizer, read_documents, resume_settings, sha256_file,
                        unit_documents, write_manifest)
from .cluster import connect
from .ranges import DEFAULT_BLOCK_BYTES, Range, number_lines, plan
from .workdir import WorkDir

INDEX = "stream-index.npz"


def encode_range(work: str, p: int, rng: Range, encoding: tuple) -> int:
    """Task: tokenize range `p`'s documents into tok-P.{tokens,offsets,lines}.npy; returns their count."""
    base = Path(work) / f"tok-{p:06d}"
    lines_file = Path(f"{base}.lines.npy")
    if not lines_file.exists():
        lines, texts = [], []
        for line, text in read_documents(Path(rng.path), rng.span()):
            lines.append(line)
            texts.append(text)
        tokens, offsets = _encode_unit((*encoding, texts))
        for suffix, array in (("tokens", tokens), ("offsets", np.append(offsets, tokens.size)),
                              ("lines", np.asarray(lines, dtype=np.int64))):  # lines last: the range is done
            with atomic_open(f"{base}.{suffix}.npy", "wb") as handle:
                np.save(handle, array)
    return int(np.load(lines_file, mmap_mode="r").shape[0])


def write_unit(out: str, work: str, unit: int, docs: np.ndarray) -> None:
    """Task: shard `unit` from the documents `docs` (indices into the whole stream)."""
    with np.load(Path(work) / INDEX) as index:  # a file, not an argument: one copy, not one per task
        starts, files = index["starts"], index["files"]
    ranges = np.searchsorted(starts, docs, side="right") - 1
    cache: dict[int, tuple] = {}
    pieces, lengths = [], []
    for d, p in zip(docs.tolist(), ranges.tolist()):
        if p not in cache:
            base = Path(work) / f"tok-{p:06d}"
            cache[p] = tuple(np.load(f"{base}.{s}.npy", mmap_mode="r") for s in ("tokens", "offsets", "lines"))
        tokens, offsets, _ = cache[p]
        i = d - int(starts[p])
        pieces.append(np.asarray(tokens[offsets[i]:offsets[i + 1]]))
        lengths.append(pieces[-1].size)
    p0, i0 = int(ranges[0]), int(docs[0]) - int(starts[ranges[0]])
    first = DocRef(int(files[p0]), int(cache[p0][2][i0]))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    _write_shard(Path(out), unit, np.concatenate(pieces), offsets, first)


def ray_tokenize(inputs, tokenizer_path, out_dir, *, docs_per_shard: int = 10_000, workers: Optional[int] = None,
                 shuffle_seed: Optional[int] = None, progress: bool = True, overwrite: bool = False,
                 address: Optional[str] = None, block_bytes: Optional[int] = None) -> dict:
    """`tokenize_documents(..., engine="ray")`: see the module docstring."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with connect(address, workers) as cluster, lock_directory(out):
            _claim_token_dir(out, overwrite)
            return _run(cluster, inputs, tokenizer_path, out, docs_per_shard, shuffle_seed, progress,
                        block_bytes or DEFAULT_BLOCK_BYTES)
    except OSError as exc:
        raise io_error(exc, out) from None


def _run(cluster, inputs, tokenizer_path, out: Path, docs_per_shard, shuffle_seed, progress, block_bytes) -> dict:
    tokenizer, tokenizer_file, dtype = load_tokenizer(tokenizer_path)
    sources = expand_sources(inputs)
    checksums = cluster.run(sha256_file, [(str(p),) for p in sources], "checksums", progress)
    settings = resume_settings(tokenizer_file, docs_per_shard, shuffle_seed, sources, checksums)
    _check_resume_settings(out, settings)
    work = WorkDir(out)
    layout = work.settings(settings, lambda: {"ranges": [vars(r) for r in number_lines(
        cluster, plan([str(p) for p in sources], block_bytes, lambda p: jsonl_source(p) and p.suffix != ".gz"))]})
    ranges = [Range(**r) for r in layout["ranges"]]
    encoding = (tokenizer_file, tokenizer.eos_id, tokenizer.bos_id, tokenizer.add_bos, dtype)
    counts = cluster.run(encode_range, [(str(work.path), p, r, encoding) for p, r in enumerate(ranges)],
                         "tokenizing", progress)
    if not sum(counts):
        raise DataError("no documents in the inputs", where=", ".join(map(str, sources)))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    units = unit_documents(int(starts[-1]), docs_per_shard, shuffle_seed)
    files = [r.file for r in ranges]
    with atomic_open(work.file(INDEX), "wb") as handle:  # where each range's documents start in the stream
        np.savez(handle, starts=starts, files=np.array(files, dtype=np.int64))
    cluster.run(write_unit, [(str(out), str(work.path), u, units[u])
                             for u in range(len(units)) if not _shard_done(out, u)], "writing shards", progress)
    per_source = np.bincount(files, weights=counts, minlength=len(sources)).astype(int).tolist()
    manifest = write_manifest(out, tokenizer, tokenizer_path, dtype, settings, per_source, len(units))
    work.remove()
    return manifest
