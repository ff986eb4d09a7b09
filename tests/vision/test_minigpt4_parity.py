"""MiniGPT-4's whole forward equals transformers' Blip2ForConditionalGeneration (EVA ViT + Q-Former ->
language_projection -> LLaMA, image features written over the image-token positions) on a tiny random
model: the vision side converted by openseason.vision, the LLaMA by openseason.convert, the projection
copied into our one trainable linear layer."""
from __future__ import annotations

import pytest
import torch

from openseason.checkpoint import load_full_model
from openseason.convert import convert_from_hf
from openseason.peft import apply, trainable_names
from openseason.peft.media import VisionTower
from openseason.vision import hf_blip2_projection, vision_from_hf

transformers = pytest.importorskip("transformers")

QUERIES = 32
VOCAB = 64   # LLAMA_TEXT's vocabulary in tests/vision/conftest.py; its last id is the image token


@pytest.fixture
def blip2(make_blip2, tmp_path):
    # the vision tests' tiny random BLIP-2 (every weight random), with grouped-query attention in its LLaMA
    hf, directory = make_blip2(num_query_tokens=QUERIES, text={"num_key_value_heads": 2})
    root = tmp_path
    hf.language_model.save_pretrained(root / "llama")
    lm = load_full_model(convert_from_hf(root / "llama", root / "ours"))
    encoder = vision_from_hf(directory)
    model = apply(lm, "minigpt4", vision=VisionTower(encoder, lambda image: encoder.preprocess([image])))
    projection = hf_blip2_projection(directory)
    with torch.no_grad():
        model.media.proj.weight.copy_(projection["weight"])
        model.media.proj.bias.copy_(projection["bias"])
    return hf, model.eval()


def test_whole_forward_equals_transformers_blip2(blip2):
    hf, model = blip2
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, 28, 28, generator=g)
    before, after = torch.randint(0, VOCAB - 1, (2, 5), generator=g), torch.randint(0, VOCAB - 1, (2, 9), generator=g)
    ids = torch.cat([before, torch.full((2, QUERIES), VOCAB - 1), after], dim=1)
    with torch.no_grad():
        expected = hf(pixel_values=pixels, input_ids=ids).logits
        embeds, extras = model.media.inputs(model, ids, pixels, torch.tensor([0, 1]), torch.tensor([5, 5]))
        got = model(ids, inputs_embeds=embeds, extras=extras)
    assert extras is None and model.media.image_tokens == QUERIES
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # and the image really is in there: other pixels, other logits after the image
    with torch.no_grad():
        other, _ = model.media.inputs(model, ids, pixels.flip(0), torch.tensor([0, 1]), torch.tensor([5, 5]))
        assert not torch.allclose(model(ids, inputs_embeds=other)[:, 5 + QUERIES:], got[:, 5 + QUERIES:], atol=1e-3)


def test_only_the_projection_trains(blip2):
    _, model = blip2
    assert sorted(trainable_names(model)) == ["media.proj.bias", "media.proj.weight"]
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("media.proj."))
