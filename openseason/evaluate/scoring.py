"""Scoring target tokens: log-probabilities of chosen positions without materializing [B, T, V] logits.

Perplexity, the harness's loglikelihood requests and memorization all need log p(token | prefix) at a
subset of positions. We run the decoder body once, gather the hidden states that predict the targets,
and apply the output head to those rows only, in chunks, so a 50k-vocabulary model scoring 2048-token
windows does not allocate gigabytes of logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Rows of hidden states sent through lm_head + log_softmax at once.
HEAD_CHUNK_ROWS = 2048


@dataclass
class ScoredTargets:
    logprobs: torch.Tensor      # [N] float64 log p(target) for every selected target, in row-major order
    is_greedy: torch.Tensor     # [N] bool: the target was the argmax prediction
    rows: torch.Tensor          # [N] batch row of each target


@torch.inference_mode()
def score_targets(model, input_ids: torch.Tensor, target_mask: torch.Tensor,
                  attention_mask: torch.Tensor | None = None) -> ScoredTargets:
    """Log-probabilities of input_ids[b, t] given input_ids[b, :t] for every (b, t) where target_mask is True.

    input_ids and target_mask are [B, T]; position 0 can never be a target (it has no prefix).
    Right padding needs no attention mask: a causal model never looks ahead at it.
    """
    if target_mask[:, 0].any():
        raise ValueError("position 0 has no prefix and cannot be scored")
    # The last token is only ever a target, so the model reads T-1 tokens (a window of block_size + 1
    # tokens fits in a block_size model).
    if attention_mask is not None:
        attention_mask = attention_mask[:, :-1]
    hidden = model.hidden_states(input_ids[:, :-1], attention_mask=attention_mask)
    # hidden at t-1 predicts token t
    predictor = target_mask[:, 1:]
    rows, cols = predictor.nonzero(as_tuple=True)
    selected = hidden[rows, cols]                      # [N, n_embd]
    targets = input_ids[rows, cols + 1]
    logprobs, greedy = [], []
    for start in range(0, selected.size(0), HEAD_CHUNK_ROWS):
        logits = model.lm_head(selected[start:start + HEAD_CHUNK_ROWS]).float()
        logp = F.log_softmax(logits, dim=-1)
        tgt = targets[start:start + HEAD_CHUNK_ROWS]
        logprobs.append(logp.gather(1, tgt.unsqueeze(1)).squeeze(1).double())
        greedy.append(logp.argmax(-1) == tgt)
    if not logprobs:
        empty = torch.zeros(0, dtype=torch.float64)
        return ScoredTargets(empty, torch.zeros(0, dtype=torch.bool), rows)
    return ScoredTargets(torch.cat(logprobs), torch.cat(greedy), rows)


def pad_right(sequences: list[list[int]], pad_id: int = 0) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for i, seq in enumerate(sequences):
        out[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out
