"""Parity with the released OpenFlamingo modules (open_flamingo.src.helpers, installed --no-deps as a
test-only peer): PerceiverResampler, MaskedCrossAttention and GatedCrossAttentionBlock with weights
copied through our key map, on batches whose rows hold 0, 1 and 3 images."""
from __future__ import annotations

import pytest
import torch

from openseason.convert.open_flamingo import flamingo_key
from openseason.peft.xattn import GatedCrossAttentionBlock, MaskedCrossAttention, text_time
from openseason.vision.perceiver import PerceiverResampler

D, DV, MEDIA = 32, 24, 5


@pytest.fixture
def helpers(open_flamingo_src):
    return open_flamingo_src.helpers


def load_released(ours: torch.nn.Module, theirs: torch.nn.Module, prefix: str, our_prefix: str) -> None:
    """Copy `theirs` into `ours` through the production key map (names relative to each module)."""
    state = {}
    for name, tensor in theirs.state_dict().items():
        key = flamingo_key(prefix + name)
        assert key is not None and key.startswith(our_prefix), name
        state[key[len(our_prefix):]] = tensor
    missing, unexpected = ours.load_state_dict(state, strict=True), None
    assert not missing.missing_keys and not missing.unexpected_keys and unexpected is None


def randomize(module: torch.nn.Module) -> None:
    """Non-trivial values everywhere (gates open, norms off their defaults), so parity can fail."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 and p.numel() > 1 else 0.0))


def test_perceiver_resampler_equals_released(helpers):
    theirs = helpers.PerceiverResampler(dim=DV, depth=2, dim_head=8, heads=3, num_latents=5, max_num_media=3,
                                        max_num_frames=2, ff_mult=2)
    randomize(theirs)
    ours = PerceiverResampler(DV, depth=2, dim_head=8, heads=3, num_latents=5, max_num_media=3, max_num_frames=2,
                              ff_mult=2)
    load_released(ours, theirs, "perceiver.", "perceiver.")
    x = torch.randn(2, 3, 2, 7, DV)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def media_locations() -> torch.Tensor:
    """Rows with 0, 1 and 3 <image> tokens (one image token first in the sequence)."""
    loc = torch.zeros(3, 11, dtype=torch.bool)
    loc[1, 3] = True
    loc[2, [0, 4, 8]] = True
    return loc


@pytest.mark.parametrize("immediate", [True, False])
def test_masked_cross_attention_equals_released(immediate, helpers):
    theirs = helpers.MaskedCrossAttention(dim=D, dim_visual=DV, dim_head=8, heads=2,
                                          only_attend_immediate_media=immediate)
    randomize(theirs)
    ours = MaskedCrossAttention(D, DV, dim_head=8, heads=2, only_attend_immediate_media=immediate)
    ours.load_state_dict(theirs.state_dict())
    x, media, loc = torch.randn(3, 11, D), torch.randn(3, 3, 4, DV), media_locations()
    got, want = ours(x, media, text_time(loc)), theirs(x, media, media_locations=loc)
    seen = text_time(loc) > 0
    torch.testing.assert_close(got[seen], want[seen], atol=1e-5, rtol=1e-5)
    # Before any image (and in the row without images) we attend to nothing: zero output.
    assert torch.equal(got[~seen], torch.zeros_like(got[~seen]))
    if immediate:   # ... as the released code does in its default mode
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    else:           # where the released code averages over all media instead (see xattn.py)
        assert not torch.allclose(got[~seen], want[~seen], atol=1e-3)


def test_gated_block_equals_released_with_cached_media(helpers):
    theirs = helpers.GatedCrossAttentionBlock(dim=D, dim_visual=DV, dim_head=8, heads=2, ff_mult=2)
    randomize(theirs)
    ours = GatedCrossAttentionBlock(D, DV, dim_head=8, heads=2, ff_mult=2)
    load_released(ours, theirs, "lang_encoder.gated_cross_attn_layers.0.", "blocks.0.xattn.")
    x, media, loc = torch.randn(3, 11, D), torch.randn(3, 3, 4, DV), media_locations()
    torch.testing.assert_close(ours(x, media, text_time(loc)), theirs(x, media, media_locations=loc),
                               atol=1e-5, rtol=1e-5)
    # Decoding with cached media: new tokens sit after every image the prompt had.
    step = torch.randn(3, 1, D)
    cached = theirs(step, media, media_locations=loc, use_cached_media=True)
    ours_step = ours(step, media, text_time(torch.zeros(3, 1, dtype=torch.bool), loc.sum(-1)))
    torch.testing.assert_close(ours_step, cached, atol=1e-5, rtol=1e-5)
