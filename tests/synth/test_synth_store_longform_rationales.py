"""Stage logs (torn lines, failures, corruption), LongForm reverse instructions and rationales."""
from __future__ import annotations

import json

import pytest

from openseason.errors import DataError
from openseason.generation.client import ScriptedClient
from openseason.synth.rationales import parse_rationale, rationales
from openseason.synth.reverse_instructions import clean_instruction, reverse_instructions
from openseason.synth.store import StageLog


def test_stage_log_resumes_and_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    log = StageLog(path, "s", {"a": 1})
    k1, k2 = log.key("one"), log.key("two")
    log.record(k1, {"text": "1"})
    log.record_failure(k2, "HTTP 503")
    log.close()
    with open(path, "a") as f:
        f.write('{"key": "zzz", "status": "ok", "res')  # killed mid-write
    again = StageLog(path, "s", {"a": 1})
    assert again.torn_lines == 1 and again.get(k1) == {"text": "1"} and again.failure(k2) == "HTTP 503"
    again.record(k2, {"text": "2"})  # the retry succeeds; the later row wins
    again.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(l) for l in lines)
    third = StageLog(path, "s", {"a": 1})
    assert third.get(k2) == {"text": "2"} and third.counts() == {"ok": 2, "failed": 0}
    assert StageLog(path, "s", {"a": 2}).key("one") != k1  # another config never reuses answers


def test_stage_log_reports_corruption_with_file_and_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"key": "a", "status": "ok", "result": 1}\nnot json\n{"key": "b", "status": "ok"}\n')
    with pytest.raises(DataError, match=r"log.jsonl:2"):
        StageLog(path, "s", {})


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "docs.jsonl"
    docs = [{"id": "d1", "text": "Tomatoes need six hours of sun. Water them deeply twice a week.", "source": "c4"},
            {"id": "d2", "output": "The treaty was signed in 1648 and ended thirty years of war in Europe."},
            {"id": "d3", "text": "Preheat the oven. Mix flour and butter. Bake for twenty minutes."}]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def test_reverse_instructions_all_styles_with_length_hint(corpus, tmp_path):
    script = []
    for doc in ("Tomatoes", "treaty", "Preheat"):
        script += [{"expect": doc, "text": " Instruction: How do I grow tomatoes?\n\nextra"},
                   {"expect": "casual message", "text": ' "hey how do i grow tomatoes lol"'},
                   {"expect": "search-engine query", "text": "   "}]
    backend = ScriptedClient(script)
    report = reverse_instructions(corpus, backend, tmp_path / "out", mode="all", length_hint_prob=1.0)
    backend.assert_done()
    rows = [json.loads(l) for l in open(tmp_path / "out/longform.jsonl")]
    assert report["filters"]["reverse-instructions"] == {"kept": 6, "empty instruction": 3}
    assert [r["subset"] for r in rows] == ["instruction", "chatbot"] * 3
    assert rows[0]["input"].startswith("How do I grow tomatoes? ") and rows[0]["length_hint"]
    assert rows[1]["input"].startswith("hey how do i grow tomatoes lol")
    assert rows[2]["output"].startswith("The treaty") and rows[0]["source"] == "c4"
    assert any(w in rows[0]["length_hint"] for w in ("words", "sentences"))
    rejected = [json.loads(l) for l in open(tmp_path / "out/rejected.jsonl")]
    assert {r["reason"] for r in rejected} == {"empty instruction"}
    # Same command again: everything comes from the log.
    reverse_instructions(corpus, ScriptedClient([]), tmp_path / "out", mode="all", length_hint_prob=1.0)


def test_reverse_instructions_random_style_is_one_per_document(corpus, tmp_path):
    backend = ScriptedClient(["Explain it."] * 3)
    reverse_instructions(corpus, backend, tmp_path / "o", seed=3)
    rows = [json.loads(l) for l in open(tmp_path / "o/longform.jsonl")]
    assert len(rows) == 3 and all(r["length_hint"] is None for r in rows)
    assert clean_instruction("Query: 'best tomato soil'", "query") == "best tomato soil"


def test_parse_rationale():
    assert parse_rationale("Two packs hold 24. So the answer is 3.") == ("Two packs hold 24.", "3")
    assert parse_rationale("Because it rains. so the answer is: yes\nQ: next") == ("Because it rains.", "yes")
    assert parse_rationale("I think 3.") is None


def test_rationales_multitask_rows(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "q1", "question": "What is 6 times 7?", "answer": "42"}) + "\n" +
                    json.dumps({"id": "q2", "question": "Is ice cold?", "answer": "yes"}) + "\n" +
                    json.dumps({"id": "q3", "question": "Capital of France?", "answer": "Paris"}) + "\n")
    backend = ScriptedClient([
        {"expect": "Q: What is 6 times 7?\nA:", "text": " Six sevens are 42. So the answer is 42."},
        {"expect": "Q: Is ice cold?", "text": " Ice is frozen water, colder than 0 C. So the answer is No."},
        {"expect": "Q: Capital of France?", "text": " Paris."}])
    report = rationales(data, backend, tmp_path / "out", input_field="question", label_field="answer",
                        drop_mismatched=True)
    backend.assert_done()
    assert report["filters"]["rationales"] == {"kept": 1, "teacher label disagrees with gold": 1,
                                               "no 'So the answer is'": 1}
    rows = [json.loads(l) for l in open(tmp_path / "out/multitask.jsonl")]
    assert rows == [
        {"id": "q1-predict", "task": "predict", "input": "predict: What is 6 times 7?", "output": "42"},
        {"id": "q1-explain", "task": "explain", "input": "explain: What is 6 times 7?", "output": "Six sevens are 42."}]
    prompt = backend.prompts[0]
    assert prompt.count("\nA: ") == 4 and prompt.endswith("Q: What is 6 times 7?\nA:")  # 4 built-in exemplars
