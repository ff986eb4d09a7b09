"""PEFT on MPT (ALiBi): adapter prompt keys get no positional bias, identity at init, KV cache; and a tiny
MPT checkpoint finetuned with LoRA and adapter-v2 through `openseason.train.finetune`, then `LLM`."""
from __future__ import annotations

import json
import math

import pytest
import torch

from openseason.checkpoint import save_checkpoint
from openseason.config import Config
from openseason.model import GPT, alibi_bias, alibi_slopes
from openseason.peft import apply


def tiny(name="tiny-mpt") -> GPT:
    torch.manual_seed(0)
    m = GPT(Config.from_name(name))
    m.init_weights()
    return m.eval()


def _reference(attn, x):
    """ALiBi attention plus the gated prompt term, per head: the prompt scores carry no bias, the
    prompt keys and values are clipped like every key and value."""
    cfg = attn.config
    nh, hs, clip = cfg.n_head, cfg.head_size, cfg.clip_qkv
    W = attn.qkv.weight.detach()
    fix = (lambda t: t.clamp(-clip, clip)) if clip else (lambda t: t)
    q, k, v = fix(x @ W.T).split(nh * hs, -1)
    _, pk, pv = fix(attn.adapter.prompt.detach() @ W.T).split(nh * hs, -1)
    slopes = alibi_slopes(nh, cfg.alibi_bias_max)
    gate = attn.adapter.gate.detach().view(nh)
    B, T, _ = x.shape
    dist = torch.arange(T)[None, :] - torch.arange(T)[:, None]
    out = torch.zeros(B, T, nh * hs)
    for h in range(nh):
        s = slice(h * hs, (h + 1) * hs)
        scores = q[..., s] @ k[..., s].transpose(-1, -2) / math.sqrt(hs) + slopes[h] * dist
        scores = scores.masked_fill(dist > 0, float("-inf"))
        prompt = torch.softmax(q[..., s] @ pk[:, s].T / math.sqrt(hs), -1) @ pv[:, s]
        out[..., s] = torch.softmax(scores, -1) @ v[..., s] + math.tanh(gate[h]) * prompt
    return out @ attn.proj.weight.detach().T


@pytest.mark.parametrize("name", ["tiny-mpt", "tiny-mpt-clip"])
def test_adapter_prompt_gets_no_positional_bias(name):
    model = tiny(name)
    apply(model, "adapter", prompt_length=4, layers=model.config.n_layer)
    attn = model.blocks[1].attn
    with torch.no_grad():
        attn.adapter.gate.copy_(torch.linspace(-1.5, 2.0, model.config.n_head).view(1, -1, 1, 1))
        attn.adapter.prompt.normal_()
    x = torch.randn(2, 8, model.config.n_embd)
    none = model.rope_cos.new_zeros(1, 1, 8, 0)
    with torch.no_grad():
        bias = alibi_bias(model.config, model.full_mask(None, 2, 8, 0, x.device), 0, None, torch.float32)
        ours = attn(x, none, none, bias)
        torch.testing.assert_close(ours, _reference(attn, x), atol=1e-5, rtol=1e-4)
        attn.adapter.gate.zero_()
        assert (attn(x, none, none, bias) - ours).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["lora", "adapter", "adapter-v2"])
def test_identity_at_init_and_kv_cache(method):
    model = tiny()
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = model(ids)
        apply(model, method, **({"prompt_length": 3, "layers": 2} if "adapter" in method else {}))
        torch.testing.assert_close(model(ids), before, atol=1e-6, rtol=1e-6)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
        full = model(ids)
        cache = model.new_kv_cache(2, 16)
        steps = [model(ids[:, :7], kv_cache=cache)] + [model(ids[:, t:t + 1], kv_cache=cache) for t in range(7, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["lora", "adapter-v2"])
def test_finetune_then_llm_generates(method, tmp_path, tiny_tokenizer):
    from openseason import LLM
    from openseason.train.finetune import finetune

    base = save_checkpoint(tmp_path / "base", tiny(), tokenizer=tiny_tokenizer)
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "conversations.jsonl", "w") as f:
        for i in range(16):
            f.write(json.dumps({"id": str(i), "messages": [{"role": "user", "content": f"add {i} and 2"},
                                                             {"role": "assistant", "content": str(i + 2)}]}) + "\n")
    (data / "prompt_style.json").write_text(json.dumps({"name": "plain"}))
    options = {"adapter_layers": 1, "adapter_prompt_length": 3} if method == "adapter-v2" else {}
    result = finetune(base, data, method, tmp_path / "run", max_steps=3, micro_batch_size=2, lr=1e-2,
                      progress=False, register=False, **options)
    llm = LLM.load(result["final"], device="cpu")
    assert llm.config.alibi and llm.config.family == "mpt"
    assert isinstance(llm.generate("add 1 and 2\n\n", max_new_tokens=4), str)
