"""Choosing the next token from logits: sampling parameters, penalties, greedy/top-k/top-p.

Everything here works on logits [B, V] and never leaves the device, so the engine's decoding loop
can call it every step without a host round trip.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch

from ..errors import OpenseasonError


# Below this a temperature stops meaning "sample": logits / 1e-300 overflow to inf and the softmax
# turns into NaN. 0 means greedy; anything in (0, MIN_TEMPERATURE) is refused.
MIN_TEMPERATURE = 1e-3
MAX_SEED = 2**64 - 1          # torch.Generator.manual_seed takes an unsigned 64-bit seed
MAX_TOP_LOGPROBS = 20         # OpenAI's bound on top_logprobs


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop: one request's settings, for every caller of the engine.

    max_new_tokens       the most tokens to generate (the server's max_tokens)
    temperature          0 = greedy (argmax); >= MIN_TEMPERATURE divides the logits before sampling
    top_k                keep only the k most likely tokens (None or 0 = all)
    top_p                nucleus: keep the smallest set of tokens whose probability reaches top_p
    min_p                keep only tokens at least min_p times as likely as the most likely one
                         (after the temperature, top_k and top_p, as transformers' MinPLogitsWarper;
                         0 = all)
    repetition_penalty   > 1 discourages tokens already in the prompt or the output (CTRL / HF rule:
                         positive logits are divided by it, negative ones multiplied)
    presence_penalty     OpenAI's: subtracted once from the logit of every token already generated
    frequency_penalty    OpenAI's: subtracted per occurrence of a token already generated
    stop                 strings that end generation; the returned text stops just before them
    stop_token_ids       token ids that end generation (not part of the returned text)
    ignore_eos           keep going past the tokenizer's EOS (benchmarks, parity tests)
    seed                 makes sampling reproducible: choice i draws from a generator seeded with
                         seed + i, whatever else shares the batch (None: torch's global RNG)
    n                    choices generated for the prompt (they share one prefill)
    logprobs             None: no log-probabilities; k >= 0: the chosen token's log-probability under
                         the model's raw distribution plus the k most likely alternatives
    skip_special_tokens  leave special tokens (EOS, padding, <|im_end|>, ...) out of the text, as
                         transformers' decode(skip_special_tokens=True) and vLLM do; a stop string that
                         is one special token stops at its id instead
    logit_bias           {token id: bias in [-100, 100]} added to those logits (OpenAI's logit_bias)
    constraint           a structured.Constraint (JSON schema, JSON object, regex, Lark): every token
                         must follow the grammar, and the sequence stops once it is complete
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: Optional[int] = None
    n: int = 1
    logprobs: Optional[int] = None
    skip_special_tokens: bool = True
    logit_bias: Optional[dict] = None
    constraint: Optional[object] = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(s for s in (self.stop or ()) if s)
        self.stop_token_ids = tuple(int(t) for t in (self.stop_token_ids or ()))
        self.validate()

    def validate(self) -> None:
        problems = []

        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not is_number(self.temperature) or self.temperature < 0:
            problems.append(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        elif 0 < self.temperature < MIN_TEMPERATURE:
            problems.append(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {self.temperature!r}")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 0):
            problems.append(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if not is_number(self.top_p) or not (0.0 < float(self.top_p) <= 1.0):
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not is_number(self.min_p) or not (0.0 <= float(self.min_p) <= 1.0):
            problems.append(f"min_p must be in [0, 1], got {self.min_p!r}")
        if not is_number(self.repetition_penalty) or not (float(self.repetition_penalty) > 0.0):
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not is_number(getattr(self, name)):
                problems.append(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if not is_int(self.n) or self.n < 1:
            problems.append(f"n must be a positive integer, got {self.n!r}")
        if self.seed is not None:
            if not is_int(self.seed) or not (0 <= self.seed <= MAX_SEED):
                problems.append(f"seed must be an integer in [0, {MAX_SEED}], got {self.seed!r}")
            elif is_int(self.n) and self.n >= 1 and self.seed + self.n - 1 > MAX_SEED:
                problems.append(f"seed + n - 1 must be at most {MAX_SEED} (choice i uses seed + i), "
                                f"got seed {self.seed} with n {self.n}")
        if self.logprobs is not None and (not is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_TOP_LOGPROBS):
            problems.append(f"logprobs must be None or an integer in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs!r}")
        if self.logit_bias is not None:
            from .structured import validate_logit_bias

            try:
                self.logit_bias = validate_logit_bias(self.logit_bias)
            except OpenseasonError as exc:
                problems.append(str(exc))
        if problems:
            raise OpenseasonError("bad sampling parameters: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        """True when the choice is the argmax (temperature 0 or top_k 1)."""
        return self.temperature == 0 or self.top_k == 1

    @property
    def penalized(self) -> bool:
        """True when logits are changed before the choice (penalties, biases, a grammar): the engine
        then chooses this row on its own instead of in the batch-wide argmax."""
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0 or self.frequency_penalty != 0
                or bool(self.logit_bias) or self.constraint is not None)

    @property
    def plain_greedy(self) -> bool:
        """True when the choice is the argmax of the model's own logits (greedy, nothing changes them)."""
        return self.greedy and not self.penalized

    def updated(self, **changes) -> "SamplingParams":
        return replace(self, **changes)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalize tokens already seen, in place; returns `logits` [B, V].

    `seen` is either a bool mask [B, V] (True where the token occurred; cheap to keep up to date
    while decoding) or token ids [B, L] (negative ids, e.g. padding marked -1, are ignored).
    Follows the CTRL paper as transformers does: a seen token's logit is divided by `penalty` when
    positive and multiplied by it when negative, so penalty > 1 always lowers its probability.
    """
    if penalty == 1.0:
        return logits
    if seen.dtype != torch.bool:
        ids = seen.long()
        mask = torch.zeros_like(logits, dtype=torch.bool)
        valid = ids >= 0
        mask.scatter_(1, ids.clamp(min=0), valid)
        seen = mask
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return logits.copy_(torch.where(seen, penalized, logits))


def apply_openai_penalties(logits: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float) -> torch.Tensor:
    """OpenAI's presence and frequency penalties on logits [..., V] given generated-token counts [..., V]:
    logit -= frequency * count + presence * (count > 0). Returns a new tensor."""
    if presence == 0 and frequency == 0:
        return logits
    return logits - (frequency * counts + presence * (counts > 0).to(logits.dtype))


def _filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    # Drop a token when the tokens ranked strictly above it already reach p; the top one always stays.
    above = probs.cumsum(-1) - probs
    drop_sorted = above >= p
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _filter_min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    probs = logits.softmax(-1)
    return logits.masked_fill(probs < p * probs.amax(-1, keepdim=True), float("-inf"))   # the top one stays


def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None, top_p: float = 1.0,
                  min_p: float = 0.0) -> torch.Tensor:
    """Logits [B, V] with everything outside the top-k, then outside the top-p nucleus, then less than
    min_p times as likely as the most likely token, set to -inf."""
    if top_k:
        logits = _filter_top_k(logits, top_k)
    if top_p < 1.0:
        logits = _filter_top_p(logits, top_p)
    if min_p > 0.0:
        logits = _filter_min_p(logits, min_p)
    return logits


def sample_next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: Optional[int] = None,
                      top_p: float = 1.0, generator: Optional[torch.Generator] = None,
                      min_p: float = 0.0) -> torch.Tensor:
    """Next token ids [B] (int64, on the logits' device) from logits [B, V].

    temperature 0 or top_k 1 is greedy (argmax, no softmax). Otherwise logits are divided by the
    temperature, filtered by top-k, top-p then min-p, and one token is drawn with `generator` (pass a
    seeded torch.Generator on the logits' device for reproducible output).
    """
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p, min_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def make_generator(seed: Optional[int], device) -> Optional[torch.Generator]:
    """A torch.Generator on `device` seeded with `seed` (None: use the global RNG)."""
    if seed is None:
        return None
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(seed))
    return gen


def stop_ids(params: SamplingParams, eos_id: Optional[int]) -> frozenset[int]:
    """Token ids that end a sequence under `params` (its stop ids plus EOS unless ignore_eos)."""
    ids = set(params.stop_token_ids)
    if eos_id is not None and not params.ignore_eos:
        ids.add(int(eos_id))
    return frozenset(ids)


def as_params(params: Optional[SamplingParams] = None, **overrides) -> SamplingParams:
    """A SamplingParams from an existing one and/or keyword overrides (None values are ignored)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "stop" in overrides and isinstance(overrides["stop"], str):
        overrides["stop"] = (overrides["stop"],)
    for key in ("stop", "stop_token_ids"):
        if key in overrides and isinstance(overrides[key], Sequence):
            overrides[key] = tuple(overrides[key])
    if params is None:
        return SamplingParams(**overrides)
    return params.updated(**overrides) if overrides else params
