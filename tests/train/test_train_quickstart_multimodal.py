"""A reduced `quickstart --multimodal`: every stage runs through the public functions and the report,
examples.png and checkpoints are there; the text twins are what the LM is pretrained on. (The accuracy
of the full run is in BENCHMARKS.md: a reduced run is too short to learn the tasks.)"""
from __future__ import annotations

import json

import pytest

from openseason.errors import OpenseasonError
from openseason.train.quickstart import quickstart
from openseason.train.quickstart_multimodal import text_records


def _rows(facts=None):
    meta = {"image_id": "a"} | ({"facts": facts} if facts else {})
    return [{"id": "a-0", "messages": [{"role": "user", "content": [{"type": "image", "path": "images/a.png"},
                                                                   {"type": "text", "text": "Describe the image."}]},
                                      {"role": "assistant", "content": "a red circle"}],
             "meta": {**meta, "task": "caption"}},
            {"id": "a-1", "messages": [{"role": "user", "content": [{"type": "image", "path": "images/a.png"},
                                                                   {"type": "text", "text": "What color?"}]},
                                      {"role": "assistant", "content": "red"}],
             "meta": {**meta, "task": "vqa"}}]


def test_text_twins_put_the_caption_where_the_image_goes():
    twins = text_records(_rows(), variants=1)
    assert [t["messages"][0]["content"] for t in twins] == ["<Img>a red circle</Img> Describe the image.",
                                                           "<Img>a red circle</Img> What color?"]
    assert twins[1]["messages"][1]["content"] == "red"


def test_text_twin_variants_shuffle_the_facts_among_fillers():
    facts = ["red", "circle", "top left"]
    twins = text_records(_rows(facts) * 20, variants=3, seed=1)
    assert len(twins) == 120 and len({t["id"] for t in twins}) == 3 * 2   # ids name the record and the variant
    inside = [t["messages"][0]["content"].split("</Img>")[0].removeprefix("<Img>") for t in twins[40:]]
    for text in inside:   # every fact once, whole, the rest fillers
        rest = text
        for fact in facts:
            assert rest.count(fact) == 1
            rest = rest.replace(fact, "")
        assert set(rest.split()) <= {"."}
    orders = {tuple(sorted(facts, key=text.index)) for text in inside}
    assert len(orders) == 6                       # all orders occur
    assert any(text.startswith(".") for text in inside) and any(not text.startswith(".") for text in inside)
    assert [t["messages"][1]["content"] for t in twins[40:42]] == ["a red circle", "red"]  # answers unchanged
    assert text_records(_rows(facts) * 20, variants=3, seed=1) == twins   # deterministic from the seed
    assert text_records(_rows(facts) * 20, variants=3, seed=2) != twins


def test_suite_scenes_carry_their_facts():
    from openseason.data.image_tasks import sample_scenes
    for scene in sample_scenes(8, seed=3):
        words = scene.caption.split()
        assert scene.facts
        for fact in scene.facts:   # each fact's words are in the caption (a pair's right side names its side)
            assert set(fact.split()) - {"right"} <= set(words), (fact, scene.caption)


def test_reduced_multimodal_quickstart(tmp_path):
    out = tmp_path / "qs"
    report = quickstart(out, multimodal=True, scenes=24, eval_items=12, clip_steps=3, pretrain_steps=3,
                        finetune_steps=2, progress=False)
    data = json.loads((out / "report.json").read_text())
    assert set(data["methods"]) == {"minigpt4", "adapter-v2-mm"}
    for method, r in data["methods"].items():
        assert r["steps"] == 2
        assert r["before"]["vqa"]["n"] == r["after"]["vqa"]["n"] > 0
        assert 0 <= r["after"]["vqa"]["majority_baseline"] <= 1
    assert data["methods"]["minigpt4"]["trainable_parameters"] < data["methods"]["adapter-v2-mm"]["trainable_parameters"]
    assert (out / "examples.png").stat().st_size > 1000 and (out / "loss_curves.png").exists()
    assert (out / "clip" / "encoder" / "model.safetensors").exists()
    assert "VQA before" in (out / "report.md").read_text()
    assert report["kind"] == "multimodal"


def test_options_that_do_not_apply(tmp_path):
    with pytest.raises(OpenseasonError, match="apply to quickstart --multimodal only"):
        quickstart(tmp_path / "a", scenes=10, progress=False)
    with pytest.raises(OpenseasonError, match="do not apply to quickstart --multimodal"):
        quickstart(tmp_path / "b", multimodal=True, pretrain_items=10, progress=False)


def test_two_scenes_still_run(tmp_path):
    """The validation split shrinks with the data: --scenes 2 (8 records) trains instead of failing on
    a validation size the user never set."""
    report = quickstart(tmp_path / "qs", multimodal=True, scenes=2, eval_items=1, clip_steps=1, pretrain_steps=1,
                        finetune_steps=1, progress=False)
    assert all(r["steps"] == 1 for r in report["methods"].values())
