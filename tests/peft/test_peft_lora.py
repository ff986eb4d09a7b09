"""LoRA: identity at init, sub-block targets of the fused qkv, merge, and PEFT-format parity with peft."""
from __future__ import annotations

import json

import pytest
import torch

from openseason.checkpoint import save_checkpoint
from openseason.config import Config
from openseason.linear import linear
from openseason.model import GPT
from openseason.peft import apply, count_trainable, export_peft, merge


def tiny(name: str) -> GPT:
    model = GPT(Config.from_name(name))
    model.init_weights()
    return model


def randomize_lora(model, std=0.05):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora." in name:
                p.normal_(std=std)


@pytest.mark.parametrize("name", ["tiny-neox", "tiny-llama"])
def test_lora_identity_at_init_and_counts(name):
    model = tiny(name)
    ids = torch.randint(0, 512, (2, 9))
    with torch.no_grad():
        before = model(ids)
    apply(model, "lora", rank=4, alpha=8, targets=["q", "v", "proj", "mlp", "lm_head"])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), before)
    cfg = model.config
    kv = cfg.n_query_groups * cfg.head_size
    per_layer = 4 * (cfg.n_embd + cfg.n_head * cfg.head_size)       # q: A [4, C] + B [q_size, 4]
    per_layer += 4 * (cfg.n_embd + kv)                               # v
    per_layer += 4 * (cfg.n_head * cfg.head_size + cfg.n_embd)       # attention output
    mlp = [(cfg.n_embd, cfg.intermediate_size), (cfg.intermediate_size, cfg.n_embd)]
    if cfg.mlp_class == "LLaMAMLP":
        mlp.insert(0, (cfg.n_embd, cfg.intermediate_size))
    per_layer += sum(4 * (i + o) for i, o in mlp)
    head = 4 * (cfg.n_embd + cfg.padded_vocab_size)
    assert count_trainable(model) == cfg.n_layer * per_layer + head


def test_q_target_touches_only_query_rows():
    model = tiny("tiny-llama")
    apply(model, "lora", rank=2, alpha=2, targets="q")
    randomize_lora(model)
    qkv = model.blocks[0].attn.qkv
    x = torch.randn(3, model.config.n_embd)
    with torch.no_grad():
        delta = qkv(x) - linear(x, qkv.weight, qkv.bias)   # the base product, by the same library
    q_size = model.config.n_head * model.config.head_size
    assert delta[:, :q_size].abs().max() > 1e-4
    assert delta[:, q_size:].abs().max() == 0


@pytest.mark.parametrize("name", ["tiny-neox", "tiny-llama"])
@pytest.mark.parametrize("targets", [["q", "k", "v", "proj", "mlp", "lm_head"], ["qkv"], ["k"]])
def test_merge_gives_same_logits(name, targets):
    model = tiny(name)
    apply(model, "lora", rank=4, alpha=16, targets=targets)
    randomize_lora(model)
    ids = torch.randint(0, 512, (2, 11))
    with torch.no_grad():
        adapted = model(ids)
        merge(model)
        merged = model(ids)
    assert not any(".lora." in k for k in model.state_dict())
    assert set(model.state_dict()) == set(tiny(name).state_dict())
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["tiny-neox", "tiny-llama"])
@pytest.mark.parametrize("targets", [["q", "v"], ["q", "k", "v", "proj", "mlp", "lm_head"], ["qkv", "mlp"]])
def test_peft_export_matches_peft(tmp_path, tiny_tokenizer, name, targets):
    convert = pytest.importorskip("openseason.convert")
    if not hasattr(convert, "convert_to_hf"):
        pytest.skip("openseason.convert.convert_to_hf is not available yet")
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    model = tiny(name)
    save_checkpoint(tmp_path / "base", model, tokenizer=tiny_tokenizer)
    convert.convert_to_hf(tmp_path / "base", tmp_path / "hf")
    apply(model, "lora", rank=4, alpha=8, targets=targets)
    randomize_lora(model, std=0.1)
    export_peft(model, tmp_path / "peft", base_model_name_or_path=str(tmp_path / "hf"))
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["peft_type"] == "LORA"

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32)
    hf_lora = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    ids = torch.randint(0, 512, (2, 13))
    model.eval()
    with torch.no_grad():
        ours = model(ids)
        theirs = hf_lora(ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    with torch.no_grad(), hf_lora.disable_adapter():
        plain = hf_lora(ids).logits
    assert (plain - ours).abs().max() > 1e-3  # the adapter really changes the logits
