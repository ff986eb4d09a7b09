"""Fixtures for the vision tests: tiny random CLIP and BLIP-2 models written by transformers'
save_pretrained (nothing from the Hub), with every weight random (transformers' init leaves norms at
1 and biases and BLIP-2's query tokens at 0, which would hide a mapping mistake)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.dim() == 1 and p.abs().sum() == p.numel() else 0))
    return model.eval()


CLIP_VISION = dict(image_size=30, patch_size=6, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                   intermediate_size=48)
BLIP2_VISION = dict(image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=40, qkv_bias=True)
BLIP2_QFORMER = dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=4, intermediate_size=36,
                     cross_attention_frequency=2, encoder_hidden_size=32, vocab_size=50)
LLAMA_TEXT = dict(model_type="llama", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=48, max_position_embeddings=64)


@pytest.fixture
def make_clip(tmp_path):
    """make_clip(kind="vision"|"full", **vision overrides) -> (hf model, saved directory)."""
    def make(kind="vision", name=None, **overrides):
        from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

        vision = CLIPVisionConfig(**{**CLIP_VISION, **overrides})
        if kind == "vision":
            model = CLIPVisionModel(vision)
        else:
            text = dict(vocab_size=64, hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=40, max_position_embeddings=16)
            model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision.to_dict(), projection_dim=20))
        randomize(model)
        directory = tmp_path / (name or f"clip-{kind}")
        model.save_pretrained(directory)
        return model, directory
    return make


@pytest.fixture
def make_blip2(tmp_path):
    """make_blip2(num_query_tokens=32, text=LLAMA_TEXT overrides, **vision overrides) -> (hf model, dir).
    The text model is a tiny LLaMA (the MiniGPT-4 parity test reuses this fixture)."""
    def make(name="blip2", num_query_tokens=32, text=None, qformer=None, **overrides):
        from transformers import Blip2Config, Blip2ForConditionalGeneration

        config = Blip2Config(vision_config={**BLIP2_VISION, **overrides},
                             qformer_config={**BLIP2_QFORMER, **(qformer or {})},
                             text_config={**LLAMA_TEXT, **(text or {})}, num_query_tokens=num_query_tokens,
                             image_token_index=LLAMA_TEXT["vocab_size"] - 1)
        model = randomize(Blip2ForConditionalGeneration(config))
        directory = tmp_path / name
        model.save_pretrained(directory)
        return model, directory
    return make


@pytest.fixture
def pixels():
    def make(batch=2, size=30, seed=0):
        return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return make
