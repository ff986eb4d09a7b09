"""Structured chat requests: `response_format` (JSON object, JSON schema) and function calling (`tools`,
`tool_choice`), mapped onto the engine's grammar constraints.

- response_format json_object / json_schema: the reply is generated under that grammar
  (`generation.structured.Constraint`), so it always parses (and validates against the schema).
- tools with tool_choice "required" or a named function: the reply is generated under a grammar of
  `{"name": <one of the functions>, "arguments": <that function's parameters schema>}` and returned as
  `tool_calls` with finish_reason "tool_calls".
- tools with tool_choice "auto" (the default when tools are given): the functions are described in
  the system message; a reply that is exactly such a JSON object naming a known function is returned
  as a tool call, anything else as text.
- tool_choice "none": the tools are not offered.

Tool results come back as `tool` messages and earlier calls as an assistant's `tool_calls`; both are
rendered into the conversation as text the chat format can hold (a tool result is a user turn, calls
are the assistant's JSON), merging consecutive turns of one role.
"""
from __future__ import annotations

import json
import uuid
from typing import Optional

from ..errors import OpenseasonError
from ..generation.structured import Constraint
from .schema import APIError, ChatCompletionRequest, NamedToolChoice

TOOL_SYSTEM = ("You can call functions. To call one, reply with only a JSON object "
               '{{"name": <function name>, "arguments": <arguments object>}} and nothing else. '
               "The functions:\n{functions}")


def _functions(req: ChatCompletionRequest) -> list[dict]:
    return [t.function.model_dump(exclude_none=True) for t in (req.tools or [])]


def _call_schema(function: dict) -> dict:
    params = function.get("parameters") or {"type": "object"}
    return {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
            "properties": {"name": {"const": function["name"]}, "arguments": params}}


def tool_mode(req: ChatCompletionRequest) -> Optional[str]:
    """None (no tools offered), "auto", "required" or the name of the one function to call."""
    if not req.tools:
        if req.tool_choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice", code="invalid_value")
        return None
    choice = req.tool_choice or "auto"
    if choice == "none":
        return None
    if isinstance(choice, NamedToolChoice):
        names = [f["name"] for f in _functions(req)]
        if choice.function.name not in names:
            raise APIError(400, f"tool_choice names {choice.function.name!r}, which is not among the tools "
                                f"({', '.join(names)})", param="tool_choice", code="invalid_value")
        return choice.function.name
    return choice


def constraint(req: ChatCompletionRequest, mode: Optional[str]) -> Optional[Constraint]:
    """The grammar the reply must follow, if the request asks for one."""
    fmt = req.response_format
    structured = fmt is not None and fmt.type != "text"
    if structured and mode not in (None, "auto"):
        raise APIError(400, "response_format and a required tool call cannot be combined",
                       param="response_format", code="invalid_value")
    try:
        if mode not in (None, "auto"):
            functions = _functions(req)
            chosen = [f for f in functions if mode == "required" or f["name"] == mode]
            schemas = [_call_schema(f) for f in chosen]
            return Constraint.json_schema(schemas[0] if len(schemas) == 1 else {"anyOf": schemas})
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return Constraint.json_object()
        if fmt.json_schema is None or fmt.json_schema.json_schema is None:
            raise APIError(400, "response_format json_schema needs json_schema.schema",
                           param="response_format.json_schema", code="invalid_value")
        return Constraint.json_schema(fmt.json_schema.json_schema)
    except OpenseasonError as exc:
        param = "tools" if mode not in (None, "auto") else "response_format"
        raise APIError(400, f"invalid {param}: {exc}", param=param, code="invalid_value") from None


def messages_for_model(req: ChatCompletionRequest, mode: Optional[str]) -> list[dict]:
    """The conversation as system/user/assistant text messages, tools described when offered."""
    out: list[dict] = []
    answered = False   # the previous message was an assistant's tool_calls (or a tool result after one)
    for i, m in enumerate(req.messages):
        if m.role == "tool":
            if not answered:
                raise APIError(400, f"messages[{i}] is a tool result, but no assistant tool_calls come before it",
                               param=f"messages[{i}]", code="invalid_value")
            if not m.tool_call_id:
                raise APIError(400, f"messages[{i}] (a tool result) needs tool_call_id", param=f"messages[{i}]",
                               code="invalid_value")
        answered = (m.role == "assistant" and bool(m.tool_calls)) or (m.role == "tool" and answered)
        role = "system" if m.role == "developer" else m.role
        text = m.text()
        if role == "tool":
            role, text = "user", f"[result of tool call {m.tool_call_id or '?'}]\n{text}"
        if role == "assistant" and m.tool_calls:
            calls = [json.dumps({"name": c.function.name, "arguments": _loads(c.function.arguments)},
                                ensure_ascii=False) for c in m.tool_calls]
            text = "\n".join([text] * bool(text) + calls)
        if out and out[-1]["role"] == role and (role == "user" and m.role == "tool" or
                                                 out[-1].get("_tool")):
            if isinstance(out[-1]["content"], list):
                out[-1]["content"].append({"type": "text", "text": text})
            else:
                out[-1]["content"] += "\n\n" + text
            continue
        urls = m.image_urls() if not isinstance(m.content, str) else []
        if urls:
            if m.role != "user":
                raise APIError(400, f"messages[{i}]: only user messages may hold images", param=f"messages[{i}]",
                               code="invalid_value")
            # text and images in their order; the app turns each image_url into its bytes (serve/images.py)
            parts = [{"type": "text", "text": p.text} if p.type == "text" else {"type": "image", "image_url": p.image_url.url}
                     for p in m.content]
            out.append({"role": role, "content": parts})
            continue
        out.append({"role": role, "content": text, **({"_tool": True} if m.role == "tool" else {})})
    for m in out:
        m.pop("_tool", None)
    if mode is not None:
        listing = "\n".join(json.dumps(f, ensure_ascii=False) for f in _functions(req))
        note = TOOL_SYSTEM.format(functions=listing)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{note}"}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out


def _loads(arguments: str):
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def parse_tool_call(req: ChatCompletionRequest, mode: Optional[str], text: str) -> Optional[list[dict]]:
    """The OpenAI `tool_calls` list for a reply that is a call of one of the request's functions."""
    if mode is None:
        return None
    try:
        value = json.loads(text.strip())
    except json.JSONDecodeError:
        return None
    names = {f["name"] for f in _functions(req)}
    if not isinstance(value, dict) or value.get("name") not in names or not isinstance(value.get("arguments"), dict):
        return None
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": value["name"], "arguments": json.dumps(value["arguments"], ensure_ascii=False)}}]
