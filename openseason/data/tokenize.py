"""Documents -> a sharded binary token stream for pretraining (the Pythia way).

    OUT/
      manifest.json          tokenizer (sha256), dtype, sources with checksums, shards with token and
                             document counts and checksums, total tokens; written last, atomically
      shard-00000.bin        raw little-endian token ids (uint16 when the vocabulary fits, else uint32),
      shard-00000.idx.npy    int64 start offset of every document inside the shard
      ...

Every document is followed by EOS, so the stream is one long sequence the loader cuts into
fixed-length samples. The document order is the order of the inputs, optionally shuffled with a
seed before anything is tokenized (Pythia trained on a pre-shuffled stream), and it is decided up
front, so the result does not depend on the number of worker processes. Work is cut into units of
`docs_per_shard` documents; each unit becomes one shard, written atomically, so a killed run started
again skips the shards that exist and produces byte-identical output.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..errors import DataError
from .engine import engine_for
from ..fileio import (atomic_open, foreign_entries, fsync_dir, io_error, iter_jsonl, lock_directory, read_json_object,
                      write_json_atomic)

MANIFEST = "manifest.json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class DocRef:
    """Where a document lives: source index and line number (1-based; 0 for a whole text file)."""
    source: int
    line: int


def jsonl_source(path: Path) -> bool:
    """A source read line by line (JSON Lines, maybe gzipped); any other file is one document."""
    return path.suffix in (".jsonl", ".gz") or path.name.endswith(".jsonl.gz")


def read_documents(path: Path, span=None) -> Iterable[tuple[int, str]]:
    """(line, text) of every document in a source: RedPajama-style / our documents.jsonl ({"text"}),
    prepared conversations ({"messages"}: the turns joined as plain text), or a plain text file.
    `span`: only one byte range of a JSON Lines file (see `fileio.open_text`)."""
    if jsonl_source(path):
        for lineno, row in iter_jsonl(path, span=span):
            if isinstance(row, dict) and isinstance(row.get("text"), str):
                yield lineno, row["text"]
            elif isinstance(row, dict) and isinstance(row.get("messages"), list):
                yield lineno, "\n\n".join(str(m.get("content", "")) for m in row["messages"])
            else:
                raise DataError('expected a row with "text" (a string) or "messages" (a list)',
                                where=f"{path}:{lineno}")
    else:
        try:
            yield 0, path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", where=str(path)) from None


def expand_sources(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; directories expand to their documents.jsonl / *.jsonl / *.txt files, sorted."""
    out = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".txt", ".gz"))
            if not found:
                raise DataError("directory holds no .jsonl, .jsonl.gz or .txt files", where=str(path))
            out.extend(found)
        elif path.exists():
            out.append(path)
        else:
            raise DataError("input not found", where=str(path))
    return out


def _encode_unit(args) -> tuple[np.ndarray, np.ndarray]:
    """Worker: tokenize one unit's texts; returns (tokens with an EOS after each doc, doc offsets)."""
    tokenizer_file, eos_id, bos_id, add_bos, dtype, texts = args
    from tokenizers import Tokenizer as _T

    backend = _T.from_file(tokenizer_file)
    encoded = backend.encode_batch(texts, add_special_tokens=False)
    pieces, offsets, pos = [], [], 0
    for enc in encoded:
        ids = ([bos_id] if add_bos and bos_id is not None else []) + enc.ids + [eos_id]
        offsets.append(pos)
        pos += len(ids)
        pieces.append(np.asarray(ids, dtype=dtype))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
    return tokens, np.asarray(offsets, dtype=np.int64)


def tokenize_documents(inputs: Iterable[str | Path], tokenizer_path: str | Path, out_dir: str | Path, *,
                       docs_per_shard: int = 10_000, workers: Optional[int] = None, shuffle_seed: Optional[int] = None,
                       progress: bool = True, overwrite: bool = False, engine: str = "local",
                       address: Optional[str] = None, block_bytes: Optional[int] = None) -> dict:
    """Tokenize documents into OUT/shard-*.bin + manifest.json; resumable, deterministic. Returns the manifest.

    The writer holds OUT's lock for the whole run (a second writer gets an error naming the holder's
    PID). OUT must be empty or hold only this command's own (partial) output, which is resumed; a
    directory holding anything else is refused unless `overwrite`, which deletes it all first.
    `workers`: tokenizer processes (local engine, default 1) or parallel Ray tasks (`engine="ray"`, on
    the cluster at `address`, over input byte ranges of `block_bytes`): the same bytes either way."""
    if docs_per_shard < 1:
        raise DataError(f"--docs-per-shard must be >= 1, not {docs_per_shard}")
    if workers is not None and workers < 1:
        raise DataError(f"--workers must be >= 1, not {workers}")
    if not Path(tokenizer_path).exists():
        raise DataError("tokenizer not found", where=str(tokenizer_path),
                        hint="pass a checkpoint directory holding tokenizer.json, or the tokenizer.json file")
    if engine_for(engine, workers=workers, address=address, block_bytes=block_bytes, local_workers=True) == "ray":
        from .distributed.tokenize import ray_tokenize

        return ray_tokenize(inputs, tokenizer_path, out_dir, docs_per_shard=docs_per_shard, workers=workers,
                            shuffle_seed=shuffle_seed, progress=progress, overwrite=overwrite, address=address,
                            block_bytes=block_bytes)
    workers = workers or 1
    out = Path(out_dir)
    try:
        with lock_directory(out):
            _claim_token_dir(out, overwrite)
            return _tokenize(inputs, tokenizer_path, out, docs_per_shard, workers, shuffle_seed, progress)
    except OSError as exc:
        raise io_error(exc, out) from None


def load_tokenizer(tokenizer_path) -> tuple:
    """(tokenizer, its tokenizer.json path, the token dtype): what every engine encodes with."""
    from ..tokenizer import Tokenizer

    tok_dir = Path(tokenizer_path)
    tokenizer = Tokenizer.from_dir(tok_dir if tok_dir.is_dir() else tok_dir.parent,
                                   config=_maybe_config(tok_dir))
    if tokenizer.eos_id is None:
        raise DataError("the tokenizer has no EOS token to separate documents", where=str(tokenizer_path))
    tokenizer_file = str(tok_dir / "tokenizer.json" if tok_dir.is_dir() else tok_dir)
    return tokenizer, tokenizer_file, np.uint16 if tokenizer.vocab_size <= 65535 else np.uint32


def resume_settings(tokenizer_file, docs_per_shard, shuffle_seed, sources, sources_sha256) -> dict:
    """What a resumed run must share with the partial output (any engine's: the shards are the same)."""
    return {"tokenizer_sha256": sha256_file(tokenizer_file), "docs_per_shard": docs_per_shard,
            "shuffle_seed": shuffle_seed, "sources": [str(p) for p in sources], "sources_sha256": sources_sha256}


def unit_documents(n_docs: int, docs_per_shard: int, shuffle_seed: Optional[int]) -> list[np.ndarray]:
    """The document indices of every shard: decided before tokenizing anything, so the stream does not
    depend on workers or restarts (shuffled with `shuffle_seed` first, the Pythia way)."""
    order = np.arange(n_docs)
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(n_docs)
    return [order[i:i + docs_per_shard] for i in range(0, n_docs, docs_per_shard)]


def _tokenize(inputs, tokenizer_path, out: Path, docs_per_shard, workers, shuffle_seed, progress) -> dict:
    tokenizer, tokenizer_file, dtype = load_tokenizer(tokenizer_path)
    sources = expand_sources(inputs)
    texts_by_ref: dict[DocRef, str] = {}
    refs: list[DocRef] = []
    for s, path in enumerate(sources):
        for line, text in read_documents(path):
            ref = DocRef(s, line)
            refs.append(ref)
            texts_by_ref[ref] = text
    if not refs:
        raise DataError("no documents in the inputs", where=", ".join(map(str, sources)))
    units = unit_documents(len(refs), docs_per_shard, shuffle_seed)
    settings = resume_settings(tokenizer_file, docs_per_shard, shuffle_seed, sources,
                               [sha256_file(p) for p in sources])
    _check_resume_settings(out, settings)

    todo = [u for u in range(len(units)) if not _shard_done(out, u)]
    jobs = [(tokenizer_file, tokenizer.eos_id, tokenizer.bos_id, tokenizer.add_bos, dtype,
             [texts_by_ref[refs[i]] for i in units[u]]) for u in todo]
    bar = _progress(progress, len(units), len(units) - len(todo))
    try:
        if workers > 1 and len(jobs) > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                for u, (tokens, offsets) in zip(todo, pool.imap(_encode_unit, jobs)):
                    _write_shard(out, u, tokens, offsets, refs[int(units[u][0])])
                    bar and bar.advance(0)
        else:
            for u, job in zip(todo, jobs):
                _write_shard(out, u, *_encode_unit(job), refs[int(units[u][0])])
                bar and bar.advance(0)
    finally:
        if bar:
            bar.stop()
    per_source = np.bincount([r.source for r in refs], minlength=len(sources)).tolist()
    return write_manifest(out, tokenizer, tokenizer_path, dtype, settings, per_source, len(units))


def write_manifest(out: Path, tokenizer, tokenizer_path, dtype, settings: dict, per_source: list[int],
                   n_units: int) -> dict:
    """manifest.json (written last) from the shards' markers; `per_source`: documents per source."""
    shards = []
    for u in range(n_units):
        meta = json.loads((out / f"shard-{u:05d}.json").read_text())
        shards.append(meta)
    manifest = {"format": "openseason-tokens-v1", "dtype": np.dtype(dtype).name, "eos_id": tokenizer.eos_id,
                "bos_id": tokenizer.bos_id, "vocab_size": tokenizer.vocab_size,
                "tokenizer": {"path": str(tokenizer_path), "sha256": settings["tokenizer_sha256"]},
                "sources": [{"path": p, "sha256": h, "documents": n}
                            for p, h, n in zip(settings["sources"], settings["sources_sha256"], per_source)],
                "shuffle_seed": settings["shuffle_seed"], "docs_per_shard": settings["docs_per_shard"],
                "shards": [{k: m[k] for k in ("file", "tokens", "documents", "sha256")} for m in shards],
                "total_tokens": sum(m["tokens"] for m in shards), "documents": sum(per_source)}
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _maybe_config(path: Path):
    """A checkpoint directory's model config, for the BOS/EOS policy of its tokenizer."""
    cfg = path / "config.json" if path.is_dir() else None
    if cfg is not None and cfg.exists():
        from ..config import Config

        try:
            return Config.from_file(cfg)
        except Exception:  # a Hugging Face config.json is not ours; tokenizer_config.json still applies
            return None
    return None


def _shard_done(out: Path, unit: int) -> bool:
    return (out / f"shard-{unit:05d}.json").exists()


def _write_shard(out: Path, unit: int, tokens: np.ndarray, offsets: np.ndarray, first: DocRef) -> None:
    name = f"shard-{unit:05d}"
    with atomic_open(out / f"{name}.bin", "wb") as handle:
        handle.write(tokens.astype(tokens.dtype.newbyteorder("<"), copy=False).tobytes())
    with atomic_open(out / f"{name}.idx.npy", "wb") as handle:
        np.save(handle, offsets)
    # The .json marker is written last: its presence means the unit is complete.
    write_json_atomic(out / f"{name}.json", {
        "file": f"{name}.bin", "tokens": int(tokens.size), "documents": int(offsets.size),
        "sha256": sha256_file(out / f"{name}.bin"),
        "first_document": {"source": first.source, "line": first.line}})


SETTINGS = ".tokenize-settings.json"
# what this command writes (and atomic_open's temporary files of it, left by a kill -9)
# (and the pieces of an unfinished `--engine ray` run)
_OWN = re.compile(r"^(shard-\d{5}\.(bin|idx\.npy|json)|manifest\.json|\.tokenize-settings\.json|\.ray-work)$")
_OWN_TMP = re.compile(r"^\.(shard-\d{5}\.(bin|idx\.npy|json)|manifest\.json|\.tokenize-settings\.json)\..+\.tmp$")


def _claim_token_dir(out: Path, overwrite: bool) -> None:
    """With the lock held: clear OUT for `overwrite`; otherwise refuse anything but our own partial
    output (which needs its settings file: it is written before the first shard)."""
    names = foreign_entries(out)
    if overwrite:
        # the settings and the manifest go first: a kill part-way leaves shards without settings,
        # which the next run refuses to resume (or clears with --overwrite), never a mixed stream
        for name in sorted(names, key=lambda n: {MANIFEST: 0, SETTINGS: 1}.get(n, 2)):
            path = out / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            if name in (MANIFEST, SETTINGS):
                fsync_dir(out)
        return
    foreign = [n for n in names if not (_OWN.match(n) or _OWN_TMP.match(n))]
    if names and not (out / SETTINGS).exists():
        foreign = names
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DataError(f"output directory holds files that are not a partial `data tokenize` output ({shown})",
                        where=str(out), hint="choose a new --out, or pass --overwrite to delete them and start over")
    for name in names:  # temporary files of a killed run (we hold the lock: nobody is writing them)
        if _OWN_TMP.match(name):
            (out / name).unlink(missing_ok=True)


def _check_resume_settings(out: Path, settings: dict) -> None:
    """Refuse to mix shards made with other inputs or settings into one stream."""
    path = out / SETTINGS
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise DataError(f"output directory holds shards made with different {changed}", where=str(out),
                            hint="use a new --out directory, the same inputs and settings to resume, "
                                 "or --overwrite to start over")
    else:
        write_json_atomic(path, settings)


def _progress(enabled: bool, total: int, done: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("tokenizing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        transient=True)
    progress.add_task("tokenize", total=total, completed=done)
    progress.start()
    return progress


def checksums_ok(out_dir: str | Path) -> list[str]:
    """Shard files whose sha256 no longer matches the manifest (empty when all are intact)."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    return [s["file"] for s in manifest["shards"] if sha256_file(shard_path(out, s["file"])) != s["sha256"]]


DTYPES = ("uint16", "uint32")


def shard_path(directory: str | Path, name) -> Path:
    """The shard file a manifest names, which must lie inside the manifest's directory: a manifest is
    data (it can be copied from anywhere), so `"file": "../x"` or an absolute path is refused."""
    directory = Path(directory)
    loc = str(directory / MANIFEST)
    if not isinstance(name, str) or not name or "\0" in name:
        raise DataError(f"shard entry {name!r} must be a file name in the token directory", where=loc)
    if Path(name).is_absolute() or name.startswith(("/", "\\")):
        raise DataError(f"shard file {name!r} is an absolute path", where=loc,
                        hint="shard files are named relative to the manifest's directory")
    full = directory / name
    if not full.resolve().is_relative_to(directory.resolve()):
        raise DataError(f"shard file {name!r} lies outside the token directory", where=loc,
                        hint="a manifest names only files in its own directory; tokenize again")
    return full


def read_manifest(directory: str | Path) -> dict:
    """manifest.json of a finished token directory, checked: DataError (file:line:col for bad JSON)
    for a missing or malformed manifest, an unknown dtype, counts that are not integers, or a shard
    entry that is not {file inside the directory, tokens >= 0, sha256}."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.exists():
        raise DataError("no manifest.json: not a finished token directory", where=str(directory),
                        hint="run `openseason data tokenize ... --out DIR` (again, to finish it)")
    manifest = read_json_object(path)
    loc = str(path)

    def bad(what: str):
        return DataError(f"manifest {what}", where=loc, hint="the directory is damaged; tokenize again")

    if not isinstance(manifest, dict):
        raise bad("is not a JSON object")
    if manifest.get("dtype") not in DTYPES:
        raise bad(f"dtype must be one of {list(DTYPES)}, not {manifest.get('dtype')!r}")
    for key in ("eos_id", "total_tokens", "documents"):  # pretraining records the last two in its run card
        if not isinstance(manifest.get(key), int) or isinstance(manifest.get(key), bool) or manifest[key] < 0:
            raise bad(f"{key} must be an integer >= 0, not {manifest.get(key)!r}")
    if not isinstance(manifest.get("sources"), list) or not all(
            isinstance(x, dict) and isinstance(x.get("path"), str) for x in manifest["sources"]):
        raise bad("sources must be a list of {path, sha256, documents}")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise bad(f"shards must be a list, not {type(shards).__name__}")
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict):
            raise bad(f"shards[{i}] must be an object")
        shard_path(directory, shard.get("file"))
        tokens = shard.get("tokens")
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise bad(f"shards[{i}].tokens must be a count >= 0, not {tokens!r}")
        if not isinstance(shard.get("sha256"), str):
            raise bad(f"shards[{i}].sha256 must be a hex digest")
    return manifest

