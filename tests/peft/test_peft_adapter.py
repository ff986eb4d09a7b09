"""LLaMA-Adapter v1/v2 against independent reference computations and the papers' invariants."""
from __future__ import annotations

import math

import pytest
import torch

from openseason.config import Config
from openseason.model import GPT
from openseason.peft import apply, count_trainable, trainable_names


def tiny(name: str, **overrides) -> GPT:
    model = GPT(Config.from_name(name, **overrides))
    model.init_weights()
    return model


def test_llama_7b_adapter_count_on_meta():
    with torch.device("meta"):
        model = GPT(Config.from_name("llama-7b"))
    apply(model, "adapter", prompt_length=10, layers=30)
    assert count_trainable(model) == 1_229_760
    # 30 layers x (10 prompt vectors x 4096 + 32 gates); nothing of the base trains.
    assert all("adapter" in n for n in trainable_names(model))


def test_default_layers_are_all_but_first_two():
    with torch.device("meta"):
        model = GPT(Config.from_name("llama-7b"))
    apply(model, "adapter")
    adapted = [i for i, b in enumerate(model.blocks) if hasattr(b.attn, "adapter")]
    assert adapted == list(range(2, 32))


def _rope_reference(x, n_rot, base):
    """Rotate-half rotary embedding, written out from the formula (positions 0..T-1)."""
    T, hs = x.shape[-2], x.shape[-1]
    if n_rot == 0:
        return x
    inv = [1.0 / base ** (2 * i / n_rot) for i in range(n_rot // 2)]
    out = x.clone()
    for t in range(T):
        for i, f in enumerate(inv):
            c, s = math.cos(t * f), math.sin(t * f)
            a, b = x[..., t, i], x[..., t, i + n_rot // 2]
            out[..., t, i] = a * c - b * s
            out[..., t, i + n_rot // 2] = b * c + a * s
    return out


def reference_adapted_attention(attn, x):
    """Plain per-head loops over explicitly sliced weight rows; no code shared with the model."""
    cfg = attn.config
    nh, ng, hs = cfg.n_head, cfg.n_query_groups, cfg.head_size
    W = attn.qkv.weight.detach()
    b = attn.qkv.bias.detach() if attn.qkv.bias is not None else torch.zeros(W.shape[0])
    q_rows, k_rows, v_rows = slice(0, nh * hs), slice(nh * hs, (nh + ng) * hs), slice((nh + ng) * hs, (nh + 2 * ng) * hs)
    B, T, _ = x.shape
    q = (x @ W[q_rows].T + b[q_rows]).view(B, T, nh, hs).transpose(1, 2)
    k = (x @ W[k_rows].T + b[k_rows]).view(B, T, ng, hs).transpose(1, 2)
    v = (x @ W[v_rows].T + b[v_rows]).view(B, T, ng, hs).transpose(1, 2)
    q = _rope_reference(q, cfg.rope_n_elem, cfg.rope_base)
    k = _rope_reference(k, cfg.rope_n_elem, cfg.rope_base)
    P = attn.adapter.prompt.detach()
    pk = (P @ W[k_rows].T + b[k_rows]).view(-1, ng, hs).transpose(0, 1)  # [ng, K, hs], no rotary
    pv = (P @ W[v_rows].T + b[v_rows]).view(-1, ng, hs).transpose(0, 1)
    gate = attn.adapter.gate.detach().view(nh)
    out = torch.zeros(B, nh, T, hs)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for h in range(nh):
        g = h // (nh // ng)
        s = q[:, h] @ k[:, g].transpose(-1, -2) / math.sqrt(hs)
        s = s.masked_fill(~causal, float("-inf"))
        ordinary = torch.softmax(s, -1) @ v[:, g]
        ps = torch.softmax(q[:, h] @ pk[g].T / math.sqrt(hs), -1)
        out[:, h] = ordinary + math.tanh(gate[h]) * (ps @ pv[g])
    y = out.transpose(1, 2).reshape(B, T, nh * hs)
    proj_b = attn.proj.bias.detach() if attn.proj.bias is not None else 0
    return y @ attn.proj.weight.detach().T + proj_b


@pytest.mark.parametrize("name,overrides", [
    ("tiny-neox", {}),                                   # fused qkv with biases, partial rotary
    ("tiny-llama", {}),                                  # grouped-query attention (4 heads, 2 groups)
    ("tiny-llama", {"n_query_groups": 1}),               # multi-query
])
def test_nonzero_gate_matches_reference(name, overrides):
    model = tiny(name, **overrides)
    apply(model, "adapter", prompt_length=5, layers=model.config.n_layer)
    attn = model.blocks[1].attn
    with torch.no_grad():
        attn.adapter.gate.copy_(torch.linspace(-1.5, 2.0, model.config.n_head).view(1, -1, 1, 1))
        attn.adapter.prompt.normal_()
        if attn.qkv.bias is not None:
            attn.qkv.bias.normal_(std=0.5)
    x = torch.randn(2, 7, model.config.n_embd)
    T = x.shape[1]
    cos = model.rope_cos[:T][None, None]
    sin = model.rope_sin[:T][None, None]
    with torch.no_grad():
        ours = attn(x, cos, sin)
        ref = reference_adapted_attention(attn, x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    # The reference really depends on the prompt term (a q/k/v mix-up would change it).
    with torch.no_grad():
        attn.adapter.gate.zero_()
        plain = attn(x, cos, sin)
    assert (plain - ref).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["tiny-neox", "tiny-llama"])
@pytest.mark.parametrize("method", ["adapter", "adapter-v2"])
def test_identity_at_init(name, method):
    model = tiny(name)
    ids = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        before = model(ids)
        apply(model, method, prompt_length=4, layers=2)
        after = model(ids)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)


def test_v2_trains_scales_biases_and_norms():
    model = tiny("tiny-neox")
    apply(model, "adapter-v2", prompt_length=4, layers=1)
    names = set(trainable_names(model))
    assert {"blocks.0.norm_1.weight", "blocks.0.norm_1.bias", "norm_f.weight"} <= names
    assert {"lm_head.v2_scale", "lm_head.v2_bias", "blocks.0.attn.qkv.v2_scale", "blocks.1.mlp.fc.v2_bias"} <= names
    assert "blocks.1.attn.adapter.prompt" in names and "blocks.0.attn.adapter.prompt" not in names
    assert "blocks.0.attn.qkv.weight" not in names and "embed.weight" not in names
    cfg = model.config
    n_linear = cfg.n_layer * 4 + 1
    out_sizes = cfg.n_layer * (3 * cfg.n_embd + cfg.n_embd + cfg.intermediate_size + cfg.n_embd) + cfg.padded_vocab_size
    norms = (2 * cfg.n_layer + 1) * 2 * cfg.n_embd
    assert n_linear == 9
    assert count_trainable(model) == 2 * out_sizes + norms + 4 * cfg.n_embd + cfg.n_head


@pytest.mark.parametrize("name", ["tiny-neox", "tiny-llama"])
def test_adapter_with_kv_cache_matches_full_forward(name):
    model = tiny(name)
    apply(model, "adapter-v2", prompt_length=3, layers=2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    model.eval()
    ids = torch.randint(0, 512, (1, 10))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache(1, 16)
        first = model(ids[:, :6], kv_cache=cache)
        steps = [model(ids[:, t:t + 1], kv_cache=cache) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat([first] + steps, 1), full, atol=1e-5, rtol=1e-4)
