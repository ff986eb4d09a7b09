"""LLM-as-judge: both orders judged, position bias cancelled, scores parsed strictly."""
import re

import pytest

from openseason.errors import DataError
from openseason.evaluate.judge import compare, judge_pair, load_instructions, parse_scores


def _answers(prompt):
    first = re.search(r"### Answer from assistant 1\n(.*?)\n\n### Answer from assistant 2", prompt, re.S).group(1)
    second = re.search(r"### Answer from assistant 2\n(.*?)\n\n### Your task", prompt, re.S).group(1)
    return first, second


def test_parse_scores():
    assert parse_scores("7 4\nbecause") == (7.0, 4.0)
    assert parse_scores("\n8.5, 9\n") == (8.5, 9.0)
    assert parse_scores("7/10 3/10") == (7.0, 3.0)
    assert parse_scores("Assistant 1 is better") is None
    assert parse_scores("11 4") is None


def test_position_biased_judge_gives_ties():
    calls = []

    def biased(prompt):  # always prefers whatever is shown first
        calls.append(prompt)
        return "9 2\nfirst is best"

    verdict = judge_pair(biased, "q", "answer A", "answer B")
    assert len(calls) == 2 and verdict.outcome == "tie"
    assert verdict.score_a == verdict.score_b == 5.5


def test_consistent_judge_and_summary():
    def prefers_long(prompt):
        a, b = _answers(prompt)
        return f"{min(10, len(a.split()))} {min(10, len(b.split()))}\n"

    questions = [{"id": str(i), "prompt": f"question {i}"} for i in range(4)]
    ours = {"0": "a long detailed answer here", "1": "short", "2": "same size", "3": "x y z w"}
    ref = {"0": "short", "1": "a much longer reference answer", "2": "same size", "3": "x"}
    result = compare(prefers_long, questions, ours, ref, name_a="ours", name_b="ref")
    summary = result["summary"]
    assert (summary["win"], summary["tie"], summary["loss"]) == (2, 1, 1)
    assert summary["relative_score"] == pytest.approx((5 + 1 + 2 + 4) / (1 + 5 + 2 + 1))


def test_unparsed_replies_are_counted_not_dropped():
    result = compare(lambda p: "I refuse", [{"id": "1", "prompt": "q"}], {"1": "a"}, {"1": "b"})
    assert result["summary"]["unparsed"] == 1 and result["summary"]["judged"] == 0
    assert result["judgements"][0]["orders"][0]["reply"] == "I refuse"


def test_missing_answers_are_an_error():
    with pytest.raises(DataError, match="lack an answer"):
        compare(lambda p: "1 1", [{"id": "1", "prompt": "q"}], {}, {"1": "b"})


def test_user_oriented_instructions_load(shared_data):
    items = load_instructions(shared_data / "self-instruct" / "user_oriented_instructions.jsonl")
    assert len(items) == 252
    assert all(item["prompt"].strip() for item in items)


def test_judge_cli_through_an_openai_compatible_endpoint(tmp_path, capsys):
    """The judge verb end to end against a loopback endpoint that scores the longer answer higher."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from openseason.cli import main

    seen = []

    class Judge(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][-1]["content"]
            seen.append((self.path, prompt))
            a, b = _answers(prompt)
            reply = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "judge",
                                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                    "role": "assistant", "content": f"{len(a.split())} {len(b.split())}\nok"}}],
                                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (tmp_path / "q.jsonl").write_text("".join(json.dumps({"id": str(i), "instruction": f"q{i}"}) + "\n"
                                                  for i in range(3)))
        (tmp_path / "a.jsonl").write_text("".join(json.dumps({"id": str(i), "output": "a b c d"}) + "\n"
                                                  for i in range(3)))
        (tmp_path / "b.jsonl").write_text("".join(json.dumps({"id": str(i), "output": "a b"}) + "\n"
                                                  for i in range(3)))
        code = main(["evaluate", "judge", "--instructions", str(tmp_path / "q.jsonl"), "--a", str(tmp_path / "a.jsonl"),
                     "--b", str(tmp_path / "b.jsonl"), "--judge", f"http://127.0.0.1:{server.server_port}/v1",
                     "--out", str(tmp_path / "out"), "--json"])
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["win"], summary["tie"], summary["loss"]) == (3, 0, 0)
    assert summary["relative_score"] == 2.0 and len(seen) == 6
    assert all(path == "/v1/chat/completions" for path, _ in seen)
    assert len((tmp_path / "out" / "judgements.jsonl").read_text().splitlines()) == 3
