"""Where synthetic-data prompts go: an OpenAI-compatible HTTP endpoint, an in-process openseason
model, or (for tests) a script of recorded responses.

Every backend has one method, `complete_many(requests) -> list[Completion | CallFailed]`, so a stage
sends a batch and gets back, in order, either a completion or the reason the call failed (after the
backend's own retries). Stages record failures in their JSONL logs and retry them on the next run;
nothing becomes a silent empty row. `stats` counts calls, failures, retries, tokens and seconds for
the run report.

    HTTPBackend("http://127.0.0.1:8000/v1", model="m", mode="chat")   # vLLM, llama.cpp, openseason serve, OpenAI
    LLMBackend("runs/my-model")                                        # openseason.LLM.load(path)
    ScriptedBackend([{"expect": "Task:", "text": "..."}, ...])          # replays; fails on unexpected calls
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from ..errors import ConfigError, DataError, where

__all__ = ["Request", "Completion", "CallFailed", "Backend", "HTTPBackend", "LLMBackend", "ScriptedBackend",
           "RecordingBackend", "UnexpectedCall", "make_backend"]


@dataclass(frozen=True)
class Request:
    prompt: str
    max_tokens: int = 1024
    temperature: float = 0.7
    top_p: float = 0.5
    stop: tuple[str, ...] = ()

    def params(self) -> dict:
        """Everything but the prompt: part of each stage's cache key."""
        d = asdict(self)
        d.pop("prompt")
        d["stop"] = list(self.stop)
        return d


@dataclass
class Completion:
    text: str
    finish_reason: Optional[str] = None   # "stop" or "length" (truncated) when the backend says
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class CallFailed:
    """A call that failed after all retries; `reason` is recorded in the stage log."""
    reason: str
    retryable: bool = True


Result = Union[Completion, CallFailed]


@dataclass
class Stats:
    calls: int = 0
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def count(self, result: Result) -> None:
        self.calls += 1
        if isinstance(result, CallFailed):
            self.failed += 1
        else:
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += result.completion_tokens


class Backend:
    """Base class: subclasses implement `_complete_many`; this one times and counts."""

    name = "backend"

    def __init__(self):
        self.stats = Stats()

    def complete_many(self, requests: Sequence[Request]) -> list[Result]:
        start = time.perf_counter()
        results = [_checked(r) for r in self._complete_many(list(requests))]
        self.stats.seconds += time.perf_counter() - start
        for r in results:
            self.stats.count(r)
        return results

    def complete(self, request: Request) -> Result:
        return self.complete_many([request])[0]

    def _complete_many(self, requests: list[Request]) -> list[Result]:
        raise NotImplementedError

    def describe(self) -> dict:
        """What produced the data (saved in the run report and each row's meta)."""
        return {"backend": self.name}


def _checked(result: Result) -> Result:
    """A completion whose fields are not what stages log (text a string, ...) becomes a retryable
    failure here, before any stage records it as done: a logged non-string would be reused, and
    crash, on every rerun."""
    if isinstance(result, CallFailed):
        return result
    problem = None
    if not isinstance(result.text, str):
        problem = f"text is {type(result.text).__name__}, not a string"
    elif result.finish_reason is not None and not isinstance(result.finish_reason, str):
        problem = f"finish_reason is {type(result.finish_reason).__name__}, not a string"
    elif not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                 for n in (result.prompt_tokens, result.completion_tokens)):
        problem = "token counts are not integers >= 0"
    return CallFailed(f"malformed response: {problem}") if problem else result


# -- HTTP ---------------------------------------------------------------------------------------------

class HTTPBackend(Backend):
    """An OpenAI-compatible server: POST {base}/completions or {base}/chat/completions.

    The key: `api_key` (or OPENSEASON_BACKEND_API_KEY) is meant for this backend and sent to it;
    OPENAI_API_KEY from the environment is sent only to https:// URLs, never in clear text to
    whatever plain-http server `--backend` names.

    At most `max_concurrency` requests are in flight; each has `timeout` seconds; 429, 5xx and
    connection errors or timeouts are retried up to `max_retries` times with exponential backoff
    (`backoff` * 2**attempt seconds, capped at `max_backoff`, jittered, or the server's Retry-After);
    other 4xx answers fail at once (retrying a bad request cannot help).
    """

    name = "http"

    def __init__(self, base_url: str, *, model: Optional[str] = None, api_key: Optional[str] = None,
                 mode: str = "completions", max_concurrency: int = 8, timeout: float = 120.0,
                 max_retries: int = 5, backoff: float = 1.0, max_backoff: float = 30.0):
        super().__init__()
        if mode not in ("completions", "chat"):
            raise ConfigError(f"unknown HTTP backend mode {mode!r}", hint="use 'completions' or 'chat'")
        base = base_url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        self.base_url = base
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENSEASON_BACKEND_API_KEY")
        if self.api_key is None and base.lower().startswith("https://"):
            self.api_key = os.environ.get("OPENAI_API_KEY")
        self.mode = mode
        self.max_concurrency = max(1, int(max_concurrency))
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff

    def describe(self) -> dict:
        return {"backend": self.name, "url": self.base_url, "model": self.model, "mode": self.mode}

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _payload(self, req: Request) -> tuple[str, dict]:
        body: dict[str, Any] = {"max_tokens": req.max_tokens, "temperature": req.temperature, "top_p": req.top_p}
        if req.stop:
            body["stop"] = list(req.stop)
        if self.model:
            body["model"] = self.model
        if self.mode == "chat":
            body["messages"] = [{"role": "user", "content": req.prompt}]
            return f"{self.base_url}/chat/completions", body
        body["prompt"] = req.prompt
        return f"{self.base_url}/completions", body

    def _parse(self, data: dict) -> Completion:
        choice = data["choices"][0]
        field = "message.content" if self.mode == "chat" else "text"
        text = choice["message"]["content"] if self.mode == "chat" else choice["text"]
        if not isinstance(text, str):  # null (e.g. a refusal or tool call), a number, a list ...
            raise TypeError(f"{field} is {'null' if text is None else type(text).__name__}, not a string")
        usage = data.get("usage") or {}
        return Completion(text=text, finish_reason=choice.get("finish_reason"),
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0))

    def _delay(self, attempt: int, retry_after: Optional[str]) -> float:
        if retry_after:
            try:
                return min(self.max_backoff, float(retry_after))
            except ValueError:
                pass
        base = min(self.max_backoff, self.backoff * (2 ** attempt))
        return base * (0.5 + random.random() / 2)

    async def _one(self, client, sem: asyncio.Semaphore, req: Request) -> Result:
        import httpx

        url, body = self._payload(req)
        reason = "not attempted"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            async with sem:
                try:
                    resp = await client.post(url, json=body, headers=self._headers(), timeout=self.timeout)
                except httpx.TimeoutException as exc:
                    reason = f"timeout after {self.timeout}s ({type(exc).__name__})"
                except httpx.TransportError as exc:
                    reason = f"connection error: {type(exc).__name__}: {exc}"
                else:
                    if resp.status_code == 200:
                        try:
                            return self._parse(resp.json())
                        except (ValueError, KeyError, IndexError, TypeError) as exc:
                            return CallFailed(f"malformed response: {type(exc).__name__}: {exc}: {resp.text[:200]}")
                    reason = f"HTTP {resp.status_code}: {resp.text[:200]}"
                    if resp.status_code != 429 and resp.status_code < 500:
                        return CallFailed(reason, retryable=False)
                    retry_after = resp.headers.get("retry-after")
            if attempt < self.max_retries:
                self.stats.retries += 1
                await asyncio.sleep(self._delay(attempt, retry_after))
        return CallFailed(f"{reason} (gave up after {self.max_retries + 1} attempts)")

    async def _run(self, requests: list[Request]) -> list[Result]:
        import httpx

        sem = asyncio.Semaphore(self.max_concurrency)
        limits = httpx.Limits(max_connections=self.max_concurrency)
        async with httpx.AsyncClient(limits=limits) as client:
            return list(await asyncio.gather(*(self._one(client, sem, r) for r in requests)))

    def _complete_many(self, requests: list[Request]) -> list[Result]:
        return asyncio.run(self._run(requests)) if requests else []


# -- in-process model ---------------------------------------------------------------------------------

class LLMBackend(Backend):
    """An openseason model in this process: `openseason.LLM.load(path)` and `llm.generate(...)`."""

    name = "openseason"

    def __init__(self, path_or_llm, **load_kwargs):
        super().__init__()
        if isinstance(path_or_llm, (str, os.PathLike)):
            from .. import LLM

            self.path = str(path_or_llm)
            self.llm = LLM.load(self.path, **load_kwargs)
        else:
            self.path = None
            self.llm = path_or_llm

    def describe(self) -> dict:
        return {"backend": self.name, "checkpoint": self.path}

    def _count(self, text: str) -> int:
        tok = getattr(self.llm, "tokenizer", None)
        try:
            return len(tok.encode(text)) if tok is not None else 0
        except Exception:  # token counts are for the cost report only
            return 0

    def _complete_many(self, requests: list[Request]) -> list[Result]:
        from ..errors import OpenseasonError

        out: list[Result] = []
        for req in requests:
            kwargs = dict(max_new_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                          stop=list(req.stop))
            try:
                if hasattr(self.llm, "complete"):  # LLM.complete also reports finish_reason and token counts
                    c = self.llm.complete(req.prompt, **kwargs)
                    out.append(Completion(c.text, c.finish_reason, int(c.prompt_tokens), int(c.completion_tokens)))
                    continue
                result = self.llm.generate(req.prompt, **kwargs)
            except (RuntimeError, ValueError, OpenseasonError) as exc:  # e.g. prompt longer than the context
                out.append(CallFailed(f"{type(exc).__name__}: {exc}", retryable=False))
                continue
            text = result if isinstance(result, str) else getattr(result, "text", str(result))
            out.append(Completion(text=text, finish_reason=None, prompt_tokens=self._count(req.prompt),
                                  completion_tokens=self._count(text)))
        return out


# -- scripted (tests) ---------------------------------------------------------------------------------

class UnexpectedCall(AssertionError):
    """The code under test asked a scripted backend something the script does not hold."""


@dataclass
class _Entry:
    text: str = ""
    finish_reason: Optional[str] = "stop"
    expect: Optional[str] = None        # a substring the prompt must contain
    prompt: Optional[str] = None        # or the exact prompt (recordings)
    error: Optional[str] = None         # simulate a failed call with this reason
    where: str = ""


class ScriptedBackend(Backend):
    """Replays responses; raises UnexpectedCall on any call the script does not hold.

    When every entry has an exact "prompt" (a recording), calls are matched by prompt, each entry
    answering once, in any order (a resumed run asks only for what it lacks). Otherwise entries are
    consumed in order and a call fails when it is past the end or its prompt lacks the entry's
    `expect` substring.

    Entries are strings or dicts {"text", "finish_reason", "expect", "prompt", "error"}; an entry
    with "error" makes that call fail with that reason (to test failure recording and retry).
    """

    name = "scripted"

    def __init__(self, script: Iterable[Union[str, dict]], source: str = "<script>"):
        super().__init__()
        self.entries: list[_Entry] = []
        for i, item in enumerate(script):
            if isinstance(item, str):
                item = {"text": item}
            unknown = set(item) - {"text", "finish_reason", "expect", "prompt", "error"}
            if unknown:
                raise DataError(f"unknown keys {sorted(unknown)} in scripted response", where=f"{source}[{i}]")
            for key in ("text", "expect", "prompt", "error"):
                if item.get(key) is not None and not isinstance(item[key], str):
                    raise DataError(f"scripted response {key!r} must be a string, not {type(item[key]).__name__}",
                                    where=f"{source}[{i}]")
            self.entries.append(_Entry(where=f"{source}[{i}]", **item))
        self.position = 0
        self.source = source
        self.prompts: list[str] = []
        self.by_prompt: Optional[dict[str, list[_Entry]]] = None
        if self.entries and all(e.prompt is not None for e in self.entries):
            self.by_prompt = {}
            for e in self.entries:
                self.by_prompt.setdefault(e.prompt, []).append(e)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ScriptedBackend":
        """A JSONL recording (one entry per line, as RecordingBackend writes)."""
        from ..fileio import iter_jsonl

        return cls([row for _, row in iter_jsonl(path)], source=str(path))

    @property
    def remaining(self) -> int:
        return len(self.entries) - self.position

    def assert_done(self) -> None:
        if self.remaining:
            raise AssertionError(f"{self.remaining} scripted responses were never asked for "
                                 f"(next: {self.entries[self.position].where})")

    def describe(self) -> dict:
        return {"backend": self.name, "script": self.source}

    def _complete_many(self, requests: list[Request]) -> list[Result]:
        out: list[Result] = []
        for req in requests:
            self.prompts.append(req.prompt)
            if self.by_prompt is not None:
                queue = self.by_prompt.get(req.prompt)
                if not queue:
                    raise UnexpectedCall(f"no recorded answer (left) for the prompt ending with {req.prompt[-200:]!r}")
                entry = queue.pop(0)
                self.position += 1
                out.append(CallFailed(entry.error) if entry.error is not None else
                           Completion(entry.text, entry.finish_reason, len(req.prompt.split()), len(entry.text.split())))
                continue
            if self.position >= len(self.entries):
                raise UnexpectedCall(f"unexpected call #{self.position + 1} (script has {len(self.entries)}): "
                                     f"prompt ends with {req.prompt[-200:]!r}")
            entry = self.entries[self.position]
            self.position += 1
            if entry.prompt is not None and entry.prompt != req.prompt:
                raise UnexpectedCall(f"{entry.where}: recorded prompt differs from the one asked: "
                                     f"{req.prompt[-200:]!r}")
            if entry.expect is not None and entry.expect not in req.prompt:
                raise UnexpectedCall(f"{entry.where}: expected a prompt containing {entry.expect!r}, "
                                     f"got one ending with {req.prompt[-200:]!r}")
            if entry.error is not None:
                out.append(CallFailed(entry.error))
            else:
                out.append(Completion(entry.text, entry.finish_reason, len(req.prompt.split()),
                                      len(entry.text.split())))
        return out


class RecordingBackend(Backend):
    """Wraps a backend and appends every prompt and answer to a JSONL file that ScriptedBackend replays."""

    def __init__(self, inner: Backend, path: str | os.PathLike):
        super().__init__()
        self.inner, self.path = inner, Path(path)
        self.name = f"recording({inner.name})"

    def describe(self) -> dict:
        return {**self.inner.describe(), "recorded_to": str(self.path)}

    def _complete_many(self, requests: list[Request]) -> list[Result]:
        from ..fileio import append_jsonl

        results = self.inner.complete_many(requests)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            for req, res in zip(requests, results):
                row = ({"prompt": req.prompt, "error": res.reason} if isinstance(res, CallFailed)
                       else {"prompt": req.prompt, "text": res.text, "finish_reason": res.finish_reason})
                append_jsonl(handle, row)
        return results


def make_backend(spec: str, *, model: Optional[str] = None, mode: str = "completions", max_concurrency: int = 8,
                 timeout: float = 120.0, max_retries: int = 5, api_key: Optional[str] = None) -> Backend:
    """--backend: an http(s):// URL, `scripted:FILE.jsonl` (replay a recording), or a checkpoint directory."""
    if spec.startswith(("http://", "https://")):
        return HTTPBackend(spec, model=model, mode=mode, max_concurrency=max_concurrency, timeout=timeout,
                           max_retries=max_retries, api_key=api_key)
    if spec.startswith("scripted:"):
        return ScriptedBackend.from_file(spec[len("scripted:"):])
    path = Path(spec)
    if path.is_dir():
        return LLMBackend(path)
    raise ConfigError(f"backend {spec!r} is neither a URL, `scripted:FILE`, nor a checkpoint directory",
                      where=where(spec), hint="pass e.g. http://127.0.0.1:8000/v1 or runs/my-model")
