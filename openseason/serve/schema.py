"""Request bodies of the OpenAI-compatible API, their validation, and OpenAI-style error bodies.

Requests are parsed with pydantic in strict mode, so a string where a number belongs is an error
rather than silently converted; unknown fields are ignored (clients send many optional ones we do not
use). Every problem becomes an `APIError`, rendered as OpenAI renders errors:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Roles a chat message may have. "developer" is OpenAI's newer name for "system".
CHAT_ROLES = ("system", "developer", "user", "assistant")
MAX_STOP_SEQUENCES = 4


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
    text: str


class ChatMessage(_Strict):
    role: str
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in CHAT_ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {', '.join(CHAT_ROLES)} "
                             f"(tool and function messages are not supported)")
        return role

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    user: Optional[str] = None

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
        return stops

    def stop_list(self) -> list[str]:
        return list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    logprobs: Optional[bool] = None

    def requested_max_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]
    echo: bool = False
    logprobs: Optional[int] = None
    suffix: Optional[str] = None
    max_tokens: Optional[int] = Field(default=16, ge=1)  # OpenAI's default for /v1/completions

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, prompt):
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt list must not be empty")
        return prompt

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

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


def parse_request(cls: type[BaseModel], body: Any) -> BaseModel:
    """Validate a decoded JSON body as `cls`; raise APIError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
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
