"""MiniGPT-4 and LLaMA-Adapter V2 multimodal by injection: what trains, identity at init, the KV cache."""
from __future__ import annotations

import pytest
import torch

from openseason.config import Config
from openseason.model import GPT
from openseason.peft import apply, parameter_groups, trainable_names
from openseason.train.objectives.multimodal import multimodal_loss_sum

from .mm_stub import stub_tower


def tiny(name="tiny-llama", **overrides) -> GPT:
    model = GPT(Config.from_name(name, **overrides))
    model.init_weights()
    return model


def image_batch(model, rows=2, T=12, image_rows=(0,), starts=(2,), seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 500, (rows, T), generator=g)
    labels = ids.clone()
    labels[:, :T // 2] = -100
    batch = {"input_ids": ids, "labels": labels,
             "pixel_values": torch.randn(len(image_rows), 3, 16, 16, generator=g),
             "image_rows": torch.tensor(image_rows, dtype=torch.long),
             "image_starts": torch.tensor(starts, dtype=torch.long)}
    return batch


def test_inputs_embeds_path_equals_token_path():
    model = tiny()
    ids = torch.randint(0, 500, (2, 9))
    assert torch.equal(model(ids), model(None, inputs_embeds=model.embed(ids)))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-neox", "tiny-mpt"])
def test_minigpt4_only_the_projection_gets_gradients(name):
    model = apply(tiny(name), "minigpt4", vision=stub_tower())
    assert sorted(trainable_names(model)) == ["media.proj.bias", "media.proj.weight"]
    assert model.media.image_tokens == 4
    batch = image_batch(model, image_rows=(0, 1), starts=(1, 3))
    loss, n = multimodal_loss_sum(model, batch)
    assert n > 0
    loss.backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got == {"media.proj.weight", "media.proj.bias"}
    assert model.media.proj.weight.grad.abs().sum() > 0


def test_minigpt4_splices_visual_tokens_at_the_placeholders():
    model = apply(tiny(), "minigpt4", vision=stub_tower())
    batch = image_batch(model, rows=1, image_rows=(0,), starts=(3,))
    embeds, extras = model.media.inputs(model, batch["input_ids"], batch["pixel_values"], batch["image_rows"],
                                        batch["image_starts"])
    assert extras is None
    visual = model.media.visual_tokens(batch["pixel_values"])
    assert torch.equal(embeds[0, 3:7], visual[0])
    assert torch.equal(embeds[0, :3], model.embed(batch["input_ids"])[0, :3])
    assert torch.equal(embeds[0, 7:], model.embed(batch["input_ids"])[0, 7:])
    # the image changes what follows it, not what precedes it
    base = model(batch["input_ids"])
    with_image = model(batch["input_ids"], inputs_embeds=embeds)
    assert torch.allclose(base[0, :3], with_image[0, :3], atol=1e-6)
    assert not torch.allclose(base[0, 7:], with_image[0, 7:], atol=1e-4)


@pytest.mark.parametrize("mode", ["paper", "released"])
def test_adapter_v2_mm_equals_base_at_init(mode):
    base = tiny()
    model = apply(tiny(), "adapter-v2-mm", vision=stub_tower(), mode=mode, prompt_length=4, layers=1)
    model.load_state_dict(base.state_dict(), strict=False)
    batch = image_batch(model, image_rows=(0,), starts=(-1,))
    _, extras = model.media.inputs(model, batch["input_ids"], batch["pixel_values"], batch["image_rows"],
                                   batch["image_starts"])
    assert extras
    assert torch.allclose(model(batch["input_ids"], extras=extras), base(batch["input_ids"]), atol=1e-6)


def _open_gates(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate"):
                p.fill_(0.7)


@pytest.mark.parametrize("mode", ["paper", "released"])
def test_adapter_v2_mm_groups_are_disjoint_and_each_loss_trains_only_its_group(mode):
    model = apply(tiny(), "adapter-v2-mm", vision=stub_tower(), mode=mode, prompt_length=4, layers=1)
    _open_gates(model)
    groups = parameter_groups(model)
    visual = {n for n, g in groups.items() if g == "visual"}
    instruction = {n for n, g in groups.items() if g == "instruction"}
    assert visual and instruction and not visual & instruction and set(groups) == visual | instruction
    assert all(n.startswith("media.") or n.endswith("gate") for n in visual)
    if mode == "paper":
        assert "blocks.0.attn.visual_adapter.gate" in visual and "blocks.1.attn.adapter.gate" in instruction
    else:
        assert "blocks.1.attn.adapter.gate" in visual and "media.query" in visual
    assert "blocks.1.attn.adapter.prompt" in instruction and "norm_f.weight" in instruction
    assert any("v2_scale" in n for n in instruction)

    params = dict(model.named_parameters())
    # caption (image) rows: gradients only on the visual group
    caption = image_batch(model, rows=2, image_rows=(0, 1), starts=(-1, -1))
    loss, _ = multimodal_loss_sum(model, caption)
    loss.backward()
    assert all(params[n].grad is None for n in instruction)
    assert all(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in visual)
    model.zero_grad(set_to_none=True)
    # text-only instruction rows: gradients only on the instruction group
    text = {k: v for k, v in image_batch(model, rows=2).items() if k in ("input_ids", "labels")}
    loss, _ = multimodal_loss_sum(model, text)
    loss.backward()
    assert all(params[n].grad is None for n in visual)
    assert sum(params[n].grad.abs().sum() for n in instruction if params[n].grad is not None) > 0
    model.zero_grad(set_to_none=True)
    # a mixed batch: each kind of row trains its own group; both get gradients
    mixed = image_batch(model, rows=2, image_rows=(1,), starts=(-1,))
    loss, n = multimodal_loss_sum(model, mixed)
    loss.backward()
    assert params["media.proj.weight"].grad is not None and params["blocks.1.attn.adapter.prompt"].grad is not None
    # the trainable flags are back as they were
    assert all(params[n].requires_grad for n in groups)


@pytest.mark.parametrize("method,mode", [("minigpt4", None), ("adapter-v2-mm", "paper"), ("adapter-v2-mm", "released")])
def test_decoding_with_the_cache_equals_the_full_forward(method, mode):
    options = {"mode": mode, "prompt_length": 4, "layers": 1} if mode else {}
    model = apply(tiny(), method, vision=stub_tower(), **options).eval()
    _open_gates(model)
    start = 2 if method == "minigpt4" else -1
    batch = image_batch(model, rows=1, T=10, image_rows=(0,), starts=(start,))
    with torch.no_grad():
        embeds, extras = model.media.inputs(model, batch["input_ids"], batch["pixel_values"], batch["image_rows"],
                                            batch["image_starts"])
        full = model(batch["input_ids"], inputs_embeds=embeds, extras=extras)
        cache = model.new_kv_cache(1, 16)
        head = embeds[:, :7] if embeds is not None else None
        first = model(batch["input_ids"][:, :7], inputs_embeds=head, extras=extras, kv_cache=cache)
        steps = [model(batch["input_ids"][:, t:t + 1], kv_cache=cache) for t in range(7, 10)]
    assert torch.allclose(first, full[:, :7], atol=1e-5)
    assert torch.allclose(torch.cat(steps, 1), full[:, 7:], atol=1e-5)
    # a cache row without an image, appended next to one with: the extras line up with their rows
    if extras:
        other = model.new_kv_cache(1, 16)
        model(batch["input_ids"][:, :7], kv_cache=other)
        cache_a = model.new_kv_cache(1, 16)
        model(batch["input_ids"][:, :7], inputs_embeds=head, extras=extras, kv_cache=cache_a)
        cache_a.append(other, capacity=16)
        both = model(batch["input_ids"][:, 7:8].repeat(2, 1), kv_cache=cache_a)
        plain = model(batch["input_ids"][:, :8])
        assert torch.allclose(both[0], full[0, 7:8], atol=1e-5)
        assert torch.allclose(both[1], plain[0, 7:8], atol=1e-5)
