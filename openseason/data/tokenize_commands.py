"""`openseason data tokenize` and `openseason data batch`: pretraining token shards and what a step saw."""
from __future__ import annotations

import json


def register_data(sub) -> None:
    p = sub.add_parser("tokenize", help="documents -> sharded binary token stream for pretraining",
                       description="Tokenize documents (RedPajama-style JSONL, text files, prepared "
                                   "conversations) into memory-mapped shards with an index and a manifest. "
                                   "Resumable: run the same command again after a crash.")
    p.add_argument("inputs", nargs="+", metavar="DOCS", help="files or directories of .jsonl/.jsonl.gz/.txt")
    p.add_argument("--tokenizer", required=True, help="a directory with tokenizer.json (e.g. a checkpoint)")
    p.add_argument("--out", required=True)
    p.add_argument("--docs-per-shard", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    p.add_argument("--shuffle-seed", type=int, help="shuffle the document order first (Pythia's pre-shuffled stream)")
    p.set_defaults(func=_tokenize)

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
                                  workers=args.workers, shuffle_seed=args.shuffle_seed)
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
