"""Hugging Face chat templates: the Jinja template a model ships with its tokenizer, rendered as transformers does.

A Hugging Face model may carry its chat format as a Jinja template: in `chat_template.jinja` (what
transformers 4.50+ writes), as the "chat_template" entry of `tokenizer_config.json` (older files), or
in `chat_template.json` (the legacy processor file). `ChatTemplate.from_dir` finds it in that order,
the order transformers prefers; `openseason convert` copies all three files both ways, so a converted
checkpoint keeps its template and `convert to-hf` gives it back.

Rendering follows `transformers.PreTrainedTokenizerBase.apply_chat_template`: a sandboxed Jinja
environment (`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with loop controls),
`raise_exception`, `strftime_now` and a `tojson` that does not escape HTML as globals, and the variables
`messages`, `add_generation_prompt`, `tools`, `documents` and the tokenizer's special tokens as text
(`bos_token`, `eos_token`, ...). Token ids are the rendered text encoded WITHOUT adding BOS again (the
template writes `bos_token` itself), like `apply_chat_template(tokenize=True)`. A template that refuses
the messages (`raise_exception`), uses an undefined value or does not parse raises `ChatTemplateError`,
which the server answers with 400. Templates are untrusted input: the sandbox runs no Python code from
them.

Use a template through `openseason.prompts.encode_chat(messages, tokenizer, template)`; it is one of the
chat formats `openseason.prompts.resolve_chat_format` can pick for a checkpoint.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Optional

from .fileio import read_json_object
from .errors import DataError, OpenseasonError

TEMPLATE_FILE = "chat_template.jinja"       # transformers >= 4.50
LEGACY_TEMPLATE_FILE = "chat_template.json"  # {"chat_template": "..."}, written by processors
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
# The named special tokens transformers passes to every template (PreTrainedTokenizerBase.special_tokens_map).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
NAME = "chat-template"


class ChatTemplateError(OpenseasonError):
    """A chat template that cannot be read, does not parse, or refuses the messages it was given."""


class _Refused(Exception):
    """raise_exception() called by the template; carries the template's own message."""


def _token_text(value) -> Optional[str]:
    if isinstance(value, dict):  # an AddedToken dict: {"content": "<s>", "lstrip": false, ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


@functools.lru_cache(maxsize=16)
def _compile(source: str):
    """The compiled template (cached per source text, as transformers does)."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for transformers' assistant mask;
        # rendering keeps the body unchanged, so we only need to parse it.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise _Refused(str(message))

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes <, >, & for HTML; chat templates want the plain JSON text.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def _plain_messages(messages, where: Optional[str]) -> list[dict]:
    """Copies of the messages as the template should see them; Alpaca/Dolly's separate "input" is
    appended to the content after a blank line (as the non-Alpaca prompt styles do)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError("a conversation needs a non-empty list of messages", where=where)
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise DataError(f"message {i} must be {{'role': str, 'content': str}}, got {msg!r:.120}", where=where)
        msg = dict(msg)
        extra = msg.pop("input", None)
        if extra:
            msg["content"] = f"{msg['content']}\n\n{extra}"
        out.append(msg)
    return out


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: special_tokens is a dict
class ChatTemplate:
    """A Hugging Face chat template with the special-token texts it is rendered with.

    source          the Jinja text
    special_tokens  {"bos_token": "<s>", "eos_token": "</s>", ...} as tokenizer_config.json spells them
    origin          where the template came from (a file), for error messages
    """

    source: str
    special_tokens: dict = field(default_factory=dict)
    origin: Optional[str] = None
    name: str = NAME

    def __post_init__(self):
        self.compiled()  # a template that does not parse fails where it is loaded, not at the first request

    @property
    def bos_token(self) -> Optional[str]:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> Optional[str]:
        return self.special_tokens.get("eos_token")

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """The EOS text: a safety net next to the EOS id, as the prompt styles' stop strings are."""
        return (self.eos_token,) if self.eos_token else ()

    def compiled(self):
        import jinja2

        try:
            return _compile(self.source)
        except jinja2.TemplateSyntaxError as exc:
            where = f"{self.origin}:{exc.lineno}" if self.origin else f"chat template line {exc.lineno}"
            raise ChatTemplateError(f"the chat template does not parse: {exc.message}", where=where,
                                    hint="fix the Jinja syntax, or choose a prompt style instead") from None

    def render(self, messages, add_generation_prompt: bool = True, *, where: Optional[str] = None, **extra) -> str:
        """The conversation as text, exactly as transformers' apply_chat_template(tokenize=False) renders it.
        `extra` are further template variables (e.g. tools=[...]); they override the special tokens."""
        import jinja2

        template = self.compiled()
        variables = {"tools": None, "documents": None, **self.special_tokens, **extra}
        try:
            return template.render(messages=_plain_messages(messages, where),
                                   add_generation_prompt=add_generation_prompt, **variables)
        except _Refused as exc:
            raise ChatTemplateError(f"the chat template refused these messages: {exc}", where=where or self.origin,
                                    hint="check the roles and their order (many templates want user and "
                                         "assistant to alternate, with an optional system message first)") from None
        except jinja2.UndefinedError as exc:
            raise ChatTemplateError(f"the chat template uses an undefined value: {exc.message}",
                                    where=where or self.origin) from None
        except jinja2.TemplateError as exc:  # includes SecurityError from the sandbox
            raise ChatTemplateError(f"the chat template failed: {type(exc).__name__}: {exc}",
                                    where=where or self.origin) from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as exc:
            raise ChatTemplateError(f"the chat template failed on these messages: {type(exc).__name__}: {exc}",
                                    where=where or self.origin) from None

    def encode(self, messages, tokenizer, add_generation_prompt: bool = True) -> list[int]:
        """Token ids: the rendered text encoded without adding BOS (the template writes bos_token itself)."""
        return tokenizer.encode(self.render(messages, add_generation_prompt), bos=False)

    def to_dict(self) -> dict:
        return {"name": self.name, "origin": self.origin, "stop_strings": list(self.stop_strings)}

    # -- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, directory: str | Path) -> Optional["ChatTemplate"]:
        """The chat template stored with the tokenizer in `directory` (a checkpoint or a Hugging Face
        model directory), or None when it has none. Looks in chat_template.jinja, then
        tokenizer_config.json's "chat_template", then chat_template.json."""
        directory = Path(directory)
        tok_cfg = _read_json(directory / TOKENIZER_CONFIG)
        specials = {}
        for source in (_read_json(directory / SPECIAL_TOKENS_MAP), tok_cfg):  # tokenizer_config.json wins
            for name in SPECIAL_TOKEN_NAMES:
                text = _token_text(source.get(name))
                if text is not None:
                    specials[name] = text
        file = directory / TEMPLATE_FILE
        if file.exists():
            try:
                return cls(file.read_text(encoding="utf-8"), specials, origin=str(file))
            except (OSError, UnicodeDecodeError) as exc:
                raise ChatTemplateError(f"cannot read the chat template ({exc})", where=str(file)) from None
        if "chat_template" in tok_cfg and tok_cfg["chat_template"] is not None:
            where = str(directory / TOKENIZER_CONFIG)
            return cls(_pick_default(tok_cfg["chat_template"], where), specials, origin=where)
        legacy = _read_json(directory / LEGACY_TEMPLATE_FILE)
        if legacy.get("chat_template") is not None:
            where = str(directory / LEGACY_TEMPLATE_FILE)
            return cls(_pick_default(legacy["chat_template"], where), specials, origin=where)
        return None


def _pick_default(value, where: str) -> str:
    """A template given as a string, or transformers' list of {"name", "template"}: the "default" one."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(t, dict) for t in value):
        named = {t.get("name"): t.get("template") for t in value}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise ChatTemplateError(f"several chat templates ({sorted(map(str, named))}) and none is called 'default'",
                                where=where, hint="choose a prompt style explicitly (--prompt-style)")
    raise ChatTemplateError(f"'chat_template' must be a string or a list of named templates, "
                            f"not {type(value).__name__}", where=where)


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    return read_json_object(path, ChatTemplateError)
