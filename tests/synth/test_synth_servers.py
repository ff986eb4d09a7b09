"""Every synth command over real HTTP on loopback: against a stub that validates requests the way vLLM
does (model required and served, top_p in (0, 1], temperature in [0, 2], prompt + max_tokens within
max_model_len, at most 4 stops) and answers like a good teacher, with a context small enough that
demonstrations must be cut; and against `openseason serve` of a tiny random model (a 384-token
window), where the runs must send only valid requests and report honestly what they got."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from openseason.cli import main
from openseason.generation.client import HTTPClient

from ..serve.conftest import LiveServer, start_server, tiny_model
from .conftest import fake_answer
from .test_synth_self_instruct import assert_counts_equal_files

MODEL = "stub-teacher"


def teacher(prompt: str) -> str:
    if prompt.startswith("Here is a text written by a person."):
        return "Explain how rivers carve canyons through mountains over time."
    if prompt.startswith("Answer each question."):
        return " Six sevens make forty-two. So the answer is 42."
    return fake_answer(prompt)


class VLLMStub:
    """An OpenAI-compatible server that validates like vLLM; tokens are whitespace-separated words."""

    def __init__(self, context: int):
        self.context = context
        self.bodies: list[dict] = []
        self.rejected: list[str] = []
        self.app = app = FastAPI()

        def error(message: str, status: int = 400):
            self.rejected.append(message)
            return JSONResponse({"object": "error", "message": message, "type": "BadRequestError", "code": status},
                                status_code=status)

        def handle(body: dict, chat: bool):
            self.bodies.append(body)
            if "model" not in body:
                return error("[{'type': 'missing', 'loc': ('body', 'model'), 'msg': 'Field required'}]")
            if body["model"] != MODEL:
                return error(f"The model `{body['model']}` does not exist.", 404)
            top_p, temperature = body.get("top_p", 1.0), body.get("temperature", 1.0)
            if not 0 < top_p <= 1:
                return error(f"top_p must be in (0, 1], got {top_p}.")
            if not 0 <= temperature <= 2:
                return error(f"temperature must be in [0, 2], got {temperature}.")
            max_tokens = body.get("max_tokens", 16)
            if not isinstance(max_tokens, int) or max_tokens < 1:
                return error(f"max_tokens must be at least 1, got {max_tokens}.")
            if len(body.get("stop") or []) > 4:
                return error("at most 4 stop sequences")
            prompt = body["messages"][-1]["content"] if chat else body["prompt"]
            n = len(prompt.split())
            if n + max_tokens > self.context:
                return error(f"This model's maximum context length is {self.context} tokens. However, you requested "
                             f"{n + max_tokens} tokens ({n} in the messages, {max_tokens} in the completion). "
                             "Please reduce the length of the messages or completion.")
            words = teacher(prompt).split(" ")
            text, finish = " ".join(words[:max_tokens + 1]), "length" if len(words) > max_tokens + 1 else "stop"
            usage = {"prompt_tokens": n, "completion_tokens": min(len(words), max_tokens)}
            if chat:
                return {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                        "usage": usage}
            return {"choices": [{"text": text, "finish_reason": finish}], "usage": usage}

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": MODEL, "object": "model", "max_model_len": self.context}]}

        @app.post("/v1/completions")
        async def completions(body: dict):
            return handle(body, False)

        @app.post("/v1/chat/completions")
        async def chat(body: dict):
            return handle(body, True)


@pytest.fixture(scope="module")
def stub():
    srv = VLLMStub(context=300)
    live = LiveServer(srv.app)
    srv.url = live.url
    yield srv
    live.close()


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    words = "The river cut the canyon slowly over many thousands of years and the walls rose high".split()
    with open(path, "w") as f:
        for i in range(5):
            f.write(json.dumps({"id": f"d{i}", "text": " ".join(words[(i + j) % len(words)] for j in range(400))}) + "\n")
    return path


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "questions.jsonl"
    with open(path, "w") as f:
        for i in range(4):
            f.write(json.dumps({"id": f"q{i}", "input": f"What is six times seven, question {i}?",
                                "label": "42" if i < 3 else "41"}) + "\n")
    return path


def run(args, capsys) -> tuple[int, dict]:
    code = main(args)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    return code, json.loads(printed)


def check_requests_valid(bodies):
    assert bodies and all(b.get("model") == MODEL and 0 < b["top_p"] <= 1 for b in bodies)


def test_self_instruct_against_a_vllm_style_server_with_a_small_context(stub, seeds_path, tmp_path, capsys):
    stub.bodies.clear(), stub.rejected.clear()
    out = tmp_path / "si"
    args = ["synth", "self-instruct", "--seeds", str(seeds_path), "--backend", stub.url, "--num", "6",
            "--out", str(out), "--no-progress", "--batch-size", "2"]
    code, summary = run(args, capsys)  # no --model: the server lists one; default --max-tokens 1024 > context
    report = json.loads((out / "report.json").read_text())
    assert code == 0 and report["status"] == "complete" and summary["tasks"] > 0, report["status"]
    check_requests_valid(stub.bodies)
    assert {b["temperature"] for b in stub.bodies if b["max_tokens"] <= 3} == {0.0}  # greedy classify: top_p 1
    assert report["run"]["backend"]["model"] == MODEL and report["run"]["backend"]["context_length"] == 300
    # Every rejected request was a context check that the run answered by cutting and resending.
    assert stub.rejected and all("maximum context length" in r for r in stub.rejected)
    assert report["fitted"]["generate"] and report["fitted"]["instances"]
    assert all(b["max_tokens"] <= 150 for b in stub.bodies)  # 1024 lowered to half the window
    assert_counts_equal_files(report, out)
    logged = [json.loads(l) for l in open(out / "logs/generate.jsonl")]
    assert any("fit" in r["result"] and r["result"]["fit"]["start"] < 9 for r in logged)
    # Rerun: nothing is asked again, same outputs.
    before = (out / "alpaca.json").read_text()
    n = len(stub.bodies)
    assert main(args) == 0 and len(stub.bodies) == n and (out / "alpaca.json").read_text() == before


def test_reverse_instructions_and_rationales_against_a_vllm_style_server(stub, corpus, questions, tmp_path, capsys):
    stub.bodies.clear(), stub.rejected.clear()
    code, summary = run(["synth", "reverse-instructions", "--corpus", str(corpus), "--out", str(tmp_path / "rev"),
                         "--backend", stub.url, "--max-tokens", "40"], capsys)
    report = json.loads((tmp_path / "rev/report.json").read_text())
    assert code == 0 and report["ok"] and summary["kept"] == 5
    assert report["fitted"]["reverse-instructions"] == {"document shortened to 200 words": 5}
    rows = [json.loads(l) for l in open(tmp_path / "rev/longform.jsonl")]
    assert len(rows) == 5 and all(len(r["output"].split()) == 400 for r in rows)  # the output is the whole text
    code, summary = run(["synth", "rationales", "--data", str(questions), "--out", str(tmp_path / "rat"),
                         "--backend", stub.url, "--mode", "chat", "--max-tokens", "200", "--drop-mismatched"], capsys)
    report = json.loads((tmp_path / "rat/report.json").read_text())
    assert code == 0 and report["ok"] and summary["kept"] == 3 and summary["teacher_agreement"] == 0.75
    assert report["fitted"]["rationales"]  # 4 exemplars + 200 tokens do not fit 300
    rejected = [json.loads(l) for l in open(tmp_path / "rat/rejected.jsonl")]
    assert [r["reason"] for r in rejected] == ["teacher label disagrees with gold"]
    check_requests_valid(stub.bodies)


def test_a_prompt_that_cannot_fit_fails_the_run_loudly(stub, questions, tmp_path, capsys):
    stub.context, old = 20, stub.context  # the instructions alone are longer
    try:
        code = main(["synth", "rationales", "--data", str(questions), "--out", str(tmp_path / "rat"),
                     "--backend", stub.url, "--max-tokens", "30"])
        captured = capsys.readouterr()
        summary = json.loads(captured.out.strip().splitlines()[-1])
        assert "openseason synth: incomplete" in captured.err
    finally:
        stub.context = old
    report = json.loads((tmp_path / "rat/report.json").read_text())
    assert code == 1 and not report["ok"] and report["status"].startswith("incomplete: 4 call(s) failed")
    assert "nothing kept" in report["status"] and summary["failed_calls_pending"] == 4
    rejected = [json.loads(l) for l in open(tmp_path / "rat/rejected.jsonl")]
    assert len(rejected) == 4 and all("nothing more to cut" in r["error"] for r in rejected)


# -- openseason serve of a tiny model ----------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_tokenizer):
    from openseason.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpts") / "tiny-teacher"
    save_checkpoint(path, tiny_model(eos_bias=0.0, block_size=384), tokenizer=tiny_tokenizer,
                    run_card={"prompt_style": "plain"})
    server, engine, _ = start_server(path, max_batch=8, max_queue=64, max_tokens_cap=1000)
    yield server
    server.close()
    engine.close()


def honest(report: dict, code: int, out: Path) -> None:
    """Exit code, status and counts agree; no call failed (every request was valid)."""
    assert (code == 0) == report["ok"] == (report["status"] == "complete"), report["status"]
    assert report["cost"]["failed_calls"] == 0, report
    assert report["counts"].get("failed_calls_pending", 0) == 0


def test_every_command_against_openseason_serve_with_a_small_context(served, seeds_path, corpus, questions,
                                                                     tmp_path, capsys):
    client = HTTPClient(served.url)
    client.prepare()
    assert client.model == "tiny-teacher" and client.context_length == 384
    # self-instruct: the random model's lists rarely pass the filters; whatever happens is reported honestly
    out = tmp_path / "si"
    code, _ = run(["synth", "self-instruct", "--seeds", str(seeds_path), "--backend", served.url, "--num", "2",
                   "--out", str(out), "--no-progress", "--max-tokens", "24", "--instance-max-tokens", "24",
                   "--max-calls", "4", "--batch-size", "2", "--blacklist", "none"], capsys)
    report = json.loads((out / "report.json").read_text())
    honest(report, code, out)
    assert_counts_equal_files(report, out)
    if report["counts"]["machine_instructions"] < 2:
        assert code == 1 and "--max-calls" in report["status"]
    # reverse-instructions: 400-word documents do not fit 384 tokens; they are shortened, any text is kept
    code, summary = run(["synth", "reverse-instructions", "--corpus", str(corpus), "--out", str(tmp_path / "rev"),
                         "--backend", served.url, "--max-tokens", "16"], capsys)
    report = json.loads((tmp_path / "rev/report.json").read_text())
    honest(report, code, tmp_path / "rev")
    assert report["fitted"]["reverse-instructions"]
    assert summary["kept"] + summary["rejected"] == 5
    # rationales: a random model never says "So the answer is": nothing kept, exit 1, every example in rejected
    code, summary = run(["synth", "rationales", "--data", str(questions), "--out", str(tmp_path / "rat"),
                         "--backend", served.url, "--max-tokens", "16"], capsys)
    report = json.loads((tmp_path / "rat/report.json").read_text())
    honest(report, code, tmp_path / "rat")
    rejected = [json.loads(l) for l in open(tmp_path / "rat/rejected.jsonl")]
    assert Counter(r["reason"] for r in rejected) == Counter(
        {k: v for k, v in report["filters"]["rationales"].items() if not k.startswith("kept")})
    if summary["kept"] == 0:
        assert code == 1 and "nothing kept" in report["status"]
    # chat mode goes through the served model's own chat format
    code, _ = run(["synth", "reverse-instructions", "--corpus", str(corpus), "--out", str(tmp_path / "rev-chat"),
                   "--backend", served.url, "--mode", "chat", "--max-tokens", "8", "--max-words", "60"], capsys)
    honest(json.loads((tmp_path / "rev-chat/report.json").read_text()), code, tmp_path / "rev-chat")


def test_in_process_checkpoint_backend_fits_before_calling(tmp_path, corpus, tiny_tokenizer, capsys):
    from openseason.checkpoint import save_checkpoint

    ckpt = tmp_path / "tiny-local"
    save_checkpoint(ckpt, tiny_model(eos_bias=0.0, block_size=256), tokenizer=tiny_tokenizer,
                    run_card={"prompt_style": "plain"})
    code, summary = run(["synth", "reverse-instructions", "--corpus", str(corpus), "--out", str(tmp_path / "rev"),
                         "--backend", str(ckpt), "--mode", "chat", "--max-tokens", "300"], capsys)
    report = json.loads((tmp_path / "rev/report.json").read_text())
    assert report["run"]["backend"]["chat_format"] == "plain"       # the checkpoint's own format
    assert report["cost"]["context_exceeded"] == 0 and report["cost"]["failed_calls"] == 0  # fitted before calling
    notes = report["fitted"]["reverse-instructions"]
    assert any(n.startswith("max_tokens lowered") for n in notes) and any(n.startswith("document") for n in notes)
    assert (code == 0) == report["ok"]


class Routed(HTTPClient):
    """Generation answered by the fake teacher (a random model's lists never pass the filters); the
    classify and instance steps go to the real server, so its validation sees them."""

    def _complete_many(self, requests):
        from openseason.generation.client import LLMReply

        http = [r for r in requests if not r.prompt.startswith("Here is a numbered list")]
        answers = iter(super()._complete_many(http) if http else [])
        return [next(answers) if r in http else LLMReply(fake_answer(r.prompt), "stop", 1, 1) for r in requests]


def test_self_instruct_classify_and_instances_against_openseason_serve(served, seeds_path, tmp_path):
    from openseason.synth.self_instruct import self_instruct

    client = Routed(served.url)
    report = self_instruct(seeds_path, client, 3, tmp_path, batch_size=1, progress=False, instance_max_tokens=24)
    assert report["cost"]["failed_calls"] == 0 and report["counts"]["failed_calls_pending"] == 0, report["status"]
    classify = report["filters"]["classify"]   # greedy classify accepted (top_p 1, not 0)
    assert classify.get("classification", 0) + classify.get("not classification", 0) == 3
    assert report["fitted"]["instances"]                              # 6 demos do not fit a 384-token window
    assert (report["counts"]["tasks"] > 0) == report["ok"]
    assert_counts_equal_files(report, tmp_path)
