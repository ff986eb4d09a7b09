"""ALiBi in the one decoder: slopes, bias against a hand-written reference, reading past block_size."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from openseason.config import Config
from openseason.errors import ConfigError
from openseason.model import GPT, alibi_slopes


def tiny(name="tiny-mpt", **overrides) -> GPT:
    torch.manual_seed(0)
    m = GPT(Config.from_name(name, **overrides))
    m.init_weights()
    return m.eval()


def test_slopes_powers_of_two_and_interleaved():
    assert alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]
    assert alibi_slopes(4).tolist() == [2.0 ** -i for i in (2, 4, 6, 8)]
    # 12 heads: 16 slopes of 2^-(i/2); odd-numbered ones (1-based even i) first, then the others
    sixteen = [2.0 ** -(i / 2) for i in range(1, 17)]
    assert alibi_slopes(12).tolist() == pytest.approx((sixteen[1::2] + sixteen[::2])[:12])


def _reference_layer(attn, x, slopes):
    """One attention layer with ALiBi written out per head (clip, no rotary, causal)."""
    cfg = attn.config
    nh, hs = cfg.n_head, cfg.head_size
    qkv = x @ attn.qkv.weight.T
    if cfg.clip_qkv:
        qkv = qkv.clamp(-cfg.clip_qkv, cfg.clip_qkv)
    q, k, v = qkv.split(nh * hs, dim=-1)
    B, T, _ = x.shape
    out = torch.zeros(B, T, nh * hs)
    for h in range(nh):
        qh, kh, vh = (t[..., h * hs:(h + 1) * hs] for t in (q, k, v))
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(hs)
        for i in range(T):
            for j in range(T):
                scores[:, i, j] = scores[:, i, j] - slopes[h] * (i - j) if j <= i else float("-inf")
        out[..., h * hs:(h + 1) * hs] = torch.softmax(scores, -1) @ vh
    return out @ attn.proj.weight.T


@pytest.mark.parametrize("name", ["tiny-mpt", "tiny-mpt-clip"])
def test_attention_matches_written_out_reference(name):
    model = tiny(name)
    cfg = model.config
    x = torch.randn(2, 9, cfg.n_embd)
    with torch.no_grad():
        mask = model.full_mask(None, 2, 9, 0, x.device)
        from openseason.model import alibi_bias
        bias = alibi_bias(cfg, mask, 0, None, torch.float32)
        ours = model.blocks[0].attn(x, *([model.rope_cos.new_zeros(1, 1, 9, 0)] * 2), bias)
        ref = _reference_layer(model.blocks[0].attn, x, alibi_slopes(cfg.n_head, cfg.alibi_bias_max).tolist())
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_reading_past_block_size_needs_extend_context_and_warns():
    model = tiny()
    block = model.config.block_size
    ids = torch.randint(0, 512, (1, block + 40), generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="longer than the context window"):
        model(ids)
    with pytest.warns(UserWarning, match="ALiBi extrapolation"):
        model.extend_context(2 * block)
    assert model.context_length == 2 * block
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache(1)                      # sized at the extended context
        assert cache.max_len == 2 * block
        steps = [model(ids[:, :block - 5], kv_cache=cache)]
        steps += [model(ids[:, t:t + 1], kv_cache=cache) for t in range(block - 5, block + 40)]
    assert torch.isfinite(full).all()
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="longer than the context window"):
        model(torch.zeros(1, 2 * block + 1, dtype=torch.long))


def test_rotary_models_refuse_extend_context():
    model = tiny("tiny-llama")
    with pytest.raises(ConfigError, match="rotary"):
        model.extend_context(model.config.block_size + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.extend_context(model.config.block_size // 2)   # shrinking is fine, and silent
    assert model.context_length == model.config.block_size // 2


def test_config_validation():
    with pytest.raises(ConfigError, match="one position scheme"):
        Config.from_name("tiny-mpt", rotary_percentage=1.0)
    with pytest.raises(ConfigError, match="clip_qkv"):
        Config.from_name("tiny-mpt", clip_qkv=0)
    with pytest.raises(ConfigError, match="alibi_bias_max"):
        Config.from_name("tiny-mpt", alibi_bias_max=-1)
    cfg = Config.from_name("mpt-7b")
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert not any(p.endswith("norm_1.bias") for p, _ in GPT(Config.from_name("tiny-mpt")).named_parameters())
