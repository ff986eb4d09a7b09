"""Every objective through finetune() and the one loop: metrics, exact resume, accumulation, the
reference cache (reused, stale -> recomputed), reward models and GRPO rollouts."""
from __future__ import annotations

import csv
import json
import random

import pytest
import torch
from safetensors.torch import load_file

from openseason.data.preferences import write_pairs
from openseason.train.finetune import finetune

from .helpers_train import for_method, make_base, make_prepared

FAST = dict(micro_batch_size=4, seed=3, lr=3e-3, val_size=4, lora_dropout=0.0, adapter_prompt_length=3,
            adapter_layers=1, progress=False, register=False, max_length=48)


def make_pairs(path, n=24, seed=0):
    rng = random.Random(seed)
    records = []
    for i in range(n):
        a, b = rng.randint(0, 30), rng.randint(0, 30)
        records.append({"id": f"p{i}", "source": "test", "prompt": [{"role": "user", "content": f"add {a} and {b}"}],
                        "chosen": str(a + b), "rejected": str(a + b + rng.choice([-1, 1, 10])), "meta": {}})
    return write_pairs(path, records, style="plain")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("objectives")
    return make_base(root / "base", tiny_tokenizer), make_pairs(root / "pairs"), make_prepared(root / "sft", n=16)


def _weights(final):
    name = "peft_weights.safetensors" if (final / "peft_weights.safetensors").exists() else "model.safetensors"
    return load_file(str(final / name))


def _rows(run):
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("objective,method", [("dpo", "lora"), ("ipo", "full"), ("kto", "adapter-v2"),
                                              ("orpo", "adapter"), ("simpo", "lora"), ("cdpo", "lora"),
                                              ("reward", "lora")])
def test_objective_trains_and_logs(setup, tmp_path, objective, method):
    base, pairs, _ = setup
    result = finetune(base, pairs, method, tmp_path / "run", objective=objective, max_steps=2, eval_every=2, **for_method(method, FAST))
    rows = _rows(tmp_path / "run")
    assert len(rows) == 2 and rows[-1]["reward_acc"] != "" and rows[-1]["val_reward_acc"] != ""
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["objective"] == objective and 0 <= report["heldout_reward_acc"] <= 1
    lo, hi = report["heldout_reward_acc_ci95"]
    assert lo <= report["heldout_reward_acc"] <= hi
    assert result["final"].exists()
    if objective in ("dpo", "ipo", "kto", "cdpo"):
        assert report["reference_logps"] == "computed"


def test_dpo_first_step_loss_is_log2(setup, tmp_path):
    """Policy == reference at step 1, so every pair's DPO loss is log 2 (the reference is the start)."""
    base, pairs, _ = setup
    finetune(base, pairs, "lora", tmp_path / "run", objective="dpo", max_steps=1, **for_method("lora", FAST))
    assert abs(float(_rows(tmp_path / "run")[0]["loss"]) - 0.693147) < 1e-5


def test_pair_normalized_accumulation_matches_one_big_batch(setup, tmp_path):
    base, pairs, _ = setup
    """Same 8 pairs as one micro-batch or two of 4: the same step loss and gradient norm (before Adam,
    which would magnify float noise in near-zero gradient entries). ORPO mixes token and pair terms."""
    base, pairs, _ = setup
    for objective in ("dpo", "orpo"):
        finetune(base, pairs, "full", tmp_path / f"a{objective}", objective=objective, max_steps=1,
                 **{**for_method("full", FAST), "micro_batch_size": 8})
        finetune(base, pairs, "full", tmp_path / f"b{objective}", objective=objective, max_steps=1, grad_accum=2,
                 **{**for_method("full", FAST), "micro_batch_size": 4})
        ra, rb = _rows(tmp_path / f"a{objective}")[0], _rows(tmp_path / f"b{objective}")[0]
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-5)
        assert float(ra["grad_norm"]) == pytest.approx(float(rb["grad_norm"]), rel=1e-4)


def test_reference_cache_reused_then_recomputed_when_stale(setup, tmp_path):
    from openseason.train.reference import CACHE_NAME, cached_reference_logps, load_fingerprint

    base, pairs, _ = setup
    finetune(base, pairs, "lora", tmp_path / "run", objective="dpo", max_steps=1, **for_method("lora", FAST))
    stored = load_fingerprint(tmp_path / "run" / CACHE_NAME)
    assert set(stored) >= {"data", "tokenizer", "reference", "prompt_style", "max_length"}
    res = finetune(base, pairs, "lora", tmp_path / "run", objective="dpo", max_steps=2, resume="auto",
                   allow_changes=True, **for_method("lora", FAST))  # longer than the checkpoint's run: a change
    assert res["report"]["reference_logps"] == "reused"
    from openseason.checkpoint import load_model
    from openseason.data.preferences import PreferenceData, load_preferences
    from openseason.tokenizer import Tokenizer

    model = load_model(base)
    tok = Tokenizer.from_dir(base, model.config)
    data = PreferenceData(load_preferences(pairs), tok, "plain", 48)
    logps, status = cached_reference_logps(tmp_path / "run", model, data.examples, 0, {**stored, "data": "changed"})
    assert status.startswith("recomputed: stale cache (data changed)")
    assert logps.shape == (len(data), 3)


@pytest.mark.parametrize("objective,method", [("dpo", "lora"), ("kto", "full"), ("reward", "adapter-v2"),
                                              ("grpo", "lora")])
def test_resume_after_crash_is_exact(setup, tmp_path, objective, method):
    base, pairs, sft = setup
    data = sft if objective == "grpo" else pairs
    extra = dict(reward="openseason.train.objectives.grpo:exact_match_reward", num_generations=2,
                 max_new_tokens=4, micro_batch_size=2) if objective == "grpo" else {}
    args = dict(for_method(method, FAST), max_steps=4, save_every=2, grad_accum=2, **extra)
    straight = finetune(base, data, method, tmp_path / "ref", objective=objective, **args)

    def crash(step, row):
        if step == 3:
            raise KeyboardInterrupt  # dies after step 3, with step-000002 on disk

    with pytest.raises(KeyboardInterrupt):
        finetune(base, data, method, tmp_path / "run", objective=objective, callbacks=[crash], **args)
    resumed = finetune(base, data, method, tmp_path / "run", objective=objective, resume="auto", **args)
    wa, wb = _weights(straight["final"]), _weights(resumed["final"])
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = _rows(tmp_path / "ref"), _rows(tmp_path / "run")
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]


def test_grpo_logs_reward_and_kl(setup, tmp_path):
    base, _, sft = setup
    finetune(base, sft, "lora", tmp_path / "run", objective="grpo", max_steps=2, num_generations=3,
             max_new_tokens=4, reward="openseason.train.objectives.grpo:exact_match_reward",
             **{**for_method("lora", FAST), "micro_batch_size": 2})
    row = _rows(tmp_path / "run")[-1]
    assert row["reward"] != "" and row["kl"] != "" and float(row["kl"]) >= 0


def test_objective_options_that_do_not_apply_are_errors(setup, tmp_path):
    from openseason.errors import ConfigError

    base, pairs, _ = setup
    with pytest.raises(ConfigError, match="--simpo-gamma does not apply to --objective dpo"):
        finetune(base, pairs, "lora", tmp_path / "x", objective="dpo", simpo_gamma=1.0, max_steps=1, **for_method("lora", FAST))
    with pytest.raises(ConfigError, match="--sft-weight does not apply to --objective orpo"):
        finetune(base, pairs, "lora", tmp_path / "z", objective="orpo", sft_weight=1.0, max_steps=1, **for_method("lora", FAST))
    with pytest.raises(ConfigError, match="--sft-weight must be >= 0"):
        finetune(base, pairs, "lora", tmp_path / "w", objective="dpo", sft_weight=-1.0, max_steps=1, **for_method("lora", FAST))
    with pytest.raises(ConfigError, match="needs --reward"):
        finetune(base, pairs, "lora", tmp_path / "y", objective="grpo", max_steps=1, **for_method("lora", FAST))


def test_reward_model_loads_and_scores(setup, tmp_path):
    from openseason.train.objectives.reward import load_reward_model, reward_scores

    base, pairs, _ = setup
    for method in ("full", "lora"):
        res = finetune(base, pairs, method, tmp_path / method, objective="reward", max_steps=1, **for_method(method, FAST))
        model = load_reward_model(res["final"])
        scores = reward_scores(model, torch.tensor([[1, 2, 3, 0]]), torch.tensor([3]))
        assert scores.shape == (1,) and torch.isfinite(scores).all()


def test_evaluate_reward_cli(setup, tmp_path, capsys):
    from openseason.cli import main

    base, pairs, _ = setup
    res = finetune(base, pairs, "lora", tmp_path / "rm", objective="reward", max_steps=1, **for_method("lora", FAST))
    assert main(["evaluate", "reward", str(res["final"]), "--data", str(pairs), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"] == 24 and 0 <= out["accuracy"] <= 1 and out["ci95"][0] <= out["accuracy"] <= out["ci95"][1]
    from openseason.evaluate.reward import evaluate_reward

    per = evaluate_reward(res["final"], pairs, per_pair=True)
    assert [row["id"] for row in per["per_pair"]] == [f"p{i}" for i in range(24)]
    assert per["accuracy"] == out["accuracy"] == sum(row["margin"] > 0 for row in per["per_pair"]) / 24
