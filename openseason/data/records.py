"""The canonical records every source is turned into, and what is written to a prepared directory.

- Conversation: ordered messages {role: system | user | assistant, content} plus id, source, meta.
  A user message's content may instead be a list of parts, the shape of OpenAI's content parts:
  [{"type": "image", "path": "images/0001.png"}, {"type": "text", "text": "What color is it?"}]
  (image paths are absolute, or relative to the prepared directory that holds the record).
- PreferencePair: a prompt conversation (ending with a user turn) plus a chosen and a rejected reply.
- Document: text plus meta, for pretraining.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import DataError
from ..prompts import validate_messages

KINDS = {"conversation": "conversations.jsonl", "preference": "preferences.jsonl", "document": "documents.jsonl"}


PART_TYPES = ("text", "image")
MAX_PARTS = 64   # content parts in one message (a bound on hostile rows)


def _messages(messages) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def validate_parts(content, index: int, role: str, where: Optional[str] = None) -> None:
    """A list content must be 1..MAX_PARTS parts {"type": "text", "text": str} | {"type": "image",
    "path": non-empty str}, with no other keys; images only in user turns."""
    if not isinstance(content, list) or not 0 < len(content) <= MAX_PARTS:
        raise DataError(f"message {index}: content parts must be a list of 1 to {MAX_PARTS} parts", where=where)
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in PART_TYPES:
            raise DataError(f"message {index} part {j}: 'type' must be one of {', '.join(PART_TYPES)}, got "
                            f"{part!r:.80}", where=where)
        field = "text" if kind == "text" else "path"
        if set(part) != {"type", field} or not isinstance(part[field], str):
            raise DataError(f"message {index} part {j}: a {kind} part is {{'type': {kind!r}, {field!r}: str}} "
                            f"and nothing else, got {part!r:.80}", where=where)
        if kind == "image" and (not part["path"].strip() or role != "user"):
            raise DataError(f"message {index} part {j}: " + ("an image part needs a non-empty path"
                            if role == "user" else f"images may only be in user turns, not {role}"), where=where)


def content_text(content) -> str:
    """The text of a message's content: the string itself, or its text parts joined by newlines."""
    if isinstance(content, str):
        return content
    return "\n".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text")


def image_paths(messages) -> list[str]:
    """Every image part's path in `messages`, in order."""
    return [p["path"] for m in messages if isinstance(m.get("content"), list)
            for p in m["content"] if isinstance(p, dict) and p.get("type") == "image"]


def resolve_image_path(path: str, base_dir) -> Path:
    """An image part's file: absolute paths as they are, others relative to the prepared directory."""
    p = Path(path)
    return p if p.is_absolute() else Path(base_dir) / p


def validate_conversation_messages(messages, where: Optional[str] = None):
    """validate_messages for messages whose content may be a list of parts (checked first); returns
    what validate_messages returns, computed on the text view."""
    if isinstance(messages, (list, tuple)):
        for i, m in enumerate(messages):
            if isinstance(m, dict) and isinstance(m.get("content"), list):
                validate_parts(m["content"], i, m.get("role"), where)
        messages = [{**m, "content": content_text(m["content"])}
                    if isinstance(m, dict) and isinstance(m.get("content"), list) else m for m in messages]
    return validate_messages(messages, where=where)


@dataclass
class Conversation:
    id: str
    source: str
    messages: list[dict]
    meta: dict[str, Any] = field(default_factory=dict)
    kind = "conversation"

    def validate(self, where: Optional[str] = None) -> "Conversation":
        validate_conversation_messages(self.messages, where=where)
        if self.messages[-1]["role"] != "assistant" or not isinstance(self.messages[-1]["content"], str):
            raise DataError("a training conversation must end with an assistant reply (text)", where=where)
        return self

    def to_dict(self) -> dict:
        return {"id": self.id, "source": self.source, "messages": _messages(self.messages), "meta": self.meta}

    @classmethod
    def from_dict(cls, row: dict, where: Optional[str] = None) -> "Conversation":
        try:
            return cls(str(row["id"]), row.get("source", ""), row["messages"], row.get("meta") or {})
        except (KeyError, TypeError) as exc:
            raise DataError(f"not a conversation record (missing {exc})", where=where) from None


@dataclass
class PreferencePair:
    id: str
    source: str
    prompt: list[dict]
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)
    kind = "preference"

    def validate(self, where: Optional[str] = None) -> "PreferencePair":
        validate_messages(self.prompt, where=where)
        if self.prompt[-1]["role"] != "user":
            raise DataError("a preference prompt must end with a user turn", where=where)
        return self

    def to_dict(self) -> dict:
        return {"id": self.id, "source": self.source, "prompt": _messages(self.prompt), "chosen": self.chosen,
                "rejected": self.rejected, "meta": self.meta}

    @classmethod
    def from_dict(cls, row: dict, where: Optional[str] = None) -> "PreferencePair":
        try:
            return cls(str(row["id"]), row.get("source", ""), row["prompt"], row["chosen"], row["rejected"],
                       row.get("meta") or {})
        except (KeyError, TypeError) as exc:
            raise DataError(f"not a preference record (missing {exc})", where=where) from None


@dataclass
class Document:
    id: str
    source: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    kind = "document"

    def validate(self, where: Optional[str] = None) -> "Document":
        if not isinstance(self.text, str):
            raise DataError("a document needs a text string", where=where)
        return self

    def to_dict(self) -> dict:
        return {"id": self.id, "source": self.source, "text": self.text, "meta": self.meta}

    @classmethod
    def from_dict(cls, row: dict, where: Optional[str] = None) -> "Document":
        try:
            return cls(str(row["id"]), row.get("source", ""), row["text"], row.get("meta") or {})
        except (KeyError, TypeError) as exc:
            raise DataError(f"not a document record (missing {exc})", where=where) from None


def record_text(row: dict) -> str:
    """All the text of a written record (for dedup and stats), whatever its kind."""
    if "messages" in row:
        return "\n".join(content_text(m.get("content", "")) for m in row["messages"])
    if "prompt" in row:
        return "\n".join([*(m.get("content", "") for m in row["prompt"]), row.get("chosen", ""), row.get("rejected", "")])
    return row.get("text", "")
