"""Conversation records with image parts, and `data prepare` of LLaVA-style and COCO caption JSON:
placeholders become image parts, bad rows name file:line, missing images are rejected and reported."""
from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from openseason.cli import main
from openseason.data.prepare import prepare
from openseason.data.records import Conversation, content_text, record_text
from openseason.errors import DataError, OpenseasonError


def _conv(content, reply="ok"):
    return Conversation("x", "t", [{"role": "user", "content": content}, {"role": "assistant", "content": reply}])


def test_image_parts_validate():
    _conv([{"type": "image", "path": "a.png"}, {"type": "text", "text": "What?"}]).validate("f:1")
    cases = {
        "must be a list of 1": [],
        "'type' must be one of": [{"type": "image_url", "image_url": {"url": "x"}}],
        "and nothing else": [{"type": "image", "path": "a.png", "extra": 1}],
        "non-empty path": [{"type": "image", "path": " "}],
    }
    for message, content in cases.items():
        with pytest.raises(DataError, match=message) as info:
            _conv(content).validate("f:7")
        assert str(info.value).startswith("f:7: ")
    with pytest.raises(DataError, match="only be in user turns"):
        Conversation("x", "t", [{"role": "user", "content": "hi"},
                                {"role": "assistant", "content": [{"type": "image", "path": "a.png"}]}]).validate()
    assert content_text([{"type": "image", "path": "a"}, {"type": "text", "text": "q"}]) == "q"
    assert record_text(_conv([{"type": "image", "path": "a"}, {"type": "text", "text": "q"}], "r").to_dict()) == "q\nr"


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / name)
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_llava_json(tmp_path, images):
    rows = [
        {"id": "1", "image": "a.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "yes"}]},
        {"id": "2", "image": "b.png", "conversations": [
            {"from": "human", "value": "Describe it."}, {"from": "gpt", "value": "a square"}]},
        {"id": "3", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "4", "image": "missing.png", "conversations": [
            {"from": "human", "value": "<image> x"}, {"from": "gpt", "value": "y"}]},
        {"id": "5", "image": "broken.png", "conversations": [
            {"from": "human", "value": "<image> x"}, {"from": "gpt", "value": "y"}]},
        {"id": "6", "image": ["a.png", "b.png"], "conversations": [
            {"from": "human", "value": "Left <image> right <image>"}, {"from": "gpt", "value": "two"}]},
    ]
    src = tmp_path / "llava.json"
    src.write_text(json.dumps(rows, indent=2))
    report = prepare("llava", [src], tmp_path / "out", image_root=images, progress=False)
    assert report["written"] == 4
    assert report["rejected"] == {"bad_image": 1, "missing_image": 1}
    assert report["image_placed_first"] == 1
    out = [json.loads(line) for line in (tmp_path / "out" / "conversations.jsonl").open()]
    a, b = str(images / "a.png"), str(images / "b.png")
    assert out[0]["messages"][0]["content"] == [{"type": "image", "path": a}, {"type": "text", "text": "What color?"}]
    assert out[0]["messages"][2]["content"] == "Sure?"
    assert out[1]["messages"][0]["content"] == [{"type": "image", "path": b}, {"type": "text", "text": "Describe it."}]
    assert out[2]["messages"][0]["content"] == "Hi"
    assert out[3]["messages"][0]["content"] == [{"type": "text", "text": "Left "}, {"type": "image", "path": a},
                                                {"type": "text", "text": " right "}, {"type": "image", "path": b}]
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").open()]
    lines = src.read_text().splitlines()
    for r in rejects:
        line = int(re.search(r":(\d+)", r["where"][len(str(src)):]).group(1))
        assert lines[line - 1].strip() == "{"      # the row's own first line
        assert r["where"].startswith(str(src))


def test_llava_bad_rows_fail_with_file_line(tmp_path, images, capsys):
    src = tmp_path / "bad.json"
    src.write_text(json.dumps([
        {"image": "a.png", "conversations": [{"from": "human", "value": "ok <image>"}, {"from": "gpt", "value": "y"}]},
        {"image": "a.png", "conversations": [{"from": "human", "value": "<image><image>"},
                                             {"from": "gpt", "value": "y"}]}], indent=2))
    with pytest.raises(DataError, match=r"bad\.json:\d+(\[#1\])?: bad_image_placeholder: 2 <image> placeholder\(s\) but 1"):
        prepare("llava", [src], tmp_path / "o1", image_root=images, progress=False)
    assert main(["data", "prepare", "llava", str(src), "--out", str(tmp_path / "o2"), "--image-root", str(images),
                 "--on-error", "skip"]) == 0
    report = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert report["written"] == 1 and report["rejected"] == {"bad_image_placeholder": 1}
    with pytest.raises(OpenseasonError, match="--image-root only applies"):
        prepare("dolly", [src], tmp_path / "o3", image_root=images)


def test_coco_captions(tmp_path, images):
    doc = {"info": {}, "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"},
                                  {"id": 3, "file_name": "gone.png"}],
           "annotations": [{"id": 10, "image_id": 1, "caption": "A red square. "},
                           {"id": 11, "image_id": 1, "caption": "Something red."},
                           {"id": 12, "image_id": 2, "caption": "Red again."},
                           {"id": 13, "image_id": 3, "caption": "Lost."}]}
    src = images / "captions.json"
    src.write_text(json.dumps(doc, indent=2))
    report = prepare("coco", [src], tmp_path / "cap", progress=False)
    assert (report["read"], report["written"], report["rejected"]) == (4, 3, {"missing_image": 1})
    rows = [json.loads(line) for line in (tmp_path / "cap" / "conversations.jsonl").open()]
    assert rows[0]["messages"][0]["content"][0] == {"type": "image", "path": str(images / "a.png")}
    assert [r["messages"][1]["content"] for r in rows] == ["A red square.", "Something red.", "Red again."]
    report = prepare("coco", [src], tmp_path / "img", mode="images", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "img" / "conversations.jsonl").open()]
    assert report["written"] == 2 and rows[0]["meta"]["references"] == ["A red square.", "Something red."]


def test_coco_bad_annotation_names_its_line(tmp_path, images):
    doc = {"images": [{"id": 1, "file_name": "a.png"}],
           "annotations": [{"id": 10, "image_id": 1, "caption": "fine"}, {"id": 11, "image_id": 9, "caption": "x"}]}
    src = images / "c.json"
    src.write_text(json.dumps(doc, indent=2))
    line = next(i for i, text in enumerate(src.read_text().splitlines(), 1) if '"id": 11' in text) - 1
    with pytest.raises(DataError, match=rf"c\.json:{line}: unknown_image: image_id 9"):
        prepare("coco", [src], tmp_path / "o", progress=False)
    src.write_text(json.dumps({"images": [{"id": [1], "file_name": "a.png"}], "annotations": []}, indent=2))
    with pytest.raises(DataError, match=r"c\.json:3: bad_image_entry"):
        prepare("coco", [src], tmp_path / "o3", progress=False, overwrite=True)
    src.write_text('{"images": [], "annotations": {}}')
    with pytest.raises(DataError, match="'images' and 'annotations' lists"):
        prepare("coco", [src], tmp_path / "o2", progress=False)
