"""Self-improvement: beam search with the KV cache against full forwards, sentence BLEU, and the
end-to-end augmentation with a tiny random checkpoint."""
from __future__ import annotations

import json
import math

import pytest
import torch

from openseason.checkpoint import save_checkpoint
from openseason.config import Config
from openseason.model import GPT
from openseason.synth.self_improve import beam_search, self_improve, sentence_bleu


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = GPT(Config.from_name("tiny-neox"))
    model.init_weights(std=0.3)  # peaky distributions, so beams differ from greedy
    return model.eval()


def full_logprob(model, prompt, continuation):
    ids = torch.tensor([prompt + continuation])
    logp = torch.log_softmax(model(ids)[0].float(), dim=-1)
    return sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(continuation))


def test_one_beam_is_greedy_decoding(tiny_model):
    prompt = [5, 17, 42, 7]
    [(seq, score)] = beam_search(tiny_model, prompt, num_beams=1, max_new_tokens=6)
    ids = list(prompt)
    for _ in range(6):
        ids.append(int(tiny_model(torch.tensor([ids]))[0, -1].argmax()))
    assert seq == ids[len(prompt):]
    assert score == pytest.approx(full_logprob(tiny_model, prompt, seq), abs=1e-4)


def test_beam_scores_match_full_forward_and_are_ranked(tiny_model):
    prompt = [3, 99, 250, 11, 8]
    beams = beam_search(tiny_model, prompt, num_beams=4, max_new_tokens=5)
    assert len(beams) == 4 and len({tuple(s) for s, _ in beams}) == 4
    for seq, score in beams:  # the reordered KV cache gave the same numbers as recomputing from scratch
        assert score == pytest.approx(full_logprob(tiny_model, prompt, seq), abs=1e-4)
    normalized = [s / len(q) for q, s in beams]
    assert normalized == sorted(normalized, reverse=True)
    greedy = beam_search(tiny_model, prompt, num_beams=1, max_new_tokens=5)[0]
    assert beams[0][1] >= greedy[1] - 1e-4  # same length: the search found at least the greedy score


def test_single_step_beams_are_the_top_tokens(tiny_model):
    prompt = [1, 2, 3]
    beams = beam_search(tiny_model, prompt, num_beams=5, max_new_tokens=1)
    logp = torch.log_softmax(tiny_model(torch.tensor([prompt]))[0, -1].float(), -1)
    assert [s[0] for s, _ in beams] == logp.topk(5).indices.tolist()


def test_eos_ends_a_beam(tiny_model):
    prompt = [9, 8, 7]
    first = int(tiny_model(torch.tensor([prompt]))[0, -1].argmax())
    beams = beam_search(tiny_model, prompt, num_beams=2, max_new_tokens=4, eos_id=first)
    empty = [score for seq, score in beams if seq == []]  # EOS right away: a finished, empty beam
    assert empty and empty[0] == pytest.approx(full_logprob(tiny_model, prompt, [first]), abs=1e-4)
    assert all(first not in seq for seq, _ in beams)


def test_sentence_bleu():
    assert sentence_bleu("return a + b", "return a + b") == pytest.approx(1.0)
    assert sentence_bleu("completely different words", "return a + b") == 0.0
    # 3 of 4 unigrams, bigrams (1+1)/(3+1), trigrams (0+1)/(2+1), 4-grams (0+1)/(1+1); no brevity penalty
    expected = math.exp((math.log(3 / 4) + math.log(2 / 4) + math.log(1 / 3) + math.log(1 / 2)) / 4)
    assert sentence_bleu("return a - b", "return a + b") == pytest.approx(expected)


def test_self_improve_end_to_end(tiny_model, tiny_tokenizer, tmp_path):
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, tiny_model, tokenizer=tiny_tokenizer)
    data = tmp_path / "train.json"
    rows = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
            {"instruction": "Write the quick brown fox.", "input": "", "output": "The quick brown fox"},
            {"instruction": "Solve", "input": "2 * 3 = ?", "output": "6"}]
    data.write_text(json.dumps(rows))
    report = self_improve(data, ckpt, tmp_path / "out", num_beams=3, max_new_tokens=6, metric="rouge-l")
    added = [json.loads(l) for l in open(tmp_path / "out/added.jsonl")]
    augmented = json.loads((tmp_path / "out/augmented.json").read_text())
    assert augmented[:3] == rows and len(augmented) == 3 + len(added) == report["counts"]["augmented_total"]
    assert sum(report["filters"]["self-improve"].values()) == 3
    from openseason.synth.rouge import rouge_l

    logged = [json.loads(l)["result"] for l in open(tmp_path / "out/logs/beams.jsonl")]
    assert all(len(beams) == 3 for beams in logged)
    for row in added:  # the kept beam is the most similar one of the row's logged beams
        beams = next(b for b, r in zip(logged, rows) if r["instruction"] == row["instruction"])
        assert row["meta"]["score"] == max(rouge_l(b["text"], row["meta"]["reference"]) for b in beams if b["text"])
    before = (tmp_path / "out/logs/beams.jsonl").read_text()
    self_improve(data, ckpt, tmp_path / "out", num_beams=3, max_new_tokens=6, metric="rouge-l")
    assert (tmp_path / "out/logs/beams.jsonl").read_text() == before  # resumed entirely from the log


def test_self_improve_uses_the_checkpoints_chat_format_and_fails_when_nothing_is_left(tiny_model, tiny_tokenizer,
                                                                                       tmp_path, capsys):
    from openseason.cli import main

    ckpt = tmp_path / "plain-ckpt"
    save_checkpoint(ckpt, tiny_model, tokenizer=tiny_tokenizer, run_card={"prompt_style": "plain"})
    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
                                {"instruction": "Solve", "input": "2 * 3 = ?", "output": "6"}]))
    report = self_improve(data, ckpt, tmp_path / "out", num_beams=2, max_new_tokens=4)
    assert report["run"]["prompt_style"] == "plain" and "run_card.json" in report["run"]["prompt_style_reason"]
    assert report["ok"] and report["counts"]["skipped"] == 0
    assert report["counts"]["added"] + report["counts"]["rejected"] == 2
    # Every example skipped (prompt + new tokens over the window): status says so, the CLI exits 1.
    window = tiny_model.config.block_size
    code = main(["synth", "self-improve", "--data", str(data), "--checkpoint", str(ckpt), "--out",
                 str(tmp_path / "none"), "--num-beams", "2", "--max-tokens", str(window)])
    report = json.loads((tmp_path / "none/report.json").read_text())
    assert code == 1 and not report["ok"] and report["status"].startswith("incomplete: all 2 examples skipped")
    rejected = [json.loads(l) for l in open(tmp_path / "none/rejected.jsonl")]
    assert len(rejected) == 2 and all(r["reason"].startswith("skipped") for r in rejected)
