"""Our rails on NeMo Guardrails' own configs: which load, and intent accuracy on held-out utterances.

Point it at a local copy of NeMo Guardrails (a git checkout, or an unpacked `nemoguardrails` wheel);
nothing is fetched and nothing of it is committed here:

    .venv/bin/python benchmarks/guard_nemo.py /path/to/NeMo-Guardrails [--paraphrases FILE] [--max-rows 400]

It reports, for every folder holding a config.yml (Colang 2.x configs are listed apart, as out of
scope), whether `RailsConfig.from_path` and `Rails(...)` accept it (the error, file:line:col, when
not), plus unknown-key warnings; for every Colang 1.0 `.co` file in the tree (`define ...` syntax,
e.g. the library's flows.v1.co) whether it parses. Intent accuracy is leave-one-out over each loaded
config's `define user` examples (each example classified against the others, embeddings only, at
the config's threshold: the paraphrase a user would write is approximated by a sibling example),
or, with `--paraphrases`, on `config_dir_name | intent | message` lines you wrote.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from openseason.errors import OpenseasonError  # noqa: E402
from openseason.guard import Rails, RailsConfig, parse_file  # noqa: E402
from openseason.guard.embeddings import Embedder  # noqa: E402


def colang_version(folder: Path) -> str:
    for name in ("config.yml", "config.yaml"):
        f = folder / name
        if f.exists():
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.strip().startswith("colang_version"):
                    return line.split(":", 1)[1].strip().strip("\"'")
    return "1.0"


def is_colang1(path: Path) -> bool:
    text = path.read_text(encoding="utf-8", errors="replace")
    return any(line.startswith("define ") for line in text.splitlines())


def leave_one_out(rails: Rails, max_rows: int) -> dict:
    idx = rails.index
    n = len(idx.texts)
    if len(idx.intents) < 2 or n < 3:
        return {}
    labels = idx.labels
    fallback, threshold = rails.config.fallback_intent, rails.config.threshold
    step = max(1, n // max_rows)
    correct = total = 0
    for i in range(0, n, step):
        if Counter(labels)[labels[i]] < 2:
            continue  # an intent with one example has no sibling to be matched against
        sims = idx.matrix @ idx.matrix[i]
        sims[i] = -2.0
        j = int(torch.argmax(sims))
        got = labels[j] if float(sims[j]) >= threshold else fallback
        correct += got == labels[i]
        total += 1
    return {"rows": total, "accuracy": correct / total if total else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path, help="local copy of NeMo Guardrails (checkout or unpacked wheel)")
    ap.add_argument("--paraphrases", type=Path, help="`config_dir_name | intent | message` lines")
    ap.add_argument("--max-rows", type=int, default=400, help="held-out examples per config at most")
    args = ap.parse_args()
    if not args.root.is_dir():
        print(f"not a folder: {args.root}", file=sys.stderr)
        return 2
    embedder = Embedder()
    folders = sorted({p.parent for n in ("config.yml", "config.yaml") for p in args.root.rglob(n)})
    loaded, failed, v2 = [], [], []
    t0 = time.perf_counter()
    for folder in folders:
        rel = folder.relative_to(args.root)
        if colang_version(folder).startswith("2"):
            v2.append(str(rel))
            continue
        try:
            cfg = RailsConfig.from_path(folder)
            rails = Rails(cfg, embedder=embedder)
            try:
                rails.validate()
                note = ""
            except OpenseasonError as exc:  # loads; an action it reaches needs code (actions.py or NeMo's)
                note = f"loads; running it needs: {str(exc).splitlines()[0]}"
            loaded.append((str(rel), rails, note, cfg))
        except OpenseasonError as exc:
            failed.append((str(rel), str(exc).splitlines()[0]))
        except Exception as exc:  # a crash is a bug of ours: report it, keep going
            failed.append((str(rel), f"CRASH {type(exc).__name__}: {exc}"))
    co_files = [p for p in sorted(args.root.rglob("*.co")) if is_colang1(p)]
    co_failed = []
    for p in co_files:
        try:
            parse_file(p)
        except OpenseasonError as exc:
            co_failed.append((str(p.relative_to(args.root)), str(exc).splitlines()[0]))
    elapsed = time.perf_counter() - t0

    print(f"config folders: {len(folders)} ({len(v2)} Colang 2.x, out of scope); Colang 1.0: "
          f"{len(loaded)} load, {len(failed)} fail  [{elapsed:.1f}s]")
    for rel, rails, note, cfg in loaded:
        loo = leave_one_out(rails, args.max_rows)
        acc = f"held-out accuracy {loo['accuracy']:.3f} on {loo['rows']}" if loo.get("rows") else "no intents to score"
        print(f"  OK   {rel}: {len(rails.index.intents)} intents, {len(rails.config.flows)} flows; {acc}"
              + (f"; {note}" if note else ""))
        for w in cfg.unknown_keys:
            print(f"       warning: {w}")
    for rel, err in failed:
        print(f"  FAIL {rel}: {err}")
    for rel in v2:
        print(f"  2.x  {rel}")
    print(f"Colang 1.0 .co files: {len(co_files)}, {len(co_files) - len(co_failed)} parse")
    for rel, err in co_failed:
        print(f"  FAIL {rel}: {err}")
    if args.paraphrases:
        by_name = {Path(rel).name: rails for rel, rails, _n, _c in loaded}
        hits = total = 0
        for line in args.paraphrases.read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            name, intent, text = (x.strip() for x in line.split(" | ", 2))
            if name in by_name:
                total += 1
                hits += by_name[name].check(text).intent == intent
        print(f"paraphrases: accuracy {hits / total:.3f} on {total}" if total else "paraphrases: none matched a config")
    return 0


if __name__ == "__main__":
    sys.exit(main())
