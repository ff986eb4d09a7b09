"""The whole language side against the released code: a tiny random transformers LM made a Flamingo LM by
OpenFlamingo's own `FlamingoLMMixin.init_flamingo`, and the same LM converted to ours with `flamingo`
injected, the released tensors loaded through `load_open_flamingo_state`: logits equal to 1e-5 on rows
with 0, 1 and 3 images, every 1 and every 2 layers."""
from __future__ import annotations

import pytest
import torch

from openseason.checkpoint import load_model
from openseason.convert import convert_from_hf
from openseason.convert.open_flamingo import load_open_flamingo_state
from openseason.peft import apply
from openseason.peft.flamingo import encode_media, media_extras

transformers = pytest.importorskip("transformers")

DV, MEDIA, VOCAB = 16, 9, 96


def hf_model(family: str, tmp_path):
    torch.manual_seed(0)
    if family == "llama":
        cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64)
        model, layers = transformers.LlamaForCausalLM(cfg), "model.layers"
    else:
        cfg = transformers.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                         intermediate_size=48, max_position_embeddings=64, rotary_pct=0.25)
        model, layers = transformers.GPTNeoXForCausalLM(cfg), "gpt_neox.layers"
    model.eval().save_pretrained(tmp_path / "hf")
    return model, layers, convert_from_hf(tmp_path / "hf", tmp_path / "ours")


def randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 and p.numel() > 1 else 0.0))


@pytest.mark.parametrize("family,every", [("llama", 1), ("gpt_neox", 2)])
def test_flamingo_lm_equals_released(family, every, open_flamingo_src, tmp_path):
    src = open_flamingo_src
    theirs, layers_attr, ckpt = hf_model(family, tmp_path)
    src.utils.extend_instance(theirs, src.flamingo_lm.FlamingoLMMixin)
    theirs.set_decoder_layers_attr_name(layers_attr)
    theirs.init_flamingo(media_token_id=MEDIA, lang_hidden_size=32, vis_hidden_size=DV,
                         cross_attn_every_n_layers=every, gradient_checkpointing=False)
    perceiver = src.helpers.PerceiverResampler(dim=DV, depth=2, num_latents=4, max_num_media=3)
    randomize(theirs.gated_cross_attn_layers)
    randomize(perceiver)
    released = {f"lang_encoder.gated_cross_attn_layers.{k}": v for k, v in theirs.gated_cross_attn_layers.state_dict().items()}
    released.update({f"perceiver.{k}": v for k, v in perceiver.state_dict().items()})

    ours = load_model(ckpt).eval()
    apply(ours, "flamingo", dim_visual=DV, media_token_id=MEDIA, every=every, perceiver_depth=2, num_latents=4,
          max_num_media=3)     # heads 8, dim_head 64: what init_flamingo builds
    load_open_flamingo_state(ours, released)

    ids = torch.randint(10, VOCAB, (3, 12), generator=torch.Generator().manual_seed(2))
    ids[1, 4] = MEDIA
    ids[2, [0, 5, 9]] = MEDIA
    features = torch.randn(3, 3, 1, 6, DV)
    with torch.no_grad():
        latents = perceiver(features)
        for layer in theirs._get_decoder_layers():
            layer.condition_vis_x(latents)
        want = theirs(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        theirs.clear_conditioned_layers()
        got = ours(ids, extras=media_extras(ours, encode_media(ours, features), ids))
        plain = ours(ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[0], plain[0])   # no image in row 0: only the gated FF, as with no media
    assert not torch.allclose(got[2], plain[2], atol=1e-3)
