"""The decoder's own invariants: KV-cache decoding, padding and packing masks, meta-device build."""
import pytest
import torch

from openseason.config import Config
from openseason.model import GPT


@pytest.fixture(params=["tiny-neox", "tiny-llama", "tiny-mpt"])
def model(request):
    m = GPT(Config.from_name(request.param))
    m.init_weights()
    return m.eval()


@torch.no_grad()
def test_kv_cache_decoding_equals_full_forward(model):
    x = torch.randint(0, 512, (2, 24))
    full = model(x)
    cache = model.new_kv_cache(2, 64)
    pieces = [model(x[:, :10], kv_cache=cache)]
    for t in range(10, 24):
        pieces.append(model(x[:, t:t + 1], kv_cache=cache))
    assert cache.length == 24
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_left_padding_does_not_change_real_tokens(model):
    x = torch.randint(0, 512, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, :5] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    padded = model(x, attention_mask=mask, position_ids=positions)
    alone = model(x[:1, 5:])
    torch.testing.assert_close(padded[0, 5:], alone[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(padded).all()


@torch.no_grad()
def test_packed_segments_do_not_attend_across(model):
    x = torch.randint(0, 512, (1, 20))
    segments = torch.tensor([[0] * 8 + [1] * 12])
    positions = torch.tensor([list(range(8)) + list(range(12))])
    packed = model(x, segment_ids=segments, position_ids=positions)
    torch.testing.assert_close(packed[0, :8], model(x[:, :8])[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[0, 8:], model(x[:, 8:])[0], atol=1e-5, rtol=1e-5)


def test_context_window_is_enforced(model):
    x = torch.zeros(1, model.config.block_size + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="longer than the context window"):
        model(x)


def test_meta_build_allocates_nothing():
    with torch.device("meta"):
        m = GPT(Config.from_name("llama-7b"))
    assert all(p.is_meta for p in m.parameters())
