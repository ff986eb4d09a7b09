"""SFT tokenization against hand-built expectations: loss masks, EOS, truncation, packing, resume."""
from __future__ import annotations

import json

import pytest
import torch

from openseason.config import Config
from openseason.prompts import encode_chat
from openseason.data.sft import (IGNORE, SFTData, ShuffledSampler, batches, collate, load_conversations,
                                 prepared_style, tokenize_conversation)
from openseason.model import GPT
from openseason.tokenizer import train_bpe

CONV = [{"role": "user", "content": "add 2 and 3"}, {"role": "assistant", "content": "5"},
        {"role": "user", "content": "add 4 and 4"}, {"role": "assistant", "content": "8"}]


def enc(tok, text):
    return tok.encode(text, bos=False)


def test_oasst_every_assistant_turn_trained_with_its_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    eos = tok.eos_id
    p1 = enc(tok, "<|prompter|>add 2 and 3<|endoftext|><|assistant|>")
    r1 = enc(tok, "5<|endoftext|>")
    p2 = enc(tok, "<|prompter|>add 4 and 4<|endoftext|><|assistant|>")
    r2 = enc(tok, "8<|endoftext|>")
    assert r1[-1] == eos and r2[-1] == eos  # the literal marker is the tokenizer's EOS token
    ex = tokenize_conversation(CONV, tok, "oasst", max_length=512)
    assert ex["input_ids"] == p1 + r1 + p2 + r2
    assert ex["labels"] == [IGNORE] * len(p1) + r1 + [IGNORE] * len(p2) + r2
    everything = tokenize_conversation(CONV, tok, "oasst", max_length=512, train_on="all")
    assert everything["labels"] == everything["input_ids"]


def test_eos_styles_append_the_tokenizer_eos_and_bos_follows_policy():
    tok = train_bpe(["### Instruction:\n### Response: add 2 and 3 five <s> </s>"] * 20, vocab_size=300,
                    special_tokens=("<s>", "</s>"), bos="<s>", eos="</s>", add_bos=True)
    ex = tokenize_conversation(CONV[:2], tok, "alpaca", max_length=512)
    prompt = enc(tok, "Below is an instruction that describes a task. Write a response that appropriately "
                      "completes the request.\n\n### Instruction:\nadd 2 and 3\n\n### Response:")
    reply = enc(tok, "5") + [tok.eos_id]
    assert ex["input_ids"] == [tok.bos_id] + prompt + reply
    assert ex["labels"] == [IGNORE] * (1 + len(prompt)) + reply
    # the inference prompt is tokenized the same way as training
    assert encode_chat(CONV[:1], tok, "alpaca") == [tok.bos_id] + prompt
    # llama-2-chat's literal "</s>" is the EOS token; BOS is still only the tokenizer's
    l2 = tokenize_conversation(CONV, tok, "llama-2-chat", max_length=512)
    assert l2["input_ids"][0] == tok.bos_id and l2["input_ids"].count(tok.bos_id) == 2  # "<s>" between turns
    assert [t for t in l2["labels"] if t != IGNORE].count(tok.eos_id) == 2


def test_truncation_policies(tiny_tokenizer):
    tok = tiny_tokenizer
    full = tokenize_conversation(CONV, tok, "chatml", max_length=10_000)
    n = len(full["input_ids"])
    right = tokenize_conversation(CONV, tok, "chatml", max_length=n - 5)
    assert right["input_ids"] == full["input_ids"][:n - 5] and right["labels"] == full["labels"][:n - 5]
    left = tokenize_conversation(CONV, tok, "chatml", max_length=n - 5, truncation="left")
    assert left["input_ids"] == full["input_ids"][5:] and left["labels"] == full["labels"][5:]
    assert tokenize_conversation(CONV, tok, "chatml", max_length=n - 1, truncation="drop") is None
    assert tokenize_conversation(CONV, tok, "chatml", max_length=n, truncation="drop") == full


def test_sftdata_reports_drops_and_uses_alpaca_input_sections(tiny_tokenizer):
    records = [{"id": "a", "messages": CONV},
               {"id": "b", "messages": [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "y"}]},
               {"id": "c", "messages": [{"role": "user", "content": "Sum.\n\n2, 3"}, {"role": "assistant", "content": "5"}],
                "meta": {"instruction": "Sum.", "input": "2, 3"}}]
    data = SFTData(records, tiny_tokenizer, "alpaca", max_length=120)
    assert data.report["dropped"] == {"no_target_tokens": 1} and len(data) == 2
    text = tiny_tokenizer.decode(data[1]["input_ids"])
    assert "### Input:\n2, 3\n\n### Response:" in text


def test_collate_padding_and_packing(tiny_tokenizer):
    a = {"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]}
    b = {"input_ids": [4, 5], "labels": [4, 5]}
    c = {"input_ids": [6, 7, 8, 9], "labels": [IGNORE, IGNORE, 8, 9]}
    padded = collate([a, b], pad_id=0, max_length=8)
    assert padded["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert padded["labels"].tolist() == [[IGNORE, 2, 3], [4, 5, IGNORE]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    packed = collate([a, b, c], pad_id=0, max_length=6, packing=True)
    # a+b fill 5 of 6 tokens, c does not fit behind them; T is the longest row
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert packed["segment_ids"].tolist() == [[1, 1, 1, 2, 2], [1, 1, 1, 1, 0]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    # the first token of each packed conversation is never a target (no prediction across a boundary)
    assert packed["labels"].tolist() == [[IGNORE, 2, 3, IGNORE, 5], [IGNORE, IGNORE, 8, 9, IGNORE]]
    assert packed["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]


def test_packed_logits_equal_separate_logits(tiny_tokenizer):
    model = GPT(Config.from_name("tiny-llama")).eval()
    data = SFTData([{"messages": CONV}, {"messages": CONV[:2]}], tiny_tokenizer, "chatml", max_length=256)
    packed = collate(data.examples, pad_id=tiny_tokenizer.pad_id, max_length=256, packing=True)
    assert packed["input_ids"].shape[0] == 1
    with torch.no_grad():
        logits = model(packed["input_ids"], position_ids=packed["position_ids"],
                       attention_mask=packed["attention_mask"], segment_ids=packed["segment_ids"])
        n0 = len(data[0]["input_ids"])
        for start, ex in ((0, data[0]), (n0, data[1])):
            alone = model(torch.tensor([ex["input_ids"]]))
            got = logits[:, start:start + len(ex["input_ids"])]
            torch.testing.assert_close(got, alone, atol=1e-4, rtol=1e-4)


def test_sampler_is_deterministic_and_resumes_exactly():
    s = ShuffledSampler(7, seed=3)
    stream = [next(s) for _ in range(20)]
    assert sorted(stream[:7]) == list(range(7)) and sorted(stream[7:14]) == list(range(7))
    assert stream[:7] != stream[7:14]  # a new permutation each epoch
    assert [next(ShuffledSampler(7, seed=3)) for _ in range(1)] == stream[:1]
    s2 = ShuffledSampler(7, seed=3)
    for _ in range(9):
        next(s2)
    state = json.loads(json.dumps(s2.state_dict()))
    assert state["epoch"] == 1 and state["position"] == 2
    s3 = ShuffledSampler(7, seed=3)
    s3.load_state_dict(state)
    assert [next(s3) for _ in range(11)] == stream[9:20]
    assert stream != [next(ShuffledSampler(7, seed=4)) for _ in range(20)]


@pytest.mark.parametrize("packing", [False, True])
def test_batches_resume_mid_run(tiny_tokenizer, packing):
    records = [{"id": str(i), "messages": [{"role": "user", "content": "add %d and %d" % (i, i)},
                                           {"role": "assistant", "content": str(2 * i) * (i % 4 + 1)}]}
               for i in range(13)]
    data = SFTData(records, tiny_tokenizer, "oasst", max_length=64)
    full = list(batches(data, ShuffledSampler(len(data), seed=1), 2, 0, 64, packing=packing, max_batches=8))
    sampler = ShuffledSampler(len(data), seed=1)
    first = list(batches(data, sampler, 2, 0, 64, packing=packing, max_batches=3))
    resumed = ShuffledSampler(len(data), seed=1)
    resumed.load_state_dict(sampler.state_dict())
    rest = list(batches(data, resumed, 2, 0, 64, packing=packing, max_batches=5))
    for got, want in zip(first + rest, full):
        assert got["ids"] == want["ids"]
        assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["labels"], want["labels"])
    seen = [i for b in full for i in b["ids"]]
    assert sorted(seen[:13]) == sorted(r["id"] for r in records)  # one epoch covers every example once
    if packing:
        assert all(b["input_ids"].shape[0] <= 2 and b["input_ids"].shape[1] <= 64 for b in full)
        assert any(b["num_examples"] > 2 for b in full)


def test_load_prepared_directory(tmp_path, tiny_tokenizer):
    (tmp_path / "conversations.jsonl").write_text(json.dumps({"id": "x", "source": "t", "messages": CONV, "meta": {}}) + "\n")
    (tmp_path / "prompt_style.json").write_text(json.dumps({"name": "oasst"}))
    assert prepared_style(tmp_path) == "oasst"
    assert load_conversations(tmp_path)[0]["messages"] == CONV
    data = SFTData.from_prepared(tmp_path, tiny_tokenizer, max_length=128)
    assert data.style.name == "oasst" and len(data) == 1
