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

VOCAB, QUERIES = 64, 32


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    # every weight random (init leaves norms at 1 and query tokens / biases at 0, hiding mapping mistakes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.dim() == 1 and p.abs().sum() == p.numel() else 0))
    return model.eval()


@pytest.fixture(scope="module")
def blip2(tmp_path_factory):
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    config = Blip2Config(
        vision_config=dict(image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=40, qkv_bias=True),
        qformer_config=dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=36,
                            cross_attention_frequency=2, encoder_hidden_size=32, vocab_size=50),
        text_config=dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                         max_position_embeddings=128),
        num_query_tokens=QUERIES, image_token_index=VOCAB - 1)
    hf = randomize(Blip2ForConditionalGeneration(config))
    root = tmp_path_factory.mktemp("blip2")
    hf.save_pretrained(root / "hf")
    hf.language_model.save_pretrained(root / "llama")
    lm = load_full_model(convert_from_hf(root / "llama", root / "ours"))
    encoder = vision_from_hf(root / "hf")
    model = apply(lm, "minigpt4", vision=VisionTower(encoder, lambda image: encoder.preprocess([image])))
    projection = hf_blip2_projection(root / "hf")
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
