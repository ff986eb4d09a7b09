"""Structured output through llguidance: whatever a random model prefers, the text follows the
grammar (JSON valid against the schema, checked with the jsonschema library; a regex), the engine
and the Decoder agree, and bad grammars or biases are clear errors before any work."""
from __future__ import annotations

import json
import re

import pytest

from openseason.errors import OpenseasonError
from openseason.generation.engine import Engine, generate_ids
from openseason.generation.sampling import SamplingParams
from openseason.generation.structured import Constraint

from ..serve.conftest import tiny_model

jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["color", "count", "tags"],
          "properties": {"color": {"enum": ["red", "green", "blue"]},
                         "count": {"type": "integer", "minimum": 0, "maximum": 99},
                         "tags": {"type": "array", "maxItems": 2,
                                  "items": {"type": "string", "pattern": "^[a-z]{1,6}$"}}}}


@pytest.fixture(scope="module")
def model():
    return tiny_model(eos_bias=-5.0, seed=11)


@pytest.mark.parametrize("temperature,seed", [(0.0, None), (1.0, 1), (1.0, 2), (1.3, 3)])
def test_json_schema_output_always_validates(model, tiny_tokenizer, temperature, seed):
    ids = tiny_tokenizer.encode("Give me a color as JSON:")
    params = SamplingParams(max_new_tokens=120, temperature=temperature, seed=seed,
                            constraint=Constraint.json_schema(SCHEMA))
    [c] = generate_ids(model, [ids], params, tokenizer=tiny_tokenizer)
    assert c.finish_reason == "stop", c.text          # the grammar completed, then only EOS was allowed
    jsonschema.validate(json.loads(c.text), SCHEMA)
    free = generate_ids(model, [ids], SamplingParams(max_new_tokens=20, temperature=temperature, seed=seed),
                        tokenizer=tiny_tokenizer)[0]
    with pytest.raises(ValueError):                    # unconstrained, the same model writes no JSON
        json.loads(free.text)


def test_engine_and_decoder_agree_and_rows_keep_their_own_grammar(model, tiny_tokenizer):
    import queue

    from openseason.generation.engine import Request
    prompt = tiny_tokenizer.encode("answer:")
    schema = SamplingParams(max_new_tokens=120, constraint=Constraint.json_schema(SCHEMA))
    digits = SamplingParams(max_new_tokens=10, constraint=Constraint.regex(r"[0-9]{3}-[0-9]{2}"))
    plain = SamplingParams(max_new_tokens=12)
    expected = [generate_ids(model, [prompt], p, tokenizer=tiny_tokenizer)[0] for p in (schema, digits, plain)]
    engine = Engine(model, tiny_tokenizer, max_batch=4)
    try:
        events = queue.Queue()
        for i, p in enumerate((schema, digits, plain)):
            engine.submit(Request(prompt, p, lambda e, i=i: events.put((i, e))))
        finished = {}
        while len(finished) < 3:
            i, e = events.get(timeout=60)
            assert e.kind != "error", e.text
            if e.kind == "finish":
                finished[i] = e.token_ids
    finally:
        engine.close()
    assert [finished[i] for i in range(3)] == [c.token_ids for c in expected]
    assert re.fullmatch(r"[0-9]{3}-[0-9]{2}", expected[1].text)


def test_json_object_and_logit_bias(model, tiny_tokenizer):
    ids = tiny_tokenizer.encode("x")
    [c] = generate_ids(model, [ids], SamplingParams(max_new_tokens=60, constraint=Constraint.json_object()),
                       tokenizer=tiny_tokenizer)
    if c.finish_reason == "stop":
        assert isinstance(json.loads(c.text), dict)
    else:
        assert c.text.startswith("{")
    # logit_bias +100 on one token makes greedy pick it every time; -100 bans a token greedy would pick
    target = tiny_tokenizer.encode(" fox")[-1]
    [forced] = generate_ids(model, [ids], SamplingParams(max_new_tokens=5, logit_bias={target: 100}),
                            tokenizer=tiny_tokenizer)
    assert forced.token_ids == [target] * 5
    [greedy] = generate_ids(model, [ids], SamplingParams(max_new_tokens=1), tokenizer=tiny_tokenizer)
    [banned] = generate_ids(model, [ids], SamplingParams(max_new_tokens=1, logit_bias={greedy.token_ids[0]: -100}),
                            tokenizer=tiny_tokenizer)
    assert banned.token_ids != greedy.token_ids


@pytest.mark.parametrize("make", [lambda: Constraint.json_schema("{not json"),
                                  lambda: Constraint.json_schema([1, 2]),
                                  lambda: Constraint.regex("(unclosed"),
                                  lambda: Constraint.lark("start: undefined_rule")])
def test_bad_grammars_are_clear_errors(make):
    with pytest.raises(OpenseasonError):
        make()


@pytest.mark.parametrize("bias", [{"x": 1}, {-1: 1}, {5: 101}, {5: True}, [1, 2]])
def test_bad_logit_bias_is_refused(bias):
    with pytest.raises(OpenseasonError, match="logit_bias"):
        SamplingParams(logit_bias=bias)
