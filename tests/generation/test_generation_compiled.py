"""The compiled decode step (generation.speed.compile_decoding): same tokens and logits as the eager
step, one graph for every batch size and cache length, behind the engine and the CLI, and a clear
error when compiling fails. Compiling costs seconds, so the compiled model is built once here."""
from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from openseason import LLM
from openseason.errors import OpenseasonError
from openseason.generation import SamplingParams, compile_decoding, generate_ids
from openseason.generation.engine import Engine
from openseason.generation.speed import decode_forward

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]


@pytest.fixture(scope="module")
def compiled(neox_pair):
    return LLM.load(neox_pair[1], device="cpu", compile=True)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def test_compiled_step_gives_the_eager_tokens_and_logits(llm, compiled):
    assert decode_forward(compiled.model) is not compiled.model and decode_forward(llm.model) is llm.model
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    eager = [c.token_ids for c in generate_ids(llm.model, PROMPTS, params)]
    assert [c.token_ids for c in generate_ids(compiled.model, PROMPTS, params)] == eager
    assert generate_ids(compiled.model, PROMPTS[:1], params)[0].token_ids == eager[0]

    # one ragged step by hand: left-padded rows, an attention mask and per-row positions
    model = compiled.model
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.inference_mode():
        cache = model.new_kv_cache(2, 16)
        model(ids, kv_cache=cache, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        twin = copy.deepcopy(cache)
        step_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        positions = torch.tensor([[3], [5]])
        want = model(torch.tensor([[20], [21]]), kv_cache=cache, attention_mask=step_mask, position_ids=positions,
                     last_only=True)
        got = decode_forward(model)(torch.tensor([[20], [21]]), kv_cache=twin, attention_mask=step_mask,
                                    position_ids=positions, last_only=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert twin.length == cache.length == 6
    for layer in range(model.config.n_layer):
        torch.testing.assert_close(twin.k[layer], cache.k[layer], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(twin.v[layer], cache.v[layer], atol=1e-6, rtol=1e-6)


def test_one_graph_serves_every_batch_size_and_cache_length(compiled):
    before = _graphs()
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    generate_ids(compiled.model, [list(range(1, 40))], params)               # longer cache, batch 1
    generate_ids(compiled.model, [[3, 4]] * 5, params)                       # batch 5, equal rows
    generate_ids(compiled.model, PROMPTS + [[9] * 30], params)               # batch 4, ragged
    assert _graphs() == before


def test_engine_decodes_with_the_compiled_step(llm, compiled):
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    engine = Engine(compiled.model, compiled.tokenizer, max_batch=4)
    try:   # concurrent requests: rows join and leave the running batch
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            got = list(pool.map(lambda p: engine.complete(p, params, timeout=120)[0].token_ids, PROMPTS))
    finally:
        engine.close()
    assert got == [generate_ids(llm.model, [p], params)[0].token_ids for p in PROMPTS]


def test_a_compile_failure_is_a_clear_error_and_the_model_stays_eager(neox_pair, monkeypatch):
    model = LLM.load(neox_pair[1], device="cpu").model

    def broken(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return run
    monkeypatch.setattr(torch, "compile", broken)
    # (with the ahead-of-time steps built, a text-only model's warm-up never runs torch.compile's graph)
    with pytest.raises(OpenseasonError, match="could not compile the decode step: RuntimeError: InvalidCxxCompiler"):
        compile_decoding(model, ahead_of_time=False)
    assert decode_forward(model) is model and getattr(model, "_ahead_of_time_step", None) is None
    assert generate_ids(model, PROMPTS[:1], SamplingParams(max_new_tokens=3))[0].token_ids


def test_models_compile_separately_and_int8_dynamic_compiles(compiled, llama_pair):
    """Each model gets graphs of its own (a second model does not reuse or crowd out the first's), and
    int8-dynamic (our VNNI kernel, a torch op with a shape function) compiles to the eager tokens."""
    other = LLM.load(llama_pair[1], device="cpu", compile=True)
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    eager = LLM.load(llama_pair[1], device="cpu")
    assert ([c.token_ids for c in generate_ids(other.model, PROMPTS, params)]
            == [c.token_ids for c in generate_ids(eager.model, PROMPTS, params)])
    code = lambda model: decode_forward(model).__wrapped__.__code__  # noqa: E731 (torch.compile's cache key)
    assert code(other.model) is not code(compiled.model)
    dynamic = LLM.load(llama_pair[1], device="cpu", quantize="int8-dynamic", compile=True)
    dynamic_eager = LLM.load(llama_pair[1], device="cpu", quantize="int8-dynamic")
    assert ([c.token_ids for c in generate_ids(dynamic.model, PROMPTS, params)]
            == [c.token_ids for c in generate_ids(dynamic_eager.model, PROMPTS, params)])
    # ... and so does its one-row step ahead of time (the kernel called from the AOTInductor library)
    assert dynamic.model._ahead_of_time_step is not None
    assert (generate_ids(dynamic.model, PROMPTS[:1], params)[0].token_ids
            == generate_ids(dynamic_eager.model, PROMPTS[:1], params)[0].token_ids)


def test_generate_cli_with_compile_and_quantize(neox_pair, capsys):
    from openseason.cli import main

    ckpt = str(neox_pair[1])
    args = ["generate", ckpt, "--prompt", "The quick brown fox", "--max-new-tokens", "10"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--compile"]) == 0
    assert capsys.readouterr().out == plain
    assert main(args + ["--quantize", "int8"]) == 0
    assert capsys.readouterr().out.strip()
    with pytest.raises(SystemExit):
        main(args + ["--quantize", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
