"""How every synth stage calls its teacher: logged, resumable calls fitted to the backend's context.

`send_logged(backend, log, asks)` asks for every item not yet logged "ok" and logs each answer or
failure the moment it lands (store.py). An item may offer shorter versions of its prompt (fewer
demonstrations, a shortened document), longest first. When the backend's context window is known
and the prompt with its max_tokens does not fit, or the backend answers that it does not fit (a 400
naming the context length and the prompt's tokens, as OpenAI, vLLM and openseason serve do), the
call is sent again:

1. max_tokens at or above the whole window is first lowered to half of it;
2. a prompt that leaves at least half the window (or all of max_tokens) gets max_tokens lowered to
   the room that is left;
3. otherwise the longest shorter prompt that is estimated to fit (tokens per character of the prompt
   the server measured) is sent, with max_tokens at most half the window;
4. with nothing left to cut, max_tokens is lowered to whatever room the prompt leaves.

What was cut is stored with the answer (`fit`: notes and the stage's own facts about the variant,
e.g. the number the list continues at) so a resumed run parses it exactly as the first one did, and
stages report it (`fit_counts`). The log key is the full prompt's, so a rerun never asks again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..generation.client import CallFailed, LLMClient, LLMRequest
from .store import StageLog

__all__ = ["Ask", "Variant", "send_logged", "with_prompt", "fit_counts"]

MAX_ROUNDS = 12


@dataclass(frozen=True)
class Variant:
    """A shorter prompt for the same question: what was cut (a note for the report) and facts the
    stage needs to parse its answer."""
    prompt: str
    note: str
    facts: dict = field(default_factory=dict)


@dataclass
class Ask:
    key: str
    request: LLMRequest
    input: dict
    shorter: Sequence[Variant] = ()
    # state while fitting
    current: Optional[LLMRequest] = None
    index: int = -1
    notes: list = field(default_factory=list)

    def __post_init__(self):
        self.current = self.request


def with_prompt(req: LLMRequest, prompt: str, max_tokens: Optional[int] = None) -> LLMRequest:
    return LLMRequest(prompt, req.max_tokens if max_tokens is None else max_tokens, req.temperature, req.top_p,
                      tuple(req.stop))


def _refit(ask: Ask, prompt_tokens: Optional[int], context: Optional[int]) -> bool:
    """Change `ask.current` to something more likely to fit; False when nothing is left to cut."""
    req = ask.current
    m = req.max_tokens
    if context is not None and prompt_tokens is not None:
        p = prompt_tokens
        lowered = min(m, max(context - p, context // 2))
        if lowered >= 1 and p + lowered <= context and lowered < m:
            ask.current = with_prompt(req, req.prompt, lowered)
            ask.notes.append(f"max_tokens lowered to the room left in the context ({context})")
            return True
        m = max(1, min(m, context // 2))
        target = context - m
        per_char = p / max(1, len(req.prompt))
        pick = None
        for i in range(ask.index + 1, len(ask.shorter)):
            pick = i
            if len(ask.shorter[i].prompt) * per_char <= 0.95 * target:
                break
    else:  # the backend said "too long" without numbers: halve the prompt
        pick = None
        for i in range(ask.index + 1, len(ask.shorter)):
            pick = i
            if len(ask.shorter[i].prompt) <= len(req.prompt) / 2:
                break
        if context is not None:
            m = max(1, min(m, context // 2))
    if pick is None:
        # Nothing left to cut: the last resort is the room the prompt leaves, if any.
        if context is not None and prompt_tokens is not None and 0 < context - prompt_tokens < req.max_tokens:
            ask.current = with_prompt(req, req.prompt, context - prompt_tokens)
            ask.notes.append(f"max_tokens lowered to the room left in the context ({context})")
            return True
        return False
    ask.index = pick
    if m < req.max_tokens:
        ask.notes.append(f"max_tokens lowered to half the context ({context})")
    ask.current = with_prompt(req, ask.shorter[pick].prompt, m)
    return True


def _fit_locally(backend: LLMClient, ask: Ask) -> None:
    """Fit before sending when the backend can count tokens (an in-process model)."""
    context = backend.context_length
    if context is None:
        return
    if ask.current.max_tokens >= context:
        ask.current = with_prompt(ask.current, ask.current.prompt, max(1, context // 2))
        ask.notes.append(f"max_tokens lowered to half the context ({context})")
    for _ in range(MAX_ROUNDS):
        n = backend.count_tokens(ask.current.prompt)
        if n is None or n + ask.current.max_tokens <= context or not _refit(ask, n, context):
            return


def send_logged(backend: LLMClient, log: StageLog, items: Sequence) -> list[Optional[dict]]:
    """Ask for every item not yet logged "ok"; log each answer or failure as it lands. Items are
    `Ask`s or (key, request, input) tuples. Returns the stored result per item (None for a failure)."""
    asks = [a if isinstance(a, Ask) else Ask(*a) for a in items]
    pending = [a for a in asks if not log.done(a.key)]
    for a in pending:
        _fit_locally(backend, a)
    for _ in range(MAX_ROUNDS):
        if not pending:
            break
        results = backend.complete_many([a.current for a in pending])
        again = []
        for ask, res in zip(pending, results):
            if isinstance(res, CallFailed):
                if res.context_exceeded and _refit(ask, res.prompt_tokens,
                                                   res.context_length or backend.context_length):
                    again.append(ask)
                    continue
                reason = res.reason
                if res.context_exceeded:
                    reason += " (nothing more to cut from the prompt; raise the context or lower --max-tokens)"
                log.record_failure(ask.key, reason, input=ask.input)
                continue
            row = {"text": res.text, "finish_reason": res.finish_reason, "prompt_tokens": res.prompt_tokens,
                   "completion_tokens": res.completion_tokens}
            if ask.notes or ask.index >= 0:
                fit = {"notes": list(dict.fromkeys(ask.notes)), "max_tokens": ask.current.max_tokens}
                if ask.index >= 0:
                    variant = ask.shorter[ask.index]
                    fit["notes"].append(variant.note)
                    fit.update(variant.facts)
                row["fit"] = fit
            log.record(ask.key, row, input=ask.input)
        pending = again
    for ask in pending:  # still not fitting after MAX_ROUNDS
        log.record_failure(ask.key, "the prompt did not fit the backend's context after shortening it "
                                    f"{MAX_ROUNDS} times", input=ask.input)
    return [log.get(a.key) for a in asks]


def fit_counts(results) -> dict:
    """{note: calls} over stored results: what was cut to fit the context (reported, not dropped)."""
    counts: dict = {}
    for res in results:
        for note in ((res or {}).get("fit") or {}).get("notes", ()):
            counts[note] = counts.get(note, 0) + 1
    return counts
