"""The synthetic image suite: deterministic from the seed, images whose pixels show what the records
say, prepared directories that check, held-out digits disjoint from training ones."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from openseason.cli import main
from openseason.data.image_tasks import COLORS, digit_pool, render, sample_scenes, write_suite
from openseason.data.prepare import check_prepared
from openseason.data.records import Conversation, image_paths


def _digest(directory) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            h.update(path.relative_to(directory).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_deterministic_from_the_seed(tmp_path):
    write_suite(tmp_path / "a", n=24, n_eval=8, seed=3)
    write_suite(tmp_path / "b", n=24, n_eval=8, seed=3)
    write_suite(tmp_path / "c", n=24, n_eval=8, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_prepared_directories_check_and_records_validate(tmp_path):
    suite = write_suite(tmp_path / "s", n=40, n_eval=12, seed=0)
    assert suite["images"] == {"train": 40, "eval": 12}
    for split in ("train", "eval"):
        report = check_prepared(tmp_path / "s" / split)
        rows = [json.loads(line) for line in (tmp_path / "s" / split / "conversations.jsonl").open()]
        assert len(rows) == report["written"] == suite["records"][split]
        for row in rows:
            Conversation.from_dict(row).validate()
            (path,) = image_paths(row["messages"])
            assert (tmp_path / "s" / split / path).is_file()
        tasks = {r["meta"]["task"] for r in rows}
        assert tasks == {"caption", "vqa"}


def test_pixels_show_the_colour_the_answer_names():
    for scene in sample_scenes(40, seed=1, families=("shape",)):
        image = np.asarray(render(scene, 64)).reshape(-1, 3).astype(int)
        color = scene.labels["color"]
        distance = {name: np.abs(image - np.array(rgb)).sum(1).min() for name, rgb in COLORS.items()}
        assert distance[color] == 0          # the named colour is painted
        assert all(d > 0 for name, d in distance.items() if name != color)


def test_count_scenes_draw_that_many_blobs():
    from scipy import ndimage

    for scene in sample_scenes(30, seed=2, families=("count",)):
        mask = np.abs(np.asarray(render(scene, 64)).astype(int) - np.array((245, 245, 240))).sum(-1) > 60
        _, blobs = ndimage.label(mask)
        assert blobs == int(scene.labels["count"])


def test_held_out_digits_are_other_samples():
    assert not set(digit_pool("train")) & set(digit_pool("eval"))
    evals = sample_scenes(50, seed=0, split="eval", families=("digit",))
    assert all(item[1] in set(digit_pool("eval")) for s in evals for item in s.draw)


def test_cli_writes_the_suite_and_refuses_a_non_empty_dir(tmp_path, capsys):
    out = tmp_path / "suite"
    assert main(["data", "images", "--out", str(out), "--n", "8", "--eval", "4", "--size", "32",
                 "--family", "digit", "--family", "pair"]) == 0
    assert "8 training and 4 held-out images" in capsys.readouterr().out
    assert Image.open(next((out / "train" / "images").iterdir())).size == (32, 32)
    assert main(["data", "images", "--out", str(out), "--n", "8"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "images", "--out", str(out), "--n", "8", "--eval", "0", "--overwrite"]) == 0
    assert json.loads((out / "suite.json").read_text())["images"] == {"train": 8, "eval": 0}
    assert main(["data", "images", "--out", str(tmp_path / "x"), "--size", "4"]) == 2
