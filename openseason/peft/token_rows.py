"""Train only a few rows of the embedding matrix (new tokens such as Flamingo's `<image>` and
`<|endofchunk|>`), leaving every other row bit-identical.

The released OpenFlamingo trains the whole input embedding and zeroes the gradient of all but the
two new rows after each backward; weight decay or momentum would still move the other rows there.
Here the frozen matrix never enters the optimizer: the new rows are a small Parameter of their own,
written over the frozen rows on every forward (`weight.index_copy(0, token_ids, rows)`), so nothing
else can change.

    grow_vocab(model, size)               more rows when the tokenizer outgrew padded_vocab_size
    train_token_rows(model, token_ids)    rows initialized to the mean of the other rows (the mean
                                          Hugging Face's resize_token_embeddings uses), then trained

The output head gets the same treatment: tied to the embedding, it reads the same rows; untied, it
trains its own rows for the new tokens (so the model can learn to emit `<|endofchunk|>`; the
released code leaves untied output rows at their initialization, noting it as a TODO).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..linear import linear


class TokenRowsEmbedding(nn.Module):
    """nn.Embedding stand-in: the frozen `weight` (same Parameter, same key) with `rows` trained."""

    peft_params = ("rows",)

    def __init__(self, base: nn.Embedding, token_ids: torch.Tensor):
        super().__init__()
        self.num_embeddings, self.embedding_dim = base.weight.shape
        self.weight = base.weight
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.rows = nn.Parameter(base.weight.detach()[token_ids].clone())

    def full_weight(self) -> torch.Tensor:
        return self.weight.index_copy(0, self.token_ids, self.rows.to(self.weight.dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.full_weight())


class TokenRowsHead(nn.Module):
    """nn.Linear stand-in for the output head: the new tokens' rows come from `rows` (own, untied) or
    from the embedding's rows (tied)."""

    def __init__(self, base: nn.Linear, token_ids: torch.Tensor, tied_to: TokenRowsEmbedding | None):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self._tied = (tied_to,) if tied_to is not None else None   # a tuple: not a second registration
        self.register_buffer("token_ids", token_ids, persistent=False)
        if tied_to is None:
            self.rows = nn.Parameter(base.weight.detach()[token_ids].clone())
            self.peft_params = ("rows",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._tied is not None:
            weight = self._tied[0].full_weight()
        else:
            weight = self.weight.index_copy(0, self.token_ids, self.rows.to(self.weight.dtype))
        return linear(x, weight, self.bias)


def grow_vocab(model: nn.Module, size: int) -> None:
    """Give the embedding and the output head `size` rows (no-op when they already have as many).
    New rows start at zero here; `train_token_rows` initializes the ones that are used."""
    config = model.config
    old = config.padded_vocab_size
    if size <= old:
        return
    if not isinstance(model.embed, nn.Embedding) or not isinstance(model.lm_head, nn.Linear):
        raise ConfigError("the vocabulary can only grow before other methods wrap the embedding or the head")
    tied = model.lm_head.weight is model.embed.weight
    with torch.no_grad():
        w = model.embed.weight
        grown = torch.cat([w, w.new_zeros(size - old, w.size(1))])
        model.embed = nn.Embedding(size, w.size(1), device=w.device, dtype=w.dtype, _weight=grown)
        if tied:
            model.lm_head.weight = model.embed.weight
        else:
            h = model.lm_head.weight
            model.lm_head.weight = nn.Parameter(torch.cat([h, h.new_zeros(size - old, h.size(1))]))
        if model.lm_head.bias is not None:
            b = model.lm_head.bias
            model.lm_head.bias = nn.Parameter(torch.cat([b, b.new_zeros(size - old)]))
        model.lm_head.out_features = size
    config.padded_vocab_size = size
    config.vocab_size = max(config.vocab_size, size)


def train_token_rows(model: nn.Module, token_ids: Sequence[int], mean_of: int | None = None,
                     new_ids: Optional[Sequence[int]] = None) -> None:
    """Make rows `token_ids` of the embedding (and head) the only trainable rows. Those in `new_ids`
    (default: all of them) start at the mean of rows [0, mean_of) other than `token_ids`; the others
    (tokens the base model already had) keep their rows. mean_of defaults to config.vocab_size."""
    ids = sorted(set(int(i) for i in token_ids))
    fresh = sorted(set(ids if new_ids is None else (int(i) for i in new_ids)))
    rows = model.config.padded_vocab_size
    if not ids or ids[0] < 0 or ids[-1] >= rows:
        raise ConfigError(f"token ids {ids} must lie inside the embedding matrix ({rows} rows)")
    if not set(fresh) <= set(ids):
        raise ConfigError(f"new token ids {fresh} must be among the trained token ids {ids}")
    if isinstance(model.embed, TokenRowsEmbedding):
        raise ConfigError("new token rows were already set up on this model")
    tied = model.lm_head.weight is model.embed.weight
    index = torch.tensor(ids, device=model.embed.weight.device)
    keep = torch.ones(min(mean_of or model.config.vocab_size, rows), dtype=torch.bool)
    keep[[i for i in ids if i < keep.numel()]] = False
    if fresh:
        new = torch.tensor(fresh, device=index.device)
        with torch.no_grad():
            for weight in {id(model.embed.weight): model.embed.weight,
                           id(model.lm_head.weight): model.lm_head.weight}.values():
                weight[new] = weight[: keep.numel()][keep.to(weight.device)].mean(0).to(weight.dtype)
            if model.lm_head.bias is not None:
                model.lm_head.bias[new] = 0
    model.embed = TokenRowsEmbedding(model.embed, index)
    model.lm_head = TokenRowsHead(model.lm_head, index, model.embed if tied else None)
