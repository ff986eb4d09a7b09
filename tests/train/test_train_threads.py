"""The thread governor keeps the faster of 1 and N threads, measured step by step (synthetic step times
here: the quickstart's timing on a real busy machine is in BENCHMARKS.md, never asserted in a test)."""
from __future__ import annotations

import pytest
import torch

from openseason.train.threads import GOVERNED_BELOW, ThreadGovernor, governor_for


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def drive(governor: ThreadGovernor, steps: int, ms: dict[int, float], rows=None) -> list[int]:
    """Run `steps` fake steps, each taking ms[threads in use]; returns the thread count of each step."""
    now = [0.0]
    governor.timer = lambda: now[0]
    used = []
    governor(0, {})  # the loop's first callback only starts the clock
    for step in range(1, steps + 1):
        threads = torch.get_num_threads()
        used.append(threads)
        now[0] += ms[threads] / 1000
        governor(step, (rows or {}).get(step, {}))
    return used


def test_idle_machine_moves_to_all_cores():
    governor = ThreadGovernor(many=2, every=50, verbose=False)
    used = drive(governor, 30, {1: 100.0, 2: 60.0})
    assert used[:4] == [1] * 4 and used[4:] == [2] * 26 and governor.current == 2  # tried after 4 steps
    assert governor.history[0]["switched"] and governor.history[0]["ms_per_step"] == {"1": 100.0, "2": 60.0}


def test_busy_core_stays_on_one_thread_and_tries_less_often():
    governor = ThreadGovernor(many=2, every=50, verbose=False)
    used = drive(governor, 600, {1: 100.0, 2: 1500.0})
    assert used.count(2) == len(governor.history)  # each try is abandoned after its first slow step
    # tried after 4 steps, then 100 and 200 steps later (doubling, capped at 4 x every)
    assert [h["step"] for h in governor.history] == [5, 106, 307, 508]
    assert not any(h["switched"] for h in governor.history) and governor.current == 1


def test_a_machine_that_gets_busy_goes_back_to_one_thread():
    governor = ThreadGovernor(many=2, every=20, verbose=False)
    now = [0.0]
    governor.timer = lambda: now[0]
    governor(0, {})
    for step in range(1, 80):
        slow_peer = step > 30  # another process takes a core from step 31 on
        ms = {1: 100.0, 2: 1200.0 if slow_peer else 60.0}[torch.get_num_threads()]
        now[0] += ms / 1000
        governor(step, {})
    assert governor.history[0]["tried"] == 2 and governor.history[0]["switched"]  # idle at first
    assert governor.current == 1 and governor.history[-1] == {**governor.history[-1], "tried": 1, "switched": True}


def test_validation_steps_are_not_measured():
    governor = ThreadGovernor(many=2, every=50, verbose=False)
    rows = {2: {"val_loss": "1.0"}, 3: {"val_loss": "1.0"}}
    drive(governor, 3, {1: 100.0, 2: 60.0}, rows)
    assert governor.recent == [0.1]  # step 1 only starts the clock's second reading; 2 and 3 evaluate


def test_only_small_models_are_governed(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert governor_for(900_000, verbose=False) is not None
    assert governor_for(GOVERNED_BELOW, verbose=False) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert governor_for(900_000, verbose=False) is None  # one core: nothing to choose


def test_a_second_run_is_not_timed_from_the_first_runs_last_step():
    governor = ThreadGovernor(many=2, every=50, verbose=False)
    drive(governor, 20, {1: 100.0, 2: 300.0})  # pretraining: 2 threads lost at step 5, next try at step 105
    now = governor.timer()
    governor.timer = lambda: now + 30.0        # evaluation and loading between the two runs
    governor(1, {})                            # finetuning's step 1
    assert max(governor.recent) == pytest.approx(0.1) and governor.next_probe == 105 - 20 + 1
