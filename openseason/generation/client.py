"""The one way every stage calls a model (the LLMClient protocol): synthetic data, the judge, the
guardrails and the rails inside the server all speak to an `LLMClient`.

    HTTPClient("http://127.0.0.1:8000/v1", model="m", mode="chat")   # vLLM, llama.cpp, openseason serve, OpenAI
    LocalClient("runs/my-model")           # a checkpoint in this process (openseason.LLM.load)
    LocalClient(engine)                     # the server's running Engine (rails share its batch)
    ScriptedClient(["yes", ("Task:", "no"), {"expect": "Q:", "text": "A"}])   # tests: fails on unexpected calls

Two ways to call one, with one vocabulary (`max_tokens` at the edge; the engine's SamplingParams
calls it max_new_tokens inside):

- `complete_many([LLMRequest(prompt, max_tokens=, temperature=, top_p=, stop=)])` returns, in order, an
  `LLMReply` or a `CallFailed` with the reason (after the client's own retries). Stages record
  failures in their JSONL logs and retry them on the next run; nothing becomes a silent empty row.
  `stats` counts calls, failures, retries, tokens and seconds for the run report.
- `client(prompt, *, max_tokens=256, temperature=0.0, stop=None) -> str`: one call, text back, an
  OpenseasonError when it failed (what the rails and the judge need).
"""
from __future__ import annotations

import asyncio
import os
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from ..errors import ConfigError, DataError, OpenseasonError, where

__all__ = ["LLMRequest", "LLMReply", "CallFailed", "LLMClient", "HTTPClient", "LocalClient", "ScriptedClient",
           "RecordingClient", "UnexpectedCall", "make_client", "require_client"]


@dataclass(frozen=True)
class LLMRequest:
    """One prompt and how to answer it."""

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
class LLMReply:
    text: str
    finish_reason: Optional[str] = None   # "stop" or "length" (truncated) when the client says
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class CallFailed:
    """A call that failed after all retries; `reason` is recorded in the stage log.

    `context_exceeded` marks a prompt (plus max_tokens) longer than the backend's context window;
    `prompt_tokens` and `context_length` are set when the backend said them (OpenAI, vLLM and
    openseason serve put both in their 400 message), so a caller can shorten the prompt and retry.
    """
    reason: str
    retryable: bool = True
    context_exceeded: bool = False
    prompt_tokens: Optional[int] = None
    context_length: Optional[int] = None


Result = Union[LLMReply, CallFailed]


@dataclass
class Stats:
    calls: int = 0
    failed: int = 0
    context_exceeded: int = 0   # answers "the prompt does not fit" (callers shorten it and ask again)
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def count(self, result: Result) -> None:
        self.calls += 1
        if isinstance(result, CallFailed):
            if result.context_exceeded:
                self.context_exceeded += 1
            else:
                self.failed += 1
        else:
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += result.completion_tokens


class LLMClient:
    """Base class: subclasses implement `_complete_many`; this one times, counts and validates."""

    name = "client"
    context_length: Optional[int] = None   # the backend's context window in tokens, when known

    def __init__(self):
        self.stats = Stats()

    def prepare(self) -> None:
        """Learn what the backend is before the first call (the HTTP client asks /v1/models);
        a ConfigError when it cannot be used as configured. Calling it again does nothing."""

    def count_tokens(self, prompt: str) -> Optional[int]:
        """The prompt's length in the backend's tokens, when this client can tell without a call."""
        return None

    def complete_many(self, requests: Sequence[LLMRequest]) -> list[Result]:
        start = time.perf_counter()
        results = [_checked(r) for r in self._complete_many(list(requests))]
        self.stats.seconds += time.perf_counter() - start
        for r in results:
            self.stats.count(r)
        return results

    def complete(self, request: LLMRequest) -> Result:
        return self.complete_many([request])[0]

    def __call__(self, prompt: str, *, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 stop: Optional[Sequence[str]] = None) -> str:
        """The reply text for one prompt; an OpenseasonError when the call failed."""
        result = self.complete(LLMRequest(prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                          stop=tuple(stop or ())))
        if isinstance(result, CallFailed):
            raise OpenseasonError(f"the LLM call failed: {result.reason}", where=self.describe().get("url")
                                  or self.describe().get("checkpoint"))
        return result.text

    def _complete_many(self, requests: list[LLMRequest]) -> list[Result]:
        raise NotImplementedError

    def describe(self) -> dict:
        """What produced the data (saved in the run report and each row's meta)."""
        return {"backend": self.name}


def valid_sampling(temperature: float, top_p: float) -> tuple[float, float]:
    """(temperature, top_p) that every OpenAI-compatible server accepts: greedy (temperature 0 or
    top_p <= 0, which some servers read as greedy and others reject) is sent as temperature 0 and
    top_p 1; top_p above 1 is an error."""
    if temperature < 0 or top_p > 1:
        raise ConfigError(f"invalid sampling values: temperature={temperature}, top_p={top_p}",
                          hint="temperature >= 0 and top_p in (0, 1]; greedy is temperature 0")
    if temperature == 0 or top_p <= 0:
        return 0.0, 1.0
    return float(temperature), float(top_p)


_CONTEXT_LIMIT = re.compile(r"maximum context length is (\d+)", re.IGNORECASE)
_PROMPT_TOKENS = (re.compile(r"\((\d+) (?:tokens )?in (?:the|your) (?:prompt|messages|input)", re.IGNORECASE),
                  re.compile(r"has (\d+) input tokens", re.IGNORECASE),
                  re.compile(r"(\d+) in the prompt", re.IGNORECASE))


def context_failure(status: int, text: str, reason: str) -> Optional[CallFailed]:
    """A 400 that says the prompt and max_tokens exceed the context window, as a CallFailed with
    the numbers the server gave; None for any other answer."""
    if status != 400:
        return None
    lowered = text.lower()
    if not any(k in lowered for k in ("context_length_exceeded", "context length", "context window", "context size",
                                      "exceed_context")):
        return None
    limit = _CONTEXT_LIMIT.search(text)
    prompt = next((m for m in (p.search(text) for p in _PROMPT_TOKENS) if m), None)
    return CallFailed(reason, retryable=False, context_exceeded=True,
                      prompt_tokens=int(prompt.group(1)) if prompt else None,
                      context_length=int(limit.group(1)) if limit else None)


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

class HTTPClient(LLMClient):
    """An OpenAI-compatible server: POST {base}/completions or {base}/chat/completions.

    The key: `api_key` (or OPENSEASON_BACKEND_API_KEY) is meant for this backend and sent to it;
    OPENAI_API_KEY from the environment is sent only to https:// URLs, never in clear text to
    whatever plain-http server `--backend` names.

    At most `max_concurrency` requests are in flight; each has `timeout` seconds; 429, 5xx and
    connection errors or timeouts are retried up to `max_retries` times with exponential backoff
    (`backoff` * 2**attempt seconds, capped at `max_backoff`, jittered, or the server's Retry-After);
    other 4xx answers fail at once (retrying a bad request cannot help).

    Before the first call (`prepare()`) it reads GET {base}/models: with no `model` given, the one
    model listed becomes the model (several listed: a ConfigError naming them); the context window
    comes from the entry's `context_length` (openseason serve, OpenRouter), `max_model_len` (vLLM) or
    `meta.n_ctx_train` (llama.cpp). A server without /models is used as configured. Greedy requests
    are sent as temperature 0, top_p 1 (servers like vLLM reject top_p 0). A 400 saying the
    context is exceeded becomes a CallFailed with `context_exceeded` and the server's numbers.
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
        self.model_source = "given" if model else None
        self.served_models: Optional[list[str]] = None
        self._prepared = False

    def describe(self) -> dict:
        d = {"backend": self.name, "url": self.base_url, "model": self.model, "mode": self.mode}
        if self.model_source and self.model_source != "given":
            d["model_source"] = self.model_source
        if self.context_length is not None:
            d["context_length"] = self.context_length
        return d

    def prepare(self, strict: bool = True) -> None:
        """GET {base}/models once: the model to name (when none was given) and the context window.
        strict: an unreachable server or an ambiguous model is an error (else it is left to the calls)."""
        if self._prepared:
            return
        import httpx

        try:
            resp = httpx.get(f"{self.base_url}/models", headers=self._headers(),
                             timeout=min(max(self.timeout, 5.0), 30.0))
        except httpx.HTTPError as exc:
            if strict:
                raise OpenseasonError(f"cannot reach the backend: {type(exc).__name__}: {exc}",
                                      where=f"{self.base_url}/models",
                                      hint="start the server first (e.g. `openseason serve CKPT`) or fix --backend")
            return
        self._prepared = True
        if resp.status_code != 200:
            return  # a server without /models: use it as configured
        try:
            entries = [e for e in resp.json().get("data") or [] if isinstance(e, dict) and isinstance(e.get("id"), str)]
        except (ValueError, AttributeError):
            return
        self.served_models = [e["id"] for e in entries]
        if self.model is None:
            if len(entries) == 1:
                self.model, self.model_source = entries[0]["id"], "the one model in /v1/models"
            elif len(entries) > 1 and strict:
                raise ConfigError(f"the backend serves {len(entries)} models and none was chosen",
                                  where=f"{self.base_url}/models",
                                  hint=f"pass --model with one of: {', '.join(self.served_models[:20])}")
        elif entries and self.model not in self.served_models and strict:
            raise ConfigError(f"the backend does not serve the model {self.model!r}", where=f"{self.base_url}/models",
                              hint=f"it serves: {', '.join(self.served_models[:20])}")
        entry = next((e for e in entries if e["id"] == self.model), None)
        if entry is not None:
            meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
            for value in (entry.get("context_length"), entry.get("max_model_len"), meta.get("n_ctx_train")):
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    self.context_length = value
                    break

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _payload(self, req: LLMRequest) -> tuple[str, dict]:
        temperature, top_p = valid_sampling(req.temperature, req.top_p)
        body: dict[str, Any] = {"max_tokens": req.max_tokens, "temperature": temperature, "top_p": top_p}
        if req.stop:
            body["stop"] = list(req.stop)
        if self.model:
            body["model"] = self.model
        if self.mode == "chat":
            body["messages"] = [{"role": "user", "content": req.prompt}]
            return f"{self.base_url}/chat/completions", body
        body["prompt"] = req.prompt
        return f"{self.base_url}/completions", body

    def _parse(self, data: dict) -> LLMReply:
        choice = data["choices"][0]
        field = "message.content" if self.mode == "chat" else "text"
        text = choice["message"]["content"] if self.mode == "chat" else choice["text"]
        if not isinstance(text, str):  # null (e.g. a refusal or tool call), a number, a list ...
            raise TypeError(f"{field} is {'null' if text is None else type(text).__name__}, not a string")
        usage = data.get("usage") or {}
        return LLMReply(text=text, finish_reason=choice.get("finish_reason"),
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

    async def _one(self, client, sem: asyncio.Semaphore, req: LLMRequest) -> Result:
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
                    reason = f"HTTP {resp.status_code}: {resp.text[:300]}"
                    if resp.status_code != 429 and resp.status_code < 500:
                        return context_failure(resp.status_code, resp.text, reason) or CallFailed(reason,
                                                                                                  retryable=False)
                    retry_after = resp.headers.get("retry-after")
            if attempt < self.max_retries:
                self.stats.retries += 1
                await asyncio.sleep(self._delay(attempt, retry_after))
        return CallFailed(f"{reason} (gave up after {self.max_retries + 1} attempts)")

    async def _run(self, requests: list[LLMRequest]) -> list[Result]:
        import httpx

        sem = asyncio.Semaphore(self.max_concurrency)
        limits = httpx.Limits(max_connections=self.max_concurrency)
        async with httpx.AsyncClient(limits=limits) as client:
            return list(await asyncio.gather(*(self._one(client, sem, r) for r in requests)))

    def _complete_many(self, requests: list[LLMRequest]) -> list[Result]:
        if not requests:
            return []
        self.prepare(strict=False)
        return asyncio.run(self._run(requests))


# -- in-process model ---------------------------------------------------------------------------------

class _ContextExceeded(Exception):
    def __init__(self, message: str, prompt_tokens: int, context_length: int):
        super().__init__(message)
        self.prompt_tokens, self.context_length = prompt_tokens, context_length


class LocalClient(LLMClient):
    """An openseason model in this process: a checkpoint path (loaded with `openseason.LLM.load`), a
    loaded `LLM`, or a running `Engine` (the server's, so the rails' calls join its batch).

    A prompt that with `max_tokens` does not fit the context window gets the room that is left (a
    small local model still answers a long rails prompt); a prompt that alone does not fit fails
    the call (not retryable). top_p <= 0 means greedy, as OpenAI-compatible servers read it.
    Anything else with `generate(prompt, max_new_tokens=, temperature=, top_p=, stop=) -> str`
    works too (no token counts then).

    mode "completions" sends the prompt as it is; "chat" sends it as one user message in the model's
    chat format (`chat_format`, default the checkpoint's: prompts.resolve_chat_format's rule), like
    an OpenAI-compatible server's /v1/chat/completions.
    """

    name = "openseason"

    def __init__(self, model, *, mode: str = "completions", chat_format=None, **load_kwargs):
        super().__init__()
        from .engine import Engine

        if mode not in ("completions", "chat"):
            raise ConfigError(f"unknown client mode {mode!r}", hint="use 'completions' or 'chat'")
        self.mode = mode
        self.path = None
        self.engine = model if isinstance(model, Engine) else None
        if isinstance(model, (str, os.PathLike)):
            from .llm import LLM

            self.path = str(model)
            model = LLM.load(self.path, **load_kwargs)
        self.llm = None if self.engine is not None else model
        self.chat_format = None
        if mode == "chat":
            from ..prompts import as_chat_format

            given = chat_format if chat_format is not None else getattr(self.llm, "chat_format", None)
            if given is None:
                raise ConfigError("chat mode needs a chat format for this model",
                                  hint="pass chat_format= (a prompt style name or a ChatTemplate)")
            self.chat_format = as_chat_format(given)

    def describe(self) -> dict:
        d = {"backend": self.name, "checkpoint": self.path, "mode": self.mode}
        if self.chat_format is not None:
            d["chat_format"] = self.chat_format.name
        return d

    def _owner(self):
        return self.engine if self.engine is not None else self.llm

    @property
    def context_length(self) -> Optional[int]:
        model = getattr(self._owner(), "model", None)
        if model is not None and getattr(model, "config", None) is not None:
            from .engine import context_length

            return context_length(model)
        return getattr(getattr(self._owner(), "config", None), "block_size", None)

    def _prompt_ids(self, prompt: str, tokenizer) -> list[int]:
        if self.chat_format is not None:
            from ..prompts import encode_chat

            return encode_chat([{"role": "user", "content": prompt}], tokenizer, self.chat_format)
        return tokenizer.encode(prompt)

    def count_tokens(self, prompt: str) -> Optional[int]:
        tokenizer = getattr(self._owner(), "tokenizer", None)
        return None if tokenizer is None else len(self._prompt_ids(prompt, tokenizer))

    def _complete_many(self, requests: list[LLMRequest]) -> list[Result]:
        out: list[Result] = []
        for req in requests:
            try:
                out.append(self._one(req))
            except _ContextExceeded as exc:
                out.append(CallFailed(str(exc), retryable=False, context_exceeded=True, prompt_tokens=exc.prompt_tokens,
                                      context_length=exc.context_length))
            except (RuntimeError, ValueError, OpenseasonError) as exc:
                out.append(CallFailed(f"{type(exc).__name__}: {exc}", retryable=False))
        return out

    def _one(self, req: LLMRequest) -> LLMReply:
        from .sampling import SamplingParams

        temperature, top_p = valid_sampling(req.temperature, req.top_p)
        owner = self.engine if self.engine is not None else self.llm
        tokenizer, config = getattr(owner, "tokenizer", None), getattr(owner, "config", None)
        if tokenizer is None or config is None or not hasattr(owner, "complete"):
            if self.chat_format is not None:
                raise OpenseasonError("chat mode needs an openseason LLM or Engine")
            text = self.llm.generate(req.prompt, max_new_tokens=req.max_tokens, temperature=temperature,
                                     top_p=top_p, stop=list(req.stop))
            return LLMReply(text=text)
        stop, stop_ids = tuple(req.stop), ()
        ids = self._prompt_ids(req.prompt, tokenizer)
        if self.chat_format is not None:
            from ..prompts import chat_stops

            strings, stop_ids = chat_stops(self.chat_format, tokenizer)
            stop = tuple(dict.fromkeys(stop + strings))
        window = self.context_length or config.block_size
        room = window - len(ids)
        if room < 1:
            raise _ContextExceeded(f"the prompt ({len(ids)} tokens) does not fit the model's context window of "
                                   f"{window} tokens; shorten the prompt", len(ids), window)
        params = SamplingParams(max_new_tokens=min(req.max_tokens, room), temperature=temperature, top_p=top_p,
                                stop=stop, stop_token_ids=stop_ids)
        c = self.engine.complete(ids, params)[0] if self.engine is not None else self.llm.complete(ids, params)
        return LLMReply(c.text, c.finish_reason, len(ids), c.completion_tokens)


# -- scripted (tests) ---------------------------------------------------------------------------------

class UnexpectedCall(AssertionError):
    """The code under test asked a ScriptedClient something its script does not hold."""


@dataclass
class _Entry:
    text: str = ""
    finish_reason: Optional[str] = "stop"
    expect: Optional[str] = None        # a substring the prompt must contain
    prompt: Optional[str] = None        # or the exact prompt (recordings)
    error: Optional[str] = None         # simulate a failed call with this reason
    where: str = ""


Rule = tuple[Union[str, Callable[[str], bool]], str]


class ScriptedClient(LLMClient):
    """A fake model for tests: replays a script and raises UnexpectedCall on any call it does not hold,
    so a test proves exactly which calls the code under test makes (`ScriptedClient()` fails on any).

    Script items:
    - a string or a dict {"text", "finish_reason", "expect", "prompt", "error"}: ordered answers,
      consumed in order; a call fails when it is past the end or its prompt lacks the entry's
      `expect` substring; "error" makes that call fail with that reason (failure recording, retry).
      When every entry has an exact "prompt" (a recording), calls are matched by prompt instead, each
      entry answering once, in any order (a resumed run asks only for what it lacks).
    - a rule (match, answer): `match` is a substring of the prompt or a predicate on it; rules are
      checked before the ordered answers and are reusable unless `consume=True`.
    Every call is kept in `calls` ({"prompt", "max_tokens", "temperature", "stop"}).
    """

    name = "scripted"

    def __init__(self, script: Iterable[Union[str, dict, Rule]] = (), source: str = "<script>", *,
                 consume: bool = False):
        super().__init__()
        self.entries: list[_Entry] = []
        self.rules: list[Rule] = []
        self.consume = consume
        for i, item in enumerate(script):
            if isinstance(item, tuple):
                if len(item) != 2 or not isinstance(item[1], str) or not (callable(item[0]) or isinstance(item[0], str)):
                    raise DataError("a scripted rule is (substring or predicate, answer text)", where=f"{source}[{i}]")
                self.rules.append(item)
                continue
            if isinstance(item, str):
                item = {"text": item}
            if not isinstance(item, dict):
                raise DataError(f"a scripted response is a string, a dict or a rule, not {type(item).__name__}",
                                where=f"{source}[{i}]")
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
        self.calls: list[dict] = []
        self.by_prompt: Optional[dict[str, list[_Entry]]] = None
        if self.entries and all(e.prompt is not None for e in self.entries):
            self.by_prompt = {}
            for e in self.entries:
                self.by_prompt.setdefault(e.prompt, []).append(e)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ScriptedClient":
        """A JSONL recording (one entry per line, as RecordingClient writes)."""
        from ..fileio import iter_jsonl

        return cls([row for _, row in iter_jsonl(path)], source=str(path))

    @property
    def prompts(self) -> list[str]:
        return [c["prompt"] for c in self.calls]

    @property
    def remaining(self) -> int:
        return len(self.entries) - self.position

    def assert_done(self) -> None:
        if self.remaining:
            raise AssertionError(f"{self.remaining} scripted responses were never asked for "
                                 f"(next: {self.entries[self.position].where})")

    def describe(self) -> dict:
        return {"backend": self.name, "script": self.source}

    def _reply(self, entry: _Entry, prompt: str) -> Result:
        if entry.error is not None:
            return CallFailed(entry.error)
        return LLMReply(entry.text, entry.finish_reason, len(prompt.split()), len(entry.text.split()))

    def _answer(self, req: LLMRequest) -> Result:
        prompt = req.prompt
        for i, (match, answer) in enumerate(self.rules):
            if match(prompt) if callable(match) else match in prompt:
                if self.consume:
                    self.rules.pop(i)
                return LLMReply(answer, "stop", len(prompt.split()), len(answer.split()))
        if self.by_prompt is not None:
            queue = self.by_prompt.get(prompt)
            if not queue:
                raise UnexpectedCall(f"unexpected LLM call #{len(self.calls)}: no recorded answer (left) for the "
                                     f"prompt ending with {prompt[-200:]!r}")
            self.position += 1
            return self._reply(queue.pop(0), prompt)
        if self.position >= len(self.entries):
            raise UnexpectedCall(f"unexpected LLM call #{len(self.calls)} (the script holds {len(self.entries)} "
                                 f"answers and {len(self.rules)} rules); prompt was:\n{prompt[-2000:]}")
        entry = self.entries[self.position]
        self.position += 1
        if entry.prompt is not None and entry.prompt != prompt:
            raise UnexpectedCall(f"{entry.where}: recorded prompt differs from the one asked: {prompt[-200:]!r}")
        if entry.expect is not None and entry.expect not in prompt:
            raise UnexpectedCall(f"{entry.where}: expected a prompt containing {entry.expect!r}, "
                                 f"got one ending with {prompt[-200:]!r}")
        return self._reply(entry, prompt)

    def _complete_many(self, requests: list[LLMRequest]) -> list[Result]:
        out: list[Result] = []
        for req in requests:
            self.calls.append({"prompt": req.prompt, "max_tokens": req.max_tokens, "temperature": req.temperature,
                               "stop": list(req.stop)})
            out.append(self._answer(req))
        return out


class RecordingClient(LLMClient):
    """Wraps a backend and appends every prompt and answer to a JSONL file that ScriptedClient replays."""

    def __init__(self, inner: LLMClient, path: str | os.PathLike):
        super().__init__()
        self.inner, self.path = inner, Path(path)
        self.name = f"recording({inner.name})"

    def describe(self) -> dict:
        return {**self.inner.describe(), "recorded_to": str(self.path)}

    def prepare(self) -> None:
        self.inner.prepare()

    @property
    def context_length(self) -> Optional[int]:
        return self.inner.context_length

    def count_tokens(self, prompt: str) -> Optional[int]:
        return self.inner.count_tokens(prompt)

    def _complete_many(self, requests: list[LLMRequest]) -> list[Result]:
        from ..fileio import append_jsonl

        results = self.inner.complete_many(requests)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            for req, res in zip(requests, results):
                row = ({"prompt": req.prompt, "error": res.reason} if isinstance(res, CallFailed)
                       else {"prompt": req.prompt, "text": res.text, "finish_reason": res.finish_reason})
                append_jsonl(handle, row)
        return results


def require_client(client, what: str):
    """`client`, or a clear error saying that `what` needs one."""
    if client is None:
        raise OpenseasonError(f"{what} needs an LLM, and none was given",
                              hint="pass llm=... (an LLMClient: LocalClient, HTTPClient; or --model on the CLI), "
                                   "or remove that rail/step")
    return client


def make_client(spec: str, *, model: Optional[str] = None, mode: str = "completions", max_concurrency: int = 8,
                 timeout: float = 120.0, max_retries: int = 5, api_key: Optional[str] = None) -> LLMClient:
    """--backend: an http(s):// URL, `scripted:FILE.jsonl` (replay a recording), or a checkpoint directory."""
    if spec.startswith(("http://", "https://")):
        return HTTPClient(spec, model=model, mode=mode, max_concurrency=max_concurrency, timeout=timeout,
                           max_retries=max_retries, api_key=api_key)
    if spec.startswith("scripted:"):
        return ScriptedClient.from_file(spec[len("scripted:"):])
    path = Path(spec)
    if path.is_dir():
        return LocalClient(path, mode=mode)
    raise ConfigError(f"backend {spec!r} is neither a URL, `scripted:FILE`, nor a checkpoint directory",
                      where=where(spec), hint="pass e.g. http://127.0.0.1:8000/v1 or runs/my-model")
