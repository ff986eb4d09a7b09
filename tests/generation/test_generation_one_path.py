"""One inference path: the same prompt gives the same greedy tokens through batch-1 `LLM.generate`,
a batched `LLM.generate`, the engine under load, `guard chat` (rails over an in-process client) and
`serve --rails` (rails over the server's engine); a seeded request samples the same tokens whatever
else shares its batch."""
from __future__ import annotations

import threading

import pytest

from openseason.generation.client import LocalClient
from openseason.generation.engine import Engine, Request
from openseason.generation.llm import LLM
from openseason.generation.sampling import SamplingParams

from ..serve.conftest import tiny_model

PROMPT = "The quick brown fox"
OTHERS = ["add 2 and 3", "lazy dog jumps over the quick fox and", "0123456789 + - *", "Response: 5"]


@pytest.fixture(scope="module")
def llm(tiny_tokenizer):
    return LLM(tiny_model(eos_bias=0.0, seed=4), tiny_tokenizer, prompt_style="plain")


def _engine_tokens(engine: Engine, prompts: list[list[int]], params: list[SamplingParams]) -> list[list[int]]:
    """Submit every prompt at once (they share the running batch) and return each one's tokens."""
    results: list = [None] * len(prompts)
    done = threading.Semaphore(0)

    def collector(i):
        def emit(event):
            if event.kind == "finish":
                results[i] = event.token_ids
                done.release()
            elif event.kind == "error":
                results[i] = event.text
                done.release()
        return emit

    for i, (ids, p) in enumerate(zip(prompts, params)):
        engine.submit(Request(ids, p, collector(i)))
    for _ in prompts:
        assert done.acquire(timeout=60)
    return results


def test_same_greedy_tokens_on_every_path(llm, tiny_tokenizer):
    greedy = SamplingParams(max_new_tokens=20)
    alone = llm.complete(PROMPT, greedy)
    batched = llm.complete([OTHERS[0], PROMPT, *OTHERS[1:]], greedy)[1]
    assert batched.token_ids == alone.token_ids and batched.text == alone.text

    engine = Engine(llm.model, tiny_tokenizer, max_batch=3, max_queue=32)
    try:
        # under load: more requests than rows, different budgets, the prompt arriving in the middle
        prompts = [tiny_tokenizer.encode(p) for p in [*OTHERS[:2], PROMPT, *OTHERS[2:], *OTHERS]]
        budgets = [7, 30, 20, 3, 12, 25, 5, 9, 14]
        out = _engine_tokens(engine, prompts, [SamplingParams(max_new_tokens=b) for b in budgets])
        assert out[2] == alone.token_ids
        # the client the rails use inside `serve --rails` (over the engine) and in `guard chat` (over LLM)
        served, local = LocalClient(engine), LocalClient(llm)
        assert served(PROMPT, max_tokens=20) == local(PROMPT, max_tokens=20) == alone.text
    finally:
        engine.close()


def test_rails_reply_is_the_same_under_guard_chat_and_serve_rails(llm, tiny_tokenizer, tmp_path, monkeypatch):
    """No flow matches, so the rails ask their LLM for a general reply: through an in-process client
    (`openseason guard chat --model`) and through the server's engine (`serve --rails`) alike."""
    from openseason.guard import Rails, RailsConfig

    monkeypatch.setenv("OPENSEASON_CACHE", str(tmp_path / "cache"))
    (tmp_path / "rails").mkdir()
    (tmp_path / "rails" / "rails.co").write_text('define user greet\n  "hello"\n\ndefine bot greet\n  "Hi!"\n\n'
                                                 'define flow greet\n  user greet\n  bot greet\n')
    (tmp_path / "rails" / "config.yml").write_text("instructions: [{type: general, content: Be brief.}]\n")
    config = RailsConfig.from_path(tmp_path / "rails")
    messages = [{"role": "user", "content": "Tell me about lighthouses and the sea."}]
    guard_chat = Rails(config, llm=LocalClient(llm)).generate(messages)
    engine = Engine(llm.model, tiny_tokenizer, max_batch=4)
    try:
        served = Rails(config, llm=LocalClient(engine)).generate(messages)
    finally:
        engine.close()
    assert guard_chat.decision.reason.startswith("no flow matched; the LLM replies")
    assert guard_chat.text and served.text == guard_chat.text


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(llm, tiny_tokenizer):
    seeded = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7, n=2)
    ids = tiny_tokenizer.encode(PROMPT)
    engine = Engine(llm.model, tiny_tokenizer, max_batch=8, max_queue=32)
    try:
        [alone] = _engine_tokens(engine, [ids], [SamplingParams(**{**seeded.__dict__, "n": 1})])
        crowd = [tiny_tokenizer.encode(p) for p in OTHERS]
        out = _engine_tokens(engine, crowd[:2] + [ids] + crowd[2:],
                             [SamplingParams(max_new_tokens=10, temperature=1.0, seed=1),
                              SamplingParams(max_new_tokens=30),
                              SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7),
                              SamplingParams(max_new_tokens=5, temperature=0.7, seed=99),
                              SamplingParams(max_new_tokens=12, temperature=1.0)])
        assert out[2] == alone
    finally:
        engine.close()
    # the same request in a Decoder (LLM.complete): choice i draws from seed + i in both
    choices = llm.complete(PROMPT, seeded)
    assert choices[0].token_ids == alone
    assert choices[1].token_ids != alone   # the second choice has its own generator
    assert [c.token_ids for c in llm.complete([OTHERS[0], PROMPT], seeded)[2:]] == [c.token_ids for c in choices]


def test_alibi_model_generates_past_its_training_length_when_allowed(tiny_tokenizer):
    """--max-context: an MPT (ALiBi) model reads past block_size through the engine and LLM alike; a
    rotary model refuses with a clear error."""
    import torch

    from openseason.config import Config
    from openseason.errors import ConfigError, OpenseasonError
    from openseason.model import GPT

    torch.manual_seed(0)
    config = Config.from_name("tiny-mpt", vocab_size=512, padded_vocab_size=512)
    mpt = GPT(config).eval()
    llm = LLM(mpt, tiny_tokenizer, prompt_style="plain")
    long_prompt = list(range(5, 5 + config.block_size + 10))
    with pytest.raises(OpenseasonError, match="context window"):
        llm.complete(long_prompt, max_new_tokens=4)
    with pytest.warns(UserWarning):
        mpt.extend_context(config.block_size * 2)
    alone = llm.complete(long_prompt, max_new_tokens=4, ignore_eos=True)
    engine = Engine(mpt, tiny_tokenizer, max_batch=2)
    try:
        [served] = _engine_tokens(engine, [long_prompt], [SamplingParams(max_new_tokens=4, ignore_eos=True)])
    finally:
        engine.close()
    assert served == alone.token_ids and len(served) == 4
    rotary = GPT(Config.from_name("tiny-llama")).eval()
    with pytest.raises(ConfigError):
        rotary.extend_context(rotary.config.block_size * 2)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8-dynamic"])
def test_a_prompt_prefills_to_the_same_bits_whatever_arrives_with_it(precision, tiny_tokenizer):
    """A prompt prefilled together with others (shorter, longer, copies of itself) leaves the same keys
    and values in the cache, and the same first-token log-probabilities, as the prompt alone: the
    matrix products of a longer prefill would sum its rows in another order (torch's bf16 product past
    32 rows, left padding under an attention mask)."""
    import copy

    import torch

    from openseason.generation.engine import RunningBatch, Sequence
    from openseason.generation.quantize import quantize
    from openseason.generation.speed import prepare_for_decoding

    model = copy.deepcopy(tiny_model(eos_bias=0.0, seed=4))
    if precision != "fp32":
        quantize(model, precision)
    prepare_for_decoding(model)
    params = SamplingParams(max_new_tokens=4, logprobs=5)
    prompt = tiny_tokenizer.encode(PROMPT * 3)

    def prefill(prompts):
        batch = RunningBatch(model, tiny_tokenizer)
        events = batch.prefill([[Sequence(p, params, tokenizer=tiny_tokenizer)] for p in prompts])
        return batch, events

    alone, [first] = prefill([prompt])
    crowd = [tiny_tokenizer.encode(p * 4) for p in OTHERS]
    for prompts in ([crowd[0], prompt, *crowd[1:]], [prompt] * 4, [crowd[3], prompt]):
        together, events = prefill(prompts)
        row = prompts.index(prompt)
        assert (events[row].token_id, events[row].logprob, events[row].top_logprobs) == \
            (first.token_id, first.logprob, first.top_logprobs)
        n, end = len(prompt), together.cache.length
        for layer in range(len(alone.cache.k)):
            for got, want in ((together.cache.k, alone.cache.k), (together.cache.v, alone.cache.v)):
                assert torch.equal(got[layer][row, :, end - n:end], want[layer][0, :, :n]), (layer, prompts)


def test_prefill_together_runs_the_prompts_in_one_pass_and_keeps_greedy_tokens(llm, tiny_tokenizer):
    """Admitted together, prompts are prefilled one forward pass each by default, and in one left-padded
    pass with `Engine(prefill_together=True)` (`serve --prefill-together`); on this fp32 model (no
    near-ties) both give each prompt the greedy tokens it gets alone."""
    prompts = [tiny_tokenizer.encode(p) for p in [PROMPT, *OTHERS]]
    alone = [llm.complete(p, max_new_tokens=12).token_ids for p in prompts]
    calls = []
    hook = llm.model.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    try:
        for together in (False, True):
            engine = Engine(llm.model, tiny_tokenizer, max_batch=8, prefill_together=together)
            results = [None] * len(prompts)
            finished = threading.Semaphore(0)

            def collector(i):
                def emit(event):
                    if event.kind in ("finish", "error"):
                        results[i] = event.token_ids if event.kind == "finish" else event.text
                        finished.release()
                return emit
            try:
                with engine._lock:   # the loop waits until every request is queued: one admission
                    calls.clear()
                    for i, ids in enumerate(prompts):
                        engine.submit(Request(ids, SamplingParams(max_new_tokens=12), collector(i)))
                for _ in prompts:
                    assert finished.acquire(timeout=60)
            finally:
                engine.close()
            prefills = [shape for shape in calls if shape[-1] > 1]
            if together:
                assert prefills == [(len(prompts), max(len(p) for p in prompts))]
            else:
                assert prefills == [(1, len(p)) for p in prompts]
            assert results == alone
    finally:
        hook.remove()


def test_prompts_are_prefilled_alone_by_default_on_the_cpu_only(llm):
    """On the CPU the decode step's products are batch-invariant (generation.cpu_kernels), so prompts
    are prefilled alone by default; elsewhere (a GPU, here the meta device standing in for one) they
    are not, and prompts are prefilled together. Either can be asked for."""
    import torch

    from openseason.config import Config
    from openseason.generation.engine import RunningBatch
    from openseason.model import GPT

    assert RunningBatch(llm.model).prefill_together is False
    assert RunningBatch(llm.model, prefill_together=True).prefill_together is True
    with torch.device("meta"):
        elsewhere = GPT(Config.from_name("tiny-llama"))
    assert RunningBatch(elsewhere).prefill_together is True
    assert RunningBatch(elsewhere, prefill_together=False).prefill_together is False


def test_a_decoder_prefills_together_only_past_the_batch_invariant_rows(llm, tiny_tokenizer):
    """`LLM.complete` / `generate_ids` with more sequences than the CPU kernels keep batch-invariant
    decode them through torch's products anyway, so their prompts are prefilled in one pass; up to
    that many, alone, as the engine does."""
    from openseason.generation.cpu_kernels import BATCH_INVARIANT_ROWS
    from openseason.generation.engine import Decoder

    ids = tiny_tokenizer.encode(PROMPT)
    within = Decoder(llm.model, [ids] * BATCH_INVARIANT_ROWS, SamplingParams(max_new_tokens=2))
    past = Decoder(llm.model, [ids] * (BATCH_INVARIANT_ROWS + 1), SamplingParams(max_new_tokens=2))
    choices = Decoder(llm.model, [ids] * (BATCH_INVARIANT_ROWS // 2 + 1), SamplingParams(max_new_tokens=2, n=2))
    assert (within.batch.prefill_together, past.batch.prefill_together, choices.batch.prefill_together) == \
        (False, True, True)
