"""Which engine runs a data stage: "local" (this process, or a process pool for tokenize) or "ray".

One place checks the engine options, for the Python API and the CLI alike: the Ray-only options
(`address`, `block_bytes`, and `workers` for stages that have no local pool) given to the local
engine are an error, never silently ignored. Nothing here imports Ray.
"""
from __future__ import annotations

from typing import Optional

from ..errors import OpenseasonError

ENGINES = ("local", "ray")


def engine_for(engine: str, *, workers: Optional[int] = None, address: Optional[str] = None,
               block_bytes: Optional[int] = None, local_workers: bool = False) -> str:
    """`engine` after checking that the options given apply to it. `local_workers`: the stage's local
    engine takes `workers` too (tokenize's process pool)."""
    if engine not in ENGINES:
        raise OpenseasonError(f"unknown engine {engine!r}", hint=f"choose one of: {', '.join(ENGINES)}")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise OpenseasonError(f"--workers must be a whole number >= 1, not {workers!r}")
    if block_bytes is not None and (not isinstance(block_bytes, int) or block_bytes < 1):
        raise OpenseasonError(f"--block-bytes must be a whole number >= 1, not {block_bytes!r}")
    if engine == "local":
        given = [name for name, value in (("--address", address), ("--block-bytes", block_bytes),
                                          ("--workers", None if local_workers else workers)) if value is not None]
        if given:
            raise OpenseasonError(f"{', '.join(given)} only apply with --engine ray",
                                  hint="add --engine ray, or leave them out")
    return engine


def add_engine_args(parser, workers_help: Optional[str] = None) -> None:
    """--engine, --address, --block-bytes (and --workers unless the verb has its own) for a data verb."""
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: this machine (default); ray: a Ray cluster, same outputs")
    parser.add_argument("--address", help="ray: 'auto' (the running cluster, or a local one when none runs; "
                                          "the default) or HEAD_HOST:PORT")
    parser.add_argument("--block-bytes", type=int,
                        help="ray: bytes of input per task (files are split at line starts; default 64 MiB)")
    if workers_help is not None:
        parser.add_argument("--workers", type=int, help=workers_help)


def engine_kwargs(args) -> dict:
    return {"engine": args.engine, "address": args.address, "block_bytes": args.block_bytes, "workers": args.workers}
