"""The one-row decode step compiled ahead of time (generation.speed.AheadOfTimeStep): eager's tokens,
logits and cache writes, the model's own weights (an in-place update is seen, a replaced one drops the
step), the fallbacks to torch.compile's graph, and what happens when it cannot be built. Compiling
costs seconds, so one compiled model serves the file; the test that changes it comes last."""
from __future__ import annotations

import copy
import os
import time
import warnings

import pytest
import torch

from openseason import LLM
from openseason.generation import SamplingParams, compile_decoding, generate_ids
from openseason.generation import speed
from openseason.generation.speed import AheadOfTimeStep, ahead_of_time_steps, model_fingerprint

PROMPT = [5, 6, 7, 8, 9, 10, 11]


@pytest.fixture(scope="module")
def compiled(neox_pair):
    return LLM.load(neox_pair[1], device="cpu", compile=True)


def _count_calls(step: AheadOfTimeStep) -> list[int]:
    calls, run = [0], step.run

    def counted(args):
        calls[0] += 1
        return run(args)
    step.run = counted
    return calls


def test_one_row_steps_run_ahead_of_time_with_eager_tokens(llm, compiled):
    step = compiled.model._ahead_of_time_step
    assert isinstance(step, AheadOfTimeStep)
    calls = _count_calls(step)
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    want = generate_ids(llm.model, [PROMPT], params)[0].token_ids
    assert generate_ids(compiled.model, [PROMPT], params)[0].token_ids == want
    assert calls[0] == 23                    # the first token comes from the prefill
    # a one-token prompt: its first step reads a cache of length 1
    calls[0] = 0
    assert (generate_ids(compiled.model, [[42]], params)[0].token_ids
            == generate_ids(llm.model, [[42]], params)[0].token_ids)
    assert calls[0] == 23
    # two rows (and the padded path) are not one-row steps
    calls[0] = 0
    two = [[5, 6, 7], [8, 9]]
    assert ([c.token_ids for c in generate_ids(compiled.model, two, params)]
            == [c.token_ids for c in generate_ids(llm.model, two, params)])
    assert calls[0] == 0


def test_steps_off_the_main_thread_run_on_the_kernels_team_with_eager_tokens(llm, compiled):
    """The server decodes in an engine thread: there a step hands its products to the kernels' own
    team (set around each step, put back after it) and gives the tokens it gives on the main thread."""
    import threading

    steps = [compiled.model._ahead_of_time_step, compiled.model._ahead_of_time_batch_step]
    teams = [step.kernel_team for step in steps]
    if None in teams:
        pytest.skip("no CPU kernels here")
    seen = []
    for step, team in zip(steps, teams):
        def watched(threads, team=team):
            seen.append((threading.current_thread() is threading.main_thread(), threads))
            return team(threads)
        step.kernel_team = watched
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    prompts = [[PROMPT], [[5, 6, 7], [8, 9], [10, 11, 12]]]
    before = torch.get_num_threads()
    torch.set_num_threads(2)   # a team of two, whatever the session's thread count
    try:
        want = [[c.token_ids for c in generate_ids(llm.model, p, params)] for p in prompts]
        assert [[c.token_ids for c in generate_ids(compiled.model, p, params)] for p in prompts] == want
        assert seen == []                       # on the main thread: torch's threads
        got = []
        worker = threading.Thread(target=lambda: got.extend(
            [c.token_ids for c in generate_ids(compiled.model, p, params)] for p in prompts))
        worker.start()
        worker.join(120)
        assert got == want
    finally:
        for step, team in zip(steps, teams):
            step.kernel_team = team
        torch.set_num_threads(before)
    # around each of the 11 steps of each prompt: the team's size, then the old value back
    assert seen == [(False, 2), (False, 0)] * 22


def test_batches_run_ahead_of_time_with_eager_tokens(llm, compiled):
    """Two or more rows go through the batch step: rows of one length (a mask of ones), rows of
    different lengths (left padding masked, positions per row), n choices of one prompt, rows asking
    for logprobs or a penalty next to greedy ones; every one gives eager's tokens."""
    batch_step, one_row = compiled.model._ahead_of_time_batch_step, compiled.model._ahead_of_time_step
    assert isinstance(batch_step, AheadOfTimeStep) and batch_step.batch and not one_row.batch
    calls, single = _count_calls(batch_step), _count_calls(one_row)
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    for prompts in ([[5, 6, 7], [8, 9, 10]], [[5, 6, 7, 8, 9], [8, 9], [11, 12, 13]], [[42], PROMPT]):
        calls[0] = 0
        assert ([c.token_ids for c in generate_ids(compiled.model, prompts, params)]
                == [c.token_ids for c in generate_ids(llm.model, prompts, params)])
        assert calls[0] == 15 and single[0] == 0
    for extra in (dict(n=3), dict(logprobs=2), dict(repetition_penalty=1.5), dict(temperature=1.0, seed=4)):
        changed = SamplingParams(max_new_tokens=16, ignore_eos=True, **extra)
        calls[0] = 0
        ours = generate_ids(compiled.model, [[5, 6, 7], [8, 9]], changed)
        eager = generate_ids(llm.model, [[5, 6, 7], [8, 9]], changed)
        assert [c.token_ids for c in ours] == [c.token_ids for c in eager], extra
        assert calls[0] == 15
        if changed.logprobs:
            torch.testing.assert_close(torch.tensor([c.logprobs for c in ours]),
                                       torch.tensor([c.logprobs for c in eager]), atol=1e-4, rtol=1e-4)
    # the step's greedy choices stop at the tokenizer's vocabulary, as the engine's argmax does
    free = [c.token_ids for c in generate_ids(llm.model, [[5, 6, 7], [8, 9]], params)]
    narrow = _NarrowVocabulary(llm.tokenizer, max(max(t) for t in free))
    want = [c.token_ids for c in generate_ids(llm.model, [[5, 6, 7], [8, 9]], params, tokenizer=narrow)]
    assert want != free
    calls[0] = 0
    assert [c.token_ids for c in generate_ids(compiled.model, [[5, 6, 7], [8, 9]], params, tokenizer=narrow)] == want
    assert calls[0] == 15


def test_more_rows_than_the_batch_step_was_traced_for_go_through_torch_compile(llm, compiled, monkeypatch):
    monkeypatch.setattr(speed, "MAX_BATCH_STEP_ROWS", 2)
    calls = _count_calls(compiled.model._ahead_of_time_batch_step)
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    three = [[5, 6, 7], [8, 9], [10]]
    assert ([c.token_ids for c in generate_ids(compiled.model, three, params)]
            == [c.token_ids for c in generate_ids(llm.model, three, params)])
    assert calls[0] == 0


def test_a_batch_that_shrinks_to_one_row_moves_to_the_one_row_step(llm, compiled):
    batch_step, one_row = compiled.model._ahead_of_time_batch_step, compiled.model._ahead_of_time_step
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    first, second = (c.token_ids for c in generate_ids(llm.model, [[5, 6, 7], [8, 9]], params))
    # a token the first row makes early and the second row never makes: stopping on it ends the first row
    stop = next(t for i, t in enumerate(first[2:10], 2) if t not in first[:i] and t not in second)
    ending = SamplingParams(max_new_tokens=16, ignore_eos=True, stop_token_ids=(stop,))
    calls, single = _count_calls(batch_step), _count_calls(one_row)
    ours = generate_ids(compiled.model, [[5, 6, 7], [8, 9]], ending)
    eager = generate_ids(llm.model, [[5, 6, 7], [8, 9]], ending)
    assert [c.token_ids for c in ours] == [c.token_ids for c in eager]
    assert len(ours[0].token_ids) < 16 == len(ours[1].token_ids)
    assert calls[0] == len(ours[0].token_ids) - 1 and single[0] == 16 - len(ours[0].token_ids)


class _NarrowVocabulary:
    """The loaded tokenizer, reporting fewer ids than the model has output rows (a padded vocabulary)."""

    def __init__(self, tokenizer, size: int):
        self._tokenizer, self.vocab_size = tokenizer, size

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_rows_the_steps_greedy_choice_does_not_serve_still_run_ahead_of_time(llm, compiled):
    """Greedy rows take the step's own argmax, fed back as the next input; it must stop at the
    tokenizer's vocabulary as the engine's argmax does. Penalized rows and rows asking for logprobs
    choose from the step's logits in Python. All give eager's tokens through the library."""
    step = compiled.model._ahead_of_time_step
    calls = _count_calls(step)
    greedy = SamplingParams(max_new_tokens=24, ignore_eos=True)
    free = generate_ids(llm.model, [PROMPT], greedy)[0].token_ids
    limit = max(free)                                 # the largest id chosen freely is now out of range
    narrow = _NarrowVocabulary(llm.tokenizer, limit)
    want = generate_ids(llm.model, [PROMPT], greedy, tokenizer=narrow)[0].token_ids
    assert max(want) < limit and want != free
    calls[0] = 0
    assert generate_ids(compiled.model, [PROMPT], greedy, tokenizer=narrow)[0].token_ids == want
    assert calls[0] == 23
    for params in (SamplingParams(max_new_tokens=24, ignore_eos=True, repetition_penalty=1.5),
                   SamplingParams(max_new_tokens=24, ignore_eos=True, logprobs=2)):
        calls[0] = 0
        ours = generate_ids(compiled.model, [PROMPT], params)[0]
        eager = generate_ids(llm.model, [PROMPT], params)[0]
        assert ours.token_ids == eager.token_ids and calls[0] == 23
        if params.logprobs:
            torch.testing.assert_close(torch.tensor(ours.logprobs), torch.tensor(eager.logprobs), atol=1e-4, rtol=1e-4)


def test_the_step_writes_the_cache_as_eager_does(compiled):
    model = compiled.model
    step = model._ahead_of_time_step
    with torch.inference_mode():
        cache = model.new_kv_cache(1, 12)
        model(torch.tensor([PROMPT]), kv_cache=cache)
        twin = copy.deepcopy(cache)
        assert step.fits(cache)
        vocab = model.config.padded_vocab_size
        for token, choosable in ((20, vocab), (21, 2), (22, vocab - 3)):
            want = model(torch.tensor([[token]]), kv_cache=cache, last_only=True)
            got, greedy = step(torch.tensor([[token]]), twin, torch.empty(choosable, 0))
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            # the step's greedy choice: the argmax over the first `choosable` ids only
            assert greedy.shape == (1, 1) and greedy.dtype == torch.long
            assert greedy.item() == got[0, -1, :choosable].argmax().item()
    assert twin.length == cache.length == len(PROMPT) + 3
    for layer in range(model.config.n_layer):
        torch.testing.assert_close(twin.k[layer], cache.k[layer], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(twin.v[layer], cache.v[layer], atol=1e-6, rtol=1e-6)
    # what it does not take: a full cache, a cache past the traced capacity, two rows, another dtype
    assert not step.fits(_filled(model, 1, len(PROMPT), len(PROMPT)))
    assert not step.fits(_filled(model, 1, model.context_length + 1, 3))
    assert not step.fits(_filled(model, 2, 12, 3))
    assert not step.fits(_filled(model, 1, 12, 0))
    half = _filled(model, 1, 12, 3)
    half.k = [k.half() for k in half.k]
    assert not step.fits(half)


def _filled(model, rows: int, capacity: int, length: int):
    cache = model.new_kv_cache(rows, capacity)
    cache.length = length
    return cache


def test_the_step_reads_the_model_weights_in_place(llm, compiled):
    """User-managed constants: the library holds pointers to the model's own tensors, so an in-place
    update (a weight loaded with copy_, an optimizer step) is what the next step computes with."""
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    head = compiled.model.lm_head.weight
    with torch.no_grad():
        head.mul_(-1)
        llm.model.lm_head.weight.mul_(-1)
    try:
        calls = _count_calls(compiled.model._ahead_of_time_step)
        assert (generate_ids(compiled.model, [PROMPT], params)[0].token_ids
                == generate_ids(llm.model, [PROMPT], params)[0].token_ids)
        assert calls[0] == 11
    finally:
        with torch.no_grad():
            head.mul_(-1)
            llm.model.lm_head.weight.mul_(-1)


def test_fingerprint_sees_what_changes_the_computation(neox_pair):
    from openseason.peft.lora import apply_lora

    model = LLM.load(neox_pair[1], device="cpu").model
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)              # in place: same tensors, same addresses
    assert model_fingerprint(model) == before
    changes = [
        lambda m: setattr(m.lm_head.weight, "data", m.lm_head.weight.data.clone()),   # re-stored
        lambda m: m.train(),
        lambda m: setattr(m.blocks[0].mlp, "approximate", "tanh"),
        lambda m: m.blocks[0].register_forward_hook(lambda *a: None),
        lambda m: setattr(m.blocks[0], "attn", copy.deepcopy(m.blocks[0].attn)),
        lambda m: apply_lora(m, rank=2),
    ]
    for change in changes:
        twin = copy.deepcopy(model)
        was = model_fingerprint(twin)
        change(twin)
        assert model_fingerprint(twin) != was


def test_a_failed_build_warns_and_keeps_torch_compile(neox_pair, monkeypatch):
    model = LLM.load(neox_pair[1], device="cpu").model

    def refuse(model):
        raise RuntimeError("export needs a graph it can trace\nsecond line")
    monkeypatch.setattr(speed, "export_one_row_step", refuse)
    monkeypatch.setattr(speed, "export_batch_step", refuse)
    with pytest.warns(UserWarning) as caught:
        compile_decoding(model, warm_up=False)
    said = [str(w.message) for w in caught]
    for what in ("one-row", "batch"):
        assert f"the {what} decode step could not be compiled ahead of time (RuntimeError: export needs a graph it " \
               f"can trace); those steps decode through torch.compile's graph" in said
    assert ahead_of_time_steps(model) == (None, None) and model._compiled_step is not None
    plain = LLM.load(neox_pair[1], device="cpu").model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile_decoding(plain, warm_up=False, ahead_of_time=False)    # not asked for: not tried
    assert ahead_of_time_steps(plain)[0] is None and plain._compiled_step is not None


def test_bf16_weights_decode_ahead_of_time(llama_pair):
    """bf16 (our one-row kernel on bf16 storage, called from the library) gives its eager tokens."""
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    model = LLM.load(llama_pair[1], device="cpu", quantize="bf16", compile=True).model
    calls = _count_calls(model._ahead_of_time_step)
    eager = LLM.load(llama_pair[1], device="cpu", quantize="bf16").model
    assert generate_ids(model, [PROMPT], params)[0].token_ids == generate_ids(eager, [PROMPT], params)[0].token_ids
    assert calls[0] == 9


def test_built_steps_are_reused_from_the_cache_and_a_damaged_one_is_rebuilt(llm, tmp_path, monkeypatch):
    import torch._inductor

    monkeypatch.setenv("OPENSEASON_CACHE", str(tmp_path))
    model = llm.model
    with torch.inference_mode():
        cache = model.new_kv_cache(1, 12)
        model(torch.tensor([PROMPT]), kv_cache=cache)
        want = model(torch.tensor([[20]]), kv_cache=copy.deepcopy(cache), last_only=True)

    def check(step):
        with torch.inference_mode():
            logits, _ = step(torch.tensor([[20]]), copy.deepcopy(cache), torch.empty(model.config.padded_vocab_size, 0))
            torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)

    folder = tmp_path / "decode_steps"
    folder.mkdir()
    stale = folder / "0123456789abcdef01234567.pt2"    # another model's step, long unused
    stale.write_bytes(b"old")
    os.utime(stale, (1e9, 1e9))
    monkeypatch.setattr(speed, "DECODE_STEPS_KEPT", 1)
    check(speed.export_one_row_step(model))
    [package] = folder.glob("*.pt2")                     # the new one kept, the least recently used gone
    os.utime(package, (1e9, 1e9))
    build = torch._inductor.aoti_compile_and_package

    def no_build(*args, **kwargs):
        raise AssertionError("built again instead of loading the cached package")
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_build)
    check(speed.export_one_row_step(model))
    assert package.stat().st_mtime > time.time() - 600   # used: its time refreshed
    package.write_bytes(b"not a package")          # damaged (a disk error, an interrupted copy by hand)
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", build)
    check(speed.export_one_row_step(model))
    assert package.stat().st_size > 1000 and list((tmp_path / "decode_steps").glob("*.pt2")) == [package]


def test_a_copied_model_does_not_share_the_step(compiled):
    twin = copy.deepcopy(compiled.model)
    assert getattr(twin, "_ahead_of_time_step", None) is None and getattr(twin, "_ahead_of_time_batch_step", None) is None
    assert compiled.model._ahead_of_time_step is not None and compiled.model._ahead_of_time_batch_step is not None


def test_a_model_changed_after_capture_drops_the_step_and_decodes_right(llm, compiled):
    """Runs last: it changes the shared compiled model. A weight replaced (not updated in place) would be
    read at its old address by the library; the fingerprint sees it, the step is dropped with a warning,
    and decoding goes on through torch.compile's graph with the new weight."""
    model = compiled.model
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    flipped = -model.lm_head.weight.detach().clone()
    model.lm_head.weight.data = flipped
    eager = copy.deepcopy(llm.model)
    eager.lm_head.weight.data = flipped.clone()
    with pytest.warns(UserWarning, match="the model changed after its decode step was compiled ahead of time"):
        got = generate_ids(model, [PROMPT], params)[0].token_ids
    assert got == generate_ids(eager, [PROMPT], params)[0].token_ids
    assert model._ahead_of_time_step is None and model._ahead_of_time_batch_step is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate_ids(model, [PROMPT], params)      # warned once, then quiet
