"""The canonical records every source is turned into, and what is written to a prepared directory.

- Conversation: ordered messages {role: system | user | assistant, content} plus id, source, meta.
- PreferencePair: a prompt conversation (ending with a user turn) plus a chosen and a rejected reply.
- Document: text plus meta, for pretraining.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import DataError
from ..prompts import validate_messages

KINDS = {"conversation": "conversations.jsonl", "preference": "preferences.jsonl", "document": "documents.jsonl"}


def _messages(messages) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


@dataclass
class Conversation:
    id: str
    source: str
    messages: list[dict]
    meta: dict[str, Any] = field(default_factory=dict)
    kind = "conversation"

    def validate(self, where: Optional[str] = None) -> "Conversation":
        validate_messages(self.messages, where=where)
        if self.messages[-1]["role"] != "assistant":
            raise DataError("a training conversation must end with an assistant reply", where=where)
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
        return "\n".join(m.get("content", "") for m in row["messages"])
    if "prompt" in row:
        return "\n".join([*(m.get("content", "") for m in row["prompt"]), row.get("chosen", ""), row.get("rejected", "")])
    return row.get("text", "")
