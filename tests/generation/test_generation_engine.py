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


class _FailOnce:
    """Wraps a model: the forward call whose input has `length` tokens per row raises once."""

    def __init__(self, model, *, when):
        self.model, self.when, self.fired = model, when, False
        self.config, self.embed = model.config, model.embed

    def eval(self):
        return self

    def parameters(self):
        return self.model.parameters()

    def new_kv_cache(self, *args, **kwargs):
        return self.model.new_kv_cache(*args, **kwargs)

    def __call__(self, ids, **kwargs):
        if not self.fired and self.when(ids):
            self.fired = True
            raise RuntimeError("injected fault")
        return self.model(ids, **kwargs)


def test_a_failed_prefill_fails_only_its_request(tiny_tokenizer):
    """A fault while prefilling new requests reaches those requests as an error event; the running
    batch goes on untouched and later requests are served (issue: one request stopped the engine)."""
    model = tiny_model(eos_bias=-100.0)
    ids = tiny_tokenizer.encode(PROMPTS[0])
    bad_ids = tiny_tokenizer.encode(PROMPTS[2])
    faulty = _FailOnce(model, when=lambda x: x.size(1) == len(bad_ids))
    engine = Engine(faulty, tiny_tokenizer, max_batch=4)
    try:
        running = Collector()
        engine.submit(Request(ids, SamplingParams(max_new_tokens=40), running))
        running.events.get(timeout=30)                      # it is decoding
        failed = queue.Queue()
        engine.submit(Request(bad_ids, SamplingParams(max_new_tokens=5), failed.put))
        event = failed.get(timeout=30)
        assert event.kind == "error" and "injected fault" in event.text
        done = running.wait().finished[0]
        assert done.token_ids == reference_greedy(model, ids, 40, tiny_tokenizer.vocab_size)
        after = Collector()
        engine.submit(Request(bad_ids, SamplingParams(max_new_tokens=5), after))
        assert after.wait().finished[0].completion_tokens == 5
        assert engine.error is None and engine.metrics()["healthy"] and engine.requests_failed == 1
    finally:
        engine.close()


def test_a_failed_decode_step_fails_its_sequences_and_the_engine_goes_on(tiny_tokenizer):
    model = tiny_model(eos_bias=-100.0)
    ids = tiny_tokenizer.encode(PROMPTS[1])
    faulty = _FailOnce(model, when=lambda x: x.size(1) == 1)   # the first decode step
    engine = Engine(faulty, tiny_tokenizer, max_batch=4)
    try:
        failed = queue.Queue()
        engine.submit(Request(ids, SamplingParams(max_new_tokens=8, n=2), failed.put))
        errors = []                                   # after the first tokens' text, one error per choice
        while len(errors) < 2:
            event = failed.get(timeout=30)
            if event.kind == "error":
                errors.append(event)
        assert {e.index for e in errors} == {0, 1} and all("injected fault" in e.text for e in errors)
        ok = Collector()
        engine.submit(Request(ids, SamplingParams(max_new_tokens=8), ok))
        assert ok.wait().finished[0].token_ids == reference_greedy(model, ids, 8, tiny_tokenizer.vocab_size)
        assert engine.error is None and engine.running == 0
    finally:
        engine.close()


def test_hostile_sampling_numbers_never_reach_the_engine():
    """The numbers that stopped the old server are refused before any work: seed beyond uint64,
    seed + n past it, and a temperature so small the softmax turns into NaN."""
    from openseason.errors import OpenseasonError
    from openseason.generation.sampling import MAX_SEED, MIN_TEMPERATURE

    for bad in (dict(seed=2**64), dict(seed=MAX_SEED, n=2), dict(seed=-1), dict(temperature=1e-300),
                dict(temperature=float("nan")), dict(temperature=True), dict(n=0), dict(logprobs=21),
                dict(top_p=0.0), dict(max_new_tokens=0), dict(presence_penalty=float("inf"))):
        with pytest.raises(OpenseasonError, match="bad sampling parameters"):
            SamplingParams(**bad)
    assert SamplingParams(seed=MAX_SEED).seed == MAX_SEED
    assert SamplingParams(seed=MAX_SEED - 1, n=2, temperature=MIN_TEMPERATURE).n == 2


def test_logprobs_are_the_raw_distribution(random_model, tiny_tokenizer):
    ids = tiny_tokenizer.encode(PROMPTS[0])
    from openseason.generation.engine import generate_ids

    [c] = generate_ids(random_model, [ids], SamplingParams(max_new_tokens=4, logprobs=3), tokenizer=tiny_tokenizer)
    with torch.no_grad():
        logits = random_model(torch.tensor([ids + c.token_ids[:1]]))[0, -2:, :tiny_tokenizer.vocab_size]
    logp = torch.log_softmax(logits.float(), -1)
    assert c.logprobs[0] == pytest.approx(float(logp[0, c.token_ids[0]]), abs=1e-4)
    assert [t for t, _ in c.top_logprobs[1]] == torch.topk(logp[1], 3).indices.tolist()


def test_chunked_prefill_equals_one_piece_and_keeps_others_streaming(random_model, tiny_tokenizer):
    """A prompt longer than prefill_tokens is prefilled a chunk at a time between decode steps: its
    tokens equal a one-piece prefill, and a request already decoding keeps getting tokens meanwhile."""
    long_ids = (tiny_tokenizer.encode(" ".join(PROMPTS)) * 4)[:200]
    short_ids = tiny_tokenizer.encode(PROMPTS[0])
    ref_long = reference_greedy(random_model, long_ids, 6, tiny_tokenizer.vocab_size)
    order = []
    lock = threading.Lock()

    def tagged(tag, collector):
        def emit(event):
            with lock:
                order.append((tag, event.kind))
            collector(event)
        return emit

    engine = Engine(random_model, tiny_tokenizer, max_batch=4, prefill_tokens=8)
    try:
        running, long_done = Collector(), Collector()
        # logprobs make every token an event, also those whose text is held back (UTF-8, stop prefix)
        engine.submit(Request(short_ids, SamplingParams(max_new_tokens=60, ignore_eos=True, logprobs=0),
                              tagged("a", running)))
        running.events.get(timeout=30)
        engine.submit(Request(long_ids, SamplingParams(max_new_tokens=6), tagged("b", long_done)))
        done = long_done.wait().finished[0]
        assert done.token_ids[:len(ref_long)] == ref_long[:len(done.token_ids)]
        assert running.wait().finished[0].completion_tokens == 60
    finally:
        engine.close()
    first_b = next(i for i, (tag, _) in enumerate(order) if tag == "b")
    # 200 tokens in chunks of 8: 25 chunks, each followed by a decode step of the running request
    assert sum(1 for tag, _ in order[:first_b] if tag == "a") >= 20
