"""Request bodies of the OpenAI-compatible API, their validation, and OpenAI-style error bodies.

Requests are parsed with pydantic in strict mode, so a string where a number belongs is an error
rather than silently converted. A request is never answered as if a field had been carried out when
it was not: at the top level of a body, a field this server does not know is refused as OpenAI refuses
one ("Unrecognized request argument supplied"), and one of OpenAI's fields that it does not implement is
refused unless it holds the value that asks for nothing (`best_of: 1`, `functions: null`). Only fields
that change nothing a client could observe here (`store`, `metadata`, ...) pass unused. Inside
messages, unknown keys are ignored: clients echo back the assistant messages they received, with keys
such as `refusal` and `annotations`. Every problem becomes an `APIError`, rendered as OpenAI renders
errors:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}
"""
from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ..generation.sampling import MAX_SEED, MIN_TEMPERATURE

# Roles a chat message may have. "developer" is OpenAI's newer name for "system"; "tool" carries a
# function's result back (with tool_call_id).
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")

# Bounds on every field, checked before any work (README "Serving and chat" lists them). The server's own
# limits (--max-tokens-cap, n up to min(8, --max-batch), the context window) apply after these.
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 1024            # characters in one stop sequence
MAX_MODEL_CHARS = 256            # `model`
MAX_USER_CHARS = 256             # `user`, and a message's `name`
MAX_N = 128                      # `n` at the schema; the server allows at most min(8, --max-batch)
MAX_TOKENS_LIMIT = 2**31 - 1     # max_tokens / max_completion_tokens at the schema; then --max-tokens-cap
MAX_MESSAGES = 1024              # messages in one chat request
MAX_CONTENT_PARTS = 256          # text parts in one message's content list
MAX_PROMPTS = 128                # prompts in one /v1/completions request (then prompts x n <= the server's n limit)
MAX_PROMPT_CHARS = 512 * 1024    # characters of all message contents, or of all prompts, in one request
MAX_LOGPROBS = 20                # /v1/completions `logprobs`, chat `top_logprobs`
MAX_TOOLS = 128                  # functions in `tools`
MAX_LOGIT_BIAS = 300             # entries in `logit_bias` (OpenAI's limit)
MAX_JSON_DEPTH = 64              # nesting of arrays and objects in a request body
MAX_REPETITION_PENALTY = 10.0    # vLLM's `repetition_penalty` extension (1 = off; 1.1-1.5 is usual)

# OpenAI fields that change nothing this server could do otherwise (stored completions, billing tiers,
# prompt-cache routing, abuse tracking): accepted and not used.
INERT_FIELDS = frozenset({"store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier"})
# OpenAI fields this server does not implement -> (the values that ask for nothing, what to do instead).
UNSUPPORTED_FIELDS: dict[str, tuple[tuple, str]] = {
    "best_of": ((None, 1), "ask for n choices and pick one client-side"),
    "functions": ((None,), "describe them in tools"),
    "function_call": ((None,), "use tool_choice"),
    "audio": ((None,), "this server answers in text"),
    "modalities": ((None, ["text"]), "this server answers in text"),
    "prediction": ((None,), "leave it out"),
    "reasoning_effort": ((None,), "leave it out"),
    "verbosity": ((None,), "leave it out"),
    "web_search_options": ((None,), "leave it out"),
}


class APIError(Exception):
    """An error answered to the client with `status` and an OpenAI-style body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class ImageURL(_Strict):
    url: str = Field(max_length=64 * 1024 * 1024)   # a data URL; the server's --max-image-bytes applies after
    detail: Optional[Literal["auto", "low", "high"]] = None


class ImageURLPart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[Union[TextPart, ImageURLPart], Field(discriminator="type")]


class ToolCallFunction(_Strict):
    name: str = Field(max_length=64)
    arguments: str = Field(max_length=MAX_PROMPT_CHARS)


class ToolCall(_Strict):
    id: str = Field(max_length=MAX_USER_CHARS)
    type: Literal["function"]
    function: ToolCallFunction


class ChatMessage(_Strict):
    role: str = Field(max_length=32)
    content: Union[str, list[ContentPart], None] = None   # bounded in total by ChatCompletionRequest
    name: Optional[str] = Field(default=None, max_length=MAX_USER_CHARS)
    tool_calls: Optional[list[ToolCall]] = Field(default=None, max_length=MAX_TOOLS)   # assistant messages
    tool_call_id: Optional[str] = Field(default=None, max_length=MAX_USER_CHARS)        # tool messages

    @field_validator("content")
    @classmethod
    def _few_parts(cls, content):
        if isinstance(content, list) and len(content) > MAX_CONTENT_PARTS:
            raise ValueError(f"at most {MAX_CONTENT_PARTS} content parts are allowed, got {len(content)}")
        return content

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in CHAT_ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {', '.join(CHAT_ROLES)} "
                             f"(the legacy 'function' role is not supported: use tools)")
        return role

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if part.type == "text")

    def image_urls(self) -> list[str]:
        return [part.image_url.url for part in self.content or () if not isinstance(self.content, str)
                and part.type == "image_url"]


class StreamOptions(_Strict):
    include_usage: bool = False


class FunctionDef(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: Optional[str] = Field(default=None, max_length=MAX_STOP_CHARS * 8)
    parameters: Optional[dict[str, Any]] = None    # a JSON schema; bounded by the body's size and depth
    strict: Optional[bool] = None


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class ToolChoiceName(_Strict):
    name: str = Field(max_length=64)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: ToolChoiceName


class JsonSchemaSpec(_Strict):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    description: Optional[str] = Field(default=None, max_length=MAX_STOP_CHARS * 8)
    json_schema: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaSpec] = None


def _logit_bias(bias):
    if bias is None:
        return None
    if len(bias) > MAX_LOGIT_BIAS:
        raise ValueError(f"at most {MAX_LOGIT_BIAS} logit_bias entries are allowed, got {len(bias)}")
    out = {}
    for key, value in bias.items():
        if not re.fullmatch(r"[0-9]{1,9}", key):
            raise ValueError(f"logit_bias keys are token ids, got {key[:40]!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise ValueError(f"logit_bias values are numbers in [-100, 100], got {value!r} for token {key}")
        out[int(key)] = float(value)
    return out


class _Sampling(_Strict):
    model: str = Field(max_length=MAX_MODEL_CHARS)
    max_tokens: Optional[int] = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, ge=0.0, le=1.0)       # 0 is greedy, as OpenAI reads it
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(default=None, ge=0, le=MAX_SEED)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    user: Optional[str] = Field(default=None, max_length=MAX_USER_CHARS)
    logit_bias: Optional[dict[str, Any]] = None      # token id -> bias in [-100, 100], checked below
    # vLLM's extensions (sent through the openai client's extra_body): top_k -1 or 0 keeps every token
    top_k: Optional[int] = Field(default=None, ge=-1, le=2**31 - 1)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=MAX_REPETITION_PENALTY)
    ignore_eos: bool = False

    def top_k_or_none(self) -> Optional[int]:
        return self.top_k if self.top_k and self.top_k > 0 else None

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, bias):
        return _logit_bias(bias)

    @field_validator("temperature")
    @classmethod
    def _greedy_or_warm(cls, temperature: float) -> float:
        if 0 < temperature < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return temperature

    @field_validator("seed")
    @classmethod
    def _seeds_fit(cls, seed: Optional[int], info: ValidationInfo) -> Optional[int]:
        n = info.data.get("n")  # declared before seed, so validated already (absent if it was invalid)
        if seed is not None and isinstance(n, int) and seed + n - 1 > MAX_SEED:
            raise ValueError(f"seed + n - 1 must be at most {MAX_SEED} (choice i samples with seed + i)")
        return seed

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop):
        if stop is None:
            return None
        stops = [stop] if isinstance(stop, str) else stop
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty strings")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
        return stops

    def stop_list(self) -> list[str]:
        return list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_LOGPROBS)
    response_format: Optional[ResponseFormat] = None
    tools: Optional[list[ToolDef]] = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: Optional[bool] = None

    @field_validator("messages")
    @classmethod
    def _bounded_text(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        total = sum(len(m.content) if isinstance(m.content, str) else sum(len(p.text) for p in m.content or ()
                                                                          if p.type == "text")
                    for m in messages)
        if total > MAX_PROMPT_CHARS:
            raise ValueError(f"the messages hold {total} characters; at most {MAX_PROMPT_CHARS} are allowed")
        return messages

    def requested_max_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    # text, several texts, token ids, or several lists of token ids (as OpenAI and vLLM accept)
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False
    logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_LOGPROBS)
    suffix: Optional[str] = Field(default=None, max_length=MAX_STOP_CHARS)
    max_tokens: Optional[int] = Field(default=16, ge=1, le=MAX_TOKENS_LIMIT)  # OpenAI's default: 16

    @field_validator("prompt")
    @classmethod
    def _bounded_prompts(cls, prompt):
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            prompts = [prompt]
        else:
            prompts = [prompt] if isinstance(prompt, str) else prompt
        if not prompts or any(len(p) == 0 for p in prompts if isinstance(p, list)):
            raise ValueError("prompt list must not be empty")
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts are allowed in one request, got {len(prompts)}")
        if any(isinstance(p, list) and any(t < 0 for t in p) for p in prompts):
            raise ValueError("token ids must not be negative")
        total = sum(len(p) for p in prompts)
        if total > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt holds {total} characters; at most {MAX_PROMPT_CHARS} are allowed")
        return prompt

    def prompts(self) -> list[Union[str, list[int]]]:
        """Each prompt: a text, or a list of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [list(self.prompt)]
        return list(self.prompt)

    def requested_max_tokens(self) -> Optional[int]:
        return self.max_tokens


def _param_name(loc: tuple) -> Optional[str]:
    """pydantic's error location ('messages', 0, 'role') -> OpenAI's param ("messages[0].role")."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("str", "list[str]", "list[TextPart]", "none") or "[" in str(item) or str(item).startswith("function-"):
            continue  # union branch labels that pydantic puts in the path
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or None


def _same_value(value: Any, wanted: Any) -> bool:
    return value is None if wanted is None else type(value) is type(wanted) and value == wanted   # True is not 1


def check_fields(cls: type[BaseModel], body: dict) -> None:
    """Refuse, with APIError(400) naming it, a top-level field that `cls` does not carry out (module
    docstring). Checked in the body's order, so the first such field is the one named."""
    for name, value in body.items():
        if name in cls.model_fields or name in INERT_FIELDS:
            continue
        shown = name if len(name) <= 64 else f"{name[:64]}..."   # JSON keys are strings
        if name in UNSUPPORTED_FIELDS:
            asking_nothing, instead = UNSUPPORTED_FIELDS[name]
            if any(_same_value(value, wanted) for wanted in asking_nothing):
                continue
            raise APIError(400, f"{name!r} is not supported by this server ({instead})", param=name,
                           code="unsupported_parameter")
        raise APIError(400, f"Unrecognized request argument supplied: {shown}", param=shown,
                       code="unknown_parameter")


def parse_request(cls: type[BaseModel], body: Any) -> BaseModel:
    """Validate a decoded JSON body as `cls`; raise APIError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    if issubclass(cls, _Sampling):
        check_fields(cls, body)
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # For unions pydantic reports one error per branch; the first names the field well enough.
        first = errors[0]
        param = _param_name(tuple(first.get("loc", ())))
        msg = first.get("msg", "invalid value")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if first.get("type") == "missing":
            message = f"missing required parameter: {param!r}"
        else:
            value = first.get("input")
            shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
            message = f"invalid value for {param!r}: {msg} (got {shown[:80]})"
        raise APIError(400, message, param=param,
                       code="missing_required_parameter" if first.get("type") == "missing" else "invalid_value") from None


# -- decoding a body ------------------------------------------------------------------------------------
# Bytes that matter to nesting: quotes and backslashes (strings), brackets. UTF-8 continuation bytes are
# never ASCII, so scanning bytes is safe.
_STRUCTURE = re.compile(rb'[\\"\[\]{}]')
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays/objects in `raw`, counted without parsing (so without recursion), in one
    linear pass; stops counting once past MAX_JSON_DEPTH (and returns an upper bound for bodies with at
    most MAX_JSON_DEPTH opening brackets). (A regex that cuts out strings first goes
    quadratic on bodies like '"\\"\\"\\"...' and holds the GIL meanwhile.)"""
    openings = raw.count(b"[") + raw.count(b"{")
    if openings <= MAX_JSON_DEPTH:   # the usual body: no need to look closer
        return openings
    depth = deepest = 0
    in_string = False
    escaped_until = -1
    for match in _STRUCTURE.finditer(raw):
        pos = match.start()
        if pos < escaped_until:   # the byte after a backslash inside a string
            continue
        byte = raw[pos]
        if in_string:
            if byte == 0x5C:      # backslash
                escaped_until = pos + 2
            elif byte == 0x22:    # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    break
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def decode_json(raw: bytes) -> Any:
    """A request body (UTF-8 JSON) as Python values, or APIError(400) saying why it is not one.

    Refused before or while parsing, so nothing later trips over them: bodies nested deeper than
    MAX_JSON_DEPTH, NaN/Infinity, integers too long to convert, invalid UTF-8, and lone UTF-16
    surrogates written as escapes ("\\ud800"), which no later step could encode."""
    hint = "Send a JSON object with Content-Type: application/json."
    if _json_depth(raw) > MAX_JSON_DEPTH:
        raise APIError(400, f"the request body nests arrays/objects more than {MAX_JSON_DEPTH} levels deep. "
                            f"{hint}", code="invalid_json")
    try:
        text = raw.decode("utf-8")
        body = json.loads(text, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise APIError(400, f"the request body is not valid UTF-8: {exc}. {hint}", code="invalid_json") from None
    except (ValueError, RecursionError) as exc:   # JSONDecodeError, NaN, an integer of > 4300 digits
        raise APIError(400, f"could not parse the request body as JSON: {exc}. {hint}",
                       code="invalid_json") from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, "the request body holds a lone UTF-16 surrogate escape (such as \\ud800 without "
                                "its pair), which is not a valid character", code="invalid_json") from None
    return body
