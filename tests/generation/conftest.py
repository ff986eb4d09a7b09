"""Fixtures for the generation tests: a tokenizer trained on the spot and tiny random transformers
models converted with the production converter (session-scoped: built once)."""
from __future__ import annotations

import pytest
import torch

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3,
         "Instruction: add 2 and 3. Response: 5. ### End",
         "Below is an instruction that describes a task. Write a response that appropriately completes it.",
         "café déjà vu naïve — 日本語のテキスト 😀 émigré", "0123456789 + - * / = ? ! , ."] * 20


@pytest.fixture(scope="session")
def gen_tokenizer():
    """Byte-level BPE with 512 tokens (the tiny models' vocabulary); <|endoftext|> is EOS."""
    from openseason.tokenizer import train_bpe

    return train_bpe(TEXTS, vocab_size=512)


def _spread_weights(model, std: float) -> None:
    """Wider random weights than the 0.02 default give logits with clear winners, so greedy choices do
    not hinge on float rounding differences between two implementations."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, std)
            elif "norm" in name or "layernorm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.05)


def _hf_pair(tmp_path_factory, gen_tokenizer, kind: str):
    transformers = pytest.importorskip("transformers")
    from openseason.convert import convert_from_hf

    torch.manual_seed(1234)
    if kind == "neox":
        hf_config = transformers.GPTNeoXConfig(
            vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
            max_position_embeddings=256, rotary_pct=0.25, use_parallel_residual=True, bos_token_id=0,
            eos_token_id=0)
        hf = transformers.GPTNeoXForCausalLM(hf_config)
    else:
        hf_config = transformers.LlamaConfig(
            vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=176, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1,
            eos_token_id=0)
        hf = transformers.LlamaForCausalLM(hf_config)
    _spread_weights(hf, 0.15)
    hf.eval()
    root = tmp_path_factory.mktemp(f"gen-{kind}")
    hf.save_pretrained(root / "hf")
    gen_tokenizer.save(root / "hf")
    ckpt = convert_from_hf(root / "hf", root / "ckpt")
    return hf, ckpt


@pytest.fixture(scope="session")
def neox_pair(tmp_path_factory, gen_tokenizer):
    """(transformers GPTNeoXForCausalLM, our converted checkpoint directory) with identical weights."""
    return _hf_pair(tmp_path_factory, gen_tokenizer, "neox")


@pytest.fixture(scope="session")
def llama_pair(tmp_path_factory, gen_tokenizer):
    """(transformers LlamaForCausalLM with grouped-query attention, our converted checkpoint)."""
    return _hf_pair(tmp_path_factory, gen_tokenizer, "llama")


@pytest.fixture(scope="session", params=["neox", "llama"])
def pair(request):
    return request.getfixturevalue(f"{request.param}_pair")


@pytest.fixture(scope="session")
def llm(neox_pair):
    from openseason import LLM

    return LLM.load(neox_pair[1], device="cpu")
