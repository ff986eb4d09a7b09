"""The one decoder-only transformer, GPT-NeoX/Pythia, LLaMA or MPT by configuration, with a KV cache.

Positions enter attention one of two ways: rotary embeddings on q and k (GPT-NeoX, LLaMA) or ALiBi
(MPT): a per-head bias slope_h * (key position - query position) added to the attention scores,
computed on the fly for the current length, so an ALiBi model can read past its training length.

Module and parameter names (and so our checkpoint keys):

    embed                          token embedding [padded_vocab, n_embd]
    blocks.{i}.norm_1 / norm_2     LayerNorm (NeoX) or RMSNorm (LLaMA)
    blocks.{i}.attn.qkv            fused projection; rows are [q (n_head*hs) | k (groups*hs) | v (groups*hs)]
    blocks.{i}.attn.proj           attention output
    blocks.{i}.mlp.fc, .proj       GPT-NeoX MLP: proj(gelu(fc(x)))
    blocks.{i}.mlp.fc_1, .fc_2, .proj   LLaMA MLP: proj(silu(fc_1(x)) * fc_2(x))
    norm_f                         final norm
    lm_head                        output projection (tied to embed when tie_embeddings)

The fused qkv keeps q, k and v as three contiguous row blocks (Hugging Face GPT-NeoX interleaves
them per head; the converter reorders), so anything that needs "the key rows" slices one block.

Two inputs exist for injected modules (multimodal methods in openseason.peft): `inputs_embeds` replaces
the token embedding lookup (visual tokens spliced into the sequence), and `extras`, a dict of per-row
tensors [B, ...] (an image's visual prompt), reaches every attention layer's `attend`. The plain model
ignores `extras`; a KV cache keeps them with its rows, so decoding steps see the prompt's extras.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config
from .linear import Linear
from .errors import ConfigError


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32, as LLaMA does, then cast back."""

    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def build_norm(config: Config) -> nn.Module:
    if config.norm_class == "LayerNorm":
        return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.norm_bias)
    return RMSNorm(config.n_embd, eps=config.norm_eps)


class GptNeoxMLP(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.fc = Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.proj = Linear(config.intermediate_size, config.n_embd, bias=config.bias)
        self.approximate = config.gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate=self.approximate))


class LLaMAMLP(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.fc_1 = Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.fc_2 = Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.proj = Linear(config.intermediate_size, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.silu(self.fc_1(x)) * self.fc_2(x))


MLP_CLASSES = {"GptNeoxMLP": GptNeoxMLP, "LLaMAMLP": LLaMAMLP}


def rope_cache(config: Config, device=None, length: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [length, rope_n_elem] for rotate-half rotary embeddings (fp32)."""
    n = config.rope_n_elem
    length = length or config.block_size
    inv_freq = 1.0 / (config.rope_base ** (torch.arange(0, n, 2, device=device, dtype=torch.float32) / n))
    positions = torch.arange(length, device=device, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.size(-1) dims of each head (rotate-half pairing); pass the rest through.

    x: [B, H, T, hs]; cos/sin: [B, 1, T, n] (already gathered at the token positions).
    """
    n = cos.size(-1)
    if n == 0:
        return x
    rot, rest = x[..., :n], x[..., n:]
    half = n // 2
    x1, x2 = rot[..., :half], rot[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    out = rot * cos.to(x.dtype) + rotated * sin.to(x.dtype)
    return torch.cat((out, rest), dim=-1) if rest.size(-1) else out


def alibi_slopes(n_head: int, alibi_bias_max: float = 8.0, device=None) -> torch.Tensor:
    """MPT's ALiBi slopes [n_head] (fp32): 2^-(alibi_bias_max * h / n) for h = 1..n, n the next power of two.

    For a head count that is not a power of two, MPT (like the ALiBi paper) takes the odd-numbered slopes
    of the next power of two followed by the even-numbered ones, and keeps the first n_head.
    """
    n = 2 ** math.ceil(math.log2(n_head))
    m = torch.arange(1, n + 1, dtype=torch.float32, device=device) * (alibi_bias_max / n)
    slopes = 1.0 / torch.pow(2.0, m)
    if n != n_head:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_head]
    return slopes


def alibi_bias(config: Config, mask: torch.Tensor, past: int, attention_mask: Optional[torch.Tensor],
               dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias [B, n_head, T, S]: slope_h * (key position - query position) where `mask`
    (bool [B, 1, T, S]) lets the query see the key, the dtype's minimum elsewhere.

    Positions count real tokens only: with an `attention_mask` over the S key slots, the key in slot j
    has position cumsum(mask)[j] - 1, so a left-padded row gets the same biases as the row alone; the
    queries are the last T slots. Packed segments need nothing more: keys of other segments are masked,
    and within a segment the distances are the same.
    """
    B, _, T, S = mask.shape
    device = mask.device
    if attention_mask is not None:
        k_pos = attention_mask.long().cumsum(-1) - 1
    else:
        k_pos = torch.arange(S, device=device).expand(B, S)
    q_pos = k_pos[:, past:]
    distance = (k_pos[:, None, :] - q_pos[:, :, None]).to(torch.float32)          # [B, T, S]
    slopes = alibi_slopes(config.n_head, config.alibi_bias_max, device=device)
    bias = slopes.view(1, -1, 1, 1) * distance.unsqueeze(1)
    return bias.masked_fill(~mask, torch.finfo(torch.float32).min).to(dtype)


class KVCache:
    """Pre-allocated keys and values for every layer: [B, n_query_groups, max_len, head_size].

    `length` counts the positions already written; a forward call with a cache writes its T new
    positions at [length, length+T) and advances `length` once all layers are done.

    A batch whose rows hold different numbers of real positions keeps them right-aligned: every row
    ends at `length`, and a shorter row's first slots are padding that the attention mask hides. Keys
    are stored after rotary embedding at each row's own positions, so moving a row to other slots
    (`select`, `append`, `trim`) does not change what it computes. Only these methods rearrange the
    tensors; decoding code never writes them itself.
    """

    def __init__(self, config: Config, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        shape = (batch_size, config.n_query_groups, max_len, config.head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.batch_size = batch_size
        self.length = 0
        # per-row tensors [B, ...] that injected modules read at every step (see `GPT.hidden_states`)
        self.extras: dict[str, torch.Tensor] = {}

    @classmethod
    def of(cls, keys: list[torch.Tensor], values: list[torch.Tensor], length) -> "KVCache":
        """A cache over existing per-layer tensors [B, groups, max_len, head_size] holding `length`
        positions (no copy: writes go into them)."""
        cache = cls.__new__(cls)
        cache.k, cache.v = list(keys), list(values)
        cache.batch_size, cache.max_len = keys[0].shape[0], keys[0].shape[2]
        cache.length = length
        cache.extras = {}
        return cache

    @classmethod
    def stacked(cls, parts: list["KVCache"], capacity: int) -> "KVCache":
        """A new cache holding every part's rows in order, right-aligned at the longest part's length,
        in storage of `capacity` slots (at least that length)."""
        cache = cls.__new__(cls)
        cache._rebuild(parts, max(p.length for p in parts), capacity)
        return cache

    def reset(self) -> None:
        self.length = 0

    @property
    def free(self) -> int:
        """Positions that can still be written before the storage is full."""
        return self.max_len - self.length

    def select(self, index: torch.Tensor) -> None:
        """Keep only the batch rows in `index`, in that order (repeats allowed: n choices of one prompt)."""
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]
        self.extras = {name: t.index_select(0, index) for name, t in self.extras.items()}
        self.batch_size = int(index.numel())

    def _rebuild(self, parts: list["KVCache"], keep: int, capacity: int) -> None:
        """New storage of `capacity` slots holding the last `keep` positions of every part's rows,
        right-aligned at `keep`; parts are stacked along the batch in order."""
        capacity = max(capacity, keep)
        first = parts[0].k[0]
        rows = sum(p.batch_size for p in parts)
        shape = (rows, first.size(1), capacity, first.size(3))
        ks, vs = [], []
        for layer in range(len(parts[0].k)):
            k = torch.zeros(shape, device=first.device, dtype=first.dtype)
            v = torch.zeros(shape, device=first.device, dtype=first.dtype)
            row = 0
            for part in parts:
                take = min(part.length, keep)
                end = row + part.batch_size
                k[row:end, :, keep - take:keep] = part.k[layer][:, :, part.length - take:part.length]
                v[row:end, :, keep - take:keep] = part.v[layer][:, :, part.length - take:part.length]
                row = end
            ks.append(k)
            vs.append(v)
        self.k, self.v = ks, vs
        self.extras = _stack_extras(parts)
        self.batch_size, self.max_len, self.length = rows, capacity, keep

    def append(self, other: "KVCache", capacity: int) -> None:
        """Add `other`'s rows after ours; both right-aligned at the longer of the two lengths."""
        keep = max(self.length, other.length)
        self._rebuild([self, other], keep, capacity)

    def trim(self, keep: int, capacity: int) -> None:
        """Keep the last `keep` positions of every row (drop padding columns no row needs) in storage
        of `capacity` slots."""
        if keep > self.length:
            raise ValueError(f"cannot keep {keep} positions of a cache holding {self.length}")
        self._rebuild([self], keep, capacity)


def _stack_extras(parts: list[KVCache]) -> dict[str, torch.Tensor]:
    """The parts' per-row extras stacked along the batch; a part without one of them (a text-only
    request next to an image request) gets zeros, which every extra treats as "nothing there"."""
    names = list(dict.fromkeys(n for p in parts for n in p.extras))
    out = {}
    for name in names:
        like = next(p.extras[name] for p in parts if name in p.extras)
        out[name] = torch.cat([p.extras[name] if name in p.extras
                               else like.new_zeros((p.batch_size, *like.shape[1:])) for p in parts])
    return out


class CausalSelfAttention(nn.Module):
    def __init__(self, config: Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        hs, nh, ng = config.head_size, config.n_head, config.n_query_groups
        self.q_size, self.kv_size = nh * hs, ng * hs
        self.qkv = Linear(config.n_embd, self.q_size + 2 * self.kv_size, bias=config.bias)
        self.proj = Linear(nh * hs, config.n_embd, bias=config.bias)

    @property
    def softmax_scale(self) -> float:
        """What query-key products are multiplied by before the softmax (1 / sqrt(head size))."""
        return 1.0 / math.sqrt(self.config.head_size)

    def split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, T, q+2kv] -> q [B, nh, T, hs], k and v [B, ng, T, hs] (clamped first when clip_qkv is set)."""
        B, T, _ = qkv.shape
        hs = self.config.head_size
        if self.config.clip_qkv is not None:
            qkv = qkv.clamp(min=-self.config.clip_qkv, max=self.config.clip_qkv)
        q, k, v = qkv.split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        q = q.view(B, T, self.config.n_head, hs).transpose(1, 2)
        k = k.view(B, T, self.config.n_query_groups, hs).transpose(1, 2)
        v = v.view(B, T, self.config.n_query_groups, hs).transpose(1, 2)
        return q, k, v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: Optional[torch.Tensor] = None, kv_cache: Optional[KVCache] = None,
                extras: Optional[dict] = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.split_qkv(self.qkv(x))
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        if kv_cache is not None:
            start = kv_cache.length
            end = start + T
            if end > kv_cache.max_len:
                raise ValueError(f"KV cache overflow: {end} positions > max_len {kv_cache.max_len}")
            kv_cache.k[self.layer_idx][:, :, start:end] = k
            kv_cache.v[self.layer_idx][:, :, start:end] = v
            k = kv_cache.k[self.layer_idx][:, :, :end]
            v = kv_cache.v[self.layer_idx][:, :, :end]
        y = self.attend(q, k, v, mask, extras) if extras else self.attend(q, k, v, mask)
        y = y.transpose(1, 2).reshape(B, T, self.q_size)
        return self.proj(y)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, extras=None) -> torch.Tensor:
        """Scaled dot-product attention; `mask` is None (causal), "none" (attend to all keys), bool, or an
        additive float bias (ALiBi, with the masked keys at the dtype's minimum). `extras` (per-row
        tensors) are for injected modules that replace this method; the plain attention has no use for them."""
        gqa = self.config.n_query_groups != self.config.n_head
        scale = self.softmax_scale
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        if isinstance(mask, str):
            return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
        if mask.dtype != torch.bool and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


class Block(nn.Module):
    """One transformer layer.

    Sequential residual (LLaMA, GPT-NeoX with use_parallel_residual=False):

        x = x + attn(norm_1(x))
        x = x + mlp(norm_2(x))

    Parallel residual (Pythia): both norms read the same input and both branches add to it

        x = x + attn(norm_1(x)) + mlp(norm_2(x))
    """

    def __init__(self, config: Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.norm_1 = build_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.norm_2 = build_norm(config)
        self.mlp = MLP_CLASSES[config.mlp_class](config)

    def forward(self, x, cos, sin, mask=None, kv_cache=None, extras=None):
        attn_out = self.attn(self.norm_1(x), cos, sin, mask, kv_cache, extras)
        if self.config.parallel_residual:
            return x + attn_out + self.mlp(self.norm_2(x))
        x = x + attn_out
        return x + self.mlp(self.norm_2(x))


class GPT(nn.Module):
    """Decoder-only language model. `forward(input_ids)` returns logits [B, T, padded_vocab]."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = build_norm(config)
        self.lm_head = Linear(config.n_embd, config.padded_vocab_size, bias=config.lm_head_bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_cache(config, device=self.embed.weight.device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.gradient_checkpointing = False
        self.max_context: Optional[int] = None

    # -- set-up -------------------------------------------------------------------------------------
    def init_rope(self, device=None) -> None:
        """Recompute the rotary tables (after building on the meta device and materializing)."""
        cos, sin = rope_cache(self.config, device=device or self.embed.weight.device)
        self.rope_cos, self.rope_sin = cos, sin

    def init_weights(self, std: float = 0.02) -> None:
        """GPT-style init: normal(0, std) for linear/embedding weights, zeros for biases, ones for norms;
        residual output projections scaled by 1/sqrt(2 * n_layer)."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scale = std / math.sqrt(2 * self.config.n_layer) if name.endswith(".proj") else std
                nn.init.normal_(module.weight, mean=0.0, std=scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                module.reset_parameters()
        self.init_rope()

    @property
    def context_length(self) -> int:
        """The most positions this model reads: block_size, or what `extend_context` allowed."""
        return self.max_context or self.config.block_size

    def extend_context(self, max_context: int) -> None:
        """Let an ALiBi model read up to `max_context` positions, past the length it was trained at.

        ALiBi biases depend only on distances, so longer inputs are well defined (how well the model does
        there is an empirical question: see benchmarks/alibi_extrapolation.py). Rotary models are refused:
        their tables stop at block_size. Warns when max_context exceeds block_size.
        """
        max_context = int(max_context)
        if max_context < 1:
            raise ConfigError(f"max_context must be positive, got {max_context}", where=f"model {self.config.name!r}")
        if max_context > self.config.block_size:
            if not self.config.alibi:
                raise ConfigError(f"max_context {max_context} is longer than the context window "
                                  f"({self.config.block_size}) of {self.config.name}, which uses rotary positions",
                                  where=f"model {self.config.name!r}",
                                  hint="only ALiBi models (MPT) can read past block_size; lower max_context")
            warnings.warn(f"{self.config.name} was trained with a context of {self.config.block_size} tokens; "
                          f"reading up to {max_context} relies on ALiBi extrapolation", stacklevel=2)
        self.max_context = max_context

    def new_kv_cache(self, batch_size: int, max_len: Optional[int] = None, dtype=None) -> KVCache:
        max_len = max_len or self.context_length
        return KVCache(self.config, batch_size, max_len, device=self.embed.weight.device,
                       dtype=dtype or self.embed.weight.dtype)

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, *, position_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, segment_ids: Optional[torch.Tensor] = None,
                kv_cache: Optional[KVCache] = None, last_only: bool = False,
                inputs_embeds: Optional[torch.Tensor] = None, extras: Optional[dict] = None) -> torch.Tensor:
        """Logits for `input_ids` [B, T].

        position_ids   [B, T] rotary positions (default: consecutive from the cache length)
        attention_mask [B, S] 1 for real tokens, 0 for padding, over every key position
                       (S = cache length + T when a cache is used, else T)
        segment_ids    [B, T] packed sequences: tokens attend only within their own segment
        kv_cache       a KVCache; the new keys and values are appended to it
        last_only      compute logits for the last position only (decoding)
        inputs_embeds  [B, T, n_embd] used instead of embedding `input_ids` (which still give B, T and
                       the device; may be None when this is given)
        extras         per-row tensors [B, ...] for injected modules; with a cache they are stored in it
                       (prefill) and read back from it when not given (decode steps)
        """
        hidden = self.hidden_states(input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                    segment_ids=segment_ids, kv_cache=kv_cache, inputs_embeds=inputs_embeds,
                                    extras=extras)
        if last_only:
            hidden = hidden[:, -1:]
        return self.lm_head(hidden)

    def hidden_states(self, input_ids, *, position_ids=None, attention_mask=None, segment_ids=None,
                      kv_cache=None, inputs_embeds=None, extras=None) -> torch.Tensor:
        """Final-norm hidden states [B, T, n_embd] (for chunked losses that apply lm_head piecewise)."""
        if inputs_embeds is not None:
            B, T = inputs_embeds.shape[:2]
            if input_ids is not None and tuple(input_ids.shape) != (B, T):
                raise ValueError(f"input_ids {tuple(input_ids.shape)} and inputs_embeds {tuple(inputs_embeds.shape)} "
                                 "disagree")
            device = inputs_embeds.device
        else:
            B, T = input_ids.shape
            device = input_ids.device
        past = kv_cache.length if kv_cache is not None else 0
        if kv_cache is not None:
            if extras:
                kv_cache.extras = dict(extras)
            extras = kv_cache.extras
        limit = self.context_length if self.config.alibi else min(self.context_length, self.rope_cos.size(0))
        if past + T > limit:
            raise ValueError(f"sequence of {past + T} tokens is longer than the context window "
                             f"({limit}) of {self.config.name}")
        if self.config.rope_n_elem == 0:
            # No rotary dimensions (ALiBi, or no positions at all): apply_rope passes q and k through.
            cos = sin = self.rope_cos.new_zeros(1, 1, T, 0)
        elif position_ids is None:
            cos = self.rope_cos[past:past + T].unsqueeze(0).unsqueeze(0)
            sin = self.rope_sin[past:past + T].unsqueeze(0).unsqueeze(0)
        else:
            cos = self.rope_cos[position_ids].unsqueeze(1)
            sin = self.rope_sin[position_ids].unsqueeze(1)
        mask = self.build_mask(B, T, past, attention_mask, segment_ids, device)
        if self.config.alibi:
            mask = alibi_bias(self.config, self.full_mask(mask, B, T, past, device), past,
                              attention_mask, self.embed.weight.dtype)

        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        extras = extras or None
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, mask, kv_cache, extras, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, kv_cache, extras)
        if kv_cache is not None:
            kv_cache.length = past + T
        return self.norm_f(x)

    @staticmethod
    def build_mask(B: int, T: int, past: int, attention_mask, segment_ids, device):
        """None means plain causal (SDPA's fast path); "none" means every key is visible; else a bool
        [B, 1, T, past+T] mask where True lets a query see a key."""
        if attention_mask is None and segment_ids is None:
            if past == 0:
                return None
            if T == 1:
                return "none"
        S = past + T
        q_pos = torch.arange(past, S, device=device).unsqueeze(1)
        k_pos = torch.arange(S, device=device).unsqueeze(0)
        mask = (k_pos <= q_pos).unsqueeze(0).unsqueeze(0).expand(B, 1, T, S)
        if attention_mask is not None:
            if attention_mask.shape != (B, S):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, S)}")
            mask = mask & attention_mask.bool()[:, None, None, :]
            # A fully padded query row would give NaN; let it see itself (its output is ignored).
            diag = torch.zeros(T, S, dtype=torch.bool, device=device)
            diag[torch.arange(T, device=device), torch.arange(past, S, device=device)] = True
            mask = mask | diag
        if segment_ids is not None:
            if past:
                raise ValueError("segment_ids (packing) cannot be combined with a KV cache")
            same = segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1)
            mask = mask & same.unsqueeze(1)
        return mask


    @staticmethod
    def full_mask(mask, B: int, T: int, past: int, device) -> torch.Tensor:
        """`build_mask`'s result as an explicit bool [B, 1, T, past+T] tensor."""
        if isinstance(mask, torch.Tensor):
            return mask
        S = past + T
        if mask is None:
            q_pos = torch.arange(past, S, device=device).unsqueeze(1)
            visible = torch.arange(S, device=device).unsqueeze(0) <= q_pos
        else:
            visible = torch.ones(T, S, dtype=torch.bool, device=device)
        return visible.expand(B, 1, T, S)


def count_parameters(config: Config) -> int:
    """Total parameters of `config`, counted on the meta device (no memory allocated)."""
    with torch.device("meta"):
        model = GPT(config)
    return sum(p.numel() for p in model.parameters())
