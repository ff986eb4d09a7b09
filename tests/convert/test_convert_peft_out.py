"""LoRA checkpoints out to Hugging Face: `openseason export-peft` (and `convert to-hf --peft`) load with
`peft.PeftModel.from_pretrained` over the converted base, and `convert to-hf` folds LoRA into weights
that transformers loads; both give our model's logits."""
from __future__ import annotations

import json

import pytest
import torch

from openseason.checkpoint import load_model, save_checkpoint
from openseason.cli import main
from openseason.config import Config
from openseason.model import GPT

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def _lora_run(tmp_path, name, tokenizer):
    """A base checkpoint and a LoRA checkpoint trained by the real finetune() (B is non-zero after it)."""
    from openseason.train import finetune

    base = GPT(Config.from_name(name))
    base.init_weights()
    save_checkpoint(tmp_path / "base", base, tokenizer=tokenizer)
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"add {i} and 2"},
                                         {"role": "assistant", "content": str(i + 2)}]} for i in range(8)]
    (data / "conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "prompt_style.json").write_text(json.dumps({"name": "plain"}))
    result = finetune(tmp_path / "base", data, "lora", tmp_path / "run", max_steps=3, lr=5e-2, micro_batch_size=4,
                      lora_targets="q,k,v,proj,mlp", lora_rank=4, progress=False, register=False, device="cpu")
    return tmp_path / "base", result["final"]


@pytest.mark.parametrize("name", ["tiny-neox", "tiny-llama"])
def test_lora_checkpoint_out_to_peft_and_merged_hf(tmp_path, tiny_tokenizer, name, capsys):
    from transformers import AutoModelForCausalLM

    base, lora = _lora_run(tmp_path, name, tiny_tokenizer)
    ours = load_model(lora).eval()
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        expected = ours(ids)

    # the PEFT folder, loaded by peft over the converted base
    assert main(["convert", "to-hf", str(base), str(tmp_path / "hf-base")]) == 0
    assert main(["export-peft", str(lora), str(tmp_path / "peft"), "--base-model", str(tmp_path / "hf-base")]) == 0
    adapter_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA"
    assert adapter_config["base_model_name_or_path"] == str(tmp_path / "hf-base")
    hf_base = AutoModelForCausalLM.from_pretrained(tmp_path / "hf-base", torch_dtype=torch.float32)
    with_adapter = peft.PeftModel.from_pretrained(hf_base, tmp_path / "peft").eval()
    with torch.no_grad():
        torch.testing.assert_close(with_adapter(ids).logits, expected, atol=1e-4, rtol=1e-4)
        with with_adapter.disable_adapter():
            assert (with_adapter(ids).logits - expected).abs().max() > 1e-3  # the adapter is not a no-op

    # `convert to-hf --peft` writes the same adapter
    assert main(["convert", "to-hf", str(lora), str(tmp_path / "peft2"), "--peft"]) == 0
    from safetensors.torch import load_file
    one, two = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("peft", "peft2"))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)

    # merged on the fly: plain weights transformers loads, with the tokenizer of the base
    assert main(["convert", "to-hf", str(lora), str(tmp_path / "hf-merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf-merged", torch_dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, expected, atol=1e-4, rtol=1e-4)
    assert (tmp_path / "hf-merged" / "tokenizer.json").is_file()
    assert not any(".lora" in k or "lora_" in k for k in load_file(tmp_path / "hf-merged" / "model.safetensors"))
    capsys.readouterr()


def test_to_hf_refuses_to_write_over_the_base_of_a_lora_checkpoint(tmp_path, tiny_tokenizer, capsys):
    base, lora = _lora_run(tmp_path, "tiny-llama", tiny_tokenizer)
    before = sorted(p.name for p in base.iterdir())
    assert main(["convert", "to-hf", str(lora), str(base)]) == 2
    assert main(["export-peft", str(lora), str(base)]) == 2
    assert "the output directory is the input directory" in capsys.readouterr().err
    assert sorted(p.name for p in base.iterdir()) == before
