"""`openseason data prepare | dedup | mix | stats | tokenize | batch`: thin wrappers over the data library.

Every sub-verb of `openseason data` lives here: a registrar function `f(data_subparsers)` per verb,
listed in `SUBVERBS`.
"""
from __future__ import annotations

import argparse
import json

from ..errors import OpenseasonError
from .engine import add_engine_args, engine_kwargs

RAY_WORKERS = "ray: parallel tasks (default: the cluster's CPUs)"

OVERWRITE_HELP = ("replace the outputs of a directory that already holds files "
                  "(without it, a non-empty --out is refused)")

STYLE_HELP = ("prompt style of the result (default: the inputs' own; needed when they store different "
              "styles)")


def _kv(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected FIELD=COLUMN, got {text!r}")
    return key, value


def _print(report: dict) -> None:
    print(json.dumps(report, indent=2, ensure_ascii=False))


# -- prepare ------------------------------------------------------------------------------------------
def _prepare(args) -> int:
    from .prepare import prepare

    # flags not given are None (store_true ones too), so the source can refuse the ones it does not read
    options = {"langs": args.lang, "top_k": args.top_k, "val_fraction": args.val_fraction,
               "categories": args.category, "strip_citation_marks": args.strip_citations or None,
               "columns": dict(args.columns) if args.columns else None, "meta_columns": args.meta_column,
               "github_filters": args.github_filters or None, "max_line_length": args.max_line_length,
               "mean_line_length": args.mean_line_length, "min_alnum_fraction": args.min_alnum_fraction,
               "as_source": args.as_source, "split": args.split, "image_root": args.image_root}
    mode = args.mode
    if args.alpaca_libre:
        if args.source != "hh-rlhf":
            raise OpenseasonError("--alpaca-libre only applies to the hh-rlhf source")
        if mode not in (None, "alpaca-libre"):
            raise OpenseasonError(f"--alpaca-libre is --mode alpaca-libre; it conflicts with --mode {mode}",
                                  hint="drop one of them")
        mode = "alpaca-libre"
    options = {k: v for k, v in options.items() if v is not None}
    report = prepare(args.source, args.paths, args.out, mode=mode, on_error=args.on_error, style=args.style,
                     overwrite=args.overwrite, **engine_kwargs(args), **options)
    summary = {k: report[k] for k in ("read", "written", "rejected", "style")}
    print(json.dumps(summary, ensure_ascii=False))
    print(f"wrote {args.out} (report.json, rejects.jsonl)")
    return 0


def register_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="read an open dataset into a prepared directory",
                       description="Read SOURCE files into canonical conversations / preferences / documents "
                                   "with report.json, rejects.jsonl and the prompt style.")
    p.add_argument("source", metavar="SOURCE",
                   help="dolly, dolly-hhrlhf (DOLLY HH: the MPT-7B-Instruct mix), alpaca, longform, hh-rlhf, oasst1 (oasst2), sharegpt, json/jsonl/csv/parquet "
                        "(generic, with --columns), redpajama, llava (LLaVA-style image conversations), coco "
                        "(COCO caption JSON), or hub (PATH is a Hugging Face dataset id)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of a directory that already holds files (e.g. an earlier prepare)")
    p.add_argument("--mode", help="flatten mode: oasst1 all-threads|top-k|top1|preferences; hh-rlhf "
                                  "conversations+preferences|conversations|preferences|alpaca-libre; generic sft|documents; coco captions|images")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="malformed rows: stop with file:line (default) or record them in rejects.jsonl and go on")
    p.add_argument("--style", help="prompt style stored with the data (default: the source's own)")
    p.add_argument("--alpaca-libre", action="store_true", help="hh-rlhf: Alpaca Libre's exact conversion")
    p.add_argument("--lang", action="append", help="oasst1: keep only these languages (repeatable)")
    p.add_argument("--top-k", type=int, help="oasst1 --mode top-k: children kept per branch (default 2)")
    p.add_argument("--val-fraction", type=float, help="oasst1: fraction of trees in meta.split=validation (0.05)")
    p.add_argument("--category", action="append", help="dolly: keep only these categories (repeatable)")
    p.add_argument("--strip-citations", action="store_true", help="dolly: remove Wikipedia marks like [12]")
    p.add_argument("--columns", nargs="+", type=_kv, metavar="FIELD=COLUMN",
                   help="generic: map instruction/input/output/system/messages/text/id to the file's columns")
    p.add_argument("--meta-column", action="append", help="generic: columns to keep in meta")
    p.add_argument("--github-filters", action="store_true",
                   help="redpajama: RedPajama's GitHub-slice filters (max line 1000, mean line 100, alnum >= 0.25)")
    p.add_argument("--max-line-length", type=int)
    p.add_argument("--mean-line-length", type=float)
    p.add_argument("--min-alnum-fraction", type=float)
    p.add_argument("--image-root", help="llava, coco: the folder image file names are relative to "
                                        "(default: the folder of the JSON file)")
    p.add_argument("--as", dest="as_source", help="hub: which source reads the rows (e.g. dolly)")
    p.add_argument("--split", help="hub: dataset split (default train)")
    add_engine_args(p, workers_help=RAY_WORKERS)
    p.set_defaults(func=_prepare)


# -- dedup / mix / stats -------------------------------------------------------------------------------
def _dedup(args) -> int:
    from .dedup import dedup

    report = dedup(args.inputs, args.out, threshold=args.threshold, num_perm=args.num_perm, ngram=args.ngram,
                   exact=not args.no_exact, near=not args.no_near, seed=args.seed, shingle_hash=args.shingle_hash,
                   overwrite=args.overwrite, style=args.style, **engine_kwargs(args))
    print(json.dumps({k: report[k] for k in ("read", "written", "rejected", "clusters", "largest_cluster")}))
    return 0


def register_dedup(sub) -> None:
    p = sub.add_parser("dedup", help="remove exact and near duplicates (MinHash-LSH)")
    p.add_argument("inputs", nargs="+", metavar="DIR", help="prepared directories, deduplicated as one collection")
    p.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--threshold", type=float, default=0.87, help="Jaccard threshold (Pythia's dedup: 0.87)")
    p.add_argument("--num-perm", type=int, default=128)
    p.add_argument("--ngram", type=int, default=5, help="words per shingle")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--shingle-hash", choices=("fast", "sha1"), default="fast",
                   help="sha1 gives signatures bit-identical to datasketch's (slower)")
    p.add_argument("--no-exact", action="store_true")
    p.add_argument("--no-near", action="store_true")
    p.add_argument("--style", help=STYLE_HELP)
    add_engine_args(p, workers_help=RAY_WORKERS)
    p.set_defaults(func=_dedup)


def _mix(args) -> int:
    from .mix import mix

    report = mix(args.components, args.out, kind=args.kind, total=args.total, seed=args.seed,
                 allow_repeat=args.allow_repeat, overwrite=args.overwrite, style=args.style)
    print(json.dumps({"written": report["written"], "components": report["components"]}))
    return 0


def register_mix(sub) -> None:
    p = sub.add_parser("mix", help="blend prepared directories in exact proportions")
    p.add_argument("components", nargs="+", metavar="DIR:WEIGHT")
    p.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--kind", default="conversation", choices=("conversation", "preference", "document"))
    p.add_argument("--total", type=int, help="records in the mix (default: the most without repeats)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-repeat", action="store_true")
    p.add_argument("--style", help=STYLE_HELP)
    p.set_defaults(func=_mix)


def _stats(args) -> int:
    from .stats import stats

    _print(stats(args.dir, tokenizer=args.tokenizer, png=args.png))
    return 0


def register_stats(sub) -> None:
    p = sub.add_parser("stats", help="counts and a token length histogram of a prepared directory")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--tokenizer", help="directory with tokenizer.json (lengths in tokens; words otherwise)")
    p.add_argument("--png", help="histogram path (default DIR/length_histogram.png)")
    p.set_defaults(func=_stats)


# -- tokenize / batch (pretraining token shards) ----------------------------------------------------
def register_tokenize(sub) -> None:
    p = sub.add_parser("tokenize", help="documents -> sharded binary token stream for pretraining",
                       description="Tokenize documents (RedPajama-style JSONL, text files, prepared "
                                   "conversations) into memory-mapped shards with an index and a manifest. "
                                   "Resumable: run the same command again after a crash.")
    p.add_argument("inputs", nargs="+", metavar="DOCS", help="files or directories of .jsonl/.jsonl.gz/.txt")
    p.add_argument("--tokenizer", required=True, help="a directory with tokenizer.json (e.g. a checkpoint)")
    p.add_argument("--out", required=True, help="output directory: empty, or this command's own partial "
                                                "output to resume (anything else needs --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete what --out holds (another token directory, other files) and tokenize from scratch")
    p.add_argument("--docs-per-shard", type=int, default=10_000)
    p.add_argument("--workers", type=int, help="local: tokenizer processes (default 1); " + RAY_WORKERS)
    p.add_argument("--shuffle-seed", type=int, help="shuffle the document order first (Pythia's pre-shuffled stream)")
    add_engine_args(p)
    p.set_defaults(func=_tokenize)


def register_batch(sub) -> None:
    p = sub.add_parser("batch", help="show the samples a pretraining step trained on (Pythia's batch viewer)")
    p.add_argument("tokens", metavar="DIR", help="a token directory from `data tokenize`")
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True, help="the run's global batch (samples per step)")
    p.add_argument("--tokenizer", help="decode the samples with this tokenizer directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_batch)


def _tokenize(args) -> int:
    from .tokenize import tokenize_documents

    manifest = tokenize_documents(args.inputs, args.tokenizer, args.out, docs_per_shard=args.docs_per_shard,
                                  shuffle_seed=args.shuffle_seed, overwrite=args.overwrite, **engine_kwargs(args))
    print(f"{manifest['documents']:,} documents -> {manifest['total_tokens']:,} tokens in "
          f"{len(manifest['shards'])} shard(s) ({manifest['dtype']}) under {args.out}")
    return 0


def _batch(args) -> int:
    from .shards import describe_step

    tokenizer = None
    if args.tokenizer:
        from ..tokenizer import Tokenizer

        tokenizer = Tokenizer.from_dir(args.tokenizer)
    rows = describe_step(args.tokens, args.step, args.seq_len, args.batch_size, tokenizer=tokenizer)
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        head = f"sample {row['sample']} (stream offset {row['token_offset']})"
        body = row.get("text") if "text" in row else " ".join(map(str, row["tokens"][:32])) + " ..."
        print(f"{head}\n  {body!r}")
    return 0


# -- images (the synthetic image task suite) -----------------------------------------------------------
def _images(args) -> int:
    from .image_tasks import write_suite

    suite = write_suite(args.out, n=args.n, seed=args.seed, n_eval=args.eval, size=args.size,
                        families=tuple(args.family or ()) or None, overwrite=args.overwrite)
    print(f"wrote {suite['images']['train']} training and {suite['images']['eval']} held-out images "
          f"({suite['records']['train']} + {suite['records']['eval']} conversations) to {args.out}/train and "
          f"{args.out}/eval")
    return 0


from .episodes import register_episodes  # noqa: E402  (the Flamingo episodes sub-verb lives with its code)

def register_images(sub) -> None:
    from .image_tasks import FAMILIES

    p = sub.add_parser("images", help="write the built-in synthetic image suite (shapes, colors, counts, digits)",
                       description="Render synthetic images with captions, questions and answers (deterministic "
                                   "from --seed) into OUT/train and OUT/eval: prepared directories whose "
                                   "conversations carry image parts, plus OUT/suite.json.")
    p.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    p.add_argument("--n", type=int, default=2000, help="training images (default 2000)")
    p.add_argument("--eval", type=int, help="held-out images (default n/5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--family", action="append", choices=tuple(FAMILIES),
                   help="only these families (repeatable; default all)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_images)


SUBVERBS = [register_prepare, register_dedup, register_mix, register_stats, register_tokenize, register_batch,
            register_images, register_episodes]


def data_subparsers(subparsers):
    """Add the `data` verb and return its sub-verb parsers object (for more sub-verbs)."""
    parser = subparsers.add_parser("data", help="prepare, deduplicate, mix, inspect and tokenize training data")
    sub = parser.add_subparsers(dest="data_command", metavar="VERB")
    sub.required = True
    return sub


def register(subparsers) -> None:
    sub = data_subparsers(subparsers)
    for registrar in SUBVERBS:
        registrar(sub)
