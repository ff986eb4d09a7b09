"""A reduced `quickstart --multimodal`: every stage runs through the public functions and the report,
examples.png and checkpoints are there; the text twins are what the LM is pretrained on. (The accuracy
of the full run is in BENCHMARKS.md: a reduced run is too short to learn the tasks.)"""
from __future__ import annotations

import json

import pytest

from openseason.errors import OpenseasonError
from openseason.train.quickstart import quickstart
from openseason.train.quickstart_multimodal import text_records


def test_text_twins_put_the_caption_where_the_image_goes():
    rows = [{"id": "a-0", "messages": [{"role": "user", "content": [{"type": "image", "path": "images/a.png"},
                                                                    {"type": "text", "text": "Describe the image."}]},
                                       {"role": "assistant", "content": "a red circle"}],
             "meta": {"image_id": "a", "task": "caption"}},
            {"id": "a-1", "messages": [{"role": "user", "content": [{"type": "image", "path": "images/a.png"},
                                                                    {"type": "text", "text": "What color?"}]},
                                       {"role": "assistant", "content": "red"}],
             "meta": {"image_id": "a", "task": "vqa"}}]
    twins = text_records(rows)
    assert [t["messages"][0]["content"] for t in twins] == ["<Img>a red circle</Img> Describe the image.",
                                                           "<Img>a red circle</Img> What color?"]
    assert twins[1]["messages"][1]["content"] == "red"


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
