"""Distilling step by step through the one loop: the paper's per-task token means (hand-computed and
against the released code's two-forward-pass formula), every method, exact resume, accumulation,
clear errors, and the built-in word-problem family whose rationales are computed."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from openseason.checkpoint import load_model
from openseason.data.sft import IGNORE
from openseason.data.tasks import rationale_rows, word_problem
from openseason.errors import ConfigError, DataError
from openseason.train.finetune import finetune
from openseason.train.objectives import combine
from openseason.train.objectives.distill import (LABEL, RATIONALE, DistillBatches, DistillData, DistillObjective,
                                                 load_rationale_rows)

from .helpers_train import for_method, make_base

FAST = dict(micro_batch_size=2, seed=3, lr=3e-3, val_size=2, lora_dropout=0.0, adapter_prompt_length=3,
            adapter_layers=1, progress=False, register=False, max_length=128, prompt_style="plain")


def write_rationales(path, n=12):
    path.mkdir(parents=True, exist_ok=True)
    rows = rationale_rows(n, seed=1)
    with open(path / "rationales.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("distill")
    return make_base(root / "base", tiny_tokenizer), write_rationales(root / "data")


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits are given: hidden_states returns them, lm_head is the identity."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.lm_head = torch.nn.Identity()

    def hidden_states(self, input_ids, **_):
        return self.logits


def test_each_task_is_a_mean_over_its_own_tokens_hand_computed():
    # vocab 2. Logits (ln 3, 0): p(0) = 3/4, p(1) = 1/4. Logits (0, 0): p = 1/2 each.
    l3 = math.log(3.0)
    T = 5
    logits = torch.zeros(2, T, 2)
    logits[0, 0] = torch.tensor([l3, 0.0])      # label row: ONE target token (1), loss ln 4
    logits[1, :4] = torch.tensor([l3, 0.0])     # rationale row: FOUR target tokens (0), loss ln(4/3) each
    labels = torch.full((2, T), IGNORE)
    labels[0, 1] = 1
    labels[1, 1:5] = 0
    batch = {"input_ids": torch.zeros(2, T, dtype=torch.long), "labels": labels,
             "task": torch.tensor([LABEL, RATIONALE])}
    obj = DistillObjective(alpha=0.3)
    counts = obj.counts(batch)
    assert counts == {"label_tokens": 1, "rationale_tokens": 4}
    terms, metrics = obj.loss(FixedLogits(logits), batch)
    got = float(combine(terms, counts, obj.weights))
    # by hand: 0.3 * ln 4 + 0.7 * (4 ln(4/3)) / 4
    expected = 0.3 * math.log(4) + 0.7 * math.log(4 / 3)
    assert got == pytest.approx(expected, abs=1e-6)
    # and NOT one token mean over the mixed batch, (ln 4 + 4 ln(4/3)) / 5
    mixed = (math.log(4) + 4 * math.log(4 / 3)) / 5
    assert abs(got - mixed) > 0.05
    assert metrics["label_loss"] == pytest.approx(math.log(4), abs=1e-6)
    assert metrics["rationale_loss"] == pytest.approx(4 * math.log(4 / 3), abs=1e-6)


def test_matches_the_released_codes_two_forward_passes(setup, tiny_tokenizer):
    """alpha * mean CE(label batch) + (1 - alpha) * mean CE(rationale batch), each computed on its own
    padded batch as T5's `outputs.loss` is in the paper's code, equals our one mixed-batch loss; the
    batch's rationales are much longer than its labels."""
    base, data = setup
    model = load_model(base)
    model.eval()
    distill = DistillData(load_rationale_rows(data), tiny_tokenizer, "plain", 128)
    batches = DistillBatches(distill.examples, 3, 0, 128)
    batch = batches.make([0, 1, 2])
    obj = DistillObjective(alpha=0.5)
    counts = obj.counts(batch)
    assert counts["rationale_tokens"] > 3 * counts["label_tokens"]
    terms, _ = obj.loss(model, batch)
    ours = combine(terms, counts, obj.weights)

    def hf_style_mean(rows):
        sub = DistillBatches(distill.examples, 3, 0, 128).make([0, 1, 2])
        keep = sub["task"] == rows
        ids, labels = sub["input_ids"][keep], sub["labels"][keep]
        logits = model(ids)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE)

    with torch.no_grad():
        reference = 0.5 * hf_style_mean(LABEL) + 0.5 * hf_style_mean(RATIONALE)
        ours = ours.detach()
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)
    with torch.no_grad():
        logits = model(batch["input_ids"])
        mixed = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1),
                                ignore_index=IGNORE)
    assert abs(float(mixed) - float(ours)) > 1e-3  # the mixed token mean is a different number


@pytest.mark.parametrize("method", ["full", "lora", "adapter", "adapter-v2"])
def test_every_method_trains_and_logs_both_tasks(setup, tmp_path, method):
    base, data = setup
    result = finetune(base, data, method, tmp_path / "run", objective="distill", alpha=0.5, max_steps=2,
                      eval_every=2, **for_method(method, FAST))
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    for col in ("label_loss", "rationale_loss", "val_label_loss", "val_rationale_loss"):
        assert col in header
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["objective"] == "distill" and report["alpha"] == 0.5
    assert report["label_prefix"] == "predict: " and math.isfinite(report["heldout_label_loss"])
    card = json.loads((result["final"] / "run_card.json").read_text())
    assert card["objective"] == "distill"


def test_grad_accumulation_matches_one_big_batch(setup, tmp_path):
    """The same 4 examples as one micro-batch or two of 2 (whose label and rationale token counts
    differ): the same step loss and gradient norm (compared before Adam, which magnifies float noise)."""
    base, data = setup
    args = dict(for_method("full", FAST), max_steps=1)
    finetune(base, data, "full", tmp_path / "a", objective="distill", **{**args, "micro_batch_size": 4})
    finetune(base, data, "full", tmp_path / "b", objective="distill", grad_accum=2, **args)
    ra, rb = (csv_rows(tmp_path / run)[0] for run in ("a", "b"))
    assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-5)
    assert float(ra["grad_norm"]) == pytest.approx(float(rb["grad_norm"]), rel=1e-4)
    assert float(ra["label_loss"]) == pytest.approx(float(rb["label_loss"]), rel=1e-5)


def csv_rows(run):
    import csv

    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_after_crash_is_exact(setup, tmp_path, method):
    base, data = setup
    args = dict(for_method(method, FAST), max_steps=4, save_every=2, grad_accum=2, objective="distill", alpha=0.4)
    straight = finetune(base, data, method, tmp_path / "ref", **args)

    def crash(step, row):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(base, data, method, tmp_path / "run", callbacks=[crash], **args)
    resumed = finetune(base, data, method, tmp_path / "run", resume="auto", **args)
    name = "model.safetensors" if method == "full" else "peft_weights.safetensors"
    wa, wb = load_file(str(straight["final"] / name)), load_file(str(resumed["final"] / name))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ra = (tmp_path / "ref" / "metrics.csv").read_text()
    rb = (tmp_path / "run" / "metrics.csv").read_text()
    assert [r.split(",")[1] for r in ra.splitlines()] == [r.split(",")[1] for r in rb.splitlines()]


def test_label_only_batches_and_custom_prefixes(setup, tiny_tokenizer):
    base, data = setup
    rows = load_rationale_rows(data)
    distill = DistillData(rows, tiny_tokenizer, "plain", 128, "[label] ", "[why] ")
    label_ex, rationale_ex = distill.examples[0]
    assert tiny_tokenizer.decode(label_ex["input_ids"]).count("[label] " + rows[0]["input"]) == 1
    assert "[why] " in tiny_tokenizer.decode(rationale_ex["input_ids"])
    only = DistillBatches(distill.examples, 2, 0, 128, label_only=True).next_batch()
    assert only["task"].tolist() == [LABEL, LABEL]
    both = DistillBatches(distill.examples, 2, 0, 128).next_batch()
    assert both["task"].tolist() == [LABEL, LABEL, RATIONALE, RATIONALE]


def test_clear_errors(setup, tmp_path):
    base, data = setup
    with pytest.raises(ConfigError, match="--alpha does not apply to --objective sft"):
        finetune(base, data, "lora", tmp_path / "x", alpha=0.5, max_steps=1, **for_method("lora", FAST))
    with pytest.raises(ConfigError, match=r"--alpha must be in \[0, 1\]"):
        finetune(base, data, "lora", tmp_path / "y", objective="distill", alpha=1.5, max_steps=1, **for_method("lora", FAST))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "rationales.jsonl").write_text('{"input": "q", "label": "1", "rationale": "r"}\n{"input": "q", "label": 2}\n')
    with pytest.raises(DataError, match="rationale") as info:
        finetune(base, bad, "lora", tmp_path / "z", objective="distill", max_steps=1, **for_method("lora", FAST))
    assert "rationales.jsonl:2" in str(info.value)
    with pytest.raises(DataError, match="no such prepared directory"):  # checked before the run starts
        finetune(base, tmp_path / "nothing", "lora", tmp_path / "w", objective="distill", max_steps=1, **for_method("lora", FAST))


def test_word_problem_rationales_compute_their_labels():
    rng = random.Random(0)
    for _ in range(200):
        question, label, rationale = word_problem(rng)
        value = None
        for step in rationale.rstrip(".").split(". "):
            lhs, rhs = step.split(" = ")
            a, op, b = lhs.split()
            assert value is None or int(a) == value
            value = int(a) + int(b) if op == "+" else int(a) - int(b)
            assert value == int(rhs) and 0 <= value <= 19
        assert str(value) == label
        assert question.split(" has ")[1].split()[0] == rationale.split()[0]


def test_evaluate_uses_the_label_prefix_only_and_can_show_rationales(setup, tmp_path, capsys):
    """`openseason evaluate tasks` on a distilled checkpoint: label accuracy from `predict:` prompts
    (the trained prefix, read from the run card); --explain adds the `explain:` generation per item."""
    from openseason.cli import main
    from openseason.evaluate.distill import evaluate_distilled

    base, data = setup
    result = finetune(base, data, "lora", tmp_path / "run", objective="distill", label_prefix="[p] ",
                      rationale_prefix="[e] ", max_steps=1, **for_method("lora", FAST))
    got = evaluate_distilled(result["final"], data / "rationales.jsonl", limit=3, max_new_tokens=2)
    assert got["n"] == 3 and got["label_prefix"] == "[p] " and "rationale" not in got["items"][0]
    assert got["label_accuracy"] == sum(i["correct"] for i in got["items"]) / 3
    assert main(["evaluate", "tasks", str(result["final"]), "--data", str(data / "rationales.jsonl"), "--limit", "2",
                 "--explain", "--max-new-tokens", "2", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["summary"]["n"] == 2 and "label_accuracy" in report["summary"]
    assert all("rationale" in item for item in report["details"]["items"])
    assert "rationale:" in capsys.readouterr().out


def test_parity_with_the_released_t5_formula():
    """A tiny random T5ForConditionalGeneration computes the paper's loss the released code's way,
    `alpha * model(**pred).loss + (1 - alpha) * model(**expl).loss`; the same logits laid out as one
    mixed batch give the same number through DistillObjective."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1,
                                   num_heads=2, decoder_start_token_id=0, pad_token_id=0)
    t5 = transformers.T5ForConditionalGeneration(config).eval()
    enc = torch.randint(1, 40, (2, 6))
    pred_labels = torch.tensor([[5, -100, -100, -100, -100, -100, -100], [7, 8, -100, -100, -100, -100, -100]])
    expl_labels = torch.randint(1, 40, (2, 7))
    expl_labels[1, 5:] = -100
    alpha = 0.3
    with torch.no_grad():
        pred, expl = t5(input_ids=enc, labels=pred_labels), t5(input_ids=enc, labels=expl_labels)
        released = alpha * pred.loss + (1 - alpha) * expl.loss
    # lay the four rows out as a decoder-only batch: position t's logits predict labels[:, t + 1]
    logits = torch.cat([pred.logits, expl.logits])
    logits = torch.cat([logits, torch.zeros(4, 1, 40)], dim=1)
    labels = torch.cat([torch.full((4, 1), IGNORE), torch.cat([pred_labels, expl_labels])], dim=1)
    batch = {"input_ids": torch.zeros(4, 8, dtype=torch.long), "labels": labels,
             "task": torch.tensor([LABEL, LABEL, RATIONALE, RATIONALE])}
    obj = DistillObjective(alpha)
    terms, _ = obj.loss(FixedLogits(logits), batch)
    ours = combine(terms, obj.counts(batch), obj.weights)
    assert float(ours) == pytest.approx(float(released), rel=1e-6)
