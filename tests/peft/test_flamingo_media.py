"""Flamingo's front-end (model.media) with a stand-in tower: batches with 0, 1 and 3 images per row, and
LLM.generate with several images per prompt through the one engine, the images encoded once per
request and reused by every decode step from the KV cache."""
from __future__ import annotations

import copy

import pytest
import torch

from openseason.config import Config
from openseason.data.interleaved import add_media_tokens
from openseason.generation.llm import LLM
from openseason.model import GPT
from openseason.peft import apply
from openseason.peft.flamingo import encode_media, media_extras

from .mm_stub import stub_tower


@pytest.fixture
def flamingo(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    media, eoc = add_media_tokens(tok)
    torch.manual_seed(0)
    model = GPT(Config.from_name("tiny-llama"))
    model.init_weights()
    apply(model, "flamingo", vision=stub_tower(), media_token_id=media, every=1, heads=2, dim_head=8,
          perceiver_depth=1, perceiver_heads=2, perceiver_dim_head=8, num_latents=3, max_images=4,
          token_ids=[media, eoc])
    with torch.no_grad():
        for block in model.blocks:
            block.xattn.attn_gate.fill_(1.0)
            block.xattn.ff_gate.fill_(0.5)
    return model.eval(), tok, media


def test_inputs_rows_with_0_1_3_images(flamingo):
    model, _, media = flamingo
    ids = torch.randint(5, 300, (3, 12), generator=torch.Generator().manual_seed(1))
    slots = {1: [4], 2: [0, 5, 9]}
    for row, cols in slots.items():
        ids[row, cols] = media
    pixels = torch.randn(4, 3, 16, 16)
    # images listed out of order: the front-end orders each row's images by slot
    rows, starts = torch.tensor([2, 1, 2, 2]), torch.tensor([9, 4, 0, 5])
    with torch.no_grad():
        embeds, extras = model.media.inputs(model, ids, pixels, rows, starts)
        got = model(ids, inputs_embeds=embeds, extras=extras)
        feats = model.media.tower(pixels)
        grouped = torch.zeros(3, 3, *feats.shape[1:])
        grouped[1, 0], grouped[2, 0], grouped[2, 1], grouped[2, 2] = feats[1], feats[2], feats[3], feats[0]
        want = model(ids, extras=media_extras(model, encode_media(model, grouped), ids))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(embeds, model.embed(ids))         # the slots hold the <image> token's row
    with pytest.raises(ValueError, match="at most 4"):
        model.media.inputs(model, ids, torch.randn(5, 3, 16, 16), torch.tensor([0] * 5), torch.arange(5))


def _greedy_without_cache(model, ids, pixels, starts, n, vocab):
    """Reference: recompute the whole sequence (images included) at every step; like the engine, never
    pick an id the tokenizer cannot decode (rows past its `vocab`)."""
    ids = torch.tensor([ids])
    out = []
    for _ in range(n):
        with torch.no_grad():
            embeds, extras = model.media.inputs(model, ids, pixels, torch.zeros(len(starts), dtype=torch.long),
                                                torch.tensor(starts))
            nxt = int(model(ids, inputs_embeds=embeds, extras=extras)[0, -1, :vocab].argmax())
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return out


def test_generate_with_images_encodes_them_once(flamingo):
    model, tok, media = flamingo
    llm = LLM(model, tok)
    prompts, medias = [], []
    for k, n_images in enumerate((3, 1)):
        ids = [media] + tok.encode(" The quick") + [media] * (n_images - 1) + tok.encode(f" fox {k}")
        starts = [i for i, t in enumerate(ids) if t == media]
        prompts.append(ids)
        medias.append([(torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(10 * k + j)), s)
                       for j, s in enumerate(starts)])
    calls = []
    hook = model.media.tower.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    try:
        alone = [llm.complete(p, media=m, max_new_tokens=6, ignore_eos=True).token_ids for p, m in zip(prompts, medias)]
        assert calls == [3, 1]                        # each prompt's images once, not once per step
        together = [c.token_ids for c in llm.complete(prompts, media=medias, max_new_tokens=6, ignore_eos=True)]
    finally:
        hook.remove()
    assert together == alone
    for p, m, got in zip(prompts, medias, alone):
        pixels = torch.stack([px for px, _ in m])
        assert got == _greedy_without_cache(model, p, pixels, [s for _, s in m], 6, tok.vocab_size)
    # the images matter: other pictures, other continuation (the gates are open)
    other = [(torch.randn(3, 16, 16), s) for _, s in medias[0]]
    assert llm.complete(prompts[0], media=other, max_new_tokens=6, ignore_eos=True).token_ids != alone[0]


def test_all_images_mode_batches_requests_with_different_image_counts(tiny_tokenizer):
    from openseason.errors import ConfigError

    tok = copy.deepcopy(tiny_tokenizer)
    media, eoc = add_media_tokens(tok)
    model = GPT(Config.from_name("tiny-neox"))
    model.init_weights()
    with pytest.raises(ConfigError, match="needs max_images"):
        apply(model, "flamingo", vision=stub_tower(), media_token_id=media, only_attend_immediate_media=False)
    apply(model, "flamingo", vision=stub_tower(), media_token_id=media, heads=2, dim_head=8, perceiver_depth=1,
          num_latents=3, max_images=3, only_attend_immediate_media=False)
    with torch.no_grad():
        for block in model.blocks:
            block.xattn.attn_gate.fill_(1.0)
    llm = LLM(model.eval(), tok)
    prompts = [[media, 40, media, 41, 42], [media, 43, 44]]
    medias = [[(torch.randn(3, 16, 16), 0), (torch.randn(3, 16, 16), 2)], [(torch.randn(3, 16, 16), 0)]]
    alone = [llm.complete(p, media=m, max_new_tokens=4, ignore_eos=True).token_ids for p, m in zip(prompts, medias)]
    together = [c.token_ids for c in llm.complete(prompts, media=medias, max_new_tokens=4, ignore_eos=True)]
    assert together == alone
    for p, m, got in zip(prompts, medias, alone):
        assert got == _greedy_without_cache(model, p, torch.stack([px for px, _ in m]), [s for _, s in m], 4,
                                            tok.vocab_size)
