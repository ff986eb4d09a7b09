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


def test_repeated_answer_phrase_is_read_at_the_last_one_or_rejected():
    from openseason.synth.rationales import parse_rationale_checked

    text = "Two and two make four. So the answer is 4. Checking again: yes. So the answer is 4."
    assert parse_rationale(text) == ("Two and two make four. So the answer is 4. Checking again: yes.", "4")
    assert parse_rationale_checked(text)[1] is None
    changed = "First I thought 3. So the answer is 3. But recount: four. So the answer is 4."
    assert parse_rationale(changed)[1] == "4"
    assert parse_rationale_checked(changed) == (None, "answer phrase repeated with different labels")
    assert parse_rationale_checked("So the answer is 4.") == (None, "empty rationale")
    assert parse_rationale_checked("Because. So the answer is")[1] == "empty label"


def test_teacher_agreement_is_measured_before_dropping_and_rejects_match_counts(tmp_path):
    data = tmp_path / "data.jsonl"
    answers = ["7", "7", "7", "7", "7", "8", "9"]   # 2 of 7 disagree with gold "7"
    data.write_text("".join(json.dumps({"id": f"q{i}", "input": f"What is 3 + 4? ({i})", "label": "7"}) + "\n"
                            for i in range(7)) + json.dumps({"id": "bad", "input": "Unanswered?", "label": "x"}) + "\n")
    backend = ScriptedClient([(f"({i})\nA:", f" Three plus four. So the answer is {a}.") for i, a in enumerate(answers)]
                             + [("Unanswered?", " I do not know.")])
    report = rationales(data, backend, tmp_path / "out", drop_mismatched=True, chunk_size=3)
    assert report["counts"]["teacher_agreement"] == pytest.approx(5 / 7) and report["counts"]["kept"] == 5
    rejected = [json.loads(l) for l in open(tmp_path / "out/rejected.jsonl")]
    assert sorted(r["reason"] for r in rejected) == sorted(
        k for k, v in report["filters"]["rationales"].items() if not k.startswith("kept") for _ in range(v))
    assert len(rejected) == 3 and report["ok"]


def test_reverse_instructions_writes_as_it_goes_and_resumes_to_identical_files(corpus, tmp_path):
    rule = [(lambda prompt: True, "Describe it in detail.")]

    class Stopping(ScriptedClient):
        def _complete_many(self, requests):
            if len(self.calls) >= 2:
                raise KeyboardInterrupt  # stopped in the second chunk
            return super()._complete_many(requests)

    reverse_instructions(corpus, ScriptedClient(rule), tmp_path / "whole", chunk_size=2)
    with pytest.raises(KeyboardInterrupt):
        reverse_instructions(corpus, Stopping(rule), tmp_path / "part", chunk_size=2)
    partial = [json.loads(l) for l in open(tmp_path / "part/longform.jsonl")]
    whole = (tmp_path / "whole/longform.jsonl").read_text()
    assert len(partial) == 2 and whole.startswith((tmp_path / "part/longform.jsonl").read_text())
    report = reverse_instructions(corpus, ScriptedClient(rule), tmp_path / "part", chunk_size=2)
    assert report["ok"] and report["cost"]["calls"] == 1
    for name in ("longform.jsonl", "conversations.jsonl", "rejected.jsonl"):
        assert (tmp_path / "part" / name).read_text() == (tmp_path / "whole" / name).read_text()
