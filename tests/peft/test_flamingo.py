"""OpenFlamingo by injection: the plain LM at init (GPT-NeoX, LLaMA, MPT), which images a token sees,
immediate-only invariance, KV-cache decoding with latents computed once, what trains."""
from __future__ import annotations

import pytest
import torch

from openseason.config import Config
from openseason.model import GPT
from openseason.peft import apply, trainable_names
from openseason.peft.flamingo import encode_media, media_extras

MEDIA = 7          # a token id used as <image> in these tests
DV = 24            # vision feature width


def tiny(name: str) -> GPT:
    torch.manual_seed(0)
    m = GPT(Config.from_name(name))
    m.init_weights()
    return m.eval()


def flamingo(name="tiny-llama", every=1, immediate=True) -> GPT:
    model = tiny(name)
    apply(model, "flamingo", dim_visual=DV, media_token_id=MEDIA, every=every, heads=2, dim_head=8,
          perceiver_depth=2, perceiver_heads=2, perceiver_dim_head=8, num_latents=4, max_num_media=4,
          only_attend_immediate_media=immediate)
    return model.eval()


def open_gates(model, value=1.0):
    with torch.no_grad():
        for block in model.blocks:
            if hasattr(block, "xattn"):
                block.xattn.attn_gate.fill_(value)
                block.xattn.ff_gate.fill_(value)


def condition(model, feats, ids):
    """Set the media context directly, as one forward call would (for block-level checks)."""
    extras = media_extras(model, encode_media(model, feats), ids)
    model.flamingo.media, model.flamingo.time = extras["flamingo_media"], extras["flamingo_time"]


def ids_with_images(positions, T=12, B=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 200, (B, T), generator=g)
    for row, cols in enumerate(positions):
        for c in cols:
            ids[row, c] = MEDIA
    return ids


@pytest.mark.parametrize("name", ["tiny-neox", "tiny-llama", "tiny-mpt"])
def test_equals_plain_lm_at_init(name):
    plain = tiny(name)
    model = flamingo(name, every=1)
    ids = ids_with_images([[0, 5]], T=12)
    feats = torch.randn(1, 2, 6, DV)
    with torch.no_grad():
        expected = plain(ids)
        extras = media_extras(model, encode_media(model, feats), ids)
        got = model(ids, extras=extras)
        assert torch.equal(got, expected)
        assert torch.equal(model(ids), expected)          # text only
        open_gates(model, 0.5)       # the same check fails once the gates open
        assert not torch.allclose(model(ids, extras=extras), expected, atol=1e-4)


def test_every_nth_layer_and_only_new_parts_train():
    model = flamingo("tiny-neox", every=2)
    n = model.config.n_layer
    assert [hasattr(b, "xattn") for b in model.blocks] == [(i + 1) % 2 == 0 for i in range(n)]
    names = trainable_names(model)
    assert names and all(k.startswith("perceiver.") or ".xattn." in k for k in names)
    assert all(p.requires_grad == (k in names) for k, p in model.named_parameters())


def _token_outputs(model, ids, feats):
    with torch.no_grad():
        return model(ids, extras=media_extras(model, encode_media(model, feats), ids))


@pytest.mark.parametrize("immediate", [True, False])
def test_tokens_before_any_image_see_nothing(immediate):
    model = flamingo(immediate=immediate)
    open_gates(model)
    ids = ids_with_images([[6]], T=12)
    feats = torch.randn(1, 1, 6, DV)
    a = _token_outputs(model, ids, feats)
    b = _token_outputs(model, ids, torch.randn(1, 1, 6, DV))
    assert torch.equal(a[:, :6], b[:, :6])           # before the image: independent of it
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-4)


def test_immediate_only_invariance_to_earlier_images():
    """Tokens after the last image cross-attend to the last image only: in every injected block their
    cross-attention output is bit-identical when earlier images change. The full model's logits there
    still change, through self-attention over the earlier tokens (which saw the earlier images): the
    released model behaves the same way, so that is asserted too."""
    model = flamingo(immediate=True)
    open_gates(model)
    ids = ids_with_images([[0, 4, 8]], T=14)
    feats = torch.randn(1, 3, 6, DV)
    changed = feats.clone()
    changed[:, :2] = torch.randn(1, 2, 6, DV)        # new first and second images
    x = torch.randn(1, 14, model.config.n_embd)
    with torch.no_grad():
        for block in model.blocks:
            condition(model, feats, ids)
            y1 = block.xattn(x)
            condition(model, changed, ids)
            y2 = block.xattn(x)
            assert torch.equal(y1[:, 8:], y2[:, 8:])
            assert not torch.allclose(y1[:, :8], y2[:, :8], atol=1e-5)
    a, b = _token_outputs(model, ids, feats), _token_outputs(model, ids, changed)
    assert not torch.allclose(a[:, 8:], b[:, 8:], atol=1e-5)


def test_all_previous_images_mode_sees_earlier_images():
    model = flamingo(immediate=False)
    open_gates(model)
    ids = ids_with_images([[0, 4, 8]], T=14)
    feats = torch.randn(1, 3, 6, DV)
    changed = feats.clone()
    changed[:, 0] = torch.randn(1, 6, DV)
    x = model.embed(ids)
    blk = model.blocks[0].xattn
    condition(model, feats, ids)
    y1 = blk(x)
    condition(model, changed, ids)
    y2 = blk(x)
    assert not torch.allclose(y1[:, 8:], y2[:, 8:], atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-neox", "tiny-mpt"])
def test_kv_cache_decoding_reuses_latents(name):
    model = flamingo(name)
    open_gates(model, 0.7)
    ids = ids_with_images([[1, 5]], T=10)
    media = encode_media(model, torch.randn(1, 2, 6, DV))
    with torch.no_grad():
        full = model(ids, extras=media_extras(model, media, ids))
        cache = model.new_kv_cache(1, 16)
        prompt = ids[:, :7]
        steps = [model(prompt, kv_cache=cache, extras=media_extras(model, media, prompt))[:, -1]]
        # the prompt's latents stay with the cache row, compacted to the last image
        assert cache.extras["flamingo_media"].shape[1] == 1 and cache.extras["flamingo_time"].tolist() == [[1]]
        for t in range(7, 10):
            steps.append(model(ids[:, t:t + 1], kv_cache=cache)[:, -1])
    for k, logits in enumerate(steps):
        torch.testing.assert_close(logits, full[:, 6 + k], atol=1e-5, rtol=1e-5)


def test_too_many_image_tokens_is_an_error():
    model = flamingo()
    ids = ids_with_images([[1, 3, 5]], T=8)
    extras = media_extras(model, encode_media(model, torch.randn(1, 2, 6, DV)), ids)
    with pytest.raises(ValueError, match="3 <image> tokens but only 2 images"):
        model(ids, extras=extras)


def test_bad_options_are_errors():
    from openseason.errors import ConfigError

    with pytest.raises(ConfigError, match="every 9 layers"):
        apply(tiny("tiny-llama"), "flamingo", dim_visual=DV, media_token_id=MEDIA, every=9)
    with pytest.raises(ConfigError, match="outside the embedding"):
        apply(tiny("tiny-llama"), "flamingo", dim_visual=DV, media_token_id=10_000)
    with pytest.raises(ConfigError, match="vision encoder .* or dim_visual"):
        apply(tiny("tiny-llama"), "flamingo", media_token_id=MEDIA)
    with pytest.raises(ConfigError, match="max_images applies"):
        apply(tiny("tiny-llama"), "flamingo", dim_visual=DV, media_token_id=MEDIA, max_images=2)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = flamingo("tiny-llama")
        open_gates(model, 0.5)
        model.train()
        model.gradient_checkpointing = checkpointing
        ids = ids_with_images([[0, 5]], T=12)
        torch.manual_seed(3)
        feats = torch.randn(1, 2, 6, DV)
        logits = model(ids, extras=media_extras(model, encode_media(model, feats), ids))
        torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5)
