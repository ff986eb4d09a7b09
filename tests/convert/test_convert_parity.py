"""Parity against transformers: HF model -> from-hf -> our logits, and ours -> to-hf -> HF logits (fp32, CPU)."""
from __future__ import annotations

import json

import pytest
import torch

from openseason.checkpoint import load_model, read_run_card
from openseason.convert import convert_from_hf, convert_to_hf

ATOL = 1e-4


def _ids(vocab: int, batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _our_logits(ckpt, ids):
    model = load_model(ckpt)
    with torch.no_grad():
        return model(ids)


def _round_trip(hf_model, hf_dir, tmp_path, vocab):
    """from-hf, compare logits; to-hf, load with transformers, compare again. Returns the checkpoint."""
    from transformers import AutoModelForCausalLM

    ids = _ids(vocab)
    expected = _hf_logits(hf_model, ids)
    ckpt = convert_from_hf(hf_dir, tmp_path / "ours")
    ours = _our_logits(ckpt, ids)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)

    back_dir = convert_to_hf(ckpt, tmp_path / "back")
    back, info = AutoModelForCausalLM.from_pretrained(back_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert type(back).__name__ == type(hf_model).__name__
    torch.testing.assert_close(_hf_logits(back.eval(), ids), expected, atol=ATOL, rtol=0)
    return ckpt


NEOX_VARIANTS = {
    # head_size 24 with rotary_pct 0.25 rotates 6 dims: not a power of two
    "pct0.25-parallel-hs24": dict(rotary_pct=0.25, use_parallel_residual=True),
    "pct0.25-sequential-hs24": dict(rotary_pct=0.25, use_parallel_residual=False),
    "pct1.0-parallel-hs12": dict(rotary_pct=1.0, use_parallel_residual=True, num_attention_heads=4),
    "pct1.0-sequential-hs12": dict(rotary_pct=1.0, use_parallel_residual=False, num_attention_heads=4),
    "pct0.5-tanh-gelu-base500": dict(rotary_pct=0.5, rotary_emb_base=500.0, hidden_act="gelu_new"),
}


@pytest.mark.parametrize("variant", sorted(NEOX_VARIANTS))
def test_gpt_neox_parity(variant, make_neox, tmp_path):
    hf_model, hf_dir = make_neox(**NEOX_VARIANTS[variant])
    ckpt = _round_trip(hf_model, hf_dir, tmp_path, 96)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["family"] == "gpt_neox"
    assert config["parallel_residual"] == NEOX_VARIANTS[variant]["use_parallel_residual"] \
        if "use_parallel_residual" in NEOX_VARIANTS[variant] else True
    assert config["rotary_percentage"] == NEOX_VARIANTS[variant]["rotary_pct"]


LLAMA_VARIANTS = {
    "gqa": dict(num_attention_heads=4, num_key_value_heads=2),
    "mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "mqa-tied": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True),
    "gqa-tied-theta-headdim": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                   head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
}


@pytest.mark.parametrize("variant", sorted(LLAMA_VARIANTS))
def test_llama_parity(variant, make_llama, tmp_path):
    hf_model, hf_dir = make_llama(**LLAMA_VARIANTS[variant])
    ckpt = _round_trip(hf_model, hf_dir, tmp_path, 96)
    config = json.loads((ckpt / "config.json").read_text())
    settings = LLAMA_VARIANTS[variant]
    assert config["family"] == "llama" and config["add_bos_token"] is True
    assert config["n_query_groups"] == settings["num_key_value_heads"]
    assert config["tie_embeddings"] == settings.get("tie_word_embeddings", False)
    if "rope_parameters" in settings:
        assert config["rope_base"] == 500000.0 and config["head_size"] == 16
    if config["tie_embeddings"]:
        from safetensors import safe_open

        with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
            assert "lm_head.weight" not in f.keys()


def test_sharded_safetensors_in_and_out(make_llama, tmp_path):
    hf_model, hf_dir = make_llama(save_kwargs={"max_shard_size": "20KB"})
    assert (hf_dir / "model.safetensors.index.json").exists()
    ids = _ids(96)
    ckpt = convert_from_hf(hf_dir, tmp_path / "ours", max_shard_bytes=16 * 1024)
    assert (ckpt / "model.safetensors.index.json").exists() and not (ckpt / "model.safetensors").exists()
    torch.testing.assert_close(_our_logits(ckpt, ids), _hf_logits(hf_model, ids), atol=ATOL, rtol=0)

    from transformers import AutoModelForCausalLM

    back_dir = convert_to_hf(ckpt, tmp_path / "back", max_shard_bytes=16 * 1024)
    assert len(list(back_dir.glob("model-*-of-*.safetensors"))) > 1
    back = AutoModelForCausalLM.from_pretrained(back_dir).eval()
    torch.testing.assert_close(_hf_logits(back, ids), _hf_logits(hf_model, ids), atol=ATOL, rtol=0)


@pytest.mark.parametrize("shards", [1, 3])
def test_pytorch_bin_with_stale_buffers(shards, make_neox, bin_writer, tmp_path):
    """pytorch_model*.bin as transformers 4 wrote it, with the buffers old GPT-NeoX versions saved; the
    single file holds torch's state_dict() names (`lm_head.weight`, not the files' `embed_out.weight`)."""
    hf_model, hf_dir = make_neox(use_parallel_residual=False)
    stale = {}
    for i in range(2):
        prefix = f"gpt_neox.layers.{i}.attention."
        stale[prefix + "bias"] = torch.tril(torch.ones(64, 64, dtype=torch.bool)).view(1, 1, 64, 64)
        stale[prefix + "masked_bias"] = torch.tensor(-1e9)
        stale[prefix + "rotary_emb.inv_freq"] = torch.ones(3)
    state = {k: v.clone() for k, v in hf_model.state_dict().items()} if shards == 1 else None
    bin_writer(hf_dir, shards=shards, extra=stale, state=state)
    assert not list(hf_dir.glob("*.safetensors"))
    ids = _ids(96)
    ckpt = convert_from_hf(hf_dir, tmp_path / "ours")
    torch.testing.assert_close(_our_logits(ckpt, ids), _hf_logits(hf_model, ids), atol=ATOL, rtol=0)
    assert not list(ckpt.glob("*.bin")), "we never write pickles"


def test_pythia_style_files(make_neox, tiny_tokenizer, tmp_path):
    """Released Pythia files: top-level rotary_pct/rotary_emb_base, `embed_out.weight`, a vocab padded past
    the tokenizer's, and tokenizer files next to them."""
    assert tiny_tokenizer.vocab_size < 528
    hf_model, hf_dir = make_neox(vocab_size=528, tokenizer=tiny_tokenizer)
    from safetensors import safe_open

    with safe_open(str(hf_dir / "model.safetensors"), "pt") as f:
        assert "embed_out.weight" in f.keys()
    cfg = json.loads((hf_dir / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg.update(rotary_pct=rope["partial_rotary_factor"], rotary_emb_base=rope["rope_theta"],
               transformers_version="4.24.0")
    (hf_dir / "config.json").write_text(json.dumps(cfg))

    ids = _ids(tiny_tokenizer.vocab_size)
    ckpt = convert_from_hf(hf_dir, tmp_path / "ours")
    config = json.loads((ckpt / "config.json").read_text())
    assert (config["vocab_size"], config["padded_vocab_size"]) == (tiny_tokenizer.vocab_size, 528)
    assert config["rotary_percentage"] == 0.25 and config["add_bos_token"] is False
    assert config["eos_token_id"] == tiny_tokenizer.eos_id
    assert (ckpt / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()
    torch.testing.assert_close(_our_logits(ckpt, ids), _hf_logits(hf_model, ids), atol=ATOL, rtol=0)

    card = read_run_card(ckpt)
    assert card["source"]["architecture"] == "GPTNeoXForCausalLM"
    assert card["source"]["path"] == str(hf_dir.resolve())

    from transformers import AutoModelForCausalLM, AutoTokenizer

    back_dir = convert_to_hf(ckpt, tmp_path / "back")
    back = AutoModelForCausalLM.from_pretrained(back_dir).eval()
    torch.testing.assert_close(_hf_logits(back, ids), _hf_logits(hf_model, ids), atol=ATOL, rtol=0)
    text = "The quick brown fox"
    assert AutoTokenizer.from_pretrained(back_dir)(text)["input_ids"] == tiny_tokenizer.encode(text)


def test_dtype_cast(make_llama, tmp_path):
    _hf_model, hf_dir = make_llama()
    ckpt = convert_from_hf(hf_dir, tmp_path / "ours", dtype="bfloat16")
    model = load_model(ckpt)
    assert model.embed.weight.dtype == torch.bfloat16
    back = convert_to_hf(ckpt, tmp_path / "back", dtype="float32")
    assert json.loads((back / "config.json").read_text())["torch_dtype"] == "float32"
