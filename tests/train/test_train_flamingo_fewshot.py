"""A reduced OpenFlamingo few-shot run (train/flamingo_fewshot.py): every stage through the public
functions, the report's shape, and the quickstart option. (The accuracy of the full run is in
BENCHMARKS.md: a reduced run is too short to learn the task.)"""
from __future__ import annotations

import pytest

from openseason.data.image_tasks import write_suite
from openseason.errors import OpenseasonError
from openseason.train.flamingo_fewshot import SHOTS, flamingo_fewshot
from openseason.train.quickstart import quickstart

from .helpers_train import make_vision_encoder


def test_reduced_run(tmp_path):
    write_suite(tmp_path / "suite", n=12, n_eval=6, size=32, families=["shape"])
    report = flamingo_fewshot(tmp_path / "run", tmp_path / "suite", make_vision_encoder(tmp_path / "enc"), steps=2,
                              lm_steps=2, episodes=16, eval_per_shot=3)
    assert report["steps"] == 2 and report["lm_steps"] == 2
    assert set(report["before"]) == set(report["after"]) == set(SHOTS)
    assert all(v["n"] == 3 and 0 <= v["accuracy"] <= 1 for v in report["after"].values())
    assert 0 < report["trainable_parameters"] < report["parameters"]
    assert abs(report["chance"] - (1 / 4 + 1 / 6) / 2) < 1e-9


def test_quickstart_flamingo_steps_needs_multimodal(tmp_path):
    with pytest.raises(OpenseasonError, match="--flamingo-steps apply to quickstart --multimodal only"):
        quickstart(tmp_path / "a", flamingo_steps=10, progress=False)
