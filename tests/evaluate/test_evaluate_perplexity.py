"""Perplexity equals what transformers computes for the same converted model on the same text."""
import json
import math

import pytest
import torch

from openseason import LLM
from openseason.cli import main
from openseason.errors import DataError
from openseason.evaluate.perplexity import ScoringItem, perplexity, sliding_windows

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 9,
         "Instruction: add 2 and 3. Response: 5",
         "Below is an instruction that describes a task. Write a response that appropriately completes it. " * 2]


def _hf_strided_nll(hf, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """The usual strided evaluation with transformers: labels -100 on context, loss * scored tokens."""
    nll, count, prev_end = 0.0, 0, 0
    seq = torch.tensor([ids])
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        trg_len = end - prev_end
        input_ids = seq[:, begin:end]
        labels = input_ids.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            loss = hf(input_ids, labels=labels).loss
        scored = int((labels[:, 1:] != -100).sum())
        nll += float(loss) * scored
        count += scored
        prev_end = end
        if end == len(ids):
            break
    return nll, count


@pytest.mark.parametrize("window,stride", [(64, 64), (32, 8), (16, 16)])
def test_perplexity_equals_transformers(tmp_path, hf_and_ours, window, stride):
    _hf_dir, hf, ckpt = hf_and_ours
    llm = LLM.load(ckpt, device="cpu")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    ours = perplexity(llm, data, window=window, stride=stride, batch_size=3)
    nll, count = 0.0, 0
    for text in TEXTS:
        n, c = _hf_strided_nll(hf, llm.tokenizer.encode(text), window, stride)
        nll, count = nll + n, count + c
    assert ours["tokens"] == count
    assert ours["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_every_target_scored_exactly_once():
    item = ScoringItem(list(range(50)), [True] * 50)
    for window, stride in [(10, 10), (10, 3), (16, 5), (64, 64)]:
        windows = sliding_windows(item, window, stride)
        scored = sum(sum(w.targets) for w in windows)
        assert scored == (49 if stride < window or window >= 50 else 50 - math.ceil(50 / window))
        assert all(len(w.ids) <= window for w in windows)


def test_conversations_score_assistant_tokens_only(tmp_path, hf_and_ours):
    _hf_dir, _hf, ckpt = hf_and_ours
    llm = LLM.load(ckpt, device="cpu")
    conv = tmp_path / "conversations.jsonl"
    messages = [{"role": "user", "content": "add 2 and 3"}, {"role": "assistant", "content": "5"}]
    conv.write_text(json.dumps({"id": "1", "source": "t", "messages": messages, "meta": {}}) + "\n")
    result = perplexity(llm, conv, style="alpaca")
    from openseason.data.sft import tokenize_conversation
    from openseason.prompts import get_style

    enc = tokenize_conversation(messages, llm.tokenizer, get_style("alpaca"), 10**6)
    assert result["tokens"] == sum(1 for label in enc["labels"] if label != -100)
    assert result["kind"] == "conversations"
    # no --style and nothing stored with the data: the checkpoint's chat format ("plain" here)
    plain = tokenize_conversation(messages, llm.tokenizer, get_style("plain"), 10**6)
    assert llm.prompt_style == "plain"
    assert perplexity(llm, conv)["tokens"] == sum(1 for label in plain["labels"] if label != -100)


def test_cli_json_and_bad_input(tmp_path, hf_and_ours, capsys):
    _hf_dir, _hf, ckpt = hf_and_ours
    data = tmp_path / "docs.jsonl"
    data.write_text(json.dumps({"text": TEXTS[0]}) + "\n")
    assert main(["evaluate", "perplexity", str(ckpt), "--data", str(data), "--json", "--out", str(tmp_path / "r")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["perplexity"] > 1 and result["tokens"] > 0
    card = json.loads((ckpt / "run_card.json").read_text())
    assert card["evaluations"]["perplexity"]["tokens"] == result["tokens"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"nope": 1}\n')
    assert main(["evaluate", "perplexity", str(ckpt), "--data", str(bad)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    with pytest.raises(DataError):
        perplexity(LLM.load(ckpt, device="cpu"), tmp_path / "missing.jsonl")
