"""`data dedup --engine ray`: exact and MinHash-LSH near-duplicate removal as a map-shuffle-reduce.

Per kind (conversations, preferences, documents), over the inputs' files cut into byte ranges:

1. map (one task per range, where the data is): read the rows, `exact_key` and `MinHasher`
   signatures of their text (the single-process functions), and write them out partitioned for
   the reducers: exact keys by key hash, each LSH band's values by the band's bucket key hash
   (band -> bucket -> reducer), so all records of one bucket meet in one reducer.
2. exact reduce (one task per reducer): `exact_groups` over its keys.
3. near reduce (one task per reducer): for each band, the buckets of the records still alive after
   the exact stage (`_band_groups`, the single-process bucketing), joined into components with
   `components` (union-find); the driver joins the reducers' components the same way.
4. write (one task per range): the kept rows of the range, and the ids of the records in clusters.

A record is named by (range << 32 | row in range), which sorts like its index in the single-process
run, so groups, components and the keep/drop rule (`dropped`: each cluster keeps its first record)
come out the same; the driver records them with the single-process `Decisions` and concatenates the
ranges' kept rows in order. The driver holds only the clusters, never the signatures.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ...fileio import atomic_open, iter_jsonl, where as fmt_where, write_jsonl_atomic
from ..dedup import Decisions, check_inputs, dropped, exact_groups, exact_key, new_report
from ..minhash import MinHasher, _band_groups, _band_keys, components, lsh_params
from ..prepare import writing_prepared
from ..records import KINDS, record_text
from .cluster import connect
from .ranges import DEFAULT_BLOCK_BYTES, Range, number_lines, plan

ROW_BITS = np.uint64(32)


def _rows(rng: Range):
    return iter_jsonl(rng.path, span=rng.span())


def _gids(p: int, n: int) -> np.ndarray:
    return (np.uint64(p) << ROW_BITS) | np.arange(n, dtype=np.uint64)


def map_range(work: str, kind: str, p: int, rng: Range, settings: dict, reducers: int) -> int:
    """Task: keys and band values of range `p`, partitioned for `reducers` reducers; returns its rows."""
    name = Path(work) / f"{kind}-map-{p:06d}.npz"
    if name.exists():
        return int(np.load(name)["n"])
    texts = [record_text(row) for _, row in _rows(rng)]
    gids = _gids(p, len(texts))
    arrays = {"n": np.array(len(texts))}
    if settings["exact"]:
        keys = np.array([exact_key(t) for t in texts], dtype="S32")
        part = np.array([int(k[:12], 16) % reducers for k in keys], dtype=np.int64)
        for r in range(reducers):
            arrays[f"x{r}_gid"], arrays[f"x{r}_key"] = gids[part == r], keys[part == r]
    if settings["near"]:
        bands, rows = lsh_params(settings["threshold"], settings["num_perm"])
        hasher = MinHasher(num_perm=settings["num_perm"], seed=settings["seed"], ngram=settings["ngram"],
                           shingle_hash=settings["shingle_hash"], threads=1)
        sigs, has = hasher.signatures(texts)
        for j in range(bands):
            vals = np.ascontiguousarray(sigs[has, j * rows:(j + 1) * rows])
            part = (_band_keys(vals) % np.uint64(reducers)).astype(np.int64)
            for r in range(reducers):
                arrays[f"b{r}_{j}_gid"], arrays[f"b{r}_{j}_val"] = gids[has][part == r], vals[part == r]
    with atomic_open(name, "wb") as handle:
        np.savez(handle, **arrays)
    return len(texts)


def _gather(work: str, kind: str, n_ranges: int, prefix: str, values: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, values) of one partition (arrays PREFIX_gid, PREFIX_VALUES) across all map outputs, in
    record order (the ranges are in input order, and the rows in each)."""
    ids, vals = [], []
    for p in range(n_ranges):
        with np.load(Path(work) / f"{kind}-map-{p:06d}.npz") as data:
            ids.append(data[f"{prefix}_gid"])
            vals.append(data[f"{prefix}_{values}"])
    return np.concatenate(ids), np.concatenate(vals)


def _flat(groups: list[list[int]]) -> dict:
    return {"members": np.array([m for g in groups for m in g], dtype=np.uint64),
            "sizes": np.array([len(g) for g in groups], dtype=np.int64)}


def _unflat(data) -> list[list[int]]:
    members, out, at = data["members"].tolist(), [], 0
    for size in data["sizes"].tolist():
        out.append(members[at:at + size])
        at += size
    return out


def _cached(path: Path, compute) -> list[list[int]]:
    if not path.exists():
        groups = compute()
        with atomic_open(path, "wb") as handle:
            np.savez(handle, **_flat(groups))
    with np.load(path) as data:
        return _unflat(data)


def exact_reduce(work: str, kind: str, r: int, n_ranges: int) -> list[list[int]]:
    """Task: the exact-duplicate groups among the records whose key hash falls to reducer `r`."""
    def compute():
        gids, keys = _gather(work, kind, n_ranges, f"x{r}", "key")
        return exact_groups(zip(keys.tolist(), gids.tolist()))
    return _cached(Path(work) / f"{kind}-exact-{r:04d}.npz", compute)


def near_reduce(work: str, kind: str, r: int, n_ranges: int, bands: int, rows: int) -> list[list[int]]:
    """Task: components of the candidate graph over the band buckets that fall to reducer `r`, among
    the records the exact stage did not remove (KIND-exact-removed.npy)."""
    def compute():
        removed = np.load(Path(work) / f"{kind}-exact-removed.npy")
        groups = []
        for j in range(bands):
            gids, vals = _gather(work, kind, n_ranges, f"b{r}_{j}", "val")
            alive = ~np.isin(gids, removed)
            gids, vals = gids[alive], vals[alive]
            groups.extend(gids[g] for g in _band_groups(vals, 1, rows, np.arange(len(gids))))
        return components(groups)
    return _cached(Path(work) / f"{kind}-near-{r:04d}.npz", compute)


def write_range(work: str, kind: str, p: int, rng: Range, removed: list[int], wanted: list[int]) -> dict:
    """Task: the kept rows of range `p` into its part file; returns {row: (id, file:line)} for `wanted`."""
    part, index = Path(work) / f"{kind}-part-{p:06d}.jsonl", Path(work) / f"{kind}-part-{p:06d}.npz"
    if not index.exists():
        drop, want = set(removed), set(wanted)
        kept, looked = [], {}
        for i, (lineno, row) in enumerate(_rows(rng)):
            if i in want:
                looked[i] = (row.get("id"), fmt_where(rng.path, lineno))
            if i not in drop:
                kept.append(row)
        write_jsonl_atomic(part, kept)
        with atomic_open(index, "wb") as handle:  # written last: the range is done
            np.savez(handle, rows=np.array(sorted(looked), dtype=np.int64),
                     ids=np.array([looked[i][0] for i in sorted(looked)], dtype=object),
                     wheres=np.array([looked[i][1] for i in sorted(looked)], dtype=object))
    with np.load(index, allow_pickle=True) as data:
        return {i: (rid, w) for i, rid, w in zip(data["rows"].tolist(), data["ids"].tolist(), data["wheres"].tolist())}


def _split(gids) -> dict[int, list[int]]:
    by_range: dict[int, list[int]] = {}
    for g in gids:
        by_range.setdefault(g >> 32, []).append(g & 0xFFFFFFFF)
    return by_range


def ray_dedup(inputs, out, settings: dict, style_record=None, overwrite: bool = False, workers=None, address=None,
              block_bytes=None) -> dict:
    """`dedup(..., engine="ray")`: see the module docstring. Resumes an unfinished run in `out`."""
    from .workdir import WORK, WorkDir

    progress = sys.stderr.isatty()  # the bars of the stages (the single-process dedup is quick enough to have none)

    inputs, out = check_inputs(inputs, out, settings)
    started = time.time()
    with connect(address, workers) as cluster, writing_prepared(out, overwrite, ignore=(WORK,)) as stage:
        work = WorkDir(out)
        if overwrite:
            work.remove()
        files = {kind: [str(d / name) for d in inputs if (d / name).exists()] for kind, name in KINDS.items()}
        fingerprint = {k: [[f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns] for f in v] for k, v in files.items()}

        def make_plan():
            ranges = {kind: [vars(r) for r in number_lines(cluster, plan(paths, block_bytes or DEFAULT_BLOCK_BYTES,
                                                                          lambda _: True))]
                      for kind, paths in files.items()}
            return {"reducers": cluster.workers, "ranges": ranges}

        layout = work.settings({**settings, "inputs": fingerprint}, make_plan)
        report = new_report(inputs, settings["threshold"], settings["num_perm"], settings["ngram"],
                            settings["shingle_hash"])
        decisions, w, reducers = Decisions(report), str(work.path), layout["reducers"]
        for kind, name in KINDS.items():
            ranges = [Range(**r) for r in layout["ranges"][kind]]
            counts = cluster.run(map_range, [(w, kind, p, rng, settings, reducers) for p, rng in enumerate(ranges)],
                                 f"dedup {kind}: signatures", progress)
            if not sum(counts):
                continue
            jobs = [(w, kind, r, len(ranges)) for r in range(reducers)]
            exact = []
            if settings["exact"]:
                exact = sorted((g for part in cluster.run(exact_reduce, jobs, f"dedup {kind}: exact", progress)
                                for g in part), key=lambda g: g[0])
            near = []
            if settings["near"]:
                # a file, not an argument: one copy for all reducers
                with atomic_open(work.file(f"{kind}-exact-removed.npy"), "wb") as handle:
                    np.save(handle, np.array(sorted(dropped(exact)), dtype=np.uint64))
                parts = cluster.run(near_reduce, [(*job, report["bands"], report["rows_per_band"]) for job in jobs],
                                    f"dedup {kind}: LSH buckets", progress)
                near = components(g for part in parts for g in part)
            drop = _split(dropped(exact) + dropped(near))
            want = _split(m for g in exact + near for m in g)
            looked = cluster.run(write_range, [(w, kind, p, rng, drop.get(p, []), want.get(p, []))
                                               for p, rng in enumerate(ranges)], f"dedup {kind}: write", progress)

            def ident(gid):
                return looked[gid >> 32][gid & 0xFFFFFFFF]

            decisions.record(kind, "exact_duplicate", exact, ident)
            decisions.record(kind, "near_duplicate", near, ident)
            with atomic_open(stage / name, "wb") as handle:
                for p in range(len(ranges)):
                    with open(work.file(f"{kind}-part-{p:06d}.jsonl"), "rb") as part:
                        shutil.copyfileobj(part, handle, 1 << 20)
            read, written = sum(counts), sum(counts) - sum(len(v) for v in drop.values())
            report["read"] += read
            report["written"] += written
            report["by_kind"][kind] = {"read": read, "written": written}
            report["written_by_kind"][kind] = written
        report["engine"] = {**cluster.stats(), "ranges": sum(len(v) for v in layout["ranges"].values()),
                            "reducers": reducers}
        report = decisions.finish(stage, started, style_record)
        work.remove()
    return report
