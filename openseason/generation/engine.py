"""The one decoding implementation: sequences in a running batch, a step-wise `Decoder`, and the
continuous-batching `Engine` that serves many requests from one model thread.

Every caller of a model goes through `RunningBatch`: `LLM.generate`/`stream`/`chat` and the
training samples through `Decoder` (a fixed batch, stepped in the caller's thread), the server, the
terminal chat, the rails and in-process LLM clients through `Engine` (a thread that admits new
requests into the running batch between decode steps). So the same prompt gives the same greedy
tokens whichever way it comes in, and a seeded request samples the same tokens whatever else shares
its batch (each choice draws from its own generator, seeded with seed + choice index).

The batch's KV cache keeps one shared length L; row i holds its `lens[i]` real positions
right-aligned in slots [L - lens[i], L) and the slots before are padding hidden by the attention
mask (see `model.KVCache`). Rotary positions count real tokens only, so each row decodes exactly as
it would alone. When every row is as long as the cache (one prompt, or equal lengths) no mask is built
and the model takes its mask-free fast path. Finished rows leave at once, so a long answer does not
pay for short ones; the cache is trimmed on the left when the longest rows have left.

Images. A prompt may come with media: [(pixels [3, H, W], start)], one per image of a multimodal
model (`model.media`, see peft/media.py): at prefill the front-end turns them into visual tokens
written over the prompt's placeholder run at `start`, or into per-row extras (start -1) that the KV
cache keeps with the row for every later step. A text-only model refuses media.

Each step: (prefill) run each new prompt alone in a cache of its own (so its rows never depend on
what arrived with it; on a GPU, by default, the new prompts together, left-padded), sample each
choice's first token, and append their rows to the running cache;
(decode) feed every row its last token and sample the next; (finish) rows that hit EOS or a stop
token, a stop string (matched on the text, across token boundaries) or their token budget end with
"stop" or "length".
"""
from __future__ import annotations

import collections
import itertools
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence as Seq

import torch

from ..errors import OpenseasonError
from .sampling import (SamplingParams, apply_openai_penalties, apply_repetition_penalty, make_generator,
                       sample_next_token, stop_ids)
from .cpu_kernels import BATCH_INVARIANT_ROWS
from .speed import ahead_of_time_steps, decode_forward
from .text import TextStream


# -- results ---------------------------------------------------------------------------------------
@dataclass
class TokenEvent:
    """One generated token of one sequence: its id, the text it made safe to show, whether it ended.

    row            the sequence's index (Decoder: position in `completions`; Engine: the choice index)
    finish_reason  None while running, then "stop", "length" or "error" (then `error` says why)
    logprob        the token's log-probability under the model's raw distribution (when asked for)
    top_logprobs   [(token id, log-probability)] of the most likely alternatives (when asked for)
    """

    row: int
    token_id: Optional[int]
    text: str
    finish_reason: Optional[str] = None
    logprob: Optional[float] = None
    top_logprobs: Optional[list[tuple[int, float]]] = None
    error: Optional[str] = None


@dataclass
class Completion:
    """A finished sequence. `token_ids` are every generated id (including a stop token or the tokens
    of a stop string); `text` ends before any stop string; finish_reason is "stop", "length" or
    "error" (then `error` holds the message)."""

    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: Optional[str] = None
    stop_reason: Optional[object] = None   # the stop string or stop token id that ended it
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def context_length(model) -> int:
    """The most positions `model` reads: its block_size, or more for an ALiBi model whose context was
    extended (`GPT.extend_context`, `--max-context`)."""
    return getattr(model, "context_length", None) or model.config.block_size


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


# -- one sequence ----------------------------------------------------------------------------------
def _special_stop_ids(params: SamplingParams, tokenizer) -> frozenset[int]:
    """Stop strings that are one special token (ChatML's <|im_end|>): without special tokens in the
    text they could never match as text, so they stop at their id."""
    if tokenizer is None or not params.stop or not params.skip_special_tokens:
        return frozenset()
    special = getattr(tokenizer, "special_ids", frozenset())
    ids = (tokenizer.token_to_id(s) for s in params.stop)
    return frozenset(i for i in ids if i is not None and i in special)


class Sequence:
    """One choice being generated: its sampling state, its text stream and its Completion."""

    def __init__(self, prompt_ids: Seq[int], params: SamplingParams, *, index: int = 0, tokenizer=None,
                 eos_id: Optional[int] = None, device="cpu", owner=None, media: Seq = ()):
        self.params = params
        self.media = list(media)               # [(pixels [3, H, W], start)] of the prompt's images
        self.index = index
        self.row = index                       # position in a Decoder's completions
        self.owner = owner                     # the Engine request it belongs to (None under Decoder)
        self.completion = Completion(prompt_ids=[int(t) for t in prompt_ids])
        self.stop_ids = stop_ids(params, eos_id) | _special_stop_ids(params, tokenizer)
        self.stream = (TextStream(tokenizer, params.stop, context=self.completion.prompt_ids,
                                  skip_special_tokens=params.skip_special_tokens)
                       if tokenizer is not None else None)
        self.generator = (make_generator(params.seed + index, device)
                          if params.seed is not None and not params.greedy else None)
        self.device = device
        self.seen: Optional[torch.Tensor] = None     # bool [V]: prompt + output tokens (repetition penalty)
        self.counts: Optional[torch.Tensor] = None   # float [V]: output token counts (OpenAI penalties)
        self.bias: Optional[tuple[torch.Tensor, torch.Tensor]] = None   # logit_bias as (ids, values)
        self.grammar = None
        if params.constraint is not None:
            if tokenizer is None:
                raise OpenseasonError("structured output needs a tokenizer")
            self.grammar = params.constraint.matcher(tokenizer, tokenizer.vocab_size)

    @property
    def done(self) -> bool:
        return self.completion.finish_reason is not None

    @property
    def length(self) -> int:
        """Tokens this sequence has in the KV cache once its last token is fed."""
        return self.completion.prompt_tokens + len(self.completion.token_ids)

    @property
    def remaining(self) -> int:
        return self.params.max_new_tokens - len(self.completion.token_ids)

    @property
    def last_token(self) -> int:
        return self.completion.token_ids[-1]

    # -- choosing ----------------------------------------------------------------------------------
    def choose(self, logits: torch.Tensor) -> int:
        """The next token from this row's logits [V] under its params (penalties, then sampling)."""
        p = self.params
        x = logits.float()
        if p.repetition_penalty != 1.0:
            if self.seen is None:
                self.seen = torch.zeros(x.size(-1), dtype=torch.bool, device=x.device)
                prompt = torch.tensor(self.completion.prompt_ids, device=x.device)
                self.seen[prompt[prompt < x.size(-1)]] = True
                for t in self.completion.token_ids:
                    self.seen[t] = True
            x = apply_repetition_penalty(x.clone().unsqueeze(0), self.seen.unsqueeze(0), p.repetition_penalty)[0]
        if p.presence_penalty or p.frequency_penalty:
            if self.counts is None:
                self.counts = torch.zeros(x.size(-1), dtype=torch.float32, device=x.device)
                for t in self.completion.token_ids:
                    self.counts[t] += 1
            x = apply_openai_penalties(x, self.counts, p.presence_penalty, p.frequency_penalty)
        if p.logit_bias:
            if self.bias is None:   # built once per sequence, not every step
                kept = [(t, v) for t, v in p.logit_bias.items() if t < x.size(-1)]
                self.bias = (torch.tensor([t for t, _ in kept], dtype=torch.long, device=x.device),
                             torch.tensor([v for _, v in kept], dtype=x.dtype, device=x.device))
            ids, bias = self.bias
            x = x.clone().index_add_(0, ids, bias) if ids.numel() else x
        if self.grammar is not None:
            x = self.grammar.apply(x)
        if p.greedy:
            return int(x.argmax())
        token = sample_next_token(x.unsqueeze(0), p.temperature, p.top_k, p.top_p, self.generator, p.min_p)
        return int(token[0])

    # -- recording ---------------------------------------------------------------------------------
    def accept(self, token: int, logprob: Optional[float] = None,
               top: Optional[list[tuple[int, float]]] = None) -> TokenEvent:
        """Record a chosen token; return its event (text made final, and the finish reason if it ended)."""
        completion, stream = self.completion, self.stream
        completion.token_ids.append(token)
        if logprob is not None:
            completion.logprobs.append(logprob)
        if top is not None:
            completion.top_logprobs.append(top)
        if self.seen is not None:
            self.seen[token] = True
        if self.counts is not None:
            self.counts[token] += 1
        if self.grammar is not None and token not in self.stop_ids:
            self.grammar.accept(token)
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
            if reason is None and self.remaining <= 0:
                reason = "length"
                if stream is not None:
                    text += stream.finish()
                    if stream.stopped:     # the held-back tail completed a stop string
                        reason = "stop"
                        completion.stop_reason = stream.matched
        if reason is not None:
            completion.finish_reason = reason
            if stream is not None:
                completion.text = stream.text
        return TokenEvent(self.index, token, text, reason, logprob, top)

    def fail(self, message: str) -> TokenEvent:
        """End this sequence with an error (its text so far is kept)."""
        self.completion.finish_reason = "error"
        self.completion.error = message
        if self.stream is not None:
            self.completion.text = self.stream.text
        return TokenEvent(self.index, None, "", "error", error=message)


# -- the running batch -----------------------------------------------------------------------------
class RunningBatch:
    """The sequences being decoded together, with their shared KV cache (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, tokenizer=None, *, prefill_together: Optional[bool] = None):
        self.model = model
        self.device = model.embed.weight.device
        # see prefill(); by default prompts are prefilled alone on the CPU, whose decode products sum a
        # row alike at every batch size (generation.cpu_kernels), and together on a GPU, whose are not
        self.prefill_together = self.device.type != "cpu" if prefill_together is None else prefill_together
        self.block_size = context_length(model)
        self.tokenizer = tokenizer
        # A model may have more output rows than its tokenizer has tokens (padded vocabularies);
        # such ids cannot be decoded, so they are never chosen.
        vocab = getattr(tokenizer, "vocab_size", None)
        out = model.config.padded_vocab_size
        self.vocab_limit = vocab if vocab is not None and 0 < vocab < out else None
        # for the one-row step's greedy choice: an empty tensor as long as the ids that may be chosen (the
        # step was traced for 2 or more)
        choosable = self.vocab_limit or out
        self._choosable = torch.empty(choosable, 0) if choosable >= 2 else None
        self._fed_back = None   # (sequence, token, [1, 1] tensor): the one-row step's last greedy choice
        self.rows: list[Sequence] = []
        self.lens: list[int] = []
        self.cache = None
        # the model's AheadOfTimeSteps (one row; 2 or more rows), checked each time sequences join
        self.one_row_step = self.batch_step = None

    def __len__(self) -> int:
        return len(self.rows)

    # -- phases ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, groups: list[list[Sequence]]) -> list[TokenEvent]:
        """Run new prompts (one per group; a group's sequences are the n choices of one prompt) and
        pick every sequence's first token; they join the running batch. On an exception the running
        batch is unchanged (the new sequences never joined).

        Each prompt runs alone (a batch of one, its own length, no padding), so what it leaves in the
        cache and its first token's logits do not depend on which prompts arrived with it: one product
        over the rows of several prompts may sum a row in another order (torch's bf16 and fp32 products
        choose their blocking by the row count), and left padding takes the masked attention path.
        With `prefill_together` (the default on a GPU, where the decode step's products are not
        batch-invariant either) the prompts run as one left-padded batch instead: one pass over the
        weights for all of them (faster for bursts of short prompts), without that guarantee."""
        lengths = [len(g[0].completion.prompt_ids) for g in groups]
        if self.prefill_together and len(groups) > 1:
            cache, logits = self._prefill_padded(groups, lengths)
            return self.join(groups, cache, logits, lengths)
        room = self._prefill_capacity(max(lengths), groups)
        caches, logits = [], []
        for group, length in zip(groups, lengths):
            ids = torch.tensor([group[0].completion.prompt_ids], dtype=torch.long, device=self.device)
            embeds, extras = self._media_inputs(ids, [group[0].media], [0])
            cache = self.model.new_kv_cache(1, room if len(groups) == 1 else length)
            logits.append(self.model(ids, kv_cache=cache, last_only=True, inputs_embeds=embeds,
                                     extras=extras)[:, -1])
            caches.append(cache)
        cache = caches[0] if len(caches) == 1 else type(caches[0]).stacked(caches, room)
        return self.join(groups, cache, torch.cat(logits), lengths)

    def _prefill_padded(self, groups: list[list[Sequence]], lengths: list[int]):
        """The prompts as one batch, left-padded to the longest: (cache, last-position logits)."""
        batch, width = len(groups), max(lengths)
        ids = torch.zeros(batch, width, dtype=torch.long)
        for row, g in enumerate(groups):
            ids[row, width - lengths[row]:] = torch.tensor(g[0].completion.prompt_ids, dtype=torch.long)
        ids = ids.to(self.device)
        embeds, extras = self._media_inputs(ids, [g[0].media for g in groups], [width - n for n in lengths])
        cache = self.model.new_kv_cache(batch, self._prefill_capacity(width, groups))
        if min(lengths) == width:
            return cache, self.model(ids, kv_cache=cache, last_only=True, inputs_embeds=embeds, extras=extras)[:, -1]
        mask = torch.zeros(batch, width, dtype=torch.long, device=self.device)
        for row, n in enumerate(lengths):
            mask[row, width - n:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(ids, kv_cache=cache, attention_mask=mask, position_ids=positions, last_only=True,
                            inputs_embeds=embeds, extras=extras)
        return cache, logits[:, -1]

    def _media_inputs(self, ids: torch.Tensor, media: list[Seq], offsets: list[int]):
        """(inputs_embeds, extras) for prompts with images (rows left-padded by `offsets`), or (None, None)."""
        if not any(media):
            return None, None
        front = getattr(self.model, "media", None)
        if front is None:
            raise OpenseasonError("this model takes no images", hint="send text only, or load a multimodal "
                                  "checkpoint (finetuned with --method minigpt4 or adapter-v2-mm)")
        pixels, rows, starts = [], [], []
        for row, items in enumerate(media):
            for item_pixels, start in items:
                pixels.append(item_pixels)
                rows.append(row)
                starts.append(start + offsets[row] if start >= 0 else -1)
        as_long = dict(dtype=torch.long, device=self.device)
        return front.inputs(self.model, ids, torch.stack(pixels).to(self.device), torch.tensor(rows, **as_long),
                            torch.tensor(starts, **as_long))

    def _prefill_capacity(self, width: int, groups: list[list[Sequence]]) -> int:
        # alone in the batch, the prefill cache becomes the running cache: give it room to grow
        budget = max(s.remaining for g in groups for s in g)
        return width if self.rows else min(self.block_size, width + budget)

    @torch.inference_mode()
    def prefill_chunk(self, job: "ChunkedPrefill") -> Optional[list[TokenEvent]]:
        """Run the next `job.chunk` tokens of one long prompt into its own cache; after the last
        chunk its sequences pick their first tokens and join the batch (their events are returned).
        Between chunks the running batch keeps decoding, so a long prompt does not stall it."""
        prompt = job.groups[0][0].completion.prompt_ids
        extras = None
        if job.cache is None:
            job.cache = self.model.new_kv_cache(1, self._prefill_capacity(len(prompt), job.groups))
            whole = torch.tensor([prompt], dtype=torch.long, device=self.device)
            job.embeds, extras = self._media_inputs(whole, [job.groups[0][0].media], [0])
        start = job.cache.length
        piece = torch.tensor([prompt[start:start + job.chunk]], dtype=torch.long, device=self.device)
        embeds = job.embeds[:, start:start + job.chunk] if job.embeds is not None else None
        logits = self.model(piece, kv_cache=job.cache, last_only=True, inputs_embeds=embeds, extras=extras)
        if job.cache.length < len(prompt):
            return None
        return self.join(job.groups, job.cache, logits[:, -1], [len(prompt)])

    def join(self, groups: list[list[Sequence]], cache, logits: torch.Tensor, lengths: list[int]) -> list[TokenEvent]:
        """Prefilled prompts (`cache` rows and last-position `logits`, one per group) pick their first
        tokens and join the running batch; a group's n choices share its row."""
        seqs = [s for g in groups for s in g]
        rows = [gi for gi, g in enumerate(groups) for _ in g]
        if rows != list(range(len(groups))):
            index = torch.tensor(rows, device=self.device)
            cache.select(index)
            logits = logits.index_select(0, index)
        row_lens = [lengths[gi] for gi in rows]
        tokens, extras = self._pick(logits, seqs)
        # joining the batch is the last thing that can fail; sequences are recorded after it
        if self.cache is None:
            self.cache = cache
        else:
            keep = max(max(self.lens), max(lengths))
            self.cache.append(cache, capacity=self._capacity(keep, seqs))
        self.rows += seqs
        self.lens += row_lens
        self.one_row_step, self.batch_step = ahead_of_time_steps(self.model)
        return self._record(seqs, tokens, extras)

    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        """Feed every row its last token and pick the next one."""
        if not self.rows:
            return []
        self._reserve()
        length = self.cache.length
        if (self.one_row_step is not None and self._choosable is not None and self.lens == [length]
                and self.one_row_step.fits(self.cache)):
            return self._one_row_step()
        last = torch.tensor([[s.last_token] for s in self.rows], dtype=torch.long, device=self.device)
        greedy = None   # the rows' argmax, where the step computed it
        if (self.batch_step is not None and self._choosable is not None and len(self.rows) >= 2
                and self.batch_step.fits(self.cache)):
            # the ahead-of-time batch step; rows of one length get a mask of ones, which computes what
            # the step without a mask computes
            mask, positions = self._mask_and_positions(length)
            logits, greedy = self.batch_step(last, self.cache, self._choosable, mask, positions)
        elif all(n == length for n in self.lens):
            logits = decode_forward(self.model)(last, kv_cache=self.cache, last_only=True)
        else:
            mask, positions = self._mask_and_positions(length)
            logits = decode_forward(self.model)(last, kv_cache=self.cache, attention_mask=mask,
                                                position_ids=positions, last_only=True)
        self.lens = [n + 1 for n in self.lens]
        tokens, extras = self._pick(logits[:, -1], self.rows, greedy)
        return self._record(list(self.rows), tokens, extras)

    def _mask_and_positions(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's attention mask [rows, length + 1] (each row's left padding 0) and positions [rows, 1]."""
        lens = torch.tensor(self.lens, device=self.device)
        slots = torch.arange(length + 1, device=self.device).unsqueeze(0)
        return (slots >= (length - lens).unsqueeze(1)).long(), lens.unsqueeze(1)

    def _one_row_step(self) -> list[TokenEvent]:
        """A batch of one row through the model's ahead-of-time step. A plain greedy row takes the step's
        own argmax, and that [1, 1] tensor is the next step's input: after a step has streamed every weight
        through the caches, each Python-side tensor operation costs tens of microseconds."""
        row = self.rows[0]
        fed = self._fed_back
        if fed is not None and fed[0] is row and fed[1] == row.last_token:
            last = fed[2]
        else:
            last = torch.tensor([[row.last_token]], dtype=torch.long, device=self.device)
        self._fed_back = None
        logits, greedy = self.one_row_step(last, self.cache, self._choosable)
        self.lens = [self.lens[0] + 1]
        if row.params.plain_greedy and row.params.logprobs is None:
            token = greedy.item()
            self._fed_back = (row, token, greedy)
            return self._record([row], [token], [(None, None)])
        tokens, extras = self._pick(logits[:, -1], [row])
        return self._record([row], tokens, extras)

    def remove(self, drop: Callable[[Sequence], bool]) -> list[Sequence]:
        """Take the sequences for which `drop` is true out of the batch; returns them."""
        keep = [i for i, s in enumerate(self.rows) if not drop(s)]
        if len(keep) == len(self.rows):
            return []
        kept = set(keep)
        gone = [s for i, s in enumerate(self.rows) if i not in kept]
        if not keep:
            self.rows, self.lens, self.cache = [], [], None
            return gone
        self.cache.select(torch.tensor(keep, device=self.device))
        self.rows = [self.rows[i] for i in keep]
        self.lens = [self.lens[i] for i in keep]
        if self.one_row_step is not None and len(keep) == 1 and self.lens[0] < self.cache.length:
            # the last row was left-padded: drop the padding (one copy of its cache), so the one-row
            # step, which takes no mask, serves the rest of it
            self.cache.trim(self.lens[0], self._capacity(self.lens[0]))
        return gone

    def clear(self) -> list[Sequence]:
        """Empty the batch (after a failed step); returns the sequences that were in it."""
        gone, self.rows, self.lens, self.cache = self.rows, [], [], None
        return gone

    # -- internals ---------------------------------------------------------------------------------
    def _capacity(self, keep: int, extra: Seq[Sequence] = ()) -> int:
        budget = max([s.remaining for s in list(self.rows) + list(extra)] or [1])
        return max(keep + 1, min(self.block_size, keep + budget))

    def _reserve(self) -> None:
        """Make room for one more position (trimming padding columns no row needs any more)."""
        cache = self.cache
        if cache.length + 1 <= min(cache.max_len, self.block_size):
            return
        keep = max(self.lens)
        cache.trim(keep, self._capacity(keep))

    def _pick(self, logits: torch.Tensor, seqs: list[Sequence], greedy: Optional[torch.Tensor] = None):
        """Token per row (or an exception per row that failed) and each row's logprob extras. `greedy`: the
        rows' argmax over the ids that may be chosen, where a step already computed it."""
        if self.vocab_limit is not None:
            logits = logits[:, : self.vocab_limit]
        plain = [s.params.plain_greedy for s in seqs]
        tokens: list[object] = [None] * len(seqs)
        if any(plain):
            argmax = (logits.argmax(-1) if greedy is None else greedy.view(-1)).tolist()
            for i, is_plain in enumerate(plain):
                if is_plain:
                    tokens[i] = argmax[i]
        for i, s in enumerate(seqs):
            if not plain[i]:
                try:
                    tokens[i] = s.choose(logits[i])
                except Exception as exc:   # one row's bad numbers fail that row only
                    tokens[i] = exc
        extras: list[tuple[Optional[float], Optional[list]]] = [(None, None)] * len(seqs)
        asked = [i for i, s in enumerate(seqs) if s.params.logprobs is not None and isinstance(tokens[i], int)]
        if asked:
            logp = torch.log_softmax(logits[asked].float(), dim=-1)
            for j, i in enumerate(asked):
                k = seqs[i].params.logprobs
                top = None
                if k:
                    values, ids = torch.topk(logp[j], min(k, logp.size(-1)))
                    top = list(zip(ids.tolist(), values.tolist()))
                extras[i] = (float(logp[j, tokens[i]]), top)
        return tokens, extras

    def _record(self, seqs: list[Sequence], tokens: list, extras: list) -> list[TokenEvent]:
        events = []
        for s, token, (logprob, top) in zip(seqs, tokens, extras):
            if isinstance(token, BaseException):
                events.append(s.fail(f"sampling failed: {token}"))
                continue
            try:
                events.append(s.accept(token, logprob, top))
            except Exception as exc:   # e.g. a grammar that cannot go on: this row only
                events.append(s.fail(str(exc)))
        self.remove(lambda s: s.done)
        return events


# -- a fixed batch, stepped by the caller ----------------------------------------------------------
class Decoder:
    """Step-wise generation for a fixed batch of token-id prompts.

        dec = Decoder(model, [ids_a, ids_b], SamplingParams(max_new_tokens=32), tokenizer=tok)
        events = dec.prefill()            # first token of every sequence
        while not dec.finished:
            events = dec.step()           # one more token for every unfinished sequence
        dec.completions                   # [Completion, Completion]

    With params.n > 1 each prompt has n choices: completions are prompt-major (prompt 0's choices
    first). The model must be a GPT (forward with kv_cache / attention_mask / position_ids /
    last_only). Without a tokenizer no text is produced and stop strings are not available.
    """

    def __init__(self, model: torch.nn.Module, prompts: Seq[Seq[int]], params: SamplingParams, *,
                 tokenizer=None, eos_id: Optional[int] = None, media: Optional[Seq[Seq]] = None):
        if not prompts:
            raise OpenseasonError("no prompts to generate from")
        config = model.config
        for i, p in enumerate(prompts):
            check_context(context_length(model), len(p), params.max_new_tokens, name=config.name,
                          where=f"prompt {i}" if len(prompts) > 1 else None)
        if params.stop and tokenizer is None:
            raise OpenseasonError("stop strings need a tokenizer to compare text")
        if eos_id is None and tokenizer is not None:
            eos_id = tokenizer.eos_id
        self.params = params
        # More rows than the CPU kernels keep batch-invariant decode through torch's products, whose bits
        # depend on the batch anyway: then the prompts are prefilled together (faster), else as the
        # engine does (RunningBatch.prefill)
        rows = len(prompts) * params.n
        self.batch = RunningBatch(model, tokenizer,
                                  prefill_together=True if rows > BATCH_INVARIANT_ROWS else None)
        self.groups: list[list[Sequence]] = []
        media = list(media) if media is not None else [()] * len(prompts)
        if len(media) != len(prompts):
            raise OpenseasonError(f"{len(media)} media lists for {len(prompts)} prompts")
        row = 0
        for p, items in zip(prompts, media):
            group = []
            for choice in range(params.n):
                group.append(Sequence(p, params, index=choice, tokenizer=tokenizer, eos_id=eos_id,
                                      device=self.batch.device, media=items))
                group[-1].row = row
                row += 1
            self.groups.append(group)
        self.sequences = [s for g in self.groups for s in g]
        self.completions = [s.completion for s in self.sequences]
        self._prefilled = False

    @property
    def finished(self) -> bool:
        return self._prefilled and not self.batch.rows

    def _events(self, events: list[TokenEvent], seqs: Seq[Sequence]) -> list[TokenEvent]:
        for event, s in zip(events, seqs):
            event.row = s.row
        errors = [e for e in events if e.finish_reason == "error"]
        if errors:
            raise OpenseasonError(f"generation failed for sequence {errors[0].row}: {errors[0].error}")
        return events

    def prefill(self) -> list[TokenEvent]:
        """Run the prompts through the model and pick every sequence's first token."""
        if self._prefilled:
            raise RuntimeError("prefill() was already called")
        self._prefilled = True
        return self._events(self.batch.prefill(self.groups), self.sequences)

    def step(self) -> list[TokenEvent]:
        """Feed each unfinished sequence its last token and pick its next one."""
        if not self._prefilled:
            raise RuntimeError("call prefill() first")
        rows = list(self.batch.rows)
        return self._events(self.batch.step(), rows)

    def __iter__(self) -> Iterator[list[TokenEvent]]:
        """prefill() then step() until every sequence is done; yields each call's events."""
        yield self.prefill()
        while not self.finished:
            yield self.step()

    def run(self) -> list[Completion]:
        """Generate to the end; returns the Completions in order."""
        for _ in self:
            pass
        return self.completions


def generate_ids(model: torch.nn.Module, prompts: Seq[Seq[int]], params: SamplingParams, *,
                 tokenizer=None, eos_id: Optional[int] = None, media: Optional[Seq[Seq]] = None) -> list[Completion]:
    """Generate for token-id prompts decoded as one batch; one Completion per prompt (and choice).
    `media`: per prompt, its images as [(pixels, start)] (see the module docstring)."""
    return Decoder(model, prompts, params, tokenizer=tokenizer, eos_id=eos_id, media=media).run()


# -- many requests, one model thread ---------------------------------------------------------------
class QueueFull(OpenseasonError):
    """The waiting queue is at capacity; a server should answer 503 with Retry-After."""


class EngineClosed(OpenseasonError):
    """The engine has been shut down."""


@dataclass
class Event:
    """What the engine tells a request: a piece of text for choice `index`, its end, or a failure.

    kind: "text" (text holds new characters; token_id / logprob / top_logprobs describe the token
    when logprobs were asked for), "finish" (finish_reason "stop" or "length"; completion_tokens and
    token_ids for that choice), "error" (text holds the message; the choice is over).
    """

    kind: str
    index: int = 0
    text: str = ""
    finish_reason: Optional[str] = None
    completion_tokens: int = 0
    token_ids: Optional[list[int]] = None
    token_id: Optional[int] = None
    logprob: Optional[float] = None
    top_logprobs: Optional[list[tuple[int, float]]] = None


@dataclass
class Request:
    """One prompt with its params; `emit` receives its Events (called from the engine's thread)."""

    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    id: int = field(default_factory=itertools.count().__next__)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    media: list = field(default_factory=list)   # [(pixels [3, H, W], start)] of the prompt's images

    def cancel(self) -> None:
        """Stop generating for this request (its rows leave the batch before the next step)."""
        self.cancelled.set()


@dataclass
class ChunkedPrefill:
    """A long prompt being prefilled `chunk` tokens at a time between decode steps."""

    request: Request
    groups: list[list[Sequence]]
    chunk: int
    cache: object = None
    embeds: Optional[torch.Tensor] = None   # the whole prompt's input embeddings when it has images


class Engine:
    """Owns the model and its thread. `submit` queues a request; events arrive through `request.emit`.

    max_batch      most sequences decoded together (a request with n choices takes n rows)
    max_queue      most requests waiting for a row; `submit` raises QueueFull beyond it
    prefill_chunk  most requests admitted (prefilled) between two decode steps
    prefill_tokens a prompt longer than this is prefilled in chunks of this many tokens, one chunk
                   between two decode steps, so running requests keep streaming (chunked prefill);
                   None: every prompt in one piece
    prefill_together  prefill the prompts admitted together as one left-padded batch (faster for
                   bursts of short prompts) instead of each alone; then a prompt's tokens may depend on
                   what arrived with it (see RunningBatch.prefill). None: alone on the CPU, together
                   on a GPU

    A failure while prefilling new requests fails only those requests; a failure in a decode step
    fails the sequences of that step; either way the requests get an "error" event and the engine
    keeps serving. Only a failure of the loop itself (a bug) stops it: `error` is set, waiting and
    running requests get an error event, and later submits raise EngineClosed.
    """

    def __init__(self, model, tokenizer, *, max_batch: int = 16, max_queue: int = 64,
                 prefill_chunk: int = 8, prefill_tokens: Optional[int] = 512,
                 prefill_together: Optional[bool] = None, name: str = "model"):
        if prefill_tokens is not None and prefill_tokens < 1:
            raise OpenseasonError(f"prefill_tokens must be at least 1 (or None), got {prefill_tokens}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.prefill_tokens = prefill_tokens
        self._chunked: Optional[ChunkedPrefill] = None
        self.name = name
        # The tokenizer's EOS is the one the model was trained to emit (the config's is only a fallback).
        eos = tokenizer.eos_id if tokenizer.eos_id is not None else getattr(model.config, "eos_token_id", None)
        self.eos_id = int(eos) if eos is not None else None
        self.batch = RunningBatch(model, tokenizer, prefill_together=prefill_together)
        self.device = self.batch.device
        self._waiting: collections.deque[Request] = collections.deque()
        self._lock = threading.Condition()
        self._closed = False
        # metrics
        self.started = time.time()
        self.requests_total = 0
        self.requests_rejected = 0
        self.requests_cancelled = 0
        self.requests_failed = 0
        self.tokens_generated = 0
        self.prompt_tokens = 0
        self.steps = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name=f"openseason-engine-{name}", daemon=True)
        self._thread.start()

    # -- caller side -------------------------------------------------------------------------------
    def submit(self, request: Request) -> Request:
        """Queue `request`; raises QueueFull, EngineClosed, or OpenseasonError for a request that cannot run."""
        if request.params.n > self.max_batch:
            raise OpenseasonError(f"n={request.params.n} exceeds the batch size {self.max_batch}")
        check_context(context_length(self.model), len(request.prompt_ids), request.params.max_new_tokens,
                      name=self.name)
        if request.params.stop and self.tokenizer is None:
            raise OpenseasonError("stop strings need a tokenizer to compare text")
        if request.media and getattr(self.model, "media", None) is None:
            raise OpenseasonError("this model takes no images", hint="send text only, or serve a multimodal "
                                  "checkpoint (finetuned with --method minigpt4 or adapter-v2-mm)")
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is shut down" + (f" after an error: {self.error}" if self.error else ""))
            if len(self._waiting) >= self.max_queue:
                self._purge_cancelled()
            if len(self._waiting) >= self.max_queue:
                self.requests_rejected += 1
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(request)
            self.requests_total += 1
            self._lock.notify()
        return request

    def complete(self, prompt_ids: Seq[int], params: SamplingParams, timeout: Optional[float] = None,
                 media: Seq = ()) -> list[Completion]:
        """Submit one prompt (with its images' `media`, if any) and wait for its n Completions (from any
        thread but the engine's own)."""
        done = threading.Event()
        completions = [Completion(prompt_ids=list(prompt_ids)) for _ in range(params.n)]
        pieces: list[list[str]] = [[] for _ in range(params.n)]
        finished = [0]

        def emit(event: Event) -> None:
            c = completions[event.index]
            if event.kind == "text":
                pieces[event.index].append(event.text)
                return
            if event.kind == "finish":
                c.finish_reason = event.finish_reason
                c.token_ids = list(event.token_ids or [])
            else:
                c.finish_reason, c.error = "error", event.text
            c.text = "".join(pieces[event.index])
            finished[0] += 1
            if finished[0] == len(completions):
                done.set()

        request = self.submit(Request(list(prompt_ids), params, emit, media=list(media)))
        if not done.wait(timeout):
            request.cancel()
            raise OpenseasonError(f"generation did not finish within {timeout} s")
        failed = [c for c in completions if c.finish_reason == "error"]
        if failed:
            raise OpenseasonError(f"generation failed: {failed[0].error}")
        return completions

    def _purge_cancelled(self) -> None:
        """Forget queued requests whose client has gone (caller holds the lock)."""
        kept = collections.deque(r for r in self._waiting if not r.cancelled.is_set())
        self.requests_cancelled += len(self._waiting) - len(kept)
        self._waiting = kept

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self.batch.rows)

    def tokens_per_second(self, window: float = 10.0) -> float:
        """Generated tokens per second over the last `window` seconds."""
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= window]
        if not recent:
            return 0.0
        if len(recent) == 1:
            return recent[0][1] / window
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / min(span, window)

    def metrics(self) -> dict:
        rows = list(self.batch.rows)
        return {"requests_total": self.requests_total, "requests_rejected": self.requests_rejected,
                "requests_cancelled": self.requests_cancelled, "requests_failed": self.requests_failed,
                "requests_running": len({id(s.owner) for s in rows}),
                "sequences_running": len(rows), "queue_length": self.queue_length,
                "prompt_tokens_total": self.prompt_tokens, "tokens_generated_total": self.tokens_generated,
                "tokens_per_second": round(self.tokens_per_second(), 3),
                "tokens_per_second_lifetime": round(self.tokens_generated / max(time.time() - self.started, 1e-9), 3),
                "decode_steps_total": self.steps, "max_batch": self.max_batch, "max_queue": self.max_queue,
                "uptime_s": round(time.time() - self.started, 1), "healthy": self.error is None}

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout)

    # -- model thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._lock:
                        while not self._closed and not self._waiting and not self.batch.rows and not self._chunked:
                            self._lock.wait(0.5)
                        if self._closed:
                            break
                    self._admit()
                    self._advance_chunked()
                    self._drop_cancelled()
                    if self.batch.rows:
                        self._step()
        except BaseException as exc:  # a bug in the loop itself: fail every request loudly, stay down
            self.error = exc
            traceback.print_exc()
            with self._lock:
                self._closed = True
            self._fail_all(f"generation failed: {exc}")
        finally:
            self._fail_all("the server is shutting down")

    def _fail_all(self, message: str) -> None:
        with self._lock:
            pending, self._waiting = list(self._waiting), collections.deque()
        if self._chunked is not None:
            pending.append(self._chunked.request)
            self._chunked = None
        for request in pending:
            for i in range(request.params.n):
                request.emit(Event("error", i, message))
        for seq in self.batch.clear():
            seq.owner.emit(Event("error", seq.index, message))

    def _take_admissible(self) -> list[Request]:
        taken: list[Request] = []
        with self._lock:
            free = self.max_batch - len(self.batch.rows) - (self._chunked.request.params.n if self._chunked else 0)
            kept: collections.deque[Request] = collections.deque()
            while self._waiting and len(taken) < self.prefill_chunk:
                request = self._waiting.popleft()
                if request.cancelled.is_set():
                    self.requests_cancelled += 1
                    continue
                if request.params.n > free:
                    kept.append(request)
                    break
                if self._is_long(request):
                    if self._chunked is not None:
                        kept.append(request)   # one long prompt at a time; shorter ones may pass it
                        continue
                    self._chunked = ChunkedPrefill(request, self._groups([request]), self.prefill_tokens)
                else:
                    taken.append(request)
                free -= request.params.n
            kept.extend(self._waiting)
            self._waiting = kept
        return taken

    def _is_long(self, request: Request) -> bool:
        return self.prefill_tokens is not None and len(request.prompt_ids) > self.prefill_tokens

    def _groups(self, requests: list[Request]) -> list[list[Sequence]]:
        return [[Sequence(r.prompt_ids, r.params, index=i, tokenizer=self.tokenizer, eos_id=self.eos_id,
                          device=self.device, owner=r, media=r.media) for i in range(r.params.n)] for r in requests]

    def _fail_requests(self, requests: list[Request], exc: BaseException, where: str) -> None:
        self._report(exc, where)
        for r in requests:
            self.requests_failed += 1
            for i in range(r.params.n):
                r.emit(Event("error", i, f"generation failed: {exc}"))

    def _advance_chunked(self) -> None:
        """One chunk of the long prompt being prefilled (then its sequences join the batch)."""
        job = self._chunked
        if job is None:
            return
        if job.request.cancelled.is_set():
            self._chunked = None
            self.requests_cancelled += 1
            return
        try:
            events = self.batch.prefill_chunk(job)
        except Exception as exc:   # fails this request only; the running batch is untouched
            self._chunked = None
            self._fail_requests([job.request], exc, "chunked prefill")
            return
        if events is not None:
            self._chunked = None
            self.prompt_tokens += len(job.request.prompt_ids)
            self._deliver(events, [s for g in job.groups for s in g])

    def _admit(self) -> None:
        while True:
            requests = self._take_admissible()
            if not requests:
                return
            groups = self._groups(requests)
            try:
                events = self.batch.prefill(groups)
            except Exception as exc:   # fails these requests only; the running batch is untouched
                self._fail_requests(requests, exc, "prefill")
                continue
            self.prompt_tokens += sum(len(r.prompt_ids) for r in requests)
            self._deliver(events, [s for g in groups for s in g])

    def _drop_cancelled(self) -> None:
        gone = self.batch.remove(lambda s: s.owner.cancelled.is_set())
        self.requests_cancelled += len({id(s.owner) for s in gone})

    def _step(self) -> None:
        rows = list(self.batch.rows)
        try:
            events = self.batch.step()
        except Exception as exc:   # the step's sequences fail; the engine goes on with new requests
            self._report(exc, "decode step")
            self.batch.clear()
            failed = set()
            for seq in rows:
                failed.add(id(seq.owner))
                seq.owner.emit(Event("error", seq.index, f"generation failed: {exc}"))
            self.requests_failed += len(failed)
            return
        self.steps += 1
        self._deliver(events, rows)

    @staticmethod
    def _report(exc: BaseException, where: str) -> None:
        print(f"openseason engine: {where} failed: {exc!r}", file=sys.stderr)
        traceback.print_exc()

    def _deliver(self, events: list[TokenEvent], seqs: list[Sequence]) -> None:
        now = time.monotonic()
        produced = sum(1 for e in events if e.token_id is not None)
        self.tokens_generated += produced
        self._recent.append((now, produced))
        while self._recent and now - self._recent[0][0] > 60:
            self._recent.popleft()
        for event, seq in zip(events, seqs):
            request = seq.owner
            if event.finish_reason == "error":
                request.emit(Event("error", seq.index, f"generation failed: {event.error}"))
                continue
            if event.text or event.logprob is not None:
                request.emit(Event("text", seq.index, event.text, token_id=event.token_id, logprob=event.logprob,
                                   top_logprobs=event.top_logprobs))
            if event.finish_reason is not None:
                c = seq.completion
                request.emit(Event("finish", seq.index, finish_reason=event.finish_reason,
                                   completion_tokens=c.completion_tokens, token_ids=list(c.token_ids)))
