"""Our ViT / Q-Former equal transformers' CLIP and BLIP-2 on tiny random models (converted from
save_pretrained directories) to 1e-5."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from openseason.errors import CheckpointError
from openseason.vision import VisionEncoder, load_vision_encoder, save_vision_encoder, vision_from_hf
from openseason.vision.convert import hf_blip2_projection

ATOL = 1e-5


def test_clip_vision_model_last_hidden_state_and_pooled(make_clip, pixels):
    hf, directory = make_clip("vision")
    ours = vision_from_hf(directory)
    x = pixels(size=30)
    with torch.no_grad():
        ref = hf(pixel_values=x)
        feats = ours(x)
        assert feats.shape == (2, ours.num_tokens, ours.hidden_size) == (2, 26, 32)
        torch.testing.assert_close(feats, ref.last_hidden_state, atol=ATOL, rtol=0)
        torch.testing.assert_close(ours.embed_images(x), ref.pooler_output, atol=ATOL, rtol=0)


def test_clip_penultimate_layer_and_patch_tokens_as_llava_reads_them(make_clip, pixels):
    hf, directory = make_clip("vision")
    ours = vision_from_hf(directory)
    config = dataclasses.replace(ours.config, feature_layer=-2, tokens="patch")
    llava = VisionEncoder(config)
    llava.load_state_dict(ours.state_dict())
    x = pixels(size=30)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:]
        torch.testing.assert_close(llava(x), ref, atol=ATOL, rtol=0)


def test_clip_model_image_features_through_visual_projection(make_clip, pixels):
    hf, directory = make_clip("full")
    ours = vision_from_hf(directory)
    x = pixels(size=30)
    with torch.no_grad():
        ref = hf.get_image_features(pixel_values=x)
        ref = getattr(ref, "pooler_output", ref)
        torch.testing.assert_close(ours.embed_images(x), ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(ours(x), hf.vision_model(pixel_values=x).last_hidden_state, atol=ATOL, rtol=0)


def test_blip2_vision_and_qformer_equal_transformers(make_blip2, pixels):
    hf, directory = make_blip2(num_query_tokens=32)
    ours = vision_from_hf(directory)
    assert (ours.num_tokens, ours.hidden_size) == (32, 24)
    x = pixels(size=28)
    with torch.no_grad():
        vision = hf.vision_model(pixel_values=x).last_hidden_state
        torch.testing.assert_close(ours.vit_features(x), vision, atol=ATOL, rtol=0)
        query = hf.qformer(query_embeds=hf.query_tokens.expand(2, -1, -1), encoder_hidden_states=vision,
                           encoder_attention_mask=torch.ones(vision.shape[:2], dtype=torch.long)).last_hidden_state
        torch.testing.assert_close(ours(x), query, atol=ATOL, rtol=0)
        projection = hf_blip2_projection(directory)
        projected = torch.nn.functional.linear(ours(x), projection["weight"], projection["bias"])
        image_features = hf.get_image_features(pixel_values=x).pooler_output
        torch.testing.assert_close(projected, image_features, atol=ATOL, rtol=0)


def test_blip2_other_query_counts_and_cross_attention_frequency(make_blip2, pixels):
    hf, directory = make_blip2(num_query_tokens=5, qformer={"cross_attention_frequency": 1})
    ours = vision_from_hf(directory)
    x = pixels(batch=1, size=28, seed=3)
    with torch.no_grad():
        ref = hf.get_image_features(pixel_values=x).qformer_outputs.last_hidden_state
        torch.testing.assert_close(ours(x), ref, atol=ATOL, rtol=0)
    assert ours(x).shape == (1, 5, 24)


def test_checkpoint_round_trip_is_exact(make_blip2, tmp_path, pixels):
    _, directory = make_blip2()
    ours = vision_from_hf(directory)
    save_vision_encoder(tmp_path / "enc", ours, run_card={"converted_from": str(directory)})
    loaded = load_vision_encoder(tmp_path / "enc")
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    x = pixels(size=28)
    with torch.no_grad():
        assert torch.equal(loaded(x), ours(x))
    assert loaded.config == ours.config


def test_errors_name_the_problem(make_clip, tmp_path):
    _, directory = make_clip("vision")
    with pytest.raises(CheckpointError, match="not an openseason vision encoder"):
        load_vision_encoder(directory)
    with pytest.raises(CheckpointError, match="not found"):
        load_vision_encoder(tmp_path / "nowhere")
    (tmp_path / "neox").mkdir()
    (tmp_path / "neox" / "config.json").write_text('{"model_type": "gpt_neox"}')
    with pytest.raises(CheckpointError, match="not a vision model"):
        vision_from_hf(tmp_path / "neox")


def test_wrong_image_size_is_refused(make_clip):
    _, directory = make_clip("vision")
    with pytest.raises(ValueError, match="30x30"):
        vision_from_hf(directory)(torch.zeros(1, 3, 32, 32))


def test_cli_convert_then_load(make_clip, tmp_path, pixels, capsys):
    from openseason.cli import main

    hf, directory = make_clip("full")
    assert main(["vision", "convert", str(directory), str(tmp_path / "enc")]) == 0
    assert "26 x 32 features" in capsys.readouterr().out
    x = pixels(size=30)
    with torch.no_grad():
        torch.testing.assert_close(load_vision_encoder(tmp_path / "enc")(x),
                                   hf.vision_model(pixel_values=x).last_hidden_state, atol=ATOL, rtol=0)
    assert main(["vision", "convert", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err


def test_real_photograph_end_to_end_equals_transformers_processor_and_model(make_clip):
    from sklearn.datasets import load_sample_images
    from transformers import CLIPImageProcessor

    hf, directory = make_clip("vision")
    ours = vision_from_hf(directory)
    image = load_sample_images().images[1]
    ref_pixels = CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})(
        images=image, return_tensors="pt")["pixel_values"]
    from PIL import Image
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(Image.fromarray(image)), hf(pixel_values=ref_pixels).last_hidden_state,
                                   atol=ATOL, rtol=0)


def test_bfloat16_tower_keeps_the_qformer_in_float32(make_blip2, tmp_path, pixels):
    _, directory = make_blip2()
    save_vision_encoder(tmp_path / "enc", vision_from_hf(directory))
    enc = load_vision_encoder(tmp_path / "enc", dtype=torch.bfloat16)
    assert enc.vit.patch_embed.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in enc.qformer.parameters())
    with torch.no_grad():
        out = enc(pixels(size=28).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 32, 24)
