"""Self-Instruct pipeline: parsers and filters, end to end on the real seeds with a scripted teacher,
crash-resume, failed-call retry, exports and the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openseason.cli import main
from openseason.data.records import Conversation
from openseason.generation.client import RecordingClient, ScriptedClient, UnexpectedCall
from openseason.synth.blacklists import PRESETS, compile_blacklist
from openseason.synth.self_instruct import (filter_instances, heuristic_reject_reason, load_seeds, parse_alpaca_list,
                                            parse_instances_input_first, parse_instances_output_first,
                                            parse_numbered_list, self_instruct)

REPO = Path(__file__).resolve().parents[2]


def test_load_real_seeds(seeds_path):
    seeds = load_seeds(seeds_path)
    assert len(seeds) == 175 and sum(s.is_classification for s in seeds) == 26


def test_parse_numbered_list():
    text = " Write a haiku about rain.\n10. Name three   rivers in Africa.\n11) Sort these numbers: 3, 1, 2\n12. "
    assert parse_numbered_list(text, 9) == ["Write a haiku about rain.", "Name three rivers in Africa.",
                                            "Sort these numbers: 3, 1, 2", ""]


def test_heuristic_filters_paper_and_alpaca_blacklists():
    paper, alpaca = compile_blacklist(PRESETS["paper"]), compile_blacklist(PRESETS["alpaca"])
    assert heuristic_reject_reason("Tell a joke", paper) == "too short (<= 3 words)"
    assert heuristic_reject_reason(" ".join(["word"] * 151), paper) == "too long (> 150 words)"
    assert heuristic_reject_reason("Draw a map of the city center.", paper) == "blacklist: map"
    assert heuristic_reject_reason("Describe the IMAGES in this article.", paper) == "blacklist: images"
    assert heuristic_reject_reason("Summarize this mapping of keys to values.", paper) is None  # whole words only
    assert heuristic_reject_reason("Recommend some music for a long drive.", paper) is None
    assert heuristic_reject_reason("Recommend some music for a long drive.", alpaca) == "blacklist: music"
    assert heuristic_reject_reason("Write a program that prints primes.", paper) == "starts with 'Write a program'"
    assert heuristic_reject_reason("\"Quote\" this sentence for me please.", paper) == "starts with punctuation"
    assert heuristic_reject_reason("Ünderline the verbs in the sentence.", paper) == "starts with a non-ASCII character"


def test_instance_parsers():
    inp = parse_instances_input_first("Example 1\nInput: 2+2\nOutput: 4\n\nExample 2\nInput: 3+3\nOutput: 6")
    assert inp == [{"input": "2+2", "output": "4"}, {"input": "3+3", "output": "6"}]
    assert parse_instances_input_first("Output: A haiku.") == [{"input": "", "output": "A haiku."}]
    out = parse_instances_output_first("Class label: Yes\nInput: Is water wet?\nClass label: No\nInput: Is fire cold?")
    assert out == [{"input": "Is water wet?", "output": "Yes"}, {"input": "Is fire cold?", "output": "No"}]
    items = parse_alpaca_list(" Name a color.\n4. Input:\n<noinput>\n4. Output:\nBlue\n###\n5. Instruction: bad", 4)
    assert items == [{"instruction": "Name a color.", "input": "", "output": "Blue"}, None]


def test_instance_filters():
    kept, rejected, task = filter_instances([
        {"input": "a", "output": "a"}, {"input": "b", "output": ""}, {"input": "c", "output": "Steps:"},
        {"input": "d", "output": "x"}, {"input": "d", "output": "x"}, {"input": "", "output": "y"},
        {"input": "", "output": "z"}])
    assert task is None and kept == [{"input": "d", "output": "x"}, {"input": "", "output": "y"},
                                     {"input": "", "output": "z"}]
    assert [r for _, r in rejected] == ["input equals output", "empty output", "output ends with ':' (truncated)",
                                        "exact duplicate"]
    kept, rejected, task = filter_instances([{"input": "q", "output": "1"}, {"input": "q", "output": "2"}])
    assert kept == [] and task == "conflicting outputs for the same input"
    kept, rejected, task = filter_instances([{"input": str(i), "output": f"o{i}"} for i in range(8)])
    assert len(kept) == 5 and sum(r == "over 5 per task" for _, r in rejected) == 3


def scripted_run_script():
    gen1 = (" Suggest three names for a bakery that sells vegan pastries.\n10. Draw a picture of a cat.\n"
            "11. Hi there\n12. Write a program that sorts numbers.\n"
            "13. Classify the sentiment of a movie review as positive or negative.")
    # "Is there anything I can eat..." is seed_task_0 almost verbatim: the novelty filter rejects it; the
    # bakery line near-duplicates an instruction accepted earlier in the same batch.
    gen2 = (" Is there anything I can eat for a breakfast that doesn't include eggs, yet includes protein?\n"
            "10. Suggest three names for a bakery that sells vegan cakes.\n"
            "11. Translate the given sentence from English into French.")
    return [
        {"expect": "Here is a numbered list", "text": gen1},
        {"expect": "Here is a numbered list", "text": gen2},
        {"expect": "Task: Suggest three names", "text": " No"},
        {"expect": "Task: Classify the sentiment", "text": " Yes"},
        {"expect": "Task: Translate the given", "text": " No"},
        {"expect": "Task: Suggest three names", "text": "Example 1\nOutput: Crumb & Leaf\n\nExample 2\nOutput: Green Oven"},
        {"expect": "Class label:", "text": "Class label: Positive\nInput: I loved it.\nClass label: Negative\nInput: Dull."},
        {"expect": "Task: Translate the given",
         "text": "Example 1\nInput: Hello\nOutput: Bonjour\n\nExample 2\nInput: Hello\nOutput: Salut"},
    ]


def test_end_to_end_scripted_on_real_seeds(seeds_path, tmp_path):
    backend = ScriptedClient(scripted_run_script())
    report = self_instruct(seeds_path, backend, 3, tmp_path, batch_size=2, progress=False)
    backend.assert_done()  # every scripted answer was used, none was missing
    assert report["status"] == "complete" and report["ok"] is True
    assert_counts_equal_files(report, tmp_path)
    gen = report["filters"]["generate"]
    assert {k: v for k, v in gen.items() if k != "not needed (--num reached)"} == {
        "kept": 3, "blacklist: picture": 1, "too short (<= 3 words)": 1,
        "starts with 'Write a program'": 1, "too similar (ROUGE-L > 0.7)": 2}
    assert report["filters"]["classify"] == {"classification": 1, "not classification": 2}
    assert report["filters"]["filter"]["task dropped: conflicting outputs for the same input"] == 1
    alpaca = json.loads((tmp_path / "alpaca.json").read_text())
    assert alpaca == [
        {"instruction": "Suggest three names for a bakery that sells vegan pastries.", "input": "", "output": "Crumb & Leaf"},
        {"instruction": "Suggest three names for a bakery that sells vegan pastries.", "input": "", "output": "Green Oven"},
        {"instruction": "Classify the sentiment of a movie review as positive or negative.", "input": "I loved it.",
         "output": "Positive"},
        {"instruction": "Classify the sentiment of a movie review as positive or negative.", "input": "Dull.",
         "output": "Negative"}]
    # The generation prompts hold 8 demonstrations: 6 seeds + 2 machine ones once they exist.
    first = backend.prompts[0]
    assert first.rstrip().endswith("9.") and "\n8. " in first
    rejected = [json.loads(l) for l in open(tmp_path / "rejected_instructions.jsonl")]
    similar = [r for r in rejected if r["reason"].startswith("too similar")]
    assert similar[0]["max_rouge_l"] > 0.7 and any("breakfast" in k for k in similar[0]["most_similar"])
    assert similar[1]["most_similar"].get("Suggest three names for a bakery that sells vegan pastries.", 0) > 0.7
    kept = [json.loads(l) for l in open(tmp_path / "machine_instructions.jsonl")]
    assert all(0 <= k["max_rouge_l"] <= 0.7 and len(k["most_similar"]) == 10 for k in kept)
    for line in open(tmp_path / "conversations.jsonl"):
        Conversation.from_dict(json.loads(line)).validate()
    assert (tmp_path / "rouge_hist.png").read_bytes()[:4] == b"\x89PNG"
    assert report["diversity"]["unique_verbs"] == 3  # suggest, classify, translate
    # A rerun is answered entirely from the logs: a script with nothing in it is never called.
    again = self_instruct(seeds_path, ScriptedClient([]), 3, tmp_path, batch_size=2, progress=False)
    assert again["cost"]["calls"] == 0 and json.loads((tmp_path / "alpaca.json").read_text()) == alpaca


def test_scripted_backend_fails_on_unexpected_call(seeds_path, tmp_path):
    with pytest.raises(UnexpectedCall):
        self_instruct(seeds_path, ScriptedClient(scripted_run_script()[:4]), 3, tmp_path, batch_size=2, progress=False)


def test_alpaca_recipe(seeds_path, tmp_path, fake_teacher):
    report = self_instruct(seeds_path, fake_teacher, 12, tmp_path, recipe="alpaca", progress=False)
    assert report["counts"]["machine_instructions"] == 12 and "classify" not in report["filters"]
    assert report["run"]["blacklist"] == list(PRESETS["alpaca"])
    rows = json.loads((tmp_path / "alpaca.json").read_text())
    assert 0 < len(rows) <= 12 and all(set(r) == {"instruction", "input", "output"} for r in rows)
    assert "<noinput>" not in {r["input"] for r in rows}


def test_failed_calls_are_recorded_and_retried(seeds_path, tmp_path, fake_teacher):
    script = [{"error": "HTTP 503: overloaded (gave up after 6 attempts)"}] + [{"text": "x"}]
    first = self_instruct(seeds_path, ScriptedClient(script), 10, tmp_path / "run", batch_size=2, progress=False)
    assert first["status"].startswith("incomplete: generation batch 0: 1 call(s) failed (HTTP 503")
    assert first["ok"] is False and first["counts"]["failed_calls_pending"] == 1
    assert "no task kept" in first["status"]
    failures = [json.loads(l) for l in open(tmp_path / "run/failures.jsonl")]
    assert [f["stage"] for f in failures] == ["generate"] and "HTTP 503" in failures[0]["reason"]
    log = [json.loads(l) for l in open(tmp_path / "run/logs/generate.jsonl")]
    assert [r["status"] for r in log] == ["failed", "ok"] and "HTTP 503" in log[0]["reason"]
    # The "x" answer was stored; the rerun re-asks only the failed call, then continues.
    second = self_instruct(seeds_path, fake_teacher, 10, tmp_path / "run", batch_size=2, progress=False)
    assert second["status"] == "complete" and second["ok"] is True
    assert_counts_equal_files(second, tmp_path / "run")
    assert second["counts"]["machine_instructions"] == 10


def _lines(path):
    return [json.loads(l) for l in open(path)] if path.exists() else []


def assert_counts_equal_files(report, out):
    """Every dropped item is in a rejects file with its reason, and the report counts equal the files."""
    from collections import Counter

    out = Path(out)
    filters = report["filters"]
    instructions = Counter(r["reason"] for r in _lines(out / "rejected_instructions.jsonl"))
    assert instructions == Counter({k: v for k, v in filters.get("generate", {}).items() if k != "kept"})
    tasks = Counter(r["reason"] for r in _lines(out / "rejected_tasks.jsonl"))
    assert tasks == Counter({k: v for k, v in filters.get("filter", {}).items()
                             if k.startswith("task ")})
    instances = Counter(r["reason"] for r in _lines(out / "rejected_instances.jsonl"))
    expected = Counter({k: v for k, v in {**filters.get("filter", {}), **filters.get("instances", {})}.items()
                        if not k.startswith("task ") and k != "instances kept"})
    assert instances == expected
    assert report["counts"]["failed_calls_pending"] == len(_lines(out / "failures.jsonl"))
    assert report["counts"]["instances"] == len(json.loads((out / "alpaca.json").read_text()))
    assert report["counts"]["machine_instructions"] == len(_lines(out / "machine_instructions.jsonl"))


CRASHING_RUN = r"""
import os, sys
from openseason.generation.client import ScriptedClient
from openseason.synth.self_instruct import self_instruct

class Crash(ScriptedClient):
    def _complete_many(self, requests):
        out = super()._complete_many(requests)
        if self.position >= int(sys.argv[3]):
            os._exit(137)  # like kill -9: no cleanup, answers in flight are lost
        return out

self_instruct(sys.argv[1], Crash.from_file(sys.argv[2]), 8, sys.argv[4], batch_size=3, chunk_size=4, progress=False)
"""


def test_resume_after_crashes_gives_identical_output(seeds_path, tmp_path, fake_teacher):
    recording = tmp_path / "recording.jsonl"
    self_instruct(seeds_path, RecordingClient(fake_teacher, recording), 8, tmp_path / "ref", batch_size=3,
                  chunk_size=4, progress=False)
    total = sum(1 for _ in open(recording))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    crashes = 0
    for _ in range(total):  # each run is killed after a few calls of its own until one finishes
        proc = subprocess.run([sys.executable, "-c", CRASHING_RUN, str(seeds_path), str(recording),
                               str(4 + crashes % 3), str(run)], env=env, capture_output=True, text=True)
        assert proc.returncode in (0, 137), proc.stderr
        if proc.returncode == 0:
            break
        crashes += 1
    assert crashes >= 4
    for name in ("alpaca.json", "machine_instructions.jsonl", "tasks.jsonl", "rejected_instructions.jsonl",
                 "rejected_instances.jsonl"):
        assert (run / name).read_text() == (tmp_path / "ref" / name).read_text(), name

    def conversations(path):  # identical except for which backend answered
        rows = [json.loads(l) for l in open(path)]
        for r in rows:
            r["meta"].pop("generator")
        return rows

    assert conversations(run / "conversations.jsonl") == conversations(tmp_path / "ref/conversations.jsonl")
    rows = [json.loads(l) for f in sorted((run / "logs").glob("*.jsonl")) for l in open(f)]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == total  # every answer once: no duplicates, nothing lost


def test_cli_self_instruct_with_recording_and_bad_input(seeds_path, tmp_path, fake_teacher, capsys):
    recording = tmp_path / "rec.jsonl"
    self_instruct(seeds_path, RecordingClient(fake_teacher, recording), 4, tmp_path / "a", batch_size=2,
                  progress=False)
    code = main(["synth", "self-instruct", "--seeds", str(seeds_path), "--backend", f"scripted:{recording}",
                 "--num", "4", "--batch-size", "2", "--out", str(tmp_path / "b"), "--no-progress"])
    assert code == 0
    assert (tmp_path / "b/alpaca.json").read_text() == (tmp_path / "a/alpaca.json").read_text()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["machine_instructions"] == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok task here", "instances": []}\n{"instances": []}\n')
    code = main(["synth", "self-instruct", "--seeds", str(bad), "--backend", f"scripted:{recording}", "--num", "1",
                 "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:2" in err and "instruction" in err
