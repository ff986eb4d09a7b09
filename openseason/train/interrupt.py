"""Ctrl-C and SIGTERM during training: finish the step, save a checkpoint, stop.

While `train()` runs, SIGINT and SIGTERM only raise a flag; the loop checks it after each optimizer
step, writes OUT/step-XXXXXX at that step (the usual atomic checkpoint, optimizer included) and
raises `TrainingInterrupted`, which the CLI turns into exit status 130 (SIGINT) or 143 (SIGTERM).
`--resume auto` then continues exactly where the run stopped. A second signal while the first is
being handled stops at once (KeyboardInterrupt), like Python's default; the writes are atomic, so
that loses at most the steps since the last checkpoint.

Under torchrun every rank must stop at the same step (the checkpoint is written by all of them):
the flag is summed across processes after each step.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving `checkpoint` at `step`; `exit_status` is 128 + signal."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[Path]):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_status = 128 + int(signum)
        name = signal.Signals(signum).name
        saved = (f"saved {checkpoint}; continue with --resume auto" if checkpoint is not None
                 else "nothing was trained yet, so nothing was saved")
        super().__init__(f"{name} at step {step}: {saved}")


class StopFlag:
    """Set by the signal handler; read by the loop between steps."""

    def __init__(self):
        self.signum: Optional[int] = None

    def requested(self, distributed=None) -> bool:
        """True when this process (or, under torchrun, any process) got a stop signal."""
        local = self.signum is not None
        if distributed is not None and distributed.active:
            return distributed.sum(1 if local else 0) > 0
        return local


@contextlib.contextmanager
def stop_on_signals(enabled: bool = True) -> Iterator[StopFlag]:
    """Catch SIGINT and SIGTERM for the duration of the block (main thread only; elsewhere Python
    cannot install handlers, and the flag simply never rises). The previous handlers come back after."""
    flag = StopFlag()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.signum is not None:  # the second signal: stop now
            raise KeyboardInterrupt
        flag.signum = signum
        print(f"\nopenseason: {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
              "(send it again to stop at once without saving)", file=sys.stderr, flush=True)

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
