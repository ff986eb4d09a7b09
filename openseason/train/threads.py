"""How many intra-op threads a small model trains with on a CPU someone else may be using.

A tiny model (the quickstart's has 888K parameters) does many small matmuls. Each is split over
torch's worker threads, which spin waiting for one another; when another process holds one of the
cores, the thread that lost its core is descheduled and every matmul waits for it: one shared-machine
quickstart took 42 minutes instead of 3. One thread never waits for a peer, but on an idle machine
it leaves the second core unused.

So the choice is measured, not guessed: `ThreadGovernor` is a training-loop callback that starts on
one thread, times its steps, tries all cores after a few steps and then again every `every` steps
(a few steps, abandoned at the first clearly slower one; the interval doubles while the other count
keeps losing, so a busy machine pays little for the tries) and keeps whichever is faster. Models at or above
`GOVERNED_BELOW` parameters get torch's default: their matmuls are big enough for every core.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Optional

import torch

GOVERNED_BELOW = 20_000_000  # parameters; above this every matmul is large enough to use all cores well


def default_threads() -> int:
    """The thread count torch would use here (OMP_NUM_THREADS if set, else the usable cores)."""
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class ThreadGovernor:
    """callback(step, row) for `train()`: keeps the faster of 1 and `many` threads, re-measured as
    the machine's load changes. `choices()` and `history` say what it did."""

    def __init__(self, many: Optional[int] = None, every: int = 150, probe_steps: int = 4, verbose: bool = True,
                 timer=time.perf_counter):
        self.many = many or default_threads()
        self.timer = timer
        self.every, self.probe_steps, self.verbose = every, probe_steps, verbose
        self.current = 1                       # never waits for a descheduled peer
        self.recent: list[float] = []          # seconds per step on `current`
        self.probe: Optional[dict] = None      # {"threads", "times"} while trying the other count
        self.next_probe, self.interval = 4, every
        self.last_time: Optional[float] = None
        self.last_step = 0
        self.history: list[dict] = []
        torch.set_num_threads(self.current)

    @property
    def active(self) -> bool:
        return self.many > 1

    def step_seconds(self) -> Optional[float]:
        """Median seconds per step on the current thread count (None until measured)."""
        return statistics.median(self.recent[-8:]) if self.recent else None

    def __call__(self, step: int, row: dict) -> None:
        now = self.timer()
        seconds = None if self.last_time is None else now - self.last_time
        self.last_time = now
        if step <= self.last_step:  # a new run (the quickstart's finetuning after its pretraining)
            self.next_probe += step - self.last_step
            seconds = None          # the time since the last run's last step is no step at all
        self.last_step = step
        # steps with a validation pass or a sample are not comparable with the others
        if seconds is None or row.get("val_loss") not in (None, "") or not self.active:
            return
        if self.probe is None:
            self.recent.append(seconds)
            if len(self.recent) >= 3 and step >= self.next_probe:
                self._start_probe()
            return
        self.probe["times"].append(seconds)
        reference = self.step_seconds()
        if seconds > 1.5 * reference or len(self.probe["times"]) >= self.probe_steps:
            self._finish_probe(step, reference)

    def _start_probe(self) -> None:
        other = 1 if self.current != 1 else self.many
        self.probe = {"threads": other, "times": []}
        torch.set_num_threads(other)

    def _finish_probe(self, step: int, reference: float) -> None:
        other, times = self.probe["threads"], self.probe["times"]
        self.probe = None
        measured = statistics.median(times)
        switch = measured < 0.9 * reference
        self.history.append({"step": step, "tried": other, "switched": switch,
                             "ms_per_step": {str(self.current): round(1000 * reference, 1),
                                             str(other): round(1000 * measured, 1)}})
        if switch:
            if self.verbose:
                print(f"openseason: training on {other} thread(s) now ({1000 * measured:.0f} ms/step against "
                      f"{1000 * reference:.0f} on {self.current})", file=sys.stderr, flush=True)
            self.current, self.recent, self.interval = other, times, self.every
        else:  # the other count lost again: try it less often
            self.interval = min(4 * self.every, 2 * self.interval)
        self.next_probe = step + self.interval
        torch.set_num_threads(self.current)


def governor_for(n_parameters: int, verbose: bool = True) -> Optional[ThreadGovernor]:
    """A ThreadGovernor for a model this small on a machine with more than one core, else None."""
    if n_parameters >= GOVERNED_BELOW or default_threads() <= 1:
        return None
    return ThreadGovernor(verbose=verbose)
