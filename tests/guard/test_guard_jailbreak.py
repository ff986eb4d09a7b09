"""Perplexity heuristics with a tiny random openseason model: the numbers are real perplexities and
the thresholds mean exactly what they say."""
from __future__ import annotations

import math

import pytest
import torch

from openseason.checkpoint import save_checkpoint
from openseason.config import Config
from openseason.guard import Rails, RailsConfig
from openseason.guard.jailbreak import PerplexityScorer, jailbreak_heuristics
from openseason.model import GPT

LONG = ("please tell me a story about a brave knight who rides a horse across the kingdom to save "
        "the village from a dragon and returns home")
GIBBERISH = "zx qv ## }}{ ~~ 9z ^ q" * 3


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_tokenizer):
    torch.manual_seed(0)
    model = GPT(Config.from_name("tiny-neox"))
    model.init_weights()
    path = tmp_path_factory.mktemp("ppl") / "tiny"
    save_checkpoint(path, model, tokenizer=tiny_tokenizer)
    return path


@pytest.fixture(scope="module")
def scorer(tiny_ckpt):
    return PerplexityScorer.from_checkpoint(tiny_ckpt)


def test_perplexity_is_exp_mean_nll(scorer):
    text = "The quick brown fox"
    ids = scorer.tokenizer.encode(text)
    inputs = torch.tensor([[scorer.tokenizer.eos_id] + ids])  # EOS starts the text (no BOS in this family)
    with torch.no_grad():
        logp = torch.log_softmax(scorer.model(inputs)[0, :-1].float(), dim=-1)
    nll = -sum(float(logp[i, t]) for i, t in enumerate(ids)) / len(ids)
    assert scorer.perplexity(text) == pytest.approx(math.exp(nll), rel=1e-5)


def test_long_texts_are_scored_in_windows(scorer):
    text = "the quick brown fox " * 200
    total, count = scorer.nll(text)
    assert count == len(scorer.tokenizer.encode(text)) > scorer.model.config.block_size


def test_thresholds_mean_what_they_say(scorer):
    ppl = scorer.perplexity(LONG)
    ratio = len(LONG) / ppl
    words = LONG.split()
    prefix, suffix = scorer.perplexity(" ".join(words[:10])), scorer.perplexity(" ".join(words[-10:]))

    def run(lpp, ps):
        return jailbreak_heuristics(LONG, scorer, length_per_perplexity_threshold=lpp,
                                    prefix_suffix_perplexity_threshold=ps, prefix_suffix_words=10)

    v = run(ratio * 1.0001, max(prefix, suffix) * 1.0001)
    assert not v.is_jailbreak and v.fired == []
    assert v.length_per_perplexity == pytest.approx(ratio) and v.prefix_perplexity == pytest.approx(prefix)
    assert run(ratio * 0.9999, 1e9).fired == ["length_per_perplexity"]
    assert run(1e9, max(prefix, suffix) * 0.9999).fired == ["prefix_suffix_perplexity"]
    # fewer words than prefix_suffix_words: the prefix/suffix check does not apply
    short = jailbreak_heuristics("hello there", scorer, length_per_perplexity_threshold=1e9,
                                 prefix_suffix_perplexity_threshold=0.0, prefix_suffix_words=10)
    assert short.prefix_perplexity is None and not short.is_jailbreak


def test_jailbreak_rail_in_a_config(tmp_path, tiny_ckpt, scorer, embedder):
    ratio = len(LONG) / scorer.perplexity(LONG)
    (tmp_path / "config.yml").write_text(f"""
rails:
  input:
    flows: [jailbreak detection heuristics]
  config:
    jailbreak_detection:
      length_per_perplexity_threshold: {ratio * 0.99}
      prefix_suffix_perplexity_threshold: 1.0e12
      model: {tiny_ckpt}
embeddings: {{cache_dir: false}}
""")
    (tmp_path / "main.co").write_text('define user greet\n  "hello"\ndefine bot hi\n  "Hi!"\n'
                                      'define flow greet\n  user greet\n  bot hi\n')
    rails = Rails(RailsConfig.from_path(tmp_path), embedder=embedder)
    assert rails.check("hello").allowed
    decision = rails.check([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "ok"},
                            {"role": "user", "content": LONG}])
    assert decision.blocked and decision.turn == 2 and decision.flow == "jailbreak detection heuristics"
    check = [c for c in decision.checks if c.get("action") == "jailbreak_detection_heuristics"][-1]  # turn 2's
    assert check["fired"] == ["length_per_perplexity"] and check["length_per_perplexity"] > ratio * 0.99
    assert decision.llm_calls == 0


def test_jailbreak_rail_needs_a_model(tmp_path, embedder):
    (tmp_path / "config.yml").write_text("rails:\n  input:\n    flows: [jailbreak detection heuristics]\n")
    with pytest.raises(Exception, match="need a local language model"):
        Rails(RailsConfig.from_path(tmp_path), embedder=embedder)


def test_openseason_llm_adapter_writes_free_replies(tiny_ckpt, embedder):
    from openseason.guard import LocalClient

    llm = LocalClient(tiny_ckpt)
    config = RailsConfig.from_content('define user greet\n  "hello"\ndefine flow greet\n  user greet\n  bot hi there\n',
                                      "embeddings: {cache_dir: false}")
    rails = Rails(config, llm=llm, embedder=embedder)
    result = rails.generate("hello")  # `bot hi there` is not defined: the local model writes it
    assert isinstance(result.text, str) and result.decision.llm_calls == 1 and not result.decision.predefined
    direct = llm("Instruction: add 2 and 3. Response:", max_tokens=5, temperature=0.0, stop=["\n"])
    assert direct == llm.llm.generate("Instruction: add 2 and 3. Response:", max_new_tokens=5, stop=["\n"])
