"""Continuous batching: one model thread decodes every running request together, one token per step.

The asyncio side (app.py) only tokenizes, calls `Engine.submit`, and forwards the events it gets back;
all model work happens in the engine's own thread, so the event loop never blocks on a forward pass.

Each step of the loop:

1. admit waiting requests while the running batch has room: their prompts are prefilled together
   (left-padded, with an attention mask and per-row positions) and their first token is sampled;
2. merge them into the running batch's KV cache;
3. drop rows whose client went away;
4. run one decode step for every row (one token each) and sample the next tokens;
5. finish rows that hit EOS, a stop string or their token budget, and shrink the cache.

The batched KV cache keeps one shared length L. Row i holds its `lens[i]` real positions right-aligned
in slots [L - lens[i], L); the slots before are padding hidden by the attention mask. Keys are stored
after rotary embedding at each row's own positions, so where a row sits in the cache does not change
what it computes: batched greedy decoding gives the same tokens as decoding each request alone. L is
kept equal to max(lens) (the cache is trimmed on the left when long rows leave), so L never exceeds the
model's context window.
"""
from __future__ import annotations

import collections
import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..generation.sampling import sample_next_token
from ..generation.text import IncrementalDecoder, StopMatcher


class QueueFull(Exception):
    """The waiting queue is at capacity; the caller should answer 503 with Retry-After."""


class EngineClosed(Exception):
    """The engine has been shut down."""


@dataclass
class RequestParams:
    """One request's OpenAI-style settings (n choices share one prompt and one prefill)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    n: int = 1


@dataclass
class Event:
    """What the engine reports: a piece of text for choice `index`, its end, or a failure.

    kind: "text" (text holds new characters), "finish" (finish_reason is "stop" or "length",
    completion_tokens counts the tokens generated for that choice), "error" (text holds the message).
    """

    kind: str
    index: int = 0
    text: str = ""
    finish_reason: Optional[str] = None
    completion_tokens: int = 0
    token_ids: Optional[list[int]] = None


@dataclass
class Request:
    prompt_ids: list[int]
    params: RequestParams
    emit: Callable[[Event], None]
    id: int = field(default_factory=itertools.count().__next__)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        """Stop generating for this request (its rows leave the batch before the next step)."""
        self.cancelled.set()


class _Sequence:
    """One choice of one request while it decodes: sampling state and text assembly."""

    def __init__(self, request: Request, index: int, tokenizer, eos_ids: set[int]):
        self.request = request
        self.index = index
        p = request.params
        self.generator = None
        if p.temperature > 0:
            self.generator = torch.Generator()
            seed = p.seed + index if p.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
            self.generator.manual_seed(seed)
        self.eos_ids = eos_ids
        # Special tokens stay in the text so stop strings spelled as one (ChatML's <|im_end|>) match.
        self.decoder = IncrementalDecoder(tokenizer, context=request.prompt_ids, skip_special_tokens=False)
        self.stops = StopMatcher(p.stop)
        self.generated: list[int] = []
        self.counts: dict[int, int] = collections.Counter()
        self.done = False

    def penalize(self, logits: torch.Tensor) -> torch.Tensor:
        """OpenAI's presence and frequency penalties: subtract per already generated token."""
        p = self.request.params
        if not self.counts or (p.presence_penalty == 0 and p.frequency_penalty == 0):
            return logits
        ids = torch.tensor(list(self.counts.keys()))
        counts = torch.tensor(list(self.counts.values()), dtype=logits.dtype)
        logits = logits.clone()
        logits[ids] -= p.frequency_penalty * counts + p.presence_penalty
        return logits

    def accept(self, token: int) -> None:
        """Record a sampled token; emit text that is final; finish on EOS, a stop string or the budget."""
        p = self.request.params
        if token in self.eos_ids:
            tail = self.stops.feed(self.decoder.flush())
            self._finish("stop", tail + self.stops.flush())
            return
        self.generated.append(token)
        self.counts[token] += 1
        text = self.stops.feed(self.decoder.add(token))
        if self.stops.stopped:
            self._finish("stop", text)
        elif len(self.generated) >= p.max_tokens:
            tail = self.stops.feed(self.decoder.flush())
            self._finish("stop" if self.stops.stopped else "length", text + tail + self.stops.flush())
        elif text:
            self.request.emit(Event("text", self.index, text))

    def _finish(self, reason: str, text: str) -> None:
        if text:
            self.request.emit(Event("text", self.index, text))
        self.request.emit(Event("finish", self.index, finish_reason=reason,
                                completion_tokens=len(self.generated), token_ids=list(self.generated)))
        self.done = True


class BatchCache:
    """A KVCache over the running rows with per-row lengths, right-aligned (see the module docstring)."""

    def __init__(self, model):
        self.model = model
        self.cache = None
        self.lens: list[int] = []

    @property
    def length(self) -> int:
        return self.cache.length if self.cache is not None else 0

    def _rebuild(self, parts: list[tuple[list[torch.Tensor], list[torch.Tensor], list[int], int]],
                 extra: int) -> None:
        """New cache holding the rows of each (k, v, lens, L) part, right-aligned, with `extra` free slots."""
        lens = [n for part in parts for n in part[2]]
        if not lens:
            self.cache, self.lens = None, []
            return
        new_len = max(lens)
        block = self.model.config.block_size
        capacity = min(block, new_len + max(extra, 1))
        cache = self.model.new_kv_cache(len(lens), max(capacity, new_len))
        row = 0
        for k_layers, v_layers, part_lens, part_len in parts:
            rows = len(part_lens)
            take = min(part_len, new_len)  # right-aligned: the last `take` slots hold every real position
            for layer in range(len(cache.k)):
                cache.k[layer][row:row + rows, :, new_len - take:new_len] = k_layers[layer][:, :, part_len - take:part_len]
                cache.v[layer][row:row + rows, :, new_len - take:new_len] = v_layers[layer][:, :, part_len - take:part_len]
            row += rows
        cache.length = new_len
        self.cache, self.lens = cache, lens

    def _headroom(self) -> int:
        return 64

    def add(self, cache, lens: list[int]) -> None:
        """Append the rows of a freshly prefilled cache (rows right-aligned at its own length)."""
        parts = []
        if self.cache is not None:
            parts.append((self.cache.k, self.cache.v, self.lens, self.cache.length))
        parts.append((cache.k, cache.v, lens, cache.length))
        self._rebuild(parts, self._headroom())

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order) and trim padding columns no remaining row needs."""
        if rows == list(range(len(self.lens))):
            return
        if not rows:
            self.cache, self.lens = None, []
            return
        index = torch.tensor(rows, device=self.cache.k[0].device)
        k = [t.index_select(0, index) for t in self.cache.k]
        v = [t.index_select(0, index) for t in self.cache.v]
        self._rebuild([(k, v, [self.lens[i] for i in rows], self.cache.length)],
                      self.cache.max_len - self.cache.length)

    def ensure_room(self, steps: int = 1) -> None:
        if self.cache.length + steps > self.cache.max_len:
            self._rebuild([(self.cache.k, self.cache.v, self.lens, self.cache.length)],
                          max(self._headroom(), self.cache.max_len))

    def decode_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """attention_mask [B, L+1] and position_ids [B, 1] for feeding one token per row."""
        device = self.cache.k[0].device
        lens = torch.tensor(self.lens, device=device)
        total = self.cache.length + 1
        slots = torch.arange(total, device=device).unsqueeze(0)
        mask = (slots >= (total - (lens + 1)).unsqueeze(1)).long()
        return mask, lens.unsqueeze(1)

    def advance(self) -> None:
        self.lens = [n + 1 for n in self.lens]


class Engine:
    """Owns the model and its thread. `submit` queues a request; events arrive through `request.emit`.

    max_batch   most sequences decoded together (a request with n choices takes n rows)
    max_queue   most requests waiting for a row; `submit` raises QueueFull beyond it
    """

    def __init__(self, model, tokenizer, *, max_batch: int = 16, max_queue: int = 64,
                 prefill_chunk: int = 8, name: str = "model"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.name = name
        # The tokenizer's EOS is the one the model was trained to emit (the config's is only a fallback).
        eos = tokenizer.eos_id if tokenizer.eos_id is not None else getattr(model.config, "eos_token_id", None)
        self.eos_ids = {int(eos)} if eos is not None else set()
        self.device = next(model.parameters()).device
        self._waiting: collections.deque[Request] = collections.deque()
        self._lock = threading.Condition()
        self._rows: list[_Sequence] = []
        self._cache = BatchCache(model)
        self._closed = False
        # metrics
        self.started = time.time()
        self.requests_total = 0
        self.requests_rejected = 0
        self.requests_cancelled = 0
        self.tokens_generated = 0
        self.prompt_tokens = 0
        self.steps = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name=f"openseason-engine-{name}", daemon=True)
        self._thread.start()

    # -- asyncio side -------------------------------------------------------------------------------
    def submit(self, request: Request) -> Request:
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is shut down")
            if len(self._waiting) >= self.max_queue:
                self._purge_cancelled()
            if len(self._waiting) >= self.max_queue:
                self.requests_rejected += 1
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            if request.params.n > self.max_batch:
                raise ValueError(f"n={request.params.n} exceeds the batch size {self.max_batch}")
            if len(request.prompt_ids) + request.params.max_tokens > self.config.block_size:
                raise ValueError(f"{len(request.prompt_ids)} prompt tokens + max_tokens "
                                 f"{request.params.max_tokens} exceed the context window {self.config.block_size}")
            if not request.prompt_ids:
                raise ValueError("the prompt is empty")
            self._waiting.append(request)
            self.requests_total += 1
            self._lock.notify()
        return request

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
        return len(self._rows)

    def tokens_per_second(self, window: float = 10.0) -> float:
        """Generated tokens per second over the last `window` seconds."""
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= window]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3) if len(recent) > 1 else window
        return sum(n for _, n in recent) / min(span, window) if len(recent) > 1 else recent[0][1] / window

    def metrics(self) -> dict:
        return {"requests_total": self.requests_total, "requests_rejected": self.requests_rejected,
                "requests_cancelled": self.requests_cancelled, "requests_running": len({id(s.request) for s in self._rows}),
                "sequences_running": len(self._rows), "queue_length": self.queue_length,
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

    # -- model thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._lock:
                        while not self._closed and not self._waiting and not self._rows:
                            self._lock.wait(0.5)
                        if self._closed:
                            break
                    self._admit()
                    self._drop_cancelled()
                    if self._rows:
                        self._step()
        except BaseException as exc:  # a bug or out-of-memory: fail every request loudly, stay down
            self.error = exc
            import traceback

            traceback.print_exc()
            for seq in self._rows:
                seq.request.emit(Event("error", seq.index, f"generation failed: {exc}"))
            self._rows = []
            with self._lock:
                self._closed = True
                pending, self._waiting = list(self._waiting), collections.deque()
            for request in pending:
                request.emit(Event("error", 0, f"generation failed: {exc}"))
        finally:
            with self._lock:
                pending, self._waiting = list(self._waiting), collections.deque()
            for request in pending:
                request.emit(Event("error", 0, "the server is shutting down"))
            for seq in self._rows:
                seq.request.emit(Event("error", seq.index, "the server is shutting down"))

    def _take_admissible(self) -> list[Request]:
        taken: list[Request] = []
        with self._lock:
            free = self.max_batch - len(self._rows)
            while self._waiting and len(taken) < self.prefill_chunk:
                request = self._waiting[0]
                if request.cancelled.is_set():
                    self._waiting.popleft()
                    self.requests_cancelled += 1
                    continue
                if request.params.n > free:
                    break
                free -= request.params.n
                taken.append(self._waiting.popleft())
        return taken

    def _admit(self) -> None:
        while True:
            requests = self._take_admissible()
            if not requests:
                return
            self._prefill(requests)

    def _prefill(self, requests: list[Request]) -> None:
        """Prefill prompts together (left-padded), sample each choice's first token, join the batch."""
        lens = [len(r.prompt_ids) for r in requests]
        width = max(lens)
        B = len(requests)
        ids = torch.zeros(B, width, dtype=torch.long, device=self.device)
        mask = torch.zeros(B, width, dtype=torch.long, device=self.device)
        for i, r in enumerate(requests):
            ids[i, width - lens[i]:] = torch.tensor(r.prompt_ids, device=self.device)
            mask[i, width - lens[i]:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self.model.new_kv_cache(B, width)
        padded = any(n != width for n in lens)
        logits = self.model(ids, position_ids=positions if padded else None,
                            attention_mask=mask if padded else None, kv_cache=cache, last_only=True)[:, -1]
        self.prompt_tokens += sum(lens)
        # A request with n choices takes n rows, all copies of its prompt's cache row.
        rows, row_lens, new_seqs = [], [], []
        for i, r in enumerate(requests):
            for choice in range(r.params.n):
                rows.append(i)
                row_lens.append(lens[i])
                new_seqs.append(_Sequence(r, choice, self.tokenizer, self.eos_ids))
        if rows != list(range(B)):
            cache.select(torch.tensor(rows, device=self.device))
        tokens = self._sample(logits[torch.tensor(rows, device=self.device)], new_seqs)
        self._cache.add(cache, row_lens)
        self._rows.extend(new_seqs)
        self._accept(new_seqs, tokens)

    def _sample(self, logits: torch.Tensor, seqs: list[_Sequence]) -> list[int]:
        # sampling runs on the CPU so per-request generators work whatever the model's device
        logits = logits[:, : self.tokenizer.vocab_size].float().cpu()
        greedy = [s.generator is None for s in seqs]
        out = [0] * len(seqs)
        if any(greedy) and not any(s.request.params.presence_penalty or s.request.params.frequency_penalty
                                   for s, g in zip(seqs, greedy) if g):
            argmax = logits.argmax(-1).tolist()
            for i, g in enumerate(greedy):
                if g:
                    out[i] = argmax[i]
        for i, seq in enumerate(seqs):
            p = seq.request.params
            if greedy[i] and not (p.presence_penalty or p.frequency_penalty):
                continue
            row = seq.penalize(logits[i]).unsqueeze(0)
            out[i] = int(sample_next_token(row, temperature=p.temperature, top_p=p.top_p,
                                           generator=seq.generator)[0])
        return out

    def _record(self, n: int) -> None:
        now = time.monotonic()
        self.tokens_generated += n
        self._recent.append((now, n))
        while self._recent and now - self._recent[0][0] > 60:
            self._recent.popleft()

    def _accept(self, seqs: list[_Sequence], tokens: list[int]) -> None:
        """Give each row its token; rows that finish leave the batch (and the cache)."""
        self._record(len(tokens))
        for seq, token in zip(seqs, tokens):
            seq.accept(token)
        self._compact()

    def _compact(self) -> None:
        keep = [i for i, s in enumerate(self._rows) if not s.done]
        if len(keep) != len(self._rows):
            self._cache.keep(keep)
            self._rows = [self._rows[i] for i in keep]

    def _drop_cancelled(self) -> None:
        gone = {id(s.request) for s in self._rows if s.request.cancelled.is_set()}
        if gone:
            self.requests_cancelled += len(gone)
            for s in self._rows:
                if id(s.request) in gone:
                    s.done = True
            self._compact()

    def _step(self) -> None:
        """Feed every row its last token; sample the next."""
        self._cache.ensure_room(1)
        last = torch.tensor([[s.generated[-1]] for s in self._rows], device=self.device)
        mask, positions = self._cache.decode_inputs()
        logits = self.model(last, position_ids=positions, attention_mask=mask,
                            kv_cache=self._cache.cache, last_only=True)[:, -1]
        self._cache.advance()
        self.steps += 1
        tokens = self._sample(logits, self._rows)
        self._accept(self._rows, tokens)
