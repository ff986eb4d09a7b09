"""Near-duplicate removal at scale: `data dedup` in one process and on Ray (1 and 2 workers) vs
datatrove's four-stage MinHash pipeline (signatures, buckets, clusters, filter) on the same corpus.

The corpus is benchmarks/dedup.py's: real texts from ../shared/data plus edited copies of a fifth of
them (0-20% of words replaced), written as 4 RedPajama-style files and prepared (not timed). Every
side is timed from the prepared JSONL to the deduplicated output, with the same shingles (word
5-grams), 128 permutations and the same LSH bands (b, r) that openseason picks for threshold 0.87.
datatrove gets a `\\w+` word tokenizer (its English default needs NLTK data that is not here), its
own text normalization minus number/diacritic rewriting, and SHA-1 32-bit hashes (its xxhash default
is an extra package); it runs 2 worker processes over 4 tasks, as a subprocess so its peak memory is
its own. Agreement: the pairs of documents that end up in one duplicate cluster (openseason's exact
and near clusters joined), as a Jaccard index between the two sides' pair sets.

Ray: a local cluster with 2 CPUs is started once (not timed) and warmed up with a tiny run; "1
worker" allows one task in flight, "2 workers" two. Peak memory is each Ray worker process's
maximum resident set (getrusage), and for datatrove that of its largest process. CPU: the seconds
of CPU the work took (openseason's process; Ray's tasks; datatrove's processes), which a shared
machine's load does not inflate as it does the wall time: MB of prepared JSONL per CPU-second is the
per-document cost the README's 1e9-document estimate uses.

    .venv/bin/pip install datatrove orjson   # the peer: benchmark only
    .venv/bin/python benchmarks/dedup_scale.py [--copies 1]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

NUM_PERM, THRESHOLD, FILES = 128, 0.87, 4


def build_corpus(root: Path, copies: int) -> list[Path]:
    from dedup import load_texts  # benchmarks/dedup.py: the same real texts and edited copies

    from openseason.data.prepare import prepare

    texts = load_texts() * copies
    dirs = []
    for f in range(FILES):
        raw = root / f"part{f}.jsonl"
        with raw.open("w") as handle:
            for text in texts[f::FILES]:
                handle.write(json.dumps({"text": text}) + "\n")
        prepare("redpajama", [raw], root / f"prepared{f}", progress=False)
        dirs.append(root / f"prepared{f}")
    return dirs


def cluster_pairs(groups) -> set:
    return {pair for g in groups for pair in combinations(sorted(g), 2)}


def our_pairs(out: Path) -> set:
    from openseason.data.minhash import components

    rows = [json.loads(line) for line in (out / "clusters.jsonl").open()]
    names = sorted({i for r in rows for i in [r["kept"], *r["removed"]]})
    index = {n: i for i, n in enumerate(names)}
    comps = components([index[r["kept"]], *(index[x] for x in r["removed"])] for r in rows)
    return cluster_pairs([[names[i] for i in c] for c in comps])


def run_datatrove(dirs: list[str], work: str, workers: int) -> dict:
    """The peer half (run in a subprocess): datatrove's MinHash pipeline; returns its time and clusters."""
    import gzip

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    from openseason.data.minhash import lsh_params

    class Words(WordTokenizer):
        def word_tokenize(self, text):
            return re.findall(r"\w+", text)

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    work = Path(work)
    inp = work / "input"
    inp.mkdir(parents=True)
    for i, d in enumerate(dirs):
        os.symlink(Path(d) / "documents.jsonl", inp / f"part{i}.jsonl")
    b, r = lsh_params(THRESHOLD, NUM_PERM)
    config = MinhashConfig(n_grams=5, num_buckets=b, hashes_per_bucket=r, seed=1,
                           norm_config=TextNormConfig(norm_unicode_diacritics=False, norm_numbers=False),
                           hash_config=HashConfig(precision=32, hash_fc="sha1"))

    def reader():
        return JsonlReader(str(inp), text_key="text", id_key="id", compression=None)

    def common(stage):  # logs in the scratch folder, not ./logs; forked workers, so that this process
        # reaps them and their CPU time shows in RUSAGE_CHILDREN (forkserver's would not)
        return {"logging_dir": str(work / "logs" / stage), "skip_completed": False, "start_method": "fork"}

    stages = [
        LocalPipelineExecutor([reader(), MinhashDedupSignature(str(work / "sigs"), config=config,
                                                               language=Words("en"))],
                              tasks=FILES, workers=workers, **common("1")),
        LocalPipelineExecutor([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)],
                              tasks=b, workers=workers, **common("2")),
        LocalPipelineExecutor([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config,
                                                   save_cluster_id=True)], tasks=1, workers=1, **common("3")),
        LocalPipelineExecutor([reader(), MinhashDedupFilter(str(work / "remove"), load_cluster_ids=True,
                                                            exclusion_writer=JsonlWriter(str(work / "removed"))),
                               JsonlWriter(str(work / "kept"))], tasks=FILES, workers=workers, **common("4")),
    ]
    def cpu_now():  # this process and its reaped pool workers
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + kids.ru_utime + kids.ru_stime

    start, cpu = time.perf_counter(), cpu_now()
    for stage in stages:
        stage.run()
    seconds, cpu = time.perf_counter() - start, cpu_now() - cpu
    clusters: dict[int, list[str]] = {}
    for file in [*(work / "kept").glob("*.gz"), *(work / "removed").glob("*.gz")]:
        for line in gzip.open(file, "rt"):
            row = json.loads(line)
            cid = row["metadata"].get("minhash_cluster_id", -1)
            if cid != -1:
                clusters.setdefault(cid, []).append(row["id"])
    removed = sum(1 for f in (work / "removed").glob("*.gz") for _ in gzip.open(f, "rt"))
    return {"seconds": seconds, "cpu": cpu, "clusters": list(clusters.values()), "removed": removed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=1, help="repeat the corpus (exact copies, more documents)")
    parser.add_argument("--peer", nargs=2, metavar=("DIRS_JSON", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        result = run_datatrove(json.loads(args.peer[0]), args.peer[1], workers=2)
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        result["rss_mib"] = max(own.ru_maxrss, kids.ru_maxrss) / 1024
        print(json.dumps(result))
        return
    import ray

    from openseason.data.dedup import dedup

    tmp = Path(tempfile.mkdtemp(prefix="dedup_scale-"))
    dirs = build_corpus(tmp, args.copies)
    n = sum(1 for d in dirs for _ in (d / "documents.jsonl").open())
    size = sum((d / "documents.jsonl").stat().st_size for d in dirs)
    print(f"{n} documents in {FILES} files ({size / 2**20:.1f} MiB), num_perm {NUM_PERM}, threshold {THRESHOLD}; "
          f"load average {os.getloadavg()[0]:.2f}")

    rows = []
    start, cpu = time.perf_counter(), time.process_time()
    dedup(dirs, tmp / "local")
    rows.append(("openseason, one process", time.perf_counter() - start, time.process_time() - cpu, None,
                 our_pairs(tmp / "local")))

    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
    dedup([dirs[0]], tmp / "warmup", engine="ray", workers=2)  # start the worker processes
    for workers in (1, 2):
        out = tmp / f"ray{workers}"
        start = time.perf_counter()
        report = dedup(dirs, out, engine="ray", workers=workers)
        seconds = time.perf_counter() - start
        assert (out / "documents.jsonl").read_bytes() == (tmp / "local" / "documents.jsonl").read_bytes()
        # CPU: the tasks' (the driver only plans, joins clusters and concatenates files)
        rows.append((f"openseason on Ray, {workers} worker(s)", seconds, report["engine"]["task_cpu_seconds"],
                     report["engine"]["peak_rss_mib_per_worker"], our_pairs(out)))
    ray.shutdown()

    proc = subprocess.run([sys.executable, __file__, "--peer", json.dumps([str(d) for d in dirs]), str(tmp / "dt")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode:
        sys.exit(f"datatrove run failed:\n{proc.stderr[-3000:]}")
    peer = json.loads(proc.stdout.strip().splitlines()[-1])
    theirs = cluster_pairs(peer["clusters"])
    rows.append(("datatrove MinHash pipeline, 2 workers", peer["seconds"], peer["cpu"], [peer["rss_mib"]], theirs))

    ref_t = peer["seconds"]
    for name, seconds, cpu, rss, pairs in rows:
        agree = len(pairs & theirs) / len(pairs | theirs) if pairs | theirs else 1.0
        mem = f"peak RSS/worker {max(rss):6.0f} MiB" if rss else "peak RSS/worker      -    "
        print(f"  {name:40s} {seconds:7.2f} s {n / seconds:8.0f} docs/s  CPU {cpu:6.2f} s "
              f"({size / cpu / 1e6:5.2f} MB/CPU-s)  {mem}  {len(pairs):6d} pairs  "
              f"vs datatrove: {ref_t / seconds:5.2f}x, pair agreement {100 * agree:6.2f}%")
    print(f"  datatrove removed {peer['removed']} documents; openseason removed "
          f"{n - sum(1 for _ in (tmp / 'local' / 'documents.jsonl').open())}")


if __name__ == "__main__":
    main()
