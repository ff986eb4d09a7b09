"""Best-of-n sampling (`best_of_n`, `openseason generate --best-of N --reward R`): N choices from the
one inference path, the highest-scoring one kept; N = 1 is plain sampling with the same seed."""
from __future__ import annotations

import json
import sys
import types

import pytest

from openseason.evaluate.reward import best_of_n
from openseason.generation.llm import LLM

from .helpers_train import make_base

PROMPT = "add 2 and 3"
SAMPLING = dict(max_new_tokens=6, temperature=1.0, seed=11, ignore_eos=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer):
    return make_base(tmp_path_factory.mktemp("bon") / "base", tiny_tokenizer)


@pytest.fixture(scope="module")
def llm(base):
    return LLM.load(base, device="cpu")


class TokenScorer:
    """A reward model whose preference is known: +1 per occurrence of `token` in the completion."""

    def __init__(self, token: int, prompt_len: int):
        self.token, self.prompt_len, self.rows = token, prompt_len, None

    def score_ids(self, rows):
        self.rows = rows
        return [float(r[self.prompt_len:].count(self.token)) - 0.01 * i for i, r in enumerate(rows)]


def test_best_of_n_keeps_the_highest_score(llm):
    choices = llm.complete(PROMPT, n=8, **SAMPLING)
    prompt_len = len(choices[0].prompt_ids)
    # the token most often sampled in choice 5 makes choice 5 (or one that ties with it) the known best
    ids = choices[5].token_ids
    token = max(set(ids), key=ids.count)
    scorer = TokenScorer(token, prompt_len)
    out = best_of_n(llm, PROMPT, 8, scorer, **SAMPLING)
    expected = [c.token_ids.count(token) - 0.01 * i for i, c in enumerate(choices)]
    assert [c["text"] for c in out["choices"]] == [c.text for c in choices]  # same seed, same N samples
    assert out["best"] == max(range(8), key=expected.__getitem__)
    assert out["text"] == choices[out["best"]].text and out["score"] == pytest.approx(max(expected))
    assert scorer.rows[0] == list(choices[0].prompt_ids) + list(choices[0].token_ids)


def test_best_of_one_is_plain_sampling(llm):
    out = best_of_n(llm, PROMPT, 1, lambda prompts, completions, **_: [0.0] * len(completions), **SAMPLING)
    assert out["text"] == llm.generate(PROMPT, **SAMPLING) and out["best"] == 0 and len(out["choices"]) == 1


def test_best_of_n_with_a_reward_function_and_greedy_is_refused(llm):
    from openseason.errors import ConfigError

    out = best_of_n(llm, PROMPT, 4, lambda prompts, completions, **_: [len(c) for c in completions], **SAMPLING)
    assert out["score"] == max(len(c["text"]) for c in out["choices"])
    with pytest.raises(ConfigError, match="temperature"):
        best_of_n(llm, PROMPT, 4, lambda p, c, **_: [0.0] * len(c), max_new_tokens=4, temperature=0.0)


def test_cli_best_of_with_a_reward_checkpoint(base, tmp_path, capsys):
    from openseason.cli import main
    from openseason.train.finetune import finetune
    from openseason.train.objectives.grpo import RewardModelFunction

    from .helpers_train import for_method
    from .test_objectives_run import FAST, make_pairs

    rm = finetune(base, make_pairs(tmp_path / "pairs", n=8), "full", tmp_path / "rm", objective="reward",
                  max_steps=1, **for_method("full", FAST))["final"]
    args = ["generate", str(base), "--prompt", PROMPT, "--max-new-tokens", "6", "--temperature", "1.0",
            "--seed", "11", "--ignore-eos", "--device", "cpu", "--best-of", "4", "--reward", str(rm)]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["choices"]) == 4
    llm = LLM.load(base, device="cpu")
    choices = llm.complete(PROMPT, n=4, **SAMPLING)
    scores = RewardModelFunction(rm).score_ids([c.prompt_ids + c.token_ids for c in choices])
    assert [c["score"] for c in out["choices"]] == pytest.approx(scores, abs=1e-5)
    assert out["best"] == max(range(4), key=scores.__getitem__)
    assert main(args) == 0
    assert capsys.readouterr().out == out["text"] + "\n"
    # --best-of without --reward, --json without --best-of: clear errors, status 2
    assert main(args[:-2]) == 2 and main(args[:-4] + ["--json"]) == 2


def test_cli_best_of_with_a_reward_function(base, monkeypatch, capsys):
    from openseason.cli import main

    module = types.ModuleType("bon_rewards")
    module.longest = lambda prompts, completions, **_: [float(len(c)) for c in completions]
    monkeypatch.setitem(sys.modules, "bon_rewards", module)
    assert main(["generate", str(base), "--prompt", PROMPT, "--max-new-tokens", "6", "--temperature", "1.0",
                 "--seed", "3", "--device", "cpu", "--best-of", "5", "--reward", "bon_rewards:longest", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["score"] == max(len(c["text"]) for c in out["choices"]) == len(out["text"])
