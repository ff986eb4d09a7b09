"""Evaluation keeps what it measured: per-item predictions of `evaluate tasks` and `evaluate judge`,
`generate --chat` in the checkpoint's prompt style, and memorization of training sequences read from
a token directory the way pretraining cut them."""
import json

import pytest
import torch

from openseason import LLM
from openseason.cli import main
from openseason.errors import DataError


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tasks_write_every_item_next_to_the_report(tmp_path, hf_and_ours, capsys):
    from openseason.evaluate.metrics import exact_match, rouge_l

    _hf_dir, _hf, ckpt = hf_and_ours
    data = tmp_path / "heldout.jsonl"
    rows = [{"id": "alpaca-1", "instruction": "Add the numbers", "input": "2 and 3", "output": "5"},
            {"id": "ref-2", "prompt": "The quick brown fox", "reference": "jumps over the lazy dog"},
            {"id": "chat-3", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                          {"role": "user", "content": "Count to three"},
                                          {"role": "assistant", "content": "1 2 3"}]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main(["evaluate", "tasks", str(ckpt), "--data", str(data), "--out", str(out), "--device", "cpu",
                 "--max-new-tokens", "6", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    items = _rows(out / "predictions.jsonl")
    assert [i["id"] for i in items] == ["alpaca-1", "ref-2", "chat-3"]
    assert items[0]["prompt"] == "Add the numbers\n\n2 and 3" and items[0]["reference"] == "5"
    assert items[2]["prompt"] == "Count to three" and items[2]["reference"] == "1 2 3"
    assert [m["content"] for m in items[2]["messages"]] == ["Hi", "Hello", "Count to three"]
    llm = LLM.load(ckpt, device="cpu")
    assert items[1]["output"] == llm.chat([{"role": "user", "content": "The quick brown fox"}], max_new_tokens=6,
                                          temperature=0.0)
    for item in items:
        assert item["score"] == {"exact_match": exact_match(item["output"], item["reference"]),
                                 "rouge_l": rouge_l(item["output"], item["reference"])}
    assert summary["n"] == 3
    assert summary["rouge_l"] == pytest.approx(sum(i["score"]["rouge_l"] for i in items) / 3)
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["predictions"] == str(out / "predictions.jsonl")
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*tmp*"))


def test_tasks_read_a_prepared_directory(tmp_path, hf_and_ours, capsys):
    from openseason.data.prepare import prepare

    _hf_dir, _hf, ckpt = hf_and_ours
    prepared = tmp_path / "prepared"
    (tmp_path / "c.json").write_text(json.dumps([{"instruction": "Add 2 and 3", "input": "", "output": "5"},
                                                 {"instruction": "Say hi", "input": "", "output": "hi"}]))
    prepare("alpaca", [tmp_path / "c.json"], prepared, progress=False)
    first = json.loads((prepared / "conversations.jsonl").read_text().splitlines()[0])
    assert main(["evaluate", "tasks", str(ckpt), "--data", str(prepared), "--limit", "2", "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--max-new-tokens", "2", "--json"]) == 0
    items = _rows(tmp_path / "out" / "predictions.jsonl")
    assert len(items) == 2 and items[0]["id"] == first["id"]
    assert items[0]["reference"] == first["messages"][-1]["content"]


def test_tasks_bad_data_errors_name_the_place_and_suggest_no_missing_flag(tmp_path, hf_and_ours, capsys):
    _hf_dir, _hf, ckpt = hf_and_ours
    (tmp_path / "bad.jsonl").write_text('{"instruction": "x", "output": "y"}\n{not json\n')
    (tmp_path / "noref.jsonl").write_text('{"instruction": "x"}\n')
    (tmp_path / "empty_dir").mkdir()
    for data, message in [("bad.jsonl", "bad.jsonl:2:2: malformed JSON"), ("noref.jsonl", "noref.jsonl:1: row has no "
                          "reference"), ("empty_dir", "needs conversations.jsonl")]:
        assert main(["evaluate", "tasks", str(ckpt), "--data", str(tmp_path / data), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert "--on-error" not in err


def test_judge_keeps_both_answers_and_both_orders(tmp_path, capsys):
    from openseason.evaluate.judge import compare

    def first_wins_unless_tied(prompt):
        return "8 6\nthe first is better"

    questions = [{"id": "q1", "prompt": "Say hi"}]
    result = compare(first_wins_unless_tied, questions, {"q1": "hello there"}, {"q1": "hi"})
    [item] = result["judgements"]
    assert item["answer_a"] == "hello there" and item["answer_b"] == "hi"
    first, second = item["orders"]
    assert (first["a_first"], first["score_a"], first["score_b"], first["verdict"]) == (True, 8.0, 6.0, "win")
    assert (second["a_first"], second["score_a"], second["score_b"], second["verdict"]) == (False, 6.0, 8.0, "loss")
    assert item["outcome"] == "tie" and "the first is better" in first["reply"]


def test_generate_chat_applies_the_stored_style_and_takes_an_override(tmp_path, hf_and_ours, capsys):
    import shutil

    from openseason.checkpoint import update_run_card

    _hf_dir, _hf, ckpt = hf_and_ours
    styled = tmp_path / "styled"
    shutil.copytree(ckpt, styled)
    update_run_card(styled, prompt_style="oasst")
    llm = LLM.load(styled, device="cpu")
    prompt = "Add 2 and 3"
    want = {style: llm.chat([{"role": "user", "content": prompt}], style=style, max_new_tokens=5, temperature=0.0)
            for style in ("oasst", "chatml")}
    assert main(["generate", str(styled), "--prompt", prompt, "--chat", "--max-new-tokens", "5",
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.out == want["oasst"] + "\n" and "'oasst'" in captured.err
    assert main(["generate", str(styled), "--prompt", prompt, "--prompt-style", "chatml", "--max-new-tokens", "5",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out == want["chatml"] + "\n"
    raw = llm.generate(prompt, max_new_tokens=5)
    assert len({want["oasst"], want["chatml"], raw}) == 3  # the format changes the answer: the test can tell
    assert main(["generate", str(styled), "--prompt", prompt, "--max-new-tokens", "5", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == raw + "\n"
    assert main(["generate", str(styled), "--prompt", prompt, "--prompt-style", "nope", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown --prompt-style 'nope'" in err and "alpaca" in err and "chat-template" in err


@pytest.fixture(scope="module")
def memorized_run(tmp_path_factory, tiny_tokenizer):
    """A token directory, and a tiny checkpoint trained on its first 4 training sequences (seq_len 48) only."""
    from openseason.checkpoint import save_checkpoint
    from openseason.config import Config
    from openseason.data.shards import PretrainLoader
    from openseason.data.tokenize import tokenize_documents
    from openseason.model import GPT

    root = tmp_path_factory.mktemp("mem")
    words = "the quick brown fox jumps over lazy dog add numbers count to three response instruction".split()
    gen = torch.Generator().manual_seed(3)
    docs = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (60,), generator=gen)) for _ in range(12)]
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tiny_tokenizer.save(root / "tok")
    tokenize_documents([root / "docs.jsonl"], root / "tok", root / "tokens", progress=False)
    seq_len = 48
    loader = PretrainLoader(root / "tokens", seq_len, global_batch=4)
    assert loader.num_samples >= 10
    train = torch.from_numpy(torch.stack([torch.from_numpy(loader.sample(j)) for j in range(4)]).numpy())
    torch.manual_seed(0)
    model = GPT(Config.from_name("tiny-neox", block_size=64, n_embd=96, n_head=4, intermediate_size=384))
    model.init_weights()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(train[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), train[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    ckpt = save_checkpoint(root / "ckpt", model.eval(), tokenizer_dir=root / "tok",
                           run_card={"recipe": {"seq_len": seq_len, "global_batch": 4}})
    return root, ckpt, loader


def test_memorization_of_training_sequences_from_a_token_directory(tmp_path, memorized_run, capsys):
    root, ckpt, loader = memorized_run
    out = tmp_path / "mem"
    assert main(["evaluate", "memorization", str(ckpt), "--data", str(root / "tokens"), "--prompt-len", "16",
                 "--gen-len", "16", "--limit", "10", "--device", "cpu", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["source"] == "tokens" and summary["seq_len"] == 48 and summary["tokenizer_matches"] is True
    scores = _rows(out / "scores.jsonl")
    assert [s["sequence"] for s in scores] == list(range(10))
    assert [s["offset"] for s in scores] == [48 * j for j in range(10)]
    assert [s["score"] for s in scores[:4]] == [1.0] * 4          # trained on: reproduced
    assert all(s["score"] < 1.0 for s in scores[4:])                # never seen: not
    memorized = _rows(out / "memorized.jsonl")
    assert [m["sequence"] for m in memorized] == [0, 1, 2, 3]
    tok = LLM.load(ckpt, device="cpu").tokenizer
    assert memorized[2]["prompt"] == tok.decode(loader.sample(2)[:16].tolist())
    assert memorized[2]["continuation"] == tok.decode(loader.sample(2)[16:32].tolist())


def test_memorization_lengths_and_seq_len_are_checked(tmp_path, memorized_run, capsys):
    from openseason.evaluate.memorization import sequences_from_tokens

    root, ckpt, _loader = memorized_run
    with pytest.raises(DataError, match="longer than a training sequence"):
        sequences_from_tokens(root / "tokens", seq_len=16, length=64)
    seqs, idx = sequences_from_tokens(root / "tokens", seq_len=20, length=21, limit=3)
    assert seqs.shape == (3, 21) and idx == [0, 1, 2]
    assert main(["evaluate", "memorization", str(ckpt), "--data", str(root / "docs.jsonl"), "--seq-len", "48",
                 "--device", "cpu", "--out", str(tmp_path / "m")]) == 2
    assert "--seq-len applies to a token directory" in capsys.readouterr().err


def test_memorization_warns_when_the_tokens_came_from_another_tokenizer(tmp_path, memorized_run, capsys):
    import shutil

    from openseason.tokenizer import train_bpe

    root, ckpt, _loader = memorized_run
    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    train_bpe(["completely different words for another vocabulary"] * 20, vocab_size=300).save(other)
    assert main(["evaluate", "memorization", str(other), "--data", str(root / "tokens"), "--limit", "2",
                 "--gen-len", "16", "--device", "cpu", "--out", str(tmp_path / "m"), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["tokenizer_matches"] is False
    assert "openseason: warning:" in captured.err and "another tokenizer file" in captured.err
