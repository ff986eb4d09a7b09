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
from typing import Optional

from ..errors import DataError, OpenseasonError
from ..fileio import iter_jsonl, write_json_atomic, write_jsonl_atomic, where as fmt_where
from .minhash import MinHasher, clusters, lsh_params, normalize
from .prepare import CLUSTERS, REJECTS, REPORT, check_if_prepared, combined_style, writing_prepared
from .sft import STYLE_FILE
from .records import KINDS, record_text


def exact_key(text: str) -> str:
    return hashlib.blake2b(normalize(text).encode(), digest_size=16).hexdigest()


def _load(inputs, kind_file):
    rows, wheres = [], []
    for directory in inputs:
        file = Path(directory) / kind_file
        if file.exists():
            for lineno, row in iter_jsonl(file):
                rows.append(row)
                wheres.append(fmt_where(file, lineno))
    return rows, wheres


def dedup(inputs, out, threshold: float = 0.87, num_perm: int = 128, ngram: int = 5, exact: bool = True,
          near: bool = True, seed: int = 1, shingle_hash: str = "fast", overwrite: bool = False,
          style: Optional[str] = None) -> dict:
    """Deduplicate the prepared directories `inputs` (as one collection) into `out`; returns the report.

    Like `data prepare`, the writer holds `out`'s lock, refuses a non-empty `out` unless `overwrite`,
    and writes everything to a staging folder that is moved in when complete (report.json last)."""
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
    style_record = combined_style(inputs, style)  # before any output: mixed styles need --style
    with writing_prepared(out, overwrite) as stage:
        report = _dedup(inputs, stage, threshold, num_perm, ngram, exact, near, seed, shingle_hash)
        if style_record is not None:
            write_json_atomic(stage / STYLE_FILE, style_record)
        return report


def _dedup(inputs, out: Path, threshold, num_perm, ngram, exact, near, seed, shingle_hash) -> dict:
    """Write the deduplicated outputs into `out` (a staging folder)."""
    started = time.time()
    bands, rows_per_band = lsh_params(threshold, num_perm)
    hasher = MinHasher(num_perm=num_perm, seed=seed, ngram=ngram, shingle_hash=shingle_hash)
    rejects, cluster_rows = [], []
    report = {"inputs": [str(p) for p in inputs], "read": 0, "written": 0, "rejected": {}, "threshold": threshold,
              "num_perm": num_perm, "bands": bands, "rows_per_band": rows_per_band, "ngram": ngram,
              "shingle_hash": shingle_hash, "clusters": {"exact": 0, "near": 0}, "largest_cluster": 0,
              "by_kind": {}, "written_by_kind": {}}
    for kind, name in KINDS.items():
        rows, wheres = _load(inputs, name)
        if not rows:
            continue
        report["read"] += len(rows)
        texts = [record_text(r) for r in rows]
        keep = [True] * len(rows)

        def remove(members, reason):
            kept = members[0]
            cluster_rows.append({"kind": kind, "stage": reason.split("_")[0], "kept": rows[kept].get("id"),
                                 "removed": [rows[m].get("id") for m in members[1:]], "size": len(members)})
            report["largest_cluster"] = max(report["largest_cluster"], len(members))
            for m in members[1:]:
                keep[m] = False
                rejects.append({"where": wheres[m], "reason": reason, "id": rows[m].get("id"),
                                "duplicate_of": rows[kept].get("id"), "cluster": len(cluster_rows) - 1})

        if exact:
            groups: dict[str, list[int]] = {}
            for i, text in enumerate(texts):
                groups.setdefault(exact_key(text), []).append(i)
            for members in groups.values():
                if len(members) > 1:
                    report["clusters"]["exact"] += 1
                    remove(members, "exact_duplicate")
        if near:
            alive = [i for i in range(len(rows)) if keep[i]]
            sigs, has = hasher.signatures([texts[i] for i in alive])
            for comp in clusters(sigs, bands, rows_per_band, mask=has):
                report["clusters"]["near"] += 1
                remove([alive[c] for c in comp], "near_duplicate")
        kept_rows = [r for r, k in zip(rows, keep) if k]
        write_jsonl_atomic(out / name, kept_rows)
        report["written"] += len(kept_rows)
        report["by_kind"][kind] = {"read": len(rows), "written": len(kept_rows)}
        report["written_by_kind"][kind] = len(kept_rows)
    for r in rejects:
        report["rejected"][r["reason"]] = report["rejected"].get(r["reason"], 0) + 1
    write_jsonl_atomic(out / CLUSTERS, cluster_rows)
    write_jsonl_atomic(out / REJECTS, rejects)
    report["seconds"] = round(time.time() - started, 3)
    write_json_atomic(out / REPORT, report)
    return report
