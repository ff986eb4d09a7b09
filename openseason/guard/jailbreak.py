"""Jailbreak heuristics by perplexity, computed with a local openseason language model.

Two signals, as in NeMo Guardrails' heuristics (which use GPT-2 large; we use any openseason
checkpoint, so thresholds must be calibrated for the model you pick):

- length per perplexity: `len(text) / perplexity(text)`; long, fluent persona prompts ("DAN") score
  high. The rail fires when the ratio is strictly greater than `length_per_perplexity_threshold`.
- prefix/suffix perplexity: the perplexity of the first and of the last `prefix_suffix_words` words;
  optimized adversarial suffixes (GCG) are gibberish to a language model. The rail fires when either
  is strictly greater than `prefix_suffix_perplexity_threshold`. Texts with fewer words are not checked.

Perplexity is exp(mean negative log-likelihood) over every token of the text. Each token is predicted
from a start token (BOS, else EOS as the document separator, as lm-eval does for GPT-NeoX), and
texts longer than the context are scored in consecutive windows that each restart from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .cache import ByteLRU, text_key


class PerplexityScorer:
    def __init__(self, model, tokenizer, device: str = "cpu"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        self.start_id = start
        self.window = model.config.block_size - (1 if start is not None else 0)
        self._cache = ByteLRU(2 * 2**20)  # text key -> perplexity; long texts keyed by digest

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> "PerplexityScorer":
        from ..checkpoint import load_config, load_model
        from ..tokenizer import Tokenizer

        model = load_model(path, device=device)
        return cls(model, Tokenizer.from_dir(path, load_config(path)), device)

    @torch.inference_mode()
    def nll(self, text: str) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) of the text's tokens, and how many were scored."""
        ids = self.tokenizer.encode(text, bos=False)
        total, count = 0.0, 0
        for start in range(0, len(ids), self.window):
            chunk = ids[start:start + self.window]
            if self.start_id is not None:
                inputs = [self.start_id] + chunk
                targets = chunk
            else:  # no start token: the chunk's first token cannot be scored
                inputs, targets = chunk, chunk[1:]
            if not targets:
                continue
            x = torch.tensor([inputs], device=self.device)
            logits = self.model(x)[0, :len(targets)].float()
            total += float(F.cross_entropy(logits, torch.tensor(targets, device=self.device), reduction="sum"))
            count += len(targets)
        return total, count

    def perplexity(self, text: str) -> float:
        key = text_key(text)
        value = self._cache.get(key)
        if value is None:
            total, count = self.nll(text)
            value = math.exp(total / count) if count else float("nan")
            self._cache.put(key, value, 8)
        return value


@dataclass
class JailbreakVerdict:
    is_jailbreak: bool
    length_per_perplexity: float
    perplexity: float
    prefix_perplexity: Optional[float]
    suffix_perplexity: Optional[float]
    fired: list[str]

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


def jailbreak_heuristics(text: str, scorer: PerplexityScorer, *, length_per_perplexity_threshold: float,
                         prefix_suffix_perplexity_threshold: float, prefix_suffix_words: int = 20
                         ) -> JailbreakVerdict:
    """Both heuristics on one text; `fired` names the ones over their thresholds."""
    fired = []
    ppl = scorer.perplexity(text)
    ratio = len(text) / ppl if ppl and not math.isnan(ppl) else 0.0
    if ratio > length_per_perplexity_threshold:
        fired.append("length_per_perplexity")
    words = text.strip().split()
    prefix_ppl = suffix_ppl = None
    if len(words) >= prefix_suffix_words:
        prefix_ppl = scorer.perplexity(" ".join(words[:prefix_suffix_words]))
        suffix_ppl = scorer.perplexity(" ".join(words[-prefix_suffix_words:]))
        if max(prefix_ppl, suffix_ppl) > prefix_suffix_perplexity_threshold:
            fired.append("prefix_suffix_perplexity")
    return JailbreakVerdict(bool(fired), ratio, ppl, prefix_ppl, suffix_ppl, fired)
