"""Greedy generation for training-time samples and exact-match evaluation of small models.

Prompts of different lengths are left-padded into one batch; positions restart at each row's first
real token, so every row sees exactly what it would see alone.
"""
from __future__ import annotations

from typing import Optional

import torch


@torch.no_grad()
def greedy_generate(model, prompts: list[list[int]], max_new_tokens: int, eos_id: Optional[int],
                    pad_id: int = 0, batch_size: int = 64, stop_ids: tuple[int, ...] = ()) -> list[list[int]]:
    """Greedy continuations (token ids, without the prompt, cut at EOS) for each prompt."""
    device = next(model.parameters()).device
    stops = set(stop_ids) | ({eos_id} if eos_id is not None else set())
    outputs: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        B = len(chunk)
        width = max(len(p) for p in chunk)
        total = width + max_new_tokens
        ids = torch.full((B, width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((B, total), dtype=torch.long, device=device)
        mask[:, width:] = 1  # generated positions are always real tokens
        for b, p in enumerate(chunk):
            ids[b, width - len(p):] = torch.tensor(p, device=device)
            mask[b, width - len(p):] = 1
        positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        cache = model.new_kv_cache(B, total)
        logits = model(ids, position_ids=positions, attention_mask=mask[:, :width], kv_cache=cache, last_only=True)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        generated = [[] for _ in range(B)]
        next_pos = positions[:, -1:] + 1
        for t in range(max_new_tokens):
            token = logits[:, -1].float().argmax(-1)
            for b in range(B):
                if not done[b]:
                    tok = int(token[b])
                    if tok in stops:
                        done[b] = True
                    else:
                        generated[b].append(tok)
            if bool(done.all()) or t == max_new_tokens - 1:
                break
            logits = model(token.view(B, 1), position_ids=next_pos, attention_mask=mask[:, :width + t + 1],
                           kv_cache=cache, last_only=True)
            next_pos = next_pos + 1
        outputs.extend(generated)
    return outputs
