"""The continuous-batching engine: batched decoding equals one-at-a-time greedy decoding, rows join
and leave between steps, n choices, seeds, stop strings, EOS, cancellation, the bounded queue."""
from __future__ import annotations

import queue
import threading
import time

import pytest
import torch

from openseason.errors import OpenseasonError
from openseason.generation.engine import Engine, QueueFull, Request
from openseason.generation.sampling import SamplingParams

from ..serve.conftest import EOS, tiny_model

PROMPTS = ["The quick brown", "add 2 and 3", "lazy dog jumps over the quick fox and", "Response: 5",
           "### Instruction:\nadd", "0123456789 + - *", "Below is an instruction that describes a task."]


@torch.no_grad()
def reference_greedy(model, ids: list[int], max_tokens: int, vocab: int) -> list[int]:
    """Plain greedy decoding without any cache: full forward pass over the whole sequence per token
    (over the tokenizer's `vocab` ids; the model's rows beyond it are padding)."""
    ids, out = list(ids), []
    for _ in range(max_tokens):
        token = int(model(torch.tensor([ids]))[0, -1, :vocab].argmax())
        if token == EOS:
            break
        out.append(token)
        ids.append(token)
    return out


class Collector:
    """Gathers one request's events (thread-safe) and waits for all its choices to finish."""

    def __init__(self, n: int = 1):
        self.n = n
        self.events = queue.Queue()
        self.finished = {}
        self.texts = {}

    def __call__(self, event):
        self.events.put(event)

    def wait(self, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while len(self.finished) < self.n:
            event = self.events.get(timeout=max(deadline - time.monotonic(), 0.01))
            assert event.kind != "error", event.text
            if event.kind == "text":
                self.texts[event.index] = self.texts.get(event.index, "") + event.text
            else:
                self.finished[event.index] = event
        return self


def wait_until(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def random_model():
    return tiny_model(eos_bias=0.0, seed=1)


def test_batched_greedy_equals_unbatched(random_model, tiny_tokenizer):
    """Requests arrive while others decode (joins), finish at different steps (leaves, cache trims),
    wait in the queue when the batch is full, and still produce exactly the one-at-a-time tokens."""
    prompts = [tiny_tokenizer.encode(p) for p in PROMPTS]
    budgets = [12, 4, 16, 8, 10, 2, 14]
    refs = [reference_greedy(random_model, p, b, tiny_tokenizer.vocab_size) for p, b in zip(prompts, budgets)]
    assert len({tuple(r) for r in refs}) == len(refs)  # the prompts really lead to different outputs
    engine = Engine(random_model, tiny_tokenizer, max_batch=4, max_queue=16)
    try:
        collectors = []
        for i, (p, b) in enumerate(zip(prompts, budgets)):
            c = Collector()
            engine.submit(Request(p, SamplingParams(max_new_tokens=b, temperature=0.0), c))
            collectors.append(c)
            if i % 2:
                time.sleep(0.02)  # let the batch decode a few steps before the next request joins
        for c, ref, b in zip(collectors, refs, budgets):
            done = c.wait().finished[0]
            # token_ids count every generated id, the EOS that ended a row included (as in usage)
            assert done.token_ids == (ref if len(ref) == b else ref + [EOS])
            assert done.finish_reason == ("length" if len(ref) == b else "stop")
            assert c.texts.get(0, "") == tiny_tokenizer.decode(ref, skip_special_tokens=False)
        assert engine.steps < sum(budgets)  # decode steps were shared between requests
    finally:
        engine.close()


def test_n_choices_share_one_prefill(random_model, tiny_tokenizer):
    ids = tiny_tokenizer.encode(PROMPTS[0])
    ref = reference_greedy(random_model, ids, 12, tiny_tokenizer.vocab_size)
    engine = Engine(random_model, tiny_tokenizer, max_batch=4)
    try:
        c = Collector(n=3)
        engine.submit(Request(ids, SamplingParams(max_new_tokens=12, temperature=0.0, n=3), c))
        c.wait()
        assert [c.finished[i].token_ids for i in range(3)] == [ref] * 3
        assert engine.prompt_tokens == len(ids)

        sampled = Collector(n=3)
        engine.submit(Request(ids, SamplingParams(max_new_tokens=12, temperature=1.0, seed=5, n=3), sampled))
        sampled.wait()
        outs = [sampled.finished[i].token_ids for i in range(3)]
        assert len({tuple(o) for o in outs}) > 1  # each choice samples with its own generator

        again = Collector(n=3)
        engine.submit(Request(ids, SamplingParams(max_new_tokens=12, temperature=1.0, seed=5, n=3), again))
        assert [again.wait().finished[i].token_ids for i in range(3)] == outs  # same seed, same text
    finally:
        engine.close()


def test_stop_string_and_eos(tiny_tokenizer):
    model = tiny_model(eos_bias=-100.0, seed=2)
    ids = tiny_tokenizer.encode(PROMPTS[1])
    full_ids = reference_greedy(model, ids, 20, tiny_tokenizer.vocab_size)
    full = tiny_tokenizer.decode(full_ids, skip_special_tokens=False)
    stop = full[10:14]
    expected = full[: full.index(stop)]
    engine = Engine(model, tiny_tokenizer)
    try:
        c = Collector()
        engine.submit(Request(ids, SamplingParams(max_new_tokens=20, temperature=0.0, stop=(stop,)), c))
        c.wait()
        assert c.finished[0].finish_reason == "stop"
        assert c.texts.get(0, "") == expected
    finally:
        engine.close()

    eos_model = tiny_model(eos_bias=100.0)
    engine = Engine(eos_model, tiny_tokenizer)
    try:
        c = Collector()
        engine.submit(Request(ids, SamplingParams(max_new_tokens=30, temperature=0.7, seed=0), c))
        done = c.wait().finished[0]
        assert (done.finish_reason, done.token_ids, c.texts.get(0, "")) == ("stop", [EOS], "")
    finally:
        engine.close()


def test_presence_penalty_changes_greedy_choice(tiny_tokenizer):
    model = tiny_model(eos_bias=-100.0, seed=3)
    ids = tiny_tokenizer.encode("dododo")
    engine = Engine(model, tiny_tokenizer)
    try:
        plain, penalized = Collector(), Collector()
        engine.submit(Request(ids, SamplingParams(max_new_tokens=40, temperature=0.0), plain))
        engine.submit(Request(ids, SamplingParams(max_new_tokens=40, temperature=0.0, presence_penalty=2.0,
                                                 frequency_penalty=2.0), penalized))
        a, b = plain.wait().finished[0].token_ids, penalized.wait().finished[0].token_ids
        assert len(set(b)) > len(set(a))  # penalties push away from tokens already generated
    finally:
        engine.close()


def test_cancel_leaves_the_batch_and_queue_is_bounded(tiny_tokenizer):
    model = tiny_model(eos_bias=-100.0)
    ids = tiny_tokenizer.encode(PROMPTS[0])
    engine = Engine(model, tiny_tokenizer, max_batch=1, max_queue=2)
    try:
        first = Collector()
        long_request = engine.submit(Request(ids, SamplingParams(max_new_tokens=1000, temperature=0.0), first))
        first.events.get(timeout=30)        # it is decoding
        waiting = [engine.submit(Request(ids, SamplingParams(max_new_tokens=5, temperature=0.0), Collector()))
                   for _ in range(2)]       # the batch is full: these two wait
        assert engine.queue_length == 2
        with pytest.raises(QueueFull):
            engine.submit(Request(ids, SamplingParams(max_new_tokens=5, temperature=0.0), Collector()))
        assert engine.metrics()["requests_rejected"] == 1
        long_request.cancel()
        waiting[0].cancel()                  # cancelled while still queued: never runs
        done = Collector()
        engine.submit(Request(ids, SamplingParams(max_new_tokens=5, temperature=0.0), done))
        assert done.wait().finished[0].completion_tokens == 5
        wait_until(lambda: engine.running == 0 and engine.queue_length == 0)
        metrics = engine.metrics()
        assert metrics["requests_cancelled"] == 2
        assert metrics["tokens_generated_total"] < 1000  # the long request stopped early
        assert all(e.kind != "finish" for e in list(first.events.queue))
    finally:
        engine.close()


def test_engine_rejects_requests_beyond_the_context(tiny_tokenizer):
    engine = Engine(tiny_model(), tiny_tokenizer)
    try:
        with pytest.raises(OpenseasonError, match="context window"):
            engine.submit(Request([5] * 1000, SamplingParams(max_new_tokens=100), Collector()))
    finally:
        engine.close()
