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
