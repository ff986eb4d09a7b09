"""The built-in catalog's vision-language models: vision encoders as components, lineage, licenses."""
from __future__ import annotations

import pytest

from openseason.catalog import can_use, lineage


@pytest.fixture()
def db(tmp_path):
    return tmp_path / "catalog.sqlite"


def _upstream(tree) -> dict[str, str]:
    """name -> relation of everything upstream of a lineage tree."""
    out, stack = {}, list(tree["upstream"])
    while stack:
        node = stack.pop()
        out.setdefault(node["name"], node.get("relation"))
        stack.extend(node.get("upstream") or [])
    return out


@pytest.mark.parametrize("name, parts", [
    ("MiniGPT-4", {"Vicuna": "component", "EVA-CLIP ViT-g/14": "component", "BLIP-2 Q-Former": "component",
                   "LLaMA": "finetune"}),
    ("LLaMA-Adapter V2", {"CLIP ViT-L/14": "component", "LLaMA": "adapter", "COCO Captions": "trained_on"}),
    ("LLaVA", {"Vicuna": "finetune", "CLIP ViT-L/14": "component", "LLaVA-Instruct-150K": "trained_on",
               "GPT-4": "generated_by", "COCO Captions": "derived_from"}),
    ("OpenFlamingo-3B-vitl-mpt1b", {"MPT-1B-RedPajama-200B": "component", "CLIP ViT-L/14": "component",
                                    "RedPajama": "trained_on", "Multimodal C4": "trained_on"}),
    ("OpenFlamingo-3B-vitl-mpt1b-langinstruct", {"MPT-1B-RedPajama-200B-Dolly": "component",
                                                 "databricks-dolly-15k": "trained_on"}),
    ("OpenFlamingo-4B-vitl-rpj3b", {"RedPajama-INCITE-Base-3B-v1": "component", "CLIP ViT-L/14": "component"}),
    ("OpenFlamingo-4B-vitl-rpj3b-langinstruct", {"RedPajama-INCITE-Instruct-3B-v1": "component"}),
    ("OpenFlamingo-9B-vitl-mpt7b", {"MPT-7B": "component", "CLIP ViT-L/14": "component", "LAION-2B": "trained_on"}),
    ("BLIP-2", {"EVA-CLIP ViT-g/14": "component", "BLIP-2 Q-Former": "component", "LAION-400M": "trained_on"}),
])
def test_lineage(db, name, parts):
    upstream = _upstream(lineage(name, db=db))
    for part, relation in parts.items():
        assert upstream.get(part) == relation, (part, upstream.get(part))


@pytest.mark.parametrize("name, verdict", [
    # LLaMA's research license (through Vicuna) and ChatGPT-written data
    ("MiniGPT-4", "no"), ("LLaVA", "no"), ("LLaMA-Adapter V2", "no"),
    # MIT weights on Apache-2.0 LMs and CLIP (MIT), trained on CC-BY / ODC-BY data
    ("OpenFlamingo-9B-vitl-mpt7b", "yes"), ("OpenFlamingo-4B-vitl-rpj3b", "yes"),
    ("CLIP ViT-L/14", "yes"), ("EVA-CLIP ViT-g/14", "yes"),
])
def test_commercial_verdicts(db, name, verdict):
    assert can_use(name, db=db)["verdict"] == verdict


def test_aliases_find_the_released_names(db):
    for alias, name in [("OpenFlamingo-3B", "OpenFlamingo-3B-vitl-mpt1b"), ("OpenFlamingo-4B", "OpenFlamingo-4B-vitl-rpj3b"),
                        ("Q-Former", "BLIP-2 Q-Former"), ("openai/clip-vit-large-patch14", "CLIP ViT-L/14"),
                        ("LLaMA-Adapter V2 multimodal", "LLaMA-Adapter V2")]:
        assert lineage(alias, db=db)["asset"] == name
