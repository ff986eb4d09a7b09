"""One writer per run directory: the lock, the refusal of an earlier run, and `--overwrite`.

`finetune` and `pretrain` hold the run directory's lock (`fileio.lock_directory`) for the whole run,
so a second run into the same directory stops at once with the holder's PID. A directory that
already holds something is refused unless the run resumes (`--resume auto` or a step directory) or
`--overwrite` clears it first.

Clearing is crash-safe: the old entries are moved into OUT/.overwrite-trash (one rename each) and the
trash is then deleted. The trash folder is created before the first move and removed after the
last, so while it exists an overwrite is under way; the next run into the directory (whatever its
flags) finishes that overwrite before looking at anything, so `--resume auto` never picks up a
step-XXXXXX left behind by a half-done overwrite.

Under torchrun only rank 0 takes the lock and checks or clears the directory; the other ranks wait
for its verdict (one all-reduce) and stop with an error too when it refuses.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator, Optional

from ..errors import ConfigError, OpenseasonError
from ..fileio import foreign_entries, fsync_dir, io_error, lock_directory

TRASH = ".overwrite-trash"


def clear_run_dir(out: str | os.PathLike) -> list[str]:
    """Remove everything but the lock from `out` (the caller holds the lock); returns the names removed."""
    out = Path(out)
    names = foreign_entries(out, ignore=(TRASH,))
    trash = out / TRASH
    if not names and not trash.exists():
        return []
    trash.mkdir(exist_ok=True)
    fsync_dir(out)  # the trash exists (the overwrite is under way) before anything moves into it
    for name in names:
        target = trash / name
        if target.exists():  # the same name from an earlier interrupted overwrite
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
        os.replace(out / name, target)
    fsync_dir(out)
    shutil.rmtree(trash)
    fsync_dir(out)
    return names


RESUME_HINT = ("continue that run with --resume auto, start over with --overwrite (deletes its checkpoints and "
               "logs), or choose a new --out")


def _claim(out: Path, resume: Optional[str | os.PathLike], overwrite: bool, hint: str) -> None:
    if (out / TRASH).exists():
        print(f"openseason: finishing an interrupted --overwrite of {out}", file=sys.stderr)
        clear_run_dir(out)
    if overwrite:
        clear_run_dir(out)
        return
    if resume:
        return
    names = foreign_entries(out, ignore=(TRASH,))
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise OpenseasonError(f"run directory is not empty ({shown})", where=str(out), hint=hint)


@contextlib.contextmanager
def claim_run_dir(out: str | os.PathLike, *, resume: Optional[str | os.PathLike] = None, overwrite: bool = False,
                  distributed=None, hint: str = RESUME_HINT) -> Iterator[Path]:
    """Hold `out`'s lock while the block runs, after refusing (or, with `overwrite`, clearing) a
    directory that holds an earlier run. `distributed` is the run's DistributedRun: only its rank 0
    touches the directory, the other ranks learn the outcome from it. `hint` goes with the refusal."""
    out = Path(out)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other",
                          hint="--resume continues the run in --out; --overwrite deletes it and starts over")
    main = distributed is None or distributed.is_main
    with contextlib.ExitStack() as stack:
        error: Optional[OpenseasonError] = None
        if main:
            try:
                stack.enter_context(lock_directory(out))
                _claim(out, resume, overwrite, hint)
            except OpenseasonError as exc:
                error = exc
            except OSError as exc:
                error = io_error(exc, out)
        if distributed is not None and distributed.active:
            refused = distributed.sum(1 if error is not None else 0)
            if error is None and refused:
                raise OpenseasonError("rank 0 could not take the run directory (see its error)", where=str(out))
        if error is not None:
            raise error
        yield out
