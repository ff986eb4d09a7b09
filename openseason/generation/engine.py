"""The decoding loop: prefill prompts into a KV cache, then decode one token per step.

`Decoder` holds one batch of prompts (one prompt is a batch of one) with its own pre-allocated KV
cache. `prefill()` runs the prompts and picks each row's first token; every `step()` feeds the
previous tokens and picks the next ones. Both return `TokenEvent`s (token id, safe text delta,
finish reason) so a caller can stream, and a server's scheduler can interleave many decoders, one
step at a time. Rows that finish leave the batch (their cache rows are dropped), so a long answer
does not pay for the short ones.

Prompts of different lengths are left-padded: the model gets an attention mask over every key
position and rotary positions that count only real tokens (cumsum(mask) - 1), so each row decodes
exactly as it would alone. Without padding (one prompt, or equal lengths) no mask is built at all
and every decode step takes the model's mask-free fast path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch

from ..errors import OpenseasonError
from .sampling import SamplingParams, make_generator, next_tokens, stop_ids
from .text import TextStream


@dataclass
class TokenEvent:
    """One generated token of one row: its id, the text it made safe to show, and whether the row ended."""

    row: int
    token_id: int
    text: str
    finish_reason: Optional[str] = None   # None while running, then "stop" or "length"


@dataclass
class Completion:
    """A finished sequence. `token_ids` are every generated id (including a stop token or the tokens
    of a stop string); `text` ends before any stop string; finish_reason is "stop" or "length"."""

    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: Optional[str] = None
    stop_reason: Optional[object] = None   # the stop string or stop token id that ended it

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def check_context(block_size: int, prompt_len: int, max_new_tokens: int, name: str = "the model",
                  where: Optional[str] = None) -> None:
    """Raise an OpenseasonError when prompt + max_new_tokens does not fit the context window."""
    if prompt_len < 1:
        raise OpenseasonError("the prompt is empty: generation needs at least one prompt token", where=where,
                              hint="pass some text, or token ids such as the tokenizer's BOS")
    if prompt_len + max_new_tokens > block_size:
        raise OpenseasonError(
            f"prompt of {prompt_len} tokens + max_new_tokens {max_new_tokens} = {prompt_len + max_new_tokens} "
            f"tokens exceeds the context window of {block_size} tokens of {name}", where=where,
            hint=f"shorten the prompt or lower max_new_tokens to at most {max(block_size - prompt_len, 0)}")


class Decoder:
    """Step-wise generation for a batch of token-id prompts with its own KV cache.

        dec = Decoder(model, [ids_a, ids_b], SamplingParams(max_new_tokens=32), tokenizer=tok)
        events = dec.prefill()            # first token of every row
        while not dec.finished:
            events = dec.step()           # one more token for every unfinished row
        dec.completions                   # [Completion, Completion]

    The model must be a GPT (forward with kv_cache / attention_mask / position_ids / last_only).
    Without a tokenizer no text is produced and stop strings are not available.
    """

    def __init__(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]], params: SamplingParams, *,
                 tokenizer=None, eos_id: Optional[int] = None, generator: Optional[torch.Generator] = None):
        if not prompts:
            raise OpenseasonError("no prompts to generate from")
        self.model = model
        self.params = params
        self.tokenizer = tokenizer
        config = model.config
        for i, p in enumerate(prompts):
            check_context(config.block_size, len(p), params.max_new_tokens, name=config.name,
                          where=f"prompt {i}" if len(prompts) > 1 else None)
        if params.stop and tokenizer is None:
            raise OpenseasonError("stop strings need a tokenizer to compare text")
        if eos_id is None and tokenizer is not None:
            eos_id = tokenizer.eos_id
        self.stop_ids = stop_ids(params, eos_id)
        self.device = model.embed.weight.device
        self.generator = generator if generator is not None else make_generator(params.seed, self.device)
        self.completions = [Completion(prompt_ids=[int(t) for t in p]) for p in prompts]
        self.streams = [TextStream(tokenizer, params.stop, context=c.prompt_ids) if tokenizer is not None else None
                        for c in self.completions]
        self.active = list(range(len(prompts)))   # original row index of each batch row
        self._prefilled = False
        self._next_input: Optional[torch.Tensor] = None

    @property
    def finished(self) -> bool:
        return self._prefilled and not self.active

    # -- the two phases -----------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self) -> list[TokenEvent]:
        """Run the prompts through the model and pick every row's first token."""
        if self._prefilled:
            raise RuntimeError("prefill() was already called")
        self._prefilled = True
        lengths = [c.prompt_tokens for c in self.completions]
        batch, longest = len(lengths), max(lengths)
        max_len = longest + self.params.max_new_tokens
        pad = 0
        ids = torch.full((batch, longest), pad, dtype=torch.long)
        for row, c in enumerate(self.completions):
            ids[row, longest - len(c.prompt_ids):] = torch.tensor(c.prompt_ids, dtype=torch.long)
        ids = ids.to(self.device)
        self.cache = self.model.new_kv_cache(batch, max_len)
        self.mask = self.positions = None
        if min(lengths) != longest:
            # Left padding: one mask buffer for the whole run; each step passes a longer view of it.
            self.mask = torch.zeros(batch, max_len, dtype=torch.long, device=self.device)
            for row, n in enumerate(lengths):
                self.mask[row, longest - n:] = 1
            self.mask[:, longest:] = 1
            positions = (self.mask[:, :longest].cumsum(-1) - 1).clamp(min=0)
            self.positions = positions[:, -1:].clone()
            logits = self.model(ids, kv_cache=self.cache, attention_mask=self.mask[:, :longest],
                                position_ids=positions, last_only=True)
        else:
            logits = self.model(ids, kv_cache=self.cache, last_only=True)
        self.seen = None
        if self.params.repetition_penalty != 1.0:
            self.seen = torch.zeros(batch, logits.size(-1), dtype=torch.bool, device=self.device)
            for row, c in enumerate(self.completions):
                self.seen[row, torch.tensor(c.prompt_ids, device=self.device)] = True
        return self._choose(logits[:, -1])

    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        """Feed each unfinished row's last token and pick its next one."""
        if not self._prefilled:
            raise RuntimeError("call prefill() first")
        if not self.active:
            return []
        if self.mask is not None:
            self.positions += 1
            length = self.cache.length + 1
            logits = self.model(self._next_input, kv_cache=self.cache, attention_mask=self.mask[:, :length],
                                position_ids=self.positions, last_only=True)
        else:
            logits = self.model(self._next_input, kv_cache=self.cache, last_only=True)
        return self._choose(logits[:, -1])

    def __iter__(self) -> Iterator[list[TokenEvent]]:
        """prefill() then step() until every row is done; yields each call's events."""
        yield self.prefill()
        while not self.finished:
            yield self.step()

    def run(self) -> list[Completion]:
        """Generate to the end; returns one Completion per prompt, in order."""
        for _ in self:
            pass
        return self.completions

    # -- bookkeeping --------------------------------------------------------------------------------
    def _choose(self, logits: torch.Tensor) -> list[TokenEvent]:
        tokens = next_tokens(logits, self.params, self.seen, self.generator)
        if self.seen is not None:
            self.seen.scatter_(1, tokens.unsqueeze(1), True)
        self._next_input = tokens.unsqueeze(1)
        events, keep = [], []
        for pos, token in enumerate(tokens.tolist()):
            row = self.active[pos]
            event = self._record(row, token)
            events.append(event)
            if event.finish_reason is None:
                keep.append(pos)
        if len(keep) < len(self.active):
            self._drop_finished(keep)
        return events

    def _record(self, row: int, token: int) -> TokenEvent:
        completion, stream = self.completions[row], self.streams[row]
        completion.token_ids.append(token)
        text, reason = "", None
        if token in self.stop_ids:
            reason = "stop"
            completion.stop_reason = token
            if stream is not None:
                text = stream.finish()
        else:
            if stream is not None:
                text = stream.add(token)
                if stream.stopped:
                    reason = "stop"
                    completion.stop_reason = stream.matched
            if reason is None and completion.completion_tokens >= self.params.max_new_tokens:
                reason = "length"
                if stream is not None:
                    text += stream.finish()
        if reason is not None:
            completion.finish_reason = reason
            if stream is not None:
                completion.text = stream.text
        return TokenEvent(row=row, token_id=token, text=text, finish_reason=reason)

    def _drop_finished(self, keep: list[int]) -> None:
        self.active = [self.active[pos] for pos in keep]
        if not keep:
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.cache.select(index)
        self._next_input = self._next_input.index_select(0, index)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index)
            self.positions = self.positions.index_select(0, index)
        if self.seen is not None:
            self.seen = self.seen.index_select(0, index)


def generate_ids(model: torch.nn.Module, prompts: Sequence[Sequence[int]], params: SamplingParams, *,
                 tokenizer=None, eos_id: Optional[int] = None) -> list[Completion]:
    """Generate for token-id prompts in one left-padded batch; one Completion per prompt."""
    return Decoder(model, prompts, params, tokenizer=tokenizer, eos_id=eos_id).run()
