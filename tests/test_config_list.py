"""`openseason configs`: every named config with counts computed from the model, checked against
models really built (ours and transformers') and the Pythia paper's published sizes."""
from __future__ import annotations

import json

import pytest
import torch

from openseason.cli import main
from openseason.config import NAMED_CONFIGS, Config
from openseason.config_list import list_configs
from openseason.model import GPT


def test_every_named_config_is_listed_once():
    assert [r["name"] for r in list_configs()] == list(NAMED_CONFIGS)


@pytest.mark.parametrize("name", ["tiny-neox", "tiny-llama", "tiny-mpt"])
def test_counts_are_those_of_the_built_model(name):
    (row,) = [r for r in list_configs(match=name) if r["name"] == name]
    model = GPT(Config.from_name(name))
    assert row["parameters"] == sum(p.numel() for p in model.parameters())


def test_pythia_counts_match_the_paper_and_transformers():
    """Pythia (Biderman et al. 2023, table 1): 70,426,624 total, 18,915,328 non-embedding for 70M."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    row = next(r for r in list_configs(match="pythia-70m") if r["name"] == "pythia-70m")
    assert (row["parameters"], row["non_embedding"]) == (70_426_624, 18_915_328)
    cfg = Config.from_name("pythia-160m")
    hf = GPTNeoXConfig(vocab_size=cfg.padded_vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
                       num_attention_heads=cfg.n_head, intermediate_size=cfg.intermediate_size,
                       rotary_pct=cfg.rotary_percentage, max_position_embeddings=cfg.block_size,
                       tie_word_embeddings=False)
    with torch.device("meta"):
        theirs = sum(p.numel() for p in GPTNeoXForCausalLM(hf).parameters())
    assert next(r for r in list_configs(match="pythia-160m") if r["name"] == "pythia-160m")["parameters"] == theirs


def test_cli_table_json_and_filters(capsys):
    assert main(["configs", "tiny-", "--family", "llama"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "family", "params"]
    assert [ln.split()[0] for ln in lines[1:]] == ["tiny-llama"]
    assert "158K" in lines[1]
    assert main(["configs", "pythia", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["family"] for r in rows} == {"gpt_neox"} and len(rows) == 20
    assert main(["configs", "--family", "mpt", "pythia"]) == 2
    assert "no named config matches family 'mpt' and 'pythia'" in capsys.readouterr().err
