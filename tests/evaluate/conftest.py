"""A tiny random transformers GPT-NeoX model and the same weights as an openseason checkpoint."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory, tiny_tokenizer):
    """(HF model directory, transformers model, our checkpoint directory) with identical weights."""
    transformers = pytest.importorskip("transformers")
    from openseason.convert import convert_from_hf

    torch.manual_seed(7)
    config = transformers.GPTNeoXConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=256, max_position_embeddings=64, rotary_pct=0.25,
                                        bos_token_id=0, eos_token_id=0)
    hf = transformers.GPTNeoXForCausalLM(config)
    with torch.no_grad():  # wider weights: a less uniform distribution makes the comparison meaningful
        for p in hf.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.1)
    hf.eval()
    root = tmp_path_factory.mktemp("eval-model")
    hf.save_pretrained(root / "hf")
    tiny_tokenizer.save(root / "hf")
    ckpt = convert_from_hf(root / "hf", root / "ckpt")
    return root / "hf", hf, ckpt
