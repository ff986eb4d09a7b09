"""Structured output: generation that must follow a grammar (a JSON schema, any JSON object, a regular
expression or a Lark grammar), through llguidance, the grammar engine vLLM and others use.

    constraint = Constraint.json_schema({"type": "object", "properties": {...}, "required": [...]})
    params = SamplingParams(max_new_tokens=200, constraint=constraint)

Each sequence gets its own matcher. Before every choice the matcher computes which tokens may come
next (a bitmask over the vocabulary) and every other token's logit becomes -inf, so the text always
follows the grammar; once the grammar is complete only EOS remains, so the sequence stops with
finish_reason "stop". A sequence cut by max_tokens is a prefix of a valid output ("length"), as with
OpenAI. A grammar that llguidance cannot compile is an OpenseasonError raised when the constraint is
made, before any request runs.
"""
from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..errors import OpenseasonError

# JSON output without free whitespace: a model cannot pad forever, and the text is what json.dumps
# with separators (",", ":") would write.
_COMPACT = {"whitespace_flexible": False}
_TOKENIZERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()


def _llguidance():
    try:
        import llguidance
    except ImportError:  # pragma: no cover - a dependency; the message helps a broken install
        raise OpenseasonError("structured output needs the llguidance package",
                              hint="pip install llguidance") from None
    return llguidance


@dataclass(frozen=True)
class Constraint:
    """A compiled grammar description (llguidance's JSON form); `kind` says what it came from."""

    kind: str          # "json_schema", "json_object", "regex" or "lark"
    grammar: str

    @classmethod
    def json_schema(cls, schema: Any) -> "Constraint":
        """Output that is JSON valid against `schema` (a dict or its JSON text)."""
        ll = _llguidance()
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise OpenseasonError(f"the JSON schema is not valid JSON: {exc.msg}") from None
        if not isinstance(schema, (dict, bool)):
            raise OpenseasonError(f"a JSON schema is an object, not {type(schema).__name__}")
        try:
            grammar = ll.LLMatcher.grammar_from_json_schema(schema, overrides=_COMPACT)
        except (ValueError, TypeError) as exc:
            raise OpenseasonError(f"cannot use this JSON schema: {exc}") from None
        return cls._checked("json_schema", grammar)

    @classmethod
    def json_object(cls) -> "Constraint":
        """Any JSON object (OpenAI's response_format {"type": "json_object"})."""
        return cls.json_schema({"type": "object"})

    @classmethod
    def regex(cls, pattern: str) -> "Constraint":
        return cls._checked("regex", _llguidance().LLMatcher.grammar_from_regex(pattern))

    @classmethod
    def lark(cls, grammar: str) -> "Constraint":
        return cls._checked("lark", _llguidance().LLMatcher.grammar_from_lark(grammar))

    @classmethod
    def _checked(cls, kind: str, grammar: str) -> "Constraint":
        is_error, messages = _llguidance().LLMatcher.validate_grammar_with_warnings(grammar)
        if is_error:
            raise OpenseasonError(f"cannot compile the {kind.replace('_', ' ')} grammar: {messages[0]}")
        return cls(kind, grammar)

    def prepare(self, tokenizer, vocab_size: int) -> "Constraint":
        """Build the tokenizer view and compile the grammar once, here (a server calls this off its
        model thread); each sequence's matcher is then a copy. Returns self."""
        template = GrammarMatcher(self, llguidance_tokenizer(tokenizer, vocab_size))
        object.__setattr__(self, "_template", (tokenizer, vocab_size, template))
        return self

    def matcher(self, tokenizer, vocab_size: int) -> "GrammarMatcher":
        template = getattr(self, "_template", None)
        if template is not None and template[0] is tokenizer and template[1] == vocab_size:
            return template[2].copy()
        return GrammarMatcher(self, llguidance_tokenizer(tokenizer, vocab_size))


def llguidance_tokenizer(tokenizer, vocab_size: int):
    """llguidance's view of an openseason Tokenizer (built once per tokenizer: it takes ~1 s)."""
    ll = _llguidance()
    with _TOKENIZERS_LOCK:
        cached = _TOKENIZERS.get(tokenizer)
        if cached is not None and cached.vocab_size == vocab_size:
            return cached
        backend = getattr(tokenizer, "backend", None)
        if backend is None or tokenizer.eos_id is None:
            raise OpenseasonError("structured output needs a `tokenizers` tokenizer with an EOS token")
        built = ll.LLTokenizer(backend.to_str(), n_vocab=vocab_size, eos_token=tokenizer.eos_id)
        _TOKENIZERS[tokenizer] = built
        return built


class GrammarMatcher:
    """One sequence's position in the grammar: which tokens may come next, and the tokens taken."""

    def __init__(self, constraint: Constraint, ll_tokenizer):
        ll = _llguidance()
        self.constraint = constraint
        self.vocab_size = ll_tokenizer.vocab_size
        self.eos_id = ll_tokenizer.eos_token
        self.matcher = ll.LLMatcher(ll_tokenizer, constraint.grammar, log_level=0)
        self._check()
        self.mask = torch.full(((self.vocab_size + 31) // 32,), -1, dtype=torch.int32)
        self._bits = torch.arange(32, dtype=torch.int32)

    def copy(self) -> "GrammarMatcher":
        twin = object.__new__(GrammarMatcher)
        twin.constraint, twin.vocab_size, twin.eos_id = self.constraint, self.vocab_size, self.eos_id
        twin.matcher = self.matcher.deep_copy()
        twin.mask, twin._bits = self.mask.clone(), self._bits
        return twin

    def _check(self) -> None:
        if self.matcher.is_error():
            raise OpenseasonError(f"structured output failed: {self.matcher.get_error()}")

    def allowed(self) -> torch.Tensor:
        """Bool [vocab_size]: the tokens the grammar allows next (only EOS once it is complete)."""
        self.matcher.unsafe_compute_mask_ptr(self.mask.data_ptr(), self.mask.numel() * 4)
        self._check()
        bits = (self.mask.unsqueeze(1) >> self._bits) & 1
        return bits.reshape(-1)[: self.vocab_size].bool()

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` [V] with every token the grammar forbids at -inf."""
        allowed = self.allowed().to(logits.device)
        width = min(logits.size(-1), allowed.numel())
        out = torch.full_like(logits, float("-inf"))
        out[:width] = torch.where(allowed[:width], logits[:width], out[:width])
        return out

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)):
            raise OpenseasonError(f"structured output failed: token {token} does not follow the grammar "
                                  f"({self.matcher.get_error()})")

    @property
    def complete(self) -> bool:
        return self.matcher.is_accepting()


def validate_logit_bias(bias: Optional[dict], vocab_size: Optional[int] = None) -> Optional[dict[int, float]]:
    """OpenAI's logit_bias ({token id: bias in [-100, 100]}) with int keys, checked; None stays None."""
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise OpenseasonError(f"logit_bias must be a mapping of token ids to numbers, got {type(bias).__name__}")
    out: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise OpenseasonError(f"logit_bias key {key!r} is not a token id") from None
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise OpenseasonError(f"logit_bias token id {token} is outside the vocabulary"
                                  + (f" (0..{vocab_size - 1})" if vocab_size else ""))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise OpenseasonError(f"logit_bias for token {token} must be a number in [-100, 100], got {value!r}")
        out[token] = float(value)
    return out
