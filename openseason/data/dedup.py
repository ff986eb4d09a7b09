"""`openseason data dedup`: exact and near-duplicate removal over prepared directories.

Exact: records whose normalized text (NFKC, lower case, whitespace collapsed) hashes the same; the
first in input order stays. Near: MinHash-LSH (`openseason.data.minhash`) over what is left, at a
Jaccard threshold (default 0.87, the one Pythia's deduplicated Pile used); every connected cluster
of candidates keeps its first record. Each kind (conversations, preferences, documents) is deduped
on its own. The output is a prepared directory: the kept records, report.json with the counts and
clusters, clusters.jsonl (kept id, removed ids per cluster) and rejects.jsonl (each removed record
with its file:line, reason and the id it duplicates).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from ..errors import DataError, OpenseasonError
from ..fileio import iter_jsonl, write_json_atomic, write_jsonl_atomic, where as fmt_where
from .engine import engine_for
from .minhash import MinHasher, clusters, lsh_params, normalize
from .prepare import CLUSTERS, REJECTS, REPORT, check_if_prepared, combined_style, writing_prepared
from .sft import STYLE_FILE
from .records import KINDS, record_text


def exact_key(text: str) -> str:
    return hashlib.blake2b(normalize(text).encode(), digest_size=16).hexdigest()


def load_kind(inputs, kind_file):
    """(rows, file:line of each) of one kind's file across `inputs`, in input order."""
    rows, wheres = [], []
    for directory in inputs:
        file = Path(directory) / kind_file
        if file.exists():
            for lineno, row in iter_jsonl(file):
                rows.append(row)
                wheres.append(fmt_where(file, lineno))
    return rows, wheres


def check_inputs(inputs, out, settings: dict) -> tuple[list[Path], Path]:
    """The input directories and `out` as paths, after checking them and the `settings` (threshold,
    num_perm, ngram, exact, near: shared by every engine)."""
    threshold, num_perm, ngram = settings["threshold"], settings["num_perm"], settings["ngram"]
    exact, near = settings["exact"], settings["near"]
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    for directory in inputs:
        if not directory.is_dir() or not any((directory / f).exists() for f in KINDS.values()):
            raise DataError("not a prepared directory (no conversations/preferences/documents.jsonl)",
                            where=str(directory), hint="run `openseason data prepare` first")
        check_if_prepared(directory)  # a damaged or half-written input is an error, not silent data
    if not 0.0 < threshold < 1.0:
        raise OpenseasonError(f"--threshold must be between 0 and 1, not {threshold}")
    if not exact and not near:
        raise OpenseasonError("--no-exact and --no-near together leave nothing to do",
                              hint="drop one of them (or use `openseason data mix DIR:1` to copy)")
    if num_perm < 2 or ngram < 1:
        raise OpenseasonError(f"--num-perm must be >= 2 and --ngram >= 1, not {num_perm} and {ngram}",
                              hint="the defaults are --num-perm 128 --ngram 5")
    out = Path(out)
    if out.resolve() in [p.resolve() for p in inputs]:
        raise OpenseasonError("--out must be a new directory, not one of the inputs")
    return inputs, out


def dedup(inputs, out, threshold: float = 0.87, num_perm: int = 128, ngram: int = 5, exact: bool = True,
          near: bool = True, seed: int = 1, shingle_hash: str = "fast", overwrite: bool = False,
          style: Optional[str] = None, engine: str = "local", workers: Optional[int] = None, address: Optional[str] = None,
          block_bytes: Optional[int] = None) -> dict:
    """Deduplicate the prepared directories `inputs` (as one collection) into `out`; returns the report.

    Like `data prepare`, the writer holds `out`'s lock, refuses a non-empty `out` unless `overwrite`,
    and writes everything to a staging folder that is moved in when complete (report.json last).
    Inputs prepared with different prompt styles need `style` (the style of the result).
    `engine="ray"` runs the same stages on a Ray cluster (`address`: "auto" or HOST:PORT; a local
    one when none is running) with `workers` parallel tasks over input byte ranges of `block_bytes`
    (see `openseason.data.distributed`); the outputs are identical."""
    settings = {"threshold": threshold, "num_perm": num_perm, "ngram": ngram, "exact": exact, "near": near,
                "seed": seed, "shingle_hash": shingle_hash}
    use = engine_for(engine, workers=workers, address=address, block_bytes=block_bytes)
    inputs, out = check_inputs(inputs, out, settings)
    style_record = combined_style(inputs, style)  # before any output: mixed styles need --style
    if use == "ray":
        from .distributed.dedup import ray_dedup

        return ray_dedup(inputs, out, settings, style_record, overwrite=overwrite, workers=workers, address=address,
                         block_bytes=block_bytes)
    with writing_prepared(out, overwrite) as stage:
        return _dedup(inputs, stage, style_record, **settings)


def new_report(inputs, threshold, num_perm, ngram, shingle_hash) -> dict:
    bands, rows_per_band = lsh_params(threshold, num_perm)
    return {"inputs": [str(p) for p in inputs], "read": 0, "written": 0, "rejected": {}, "threshold": threshold,
            "num_perm": num_perm, "bands": bands, "rows_per_band": rows_per_band, "ngram": ngram,
            "shingle_hash": shingle_hash, "clusters": {"exact": 0, "near": 0}, "largest_cluster": 0,
            "by_kind": {}, "written_by_kind": {}}


def exact_groups(keyed: Iterable[tuple[str, int]]) -> list[list[int]]:
    """Groups (size >= 2) of the indices whose exact keys agree, fed as (key, index) in index order:
    each group in index order, the groups in order of their first member."""
    groups: dict[str, list[int]] = {}
    for key, i in keyed:
        groups.setdefault(key, []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def dropped(groups: Iterable[Sequence[int]]) -> list[int]:
    """The keep/drop rule: every cluster keeps its first record in input order and drops the rest."""
    return [m for members in groups for m in members[1:]]


class Decisions:
    """Clusters and rejects as they are decided, in the order both engines decide them: per kind,
    the exact clusters, then the near ones, each in order of its first member."""

    def __init__(self, report: dict):
        self.report, self.cluster_rows, self.rejects = report, [], []

    def record(self, kind: str, reason: str, groups: list, ident: Callable[[int], tuple]) -> None:
        """Record `groups` (lists of record indices) removed for `reason`; `ident(i)` is record i's
        (id, file:line)."""
        stage = reason.split("_")[0]
        for members in groups:
            (kept_id, _), removed = ident(members[0]), members[1:]
            self.report["clusters"][stage] += 1
            self.report["largest_cluster"] = max(self.report["largest_cluster"], len(members))
            self.cluster_rows.append({"kind": kind, "stage": stage, "kept": kept_id,
                                      "removed": [ident(m)[0] for m in removed], "size": len(members)})
            for m in removed:
                rid, where_ = ident(m)
                self.rejects.append({"where": where_, "reason": reason, "id": rid, "duplicate_of": kept_id,
                                     "cluster": len(self.cluster_rows) - 1})

    def finish(self, out: Path, started: float, style_record: Optional[dict]) -> dict:
        """Write clusters.jsonl, rejects.jsonl, the prompt style (`style_record`, when the inputs have
        one) and report.json (last) into `out`."""
        report = self.report
        for r in self.rejects:
            report["rejected"][r["reason"]] = report["rejected"].get(r["reason"], 0) + 1
        write_jsonl_atomic(out / CLUSTERS, self.cluster_rows)
        write_jsonl_atomic(out / REJECTS, self.rejects)
        if style_record is not None:
            write_json_atomic(out / STYLE_FILE, style_record)
        report["seconds"] = round(time.time() - started, 3)
        write_json_atomic(out / REPORT, report)
        return report


def _dedup(inputs, out: Path, style_record, threshold, num_perm, ngram, exact, near, seed, shingle_hash) -> dict:
    """Write the deduplicated outputs into `out` (a staging folder)."""
    started = time.time()
    report = new_report(inputs, threshold, num_perm, ngram, shingle_hash)
    hasher = MinHasher(num_perm=num_perm, seed=seed, ngram=ngram, shingle_hash=shingle_hash)
    decisions = Decisions(report)
    for kind, name in KINDS.items():
        rows, wheres = load_kind(inputs, name)
        if not rows:
            continue
        report["read"] += len(rows)
        texts = [record_text(r) for r in rows]
        keep = [True] * len(rows)

        def ident(i):
            return rows[i].get("id"), wheres[i]

        if exact:
            groups = exact_groups((exact_key(text), i) for i, text in enumerate(texts))
            decisions.record(kind, "exact_duplicate", groups, ident)
            for m in dropped(groups):
                keep[m] = False
        if near:
            alive = [i for i in range(len(rows)) if keep[i]]
            sigs, has = hasher.signatures([texts[i] for i in alive])
            groups = [[alive[c] for c in comp] for comp in clusters(sigs, report["bands"], report["rows_per_band"],
                                                                     mask=has)]
            decisions.record(kind, "near_duplicate", groups, ident)
            for m in dropped(groups):
                keep[m] = False
        kept_rows = [r for r, k in zip(rows, keep) if k]
        write_jsonl_atomic(out / name, kept_rows)
        report["written"] += len(kept_rows)
        report["by_kind"][kind] = {"read": len(rows), "written": len(kept_rows)}
        report["written_by_kind"][kind] = len(kept_rows)
    return decisions.finish(out, started, style_record)
