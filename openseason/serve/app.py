"""The OpenAI-compatible HTTP API (FastAPI) over the generation `Engine`, plus the web chat page.

    GET  /                       web chat page (static HTML + JS, streams over the API below)
    GET  /health                 {"status": "ok", ...}; 503 once the engine has failed
    GET  /metrics                requests, tokens generated, tokens/s, queue length (JSON)
    GET  /openapi.json           the OpenAPI schema of this API (request bodies with their bounds)
    GET  /v1/models              the one model this server holds
    POST /v1/chat/completions    chat, tokenized by prompts.encode_chat in the checkpoint's chat format; SSE
    POST /v1/completions         raw text completion; SSE with "stream": true

The asyncio side never runs the model, and never does work that grows with the input: parsing the body,
validating it and tokenizing run in worker threads (tokenizing with the GIL released); the loop hands a
`Request` to the engine and forwards the engine's events (text pieces, finish) to the client. A client
that disconnects cancels its request, which leaves the batch before the next decode step. Errors are OpenAI-shaped
(`schema.APIError`); the server keeps serving after any bad request.

Cross-site requests (`_CrossSite`): a web page the user visits could POST to a server on 127.0.0.1, and
through DNS rebinding read the answer. So the Host header must name an allowed host (loopback names by
default), a request carrying an Origin other than the server's own is refused unless
`ServerSettings.cors_origins` lists it (then CORS is answered properly, preflight included), and POST
bodies must be `Content-Type: application/json` (which a page cannot send cross-site without a preflight).
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import OpenseasonError
from ..prompts import chat_stops, encode_chat
from . import images, tools
from .metrics import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE, ServerMetrics
from ..generation.engine import Engine, EngineClosed, Event, QueueFull, Request, context_length
from ..generation.sampling import MIN_TEMPERATURE, SamplingParams
from .schema import APIError, ChatCompletionRequest, CompletionRequest, decode_json, parse_request

STATIC_DIR = Path(__file__).parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")   # Host header names allowed by default (any port)


@dataclass
class Hooks:
    """Where guardrails plug in (the guard stage provides them; the server only calls them).

    check_input(messages) -> None to go on, or a reply text that is returned instead of generating
        (it may remove messages from the list it is given: flagged earlier turns the model must not see).
    check_output(messages, text) -> None to keep the text, or a replacement text. When set, streamed
        answers are held back until complete, so nothing unchecked reaches the client.
    check_prompt(text), check_completion(prompt, text): the same for /v1/completions, whose prompt is
        one user message to the rails; completions_disabled: /v1/completions answers 403.
    """

    check_input: Optional[Callable[[list[dict]], Optional[str]]] = None
    check_output: Optional[Callable[[list[dict], str], Optional[str]]] = None
    check_prompt: Optional[Callable[[str], Optional[str]]] = None
    check_completion: Optional[Callable[[str, str], Optional[str]]] = None
    completions_disabled: bool = False
    completions_disabled_message: str = ("/v1/completions is disabled by this server's rails configuration; "
                                         "use /v1/chat/completions")


@dataclass
class ServerSettings:
    model_name: str
    chat_format: Any                        # a prompts.ChatFormat (PromptStyle or ChatTemplate)
    api_key: Optional[str] = None
    max_tokens_cap: int = 1024              # largest max_tokens a request may ask for
    default_max_tokens: int = 256           # chat requests without max_tokens get at most this
    max_n: int = 8
    max_body_bytes: int = 1 << 20
    retry_after_s: int = 2
    hooks: Optional[Hooks] = None
    # Host header names (optionally name:port) this server answers; "*" answers any. Loopback by default,
    # against DNS rebinding; `serve` allows any when it binds beyond loopback and none are given.
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    # Origins (scheme://host[:port]) of web pages allowed to call the API cross-origin (CORS).
    cors_origins: tuple[str, ...] = ()
    # Images (image_url content parts; serve/images.py): per-request count, decoded bytes per image, and
    # the one directory local image files may be read from (None: data URLs only).
    max_images: int = 4
    max_image_bytes: int = 4 * 1024 * 1024
    allow_image_paths: Optional[str] = None

    def __post_init__(self):
        self.allowed_hosts = tuple(check_allowed_host(h) for h in self.allowed_hosts)
        self.cors_origins = tuple(check_origin(o) for o in self.cors_origins)


def _now() -> int:
    return int(time.time())


def _sse(payload: Any) -> bytes:
    # ASCII-only JSON: generated text may hold U+2028, U+0085 and the like, which line readers that
    # split like str.splitlines (httpx's aiter_lines among them) would take for line breaks.
    return f"data: {json.dumps(payload, ensure_ascii=True)}\n\n".encode()


def check_allowed_host(host: str) -> str:
    """An --allowed-hosts entry, normalized (lower case), or OpenseasonError saying what is wrong."""
    entry = host.strip().lower()
    if entry != "*" and _split_host(entry) is None:
        raise OpenseasonError(f"not a host name: {host!r}", hint="use a name or address with an optional port, "
                              "e.g. localhost, 192.168.1.5:8000, [::1], or * for any host")
    return entry


def check_origin(origin: str) -> str:
    """A --cors-origin entry, normalized, or OpenseasonError: scheme://host[:port], no path."""
    entry = origin.strip().lower().rstrip("/")
    scheme, sep, netloc = entry.partition("://")
    if scheme not in ("http", "https") or not sep or _split_host(netloc) is None:
        raise OpenseasonError(f"not a web origin: {origin!r}",
                              hint="give scheme://host[:port] as a browser sends it, e.g. http://localhost:3000")
    return entry


def _split_host(value: str) -> Optional[tuple[str, Optional[str]]]:
    """'name[:port]' or '[v6][:port]' -> (name, port or None); None when it is not one."""
    if len(value) > 300:
        return None
    if value.startswith("["):
        name, bracket, rest = value.partition("]")
        name += bracket
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name, rest[1:] or None
    name, colon, port = value.partition(":")
    if not name or (colon and not (port.isdigit() and len(port) <= 5)):
        return None
    if not all(c.isalnum() or c in "-._" for c in name):
        return None
    return name, port or None


async def read_body(request: HTTPRequest, limit: int) -> bytes:
    """The request body, refusing bodies over `limit` bytes before reading them whole."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise APIError(413, f"request body of {length} bytes exceeds this server's limit of {limit} bytes",
                       code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body exceeds this server's limit of {limit} bytes",
                           code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_request(request: HTTPRequest, cls, limit: int):
    """The body parsed and validated as `cls`, in a worker thread: work that grows with the body never
    runs on the event loop."""
    raw = await read_body(request, limit)
    return await asyncio.to_thread(lambda: parse_request(cls, decode_json(raw)))


class _GILFree:
    """The engine's tokenizer with `encode` going through `encode_batch`, which releases the GIL
    (tokenizers' single `encode` holds it: a 1 MB prompt would stall the event loop even from a thread)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def encode(self, text: str, **kwargs) -> list[int]:
        batch = getattr(self._tokenizer, "encode_batch", None)
        if batch is None:
            return self._tokenizer.encode(text, **kwargs)
        return batch([text], **kwargs)[0]


class _Job:
    """The requests behind one HTTP call, and the queue their engine events arrive on."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.requests: list[Request] = []

    def emitter(self, offset: int) -> Callable[[Event], None]:
        def emit(event: Event) -> None:
            event.index += offset
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        return emit

    def cancel(self) -> None:
        for r in self.requests:
            r.cancel()


class Server:
    """Request handling shared by the two completion endpoints."""

    def __init__(self, engine: Engine, settings: ServerSettings):
        self.engine = engine
        self.settings = settings
        self.tokenizer = engine.tokenizer
        self.context = context_length(engine.model)
        self.http_requests = 0
        self.http_errors = 0
        self.metrics = ServerMetrics(engine, self, settings.model_name)

    def image_limits(self) -> Optional[dict]:
        """What /v1/models says about images: None for a text-only model, else the limits a client must keep."""
        front = getattr(self.engine.model, "media", None)
        if front is None:
            return None
        per_conversation = front.max_images if front.max_images is not None else self.settings.max_images
        return {"max_per_request": min(self.settings.max_images, per_conversation),
                "max_bytes": self.settings.max_image_bytes}

    # -- checks -------------------------------------------------------------------------------------
    def check_auth(self, request: HTTPRequest) -> None:
        key = self.settings.api_key
        if not key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.encode()):
            raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    def check_common(self, req) -> None:
        if req.model != self.settings.model_name:
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves "
                                f"{self.settings.model_name!r} (see GET /v1/models)",
                           param="model", code="model_not_found")
        max_n = min(self.settings.max_n, self.engine.max_batch)
        if req.n > max_n:
            raise APIError(400, f"n={req.n} is more than this server allows ({max_n})", param="n",
                           code="invalid_value")

    def budget(self, prompt_ids: list[int], requested: Optional[int], default: int, param: str) -> int:
        """max_tokens for one prompt, after the per-request cap and the context-length check."""
        cap = self.settings.max_tokens_cap
        if requested is not None and requested > cap:
            raise APIError(400, f"{param}={requested} is more than this server allows ({cap})", param=param,
                           code="invalid_value")
        room = self.context - len(prompt_ids)
        max_tokens = requested if requested is not None else min(default, cap, room)
        if max_tokens < 1 or len(prompt_ids) + max_tokens > self.context:
            raise APIError(400, f"this model's maximum context length is {self.context} tokens, but "
                                f"{len(prompt_ids) + max(max_tokens, 1)} were requested ({len(prompt_ids)} in the "
                                f"prompt, {max(max_tokens, 1)} for the completion); shorten the prompt or lower "
                                f"{param}", param="messages" if param == "max_completion_tokens" else param,
                           code="context_length_exceeded")
        return max_tokens

    def encode(self, text: str) -> list[int]:
        """Prompt ids of `text`; blocking: call it off the event loop."""
        ids = _GILFree(self.tokenizer).encode(text)
        if not ids:  # an empty prompt starts a fresh document
            start = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id
            if start is None:
                raise APIError(400, "the prompt is empty", param="prompt")
            ids = [start]
        return ids

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """The prompt ids of a conversation, by prompts.encode_chat (the ids training produced for it).
        Blocking: call it off the event loop."""
        try:
            return encode_chat(messages, _GILFree(self.tokenizer), self.settings.chat_format)
        except OpenseasonError as exc:   # bad role order, a chat template that refuses the messages
            raise APIError(400, f"invalid messages: {exc}", param="messages", code="invalid_value") from None

    def chat_inputs(self, messages: list[dict]) -> tuple[list[int], list]:
        """(prompt ids, media) of a conversation whose user messages may hold images (already resolved to
        bytes by serve/images.py); decoding and preprocessing the images happen here. Blocking."""
        from ..generation.media import encode_chat_media
        from ..prompts import message_images

        if not message_images(messages):
            return self.chat_prompt(messages), []
        try:
            return encode_chat_media(messages, _GILFree(self.tokenizer), self.settings.chat_format, self.engine.model)
        except OpenseasonError as exc:   # an unreadable image, too many for the model, bad role order
            raise APIError(400, f"invalid messages: {exc}", param="messages", code="invalid_value") from None

    def sampling(self, req, max_tokens: int, stop, stop_token_ids=(), *, constraint=None,
                 logprobs: Optional[int] = None) -> SamplingParams:
        """The one SamplingParams of a request (OpenAI names at the edge, ours inside)."""
        bias = req.logit_bias
        if bias and max(bias) >= self.tokenizer.vocab_size:
            raise APIError(400, f"logit_bias names token {max(bias)}, outside the vocabulary of "
                                f"{self.tokenizer.vocab_size} tokens", param="logit_bias", code="invalid_value")
        temperature, top_p = (0.0, 1.0) if req.top_p == 0 else (req.temperature, req.top_p)   # top_p 0: greedy
        try:
            return SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                  top_k=req.top_k_or_none(), min_p=req.min_p, repetition_penalty=req.repetition_penalty,
                                  stop=tuple(stop), stop_token_ids=tuple(stop_token_ids), seed=req.seed,
                                  presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                                  n=req.n, logit_bias=bias or None, constraint=constraint, logprobs=logprobs,
                                  ignore_eos=req.ignore_eos)
        except OpenseasonError as exc:
            raise APIError(400, str(exc), code="invalid_value") from None

    def prepare_constraint(self, constraint) -> None:
        try:
            constraint.prepare(self.tokenizer, self.tokenizer.vocab_size)
        except OpenseasonError as exc:
            raise APIError(400, str(exc), param="response_format", code="invalid_value") from None

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def logprob_entry(self, event: Event) -> dict:
        """OpenAI's chat logprobs entry for one generated token (with its top alternatives)."""
        def entry(token_id: int, logprob: float) -> dict:
            text = self.token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return {**entry(event.token_id, event.logprob),
                "top_logprobs": [entry(t, lp) for t, lp in (event.top_logprobs or [])]}

    def completion_logprobs(self, events: list[Event]) -> dict:
        """OpenAI's legacy completions logprobs for generated tokens (text_offset within the reply)."""
        tokens, offsets, offset = [], [], 0
        for e in events:
            text = self.token_text(e.token_id)
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in events], "text_offset": offsets,
                "top_logprobs": [{self.token_text(t): lp for t, lp in (e.top_logprobs or [])} for e in events]}

    # -- running ------------------------------------------------------------------------------------
    def start(self, prompts: list[list[int]], params: list[SamplingParams], media: Optional[list] = None) -> _Job:
        job = _Job(asyncio.get_running_loop())
        offset = 0
        media = media or [[] for _ in prompts]
        try:
            for ids, p, items in zip(prompts, params, media):
                job.requests.append(self.engine.submit(Request(ids, p, job.emitter(offset), media=items)))
                offset += p.n
        except QueueFull:
            job.cancel()
            raise APIError(503, "the server is busy: too many requests are waiting; retry shortly",
                           type="server_error", code="server_busy",
                           headers={"Retry-After": str(self.settings.retry_after_s)}) from None
        except EngineClosed:
            job.cancel()
            raise APIError(503, "the server is shutting down", type="server_error", code="unavailable") from None
        except OpenseasonError as exc:
            job.cancel()
            raise APIError(400, str(exc)) from None
        return job

    async def events(self, job: _Job, http: HTTPRequest, choices: int) -> AsyncIterator[Event]:
        """Engine events until every choice has finished; cancels the job if the client goes away (then
        the events just stop: callers check that every choice finished, see `_ClientGone`)."""
        finished = 0
        done = False
        checked = started = time.monotonic()
        last: dict[int, float] = {}
        try:
            while finished < choices:
                # Look for a hang-up every quarter second, also while tokens keep coming.
                if time.monotonic() - checked > 0.25:
                    checked = time.monotonic()
                    if await http.is_disconnected():
                        return
                try:
                    event = await asyncio.wait_for(job.queue.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    continue
                if event.kind == "error":
                    raise APIError(500, event.text, type="server_error", code="generation_failed")
                now = time.monotonic()
                if event.kind == "text":
                    if event.index in last:
                        self.metrics.tpot.observe(now - last[event.index])
                    else:
                        self.metrics.ttft.observe(now - started)
                    last[event.index] = now
                if event.kind == "finish":
                    finished += 1
                    self.metrics.e2e.observe(now - started)
                yield event
            done = True
        finally:
            if not done:
                job.cancel()


def _completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def create_app(engine: Engine, settings: ServerSettings) -> FastAPI:
    """The FastAPI app serving `engine` under `settings.model_name`. The caller owns the engine."""
    app = FastAPI(title="openseason", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    server = Server(engine, settings)
    app.openapi = lambda: _openapi(app, settings)
    app.state.server = server
    created = _now()

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        server.http_errors += 1
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        server.http_errors += 1
        error = APIError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}",
                         code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    app.add_middleware(_CrossSite, server=server)
    app.add_middleware(_CountRequests, server=server)   # added last: outermost, so it counts refusals too

    # -- page and operations ------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/health")
    async def health():
        if engine.error is not None:
            return JSONResponse({"status": "error", "error": str(engine.error)}, status_code=503)
        return {"status": "ok", "model": settings.model_name, "queue_length": engine.queue_length,
                "running": engine.running}

    @app.get("/metrics")
    async def metrics(request: HTTPRequest):
        server.check_auth(request)
        return Response(server.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    @app.get("/metrics.json")
    async def metrics_json(request: HTTPRequest):
        server.check_auth(request)
        return {"model": settings.model_name, "http_requests_total": server.http_requests,
                "http_errors_total": server.http_errors, **engine.metrics()}

    @app.get("/v1/models")
    async def models(request: HTTPRequest):
        server.check_auth(request)
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": created,
                                            "owned_by": "openseason", "context_length": server.context,
                                            "max_completion_tokens": settings.max_tokens_cap,
                                            "images": server.image_limits()}]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str, request: HTTPRequest):
        server.check_auth(request)
        if model_id != settings.model_name:
            raise APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
        return {"id": settings.model_name, "object": "model", "created": created, "owned_by": "openseason",
                "context_length": server.context, "max_completion_tokens": settings.max_tokens_cap,
                "images": server.image_limits()}

    # -- chat ---------------------------------------------------------------------------------------
    @app.post("/v1/chat/completions", openapi_extra=_body("ChatCompletionRequest"))
    async def chat_completions(http: HTTPRequest):
        server.check_auth(http)
        req = await read_request(http, ChatCompletionRequest, settings.max_body_bytes)
        server.check_common(req)
        mode = tools.tool_mode(req)
        grammar = tools.constraint(req, mode)
        if grammar is not None:   # compile the grammar here, not on the model thread
            await asyncio.to_thread(server.prepare_constraint, grammar)
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        messages = tools.messages_for_model(req, mode)
        has_images = await asyncio.to_thread(images.resolve_images, messages, settings,
                                             getattr(server.engine.model, "media", None) is not None)
        hooks = settings.hooks or Hooks()
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        # the rails read text: a multimodal turn reaches them as its text parts (images left out)
        rail_messages = images.text_view(messages) if has_images else messages
        rail_view = list(rail_messages)
        # rails may embed, run a perplexity model or ask the LLM: keep the event loop free meanwhile
        canned = await asyncio.to_thread(hooks.check_input, rail_messages) if hooks.check_input else None
        if has_images:   # messages the input rails removed do not reach the model either
            messages = images.restore(rail_messages, rail_view, messages)
        prompt_ids: list[int] = []
        job = None
        if canned is None:
            prompt_ids, media = await asyncio.to_thread(server.chat_inputs, messages)
            max_tokens = server.budget(prompt_ids, req.requested_max_tokens(), settings.default_max_tokens, param)
            strings, token_ids = chat_stops(settings.chat_format, server.tokenizer)
            stops = tuple(dict.fromkeys(list(strings) + req.stop_list()))
            job = server.start([prompt_ids], [server.sampling(req, max_tokens, stops, token_ids, constraint=grammar,
                                                              logprobs=logprobs)], media=[media])
        cid, made = _completion_id("chatcmpl"), _now()
        base = {"id": cid, "created": made, "model": settings.model_name, "system_fingerprint": None}
        held = hooks.check_output is not None or mode is not None   # the whole reply is needed first

        async def outcomes() -> AsyncIterator[Event]:
            """Engine events, or the canned reply; when the reply must be seen whole (output rails, tool
            calls) one text event per choice carries it, after the output checks."""
            if job is None:
                for i in range(req.n):
                    yield Event("text", i, canned)
                    yield Event("finish", i, finish_reason="stop", completion_tokens=0)
                return
            if not held:
                async for event in server.events(job, http, req.n):
                    yield event
                return
            texts: dict[int, list[str]] = {}
            async for event in server.events(job, http, req.n):
                if event.kind == "text":
                    texts.setdefault(event.index, []).append(event.text)
                    if event.logprob is not None:   # logprobs still flow; the text comes at the end
                        yield Event("text", event.index, "", token_id=event.token_id, logprob=event.logprob,
                                    top_logprobs=event.top_logprobs)
                    continue
                text = "".join(texts.get(event.index, []))
                if hooks.check_output is not None:
                    replaced = await asyncio.to_thread(hooks.check_output, rail_messages, text)
                    text = replaced if replaced is not None else text
                yield Event("text", event.index, text)
                yield event

        def finish_choice(index: int, text: str, event: Event) -> tuple[dict, str]:
            """(message fields, finish_reason) for a finished choice: text, or tool calls."""
            calls = tools.parse_tool_call(req, mode, text) if event.finish_reason == "stop" else None
            if calls:
                return {"content": None, "tool_calls": calls}, "tool_calls"
            return {"content": text}, event.finish_reason

        if not req.stream:
            texts: dict[int, list[str]] = {i: [] for i in range(req.n)}
            lps: dict[int, list[dict]] = {i: [] for i in range(req.n)}
            finish: dict[int, Event] = {}
            async for event in outcomes():
                if event.kind == "text":
                    texts[event.index].append(event.text)
                    if event.logprob is not None:
                        lps[event.index].append(server.logprob_entry(event))
                else:
                    finish[event.index] = event
            if len(finish) < req.n:
                return _client_gone()
            completion = sum(e.completion_tokens for e in finish.values())
            choices = []
            for i in range(req.n):
                fields, reason = finish_choice(i, "".join(texts[i]), finish[i])
                choices.append({"index": i, "message": {"role": "assistant", **fields},
                                "logprobs": {"content": lps[i]} if logprobs is not None else None,
                                "finish_reason": reason})
            return {**base, "object": "chat.completion", "choices": choices,
                    "usage": _usage(len(prompt_ids), completion)}

        include_usage = req.include_usage()

        async def stream():
            chunk = {**base, "object": "chat.completion.chunk"}
            if include_usage:
                chunk["usage"] = None
            for i in range(req.n):
                yield _sse({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                  "logprobs": None, "finish_reason": None}]})
            completion = 0
            last_text: dict[int, str] = {}
            async for event in outcomes():
                if event.kind == "text":
                    lp = {"content": [server.logprob_entry(event)]} if event.logprob is not None else None
                    if held and event.logprob is None:
                        last_text[event.index] = event.text   # the whole reply: sent with the finish
                        continue
                    delta = {"content": event.text} if event.text or lp is None else {}
                    choice = {"index": event.index, "delta": delta, "logprobs": lp, "finish_reason": None}
                else:
                    completion += event.completion_tokens
                    reason = event.finish_reason
                    if held:
                        fields, reason = finish_choice(event.index, last_text.get(event.index, ""), event)
                        if "tool_calls" in fields:
                            calls = [{"index": k, **call} for k, call in enumerate(fields["tool_calls"])]
                            delta = {"tool_calls": calls}
                        else:
                            delta = {"content": fields["content"]}
                        yield _sse({**chunk, "choices": [{"index": event.index, "delta": delta, "logprobs": None,
                                                          "finish_reason": None}]})
                    choice = {"index": event.index, "delta": {}, "logprobs": None, "finish_reason": reason}
                yield _sse({**chunk, "choices": [choice]})
            if include_usage:
                yield _sse({**chunk, "choices": [], "usage": _usage(len(prompt_ids), completion)})
            yield b"data: [DONE]\n\n"

        return _streaming(stream())

    # -- completions --------------------------------------------------------------------------------
    @app.post("/v1/completions", openapi_extra=_body("CompletionRequest"))
    async def completions(http: HTTPRequest):
        server.check_auth(http)
        req = await read_request(http, CompletionRequest, settings.max_body_bytes)
        server.check_common(req)
        hooks = settings.hooks or Hooks()
        if hooks.completions_disabled:
            raise APIError(403, hooks.completions_disabled_message, code="completions_disabled")
        if req.suffix:
            raise APIError(400, "suffix is not supported by this server", param="suffix",
                           code="unsupported_parameter")
        if req.echo and req.logprobs is not None:
            raise APIError(400, "echo together with logprobs (log-probabilities of the prompt tokens) is not "
                                "supported by this server; ask for one of them", param="echo",
                           code="unsupported_parameter")
        texts = req.prompts()
        if len(texts) * req.n > min(settings.max_n, engine.max_batch):   # before any tokenizing
            raise APIError(400, f"{len(texts)} prompts x n={req.n} choices is more than this server allows "
                                f"({min(settings.max_n, engine.max_batch)})", param="prompt", code="invalid_value")
        vocab = server.tokenizer.vocab_size
        if any(isinstance(p, list) and max(p) >= vocab for p in texts):
            raise APIError(400, f"a prompt holds a token id outside the vocabulary (0..{vocab - 1})", param="prompt",
                           code="invalid_value")
        prompts = await asyncio.to_thread(lambda: [p if isinstance(p, list) else server.encode(p) for p in texts])
        prompt_texts = [server.tokenizer.decode(ids, skip_special_tokens=False) if isinstance(p, list) else p
                        for p, ids in zip(texts, prompts)]
        echoes = [t if req.echo else "" for t in prompt_texts]
        # rails: a raw prompt is one user message; a refused prompt gets the refusal, not the model
        canned: list[Optional[str]] = [None] * len(prompts)
        if hooks.check_prompt is not None:
            canned = await asyncio.to_thread(lambda: [hooks.check_prompt(t) for t in prompt_texts])
        live = [i for i, c in enumerate(canned) if c is None]
        params = [server.sampling(req, server.budget(prompts[i], req.requested_max_tokens(), settings.max_tokens_cap,
                                                     "max_tokens"), req.stop_list(), logprobs=req.logprobs)
                  for i in live]
        choices = len(prompts) * req.n
        prompt_tokens = sum(len(ids) for ids in prompts)
        job = server.start([prompts[i] for i in live], params) if live else None
        base = {"id": _completion_id("cmpl"), "object": "text_completion", "created": _now(),
                "model": settings.model_name, "system_fingerprint": None}

        def echo(index: int) -> str:
            return echoes[index // req.n]

        async def outcomes() -> AsyncIterator[Event]:
            """Every choice's events under its index in the request: refusals for refused prompts, the
            engine's events for the others (held back and checked when output rails are set)."""
            for i, text in enumerate(canned):
                if text is not None:
                    for k in range(req.n):
                        yield Event("text", i * req.n + k, text)
                        yield Event("finish", i * req.n + k, finish_reason="stop")
            if job is None:
                return
            held: dict[int, list[str]] = {}
            async for event in server.events(job, http, len(live) * req.n):
                event.index = live[event.index // req.n] * req.n + event.index % req.n
                if hooks.check_completion is None:
                    yield event
                elif event.kind == "text":
                    held.setdefault(event.index, []).append(event.text)
                else:
                    text = "".join(held.get(event.index, []))
                    replaced = await asyncio.to_thread(hooks.check_completion, prompt_texts[event.index // req.n], text)
                    yield Event("text", event.index, text if replaced is None else replaced)
                    yield event

        if not req.stream:
            pieces: dict[int, list[str]] = {i: [echo(i)] for i in range(choices)}
            lps: dict[int, list[Event]] = {i: [] for i in range(choices)}
            finish: dict[int, Event] = {}
            async for event in outcomes():
                if event.kind == "text":
                    pieces[event.index].append(event.text)
                    if event.logprob is not None:
                        lps[event.index].append(event)
                else:
                    finish[event.index] = event
            if len(finish) < choices:
                return _client_gone()
            return {**base, "choices": [{"index": i, "text": "".join(pieces[i]),
                                         "logprobs": server.completion_logprobs(lps[i]) if req.logprobs is not None
                                         else None,
                                         "finish_reason": finish[i].finish_reason} for i in range(choices)],
                    "usage": _usage(prompt_tokens, sum(e.completion_tokens for e in finish.values()))}

        include_usage = req.include_usage()

        async def stream():
            chunk = dict(base)
            if include_usage:
                chunk["usage"] = None
            completion = 0
            if req.echo:
                for i in range(choices):
                    yield _sse({**chunk, "choices": [{"index": i, "text": echo(i), "logprobs": None,
                                                      "finish_reason": None}]})
            async for event in outcomes():
                if event.kind == "text":
                    lp = server.completion_logprobs([event]) if event.logprob is not None else None
                    choice = {"index": event.index, "text": event.text, "logprobs": lp, "finish_reason": None}
                else:
                    completion += event.completion_tokens
                    choice = {"index": event.index, "text": "", "logprobs": None,
                              "finish_reason": event.finish_reason}
                yield _sse({**chunk, "choices": [choice]})
            if include_usage:
                yield _sse({**chunk, "choices": [], "usage": _usage(prompt_tokens, completion)})
            yield b"data: [DONE]\n\n"

        return _streaming(stream())

    return app


def _body(model: str) -> dict:
    """The requestBody of an endpoint that parses its body itself (strictly, with our error shape)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}}


def _openapi(app: FastAPI, settings: ServerSettings) -> dict:
    """The OpenAPI document: FastAPI's routes plus the request models' JSON schemas (with their bounds)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi
        from pydantic.json_schema import models_json_schema

        doc = get_openapi(title="openseason", version="1", routes=app.routes,
                          description="OpenAI-compatible API of `openseason serve`.")
        _, defs = models_json_schema([(ChatCompletionRequest, "validation"), (CompletionRequest, "validation")],
                                     ref_template="#/components/schemas/{model}")
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(defs["$defs"])
        for name in ("ChatCompletionRequest", "CompletionRequest"):
            props = schemas[name]["properties"]
            # the one model this server holds (any other id is a 404)
            props["model"] = {"type": "string", "enum": [settings.model_name], "title": "Model"}
            props["temperature"]["description"] = (f"0 (greedy) or from {MIN_TEMPERATURE} to 2")
        app.openapi_schema = doc
    return app.openapi_schema


class _CountRequests:
    """Pure ASGI middleware (BaseHTTPMiddleware would hide client disconnects from the handlers)."""

    def __init__(self, app, server: Server):
        self.app = app
        self.server = server

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.server.http_requests += 1
        await self.app(scope, receive, send)


class _CrossSite:
    """Pure ASGI middleware refusing cross-site use (see the module docstring), answering CORS for the
    origins in `settings.cors_origins`. Its refusals are OpenAI-shaped errors like the app's."""

    METHODS = "GET, POST, OPTIONS"

    def __init__(self, app, server: Server):
        self.app = app
        self.server = server
        settings = server.settings
        self.any_host = "*" in settings.allowed_hosts
        self.hosts = set(settings.allowed_hosts)
        self.origins = set(settings.cors_origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        host = headers.get("host", "").strip().lower()
        if not self.host_allowed(host):
            shown = repr(host[:100]) if host else "none"
            return await self.refuse(send, 421, f"this server does not answer for the Host {shown}; it answers "
                                     f"{', '.join(sorted(self.hosts))} (start it with --allowed-hosts to add names)",
                                     "host_not_allowed")
        origin = headers.get("origin")
        cors = None
        if origin is not None:
            normal = origin.strip().lower().rstrip("/")
            same = normal.partition("://")[2] == host and normal.startswith(("http://", "https://"))
            if not same:
                if normal not in self.origins:
                    return await self.refuse(send, 403, f"requests from the web origin {origin[:100]!r} are not "
                                             "allowed (start the server with --cors-origin ORIGIN to allow a page "
                                             "there to call it)", "origin_not_allowed")
                cors = origin
        method = scope["method"]
        if cors is not None and method == "OPTIONS" and "access-control-request-method" in headers:
            return await self.preflight(send, cors, headers)
        if method in ("POST", "PUT", "PATCH"):
            media = headers.get("content-type", "").partition(";")[0].strip().lower()
            if media != "application/json":
                shown = repr(media[:100]) if media else "none"
                return await self.refuse(send, 415, f"the request body must be sent with Content-Type: "
                                         f"application/json (got {shown})", "unsupported_media_type", cors)
        if cors is None:
            return await self.app(scope, receive, send)

        async def send_with_cors(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + self.cors_headers(cors)}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def host_allowed(self, host: str) -> bool:
        if self.any_host:
            return True
        parts = _split_host(host)
        return parts is not None and (parts[0] in self.hosts or host in self.hosts)

    @staticmethod
    def cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin"),
                (b"access-control-expose-headers", b"Retry-After")]

    async def preflight(self, send, origin: str, headers: dict[str, str]) -> None:
        requested = headers.get("access-control-request-headers", "")
        # echo the header names asked for (the openai JS client sends x-stainless-*), if they are names
        names = [h.strip() for h in requested.split(",") if h.strip()][:64]
        allowed = ", ".join(h for h in names if len(h) <= 100 and all(c.isalnum() or c in "-_" for c in h))
        extra = [(b"access-control-allow-methods", self.METHODS.encode()),
                 (b"access-control-allow-headers", (allowed or "Authorization, Content-Type").encode("latin-1")),
                 (b"access-control-max-age", b"600")]
        if headers.get("access-control-request-private-network") == "true":
            extra.append((b"access-control-allow-private-network", b"true"))
        await send({"type": "http.response.start", "status": 204,
                    "headers": self.cors_headers(origin) + extra + [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def refuse(self, send, status: int, message: str, code: str, cors: Optional[str] = None) -> None:
        self.server.http_errors += 1
        body = json.dumps(APIError(status, message, code=code).body()).encode()
        extra = self.cors_headers(cors) if cors else []
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())] + extra})
        await send({"type": "http.response.body", "body": body})


def _client_gone() -> Response:
    """What a non-streaming handler returns once its client has hung up (its job is cancelled already):
    nobody reads it; 499 ("client closed request", as nginx logs it) keeps the access log honest."""
    return Response(status_code=499)


def _streaming(body: AsyncIterator[bytes]) -> StreamingResponse:
    async def guarded():
        # Headers are already sent once streaming starts; a failure becomes an error event, then [DONE].
        try:
            async for piece in body:
                yield piece
        except APIError as exc:
            yield _sse(exc.body())
            yield b"data: [DONE]\n\n"

    return StreamingResponse(guarded(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
