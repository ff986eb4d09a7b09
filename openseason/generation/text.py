"""Token ids to streamed text: incremental detokenization and stop-string matching.

Two small state machines a decoding loop feeds one token (or one text delta) at a time:

- `IncrementalDecoder` turns token ids into text deltas without ever emitting half a UTF-8 character
  (byte-level BPE splits multi-byte characters across tokens; a partial decode ends in U+FFFD, which
  we hold back until the next token completes it) and without the word-boundary artifacts of
  decoding each token alone (it decodes a short window that includes earlier tokens).
- `StopMatcher` cuts the text at the first stop string, and holds back any tail that could still
  grow into one, so streamed text never shows a stop string or a prefix of one that later
  completes, even when the stop string spans token boundaries.

`TextStream` chains the two; the concatenation of its deltas is the final text.
"""
from __future__ import annotations

from typing import Iterable, Sequence

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Decode a growing list of token ids into text deltas.

    `context` are token ids before the first generated one (the prompt's tail): decoding starts with
    them so that tokenizers whose decoding depends on the previous token (SentencePiece's leading
    space) produce the same text as decoding the whole sequence.
    """

    def __init__(self, tokenizer, context: Sequence[int] = (), skip_special_tokens: bool = True,
                 context_tokens: int = 6):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = list(context)[-context_tokens:] if context_tokens else []
        self.prefix_offset = 0                 # start of the decode window
        self.read_offset = len(self.ids)       # tokens before this are already emitted as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str:
        """Append one token id; return the newly completed text ("" while a character is incomplete)."""
        self.ids.append(int(token_id))
        return self._advance(final=False)

    def flush(self) -> str:
        """Text still held back at the end (an incomplete character decodes to U+FFFD here)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.read_offset >= len(self.ids):
            return ""
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        after = self._decode(self.ids[self.prefix_offset:])
        if len(after) <= len(before) and not final:
            return ""
        if after.endswith(REPLACEMENT) and not final:
            return ""
        delta = after[len(before):]
        # Slide the window so each step decodes a handful of tokens, not the whole output.
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        return delta


class StopMatcher:
    """Cut streamed text at the first occurrence of any stop string.

    feed(delta) returns the text that is now safe to show; `stopped` turns True once a stop string
    has appeared (the text before it is returned; nothing after). flush() returns the held-back tail
    when the sequence ends for another reason.
    """

    def __init__(self, stop: Iterable[str] = ()):
        self.stop = tuple(s for s in stop if s)
        self.longest = max((len(s) for s in self.stop), default=0)
        self.pending = ""
        self.stopped = False
        self.matched: str | None = None   # the stop string that ended the text

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        if not self.stop:
            return delta
        self.pending += delta
        first = -1
        for s in self.stop:
            i = self.pending.find(s)
            if i != -1 and (first == -1 or i < first):
                first, self.matched = i, s
        if first != -1:
            self.stopped = True
            out, self.pending = self.pending[:first], ""
            return out
        hold = self._held_suffix()
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def _held_suffix(self) -> int:
        """Length of the longest tail of `pending` that is a proper prefix of some stop string."""
        text = self.pending
        for n in range(min(self.longest - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class TextStream:
    """Token ids in, safe text deltas out: IncrementalDecoder followed by StopMatcher."""

    def __init__(self, tokenizer, stop: Iterable[str] = (), context: Sequence[int] = (),
                 skip_special_tokens: bool = True):
        self.decoder = IncrementalDecoder(tokenizer, context, skip_special_tokens=skip_special_tokens)
        self.matcher = StopMatcher(stop)
        self.text = ""

    @property
    def stopped(self) -> bool:
        """True once a stop string has been seen."""
        return self.matcher.stopped

    @property
    def matched(self) -> str | None:
        """The stop string that ended the text, if any."""
        return self.matcher.matched

    def add(self, token_id: int) -> str:
        delta = self.matcher.feed(self.decoder.add(token_id))
        self.text += delta
        return delta

    def finish(self) -> str:
        """The remaining text at the end of the sequence (call once)."""
        delta = "" if self.matcher.stopped else self.matcher.feed(self.decoder.flush())
        delta += self.matcher.flush()
        self.text += delta
        return delta
