"""Image evaluation: CIDEr-D equal to pycocoevalcap's, the metrics on hand-made items, and a real run
through a multimodal checkpoint on the synthetic suite's records."""
from __future__ import annotations

import random

import pytest

from openseason.evaluate.cider import cider_d
from openseason.evaluate.images import evaluate_images, image_task_metrics


def test_cider_d_equals_pycocoevalcap():
    cider = pytest.importorskip("pycocoevalcap.cider.cider")
    rng = random.Random(0)
    words = "a red blue green circle square at the top left right bottom two three crosses in center".split()
    cands = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 9))) for _ in range(40)]
    refs = [[" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for _ in range(rng.randint(1, 3))]
            for _ in range(40)]
    cands[0] = refs[0][0]   # a perfect match among them
    ours = cider_d(cands, refs)
    score, per_image = cider.Cider().compute_score({i: r for i, r in enumerate(refs)},
                                                   {i: [c] for i, c in enumerate(cands)})
    assert ours["cider"] == pytest.approx(score, abs=1e-12)
    assert ours["scores"] == pytest.approx(list(per_image), abs=1e-12)


def test_metrics_of_scored_items():
    items = [
        {"task": "vqa", "family": "shape", "question": "What color?", "reference": "red", "prediction": "Red."},
        {"task": "vqa", "family": "shape", "question": "What color?", "reference": "red", "prediction": "blue"},
        {"task": "vqa", "family": "count", "question": "How many?", "reference": "3", "prediction": "3"},
        {"task": "vqa", "family": "count", "question": "How many?", "reference": "2", "prediction": "3"},
        {"task": "caption", "family": "shape", "question": "Describe", "reference": "a red circle at the top left",
         "prediction": "a red circle at the top left"},
        {"task": "caption", "family": "count", "question": "Describe", "reference": "two blue squares",
         "prediction": "three blue squares"},
    ]
    m = image_task_metrics(items)
    assert m["vqa"]["accuracy"] == 0.5 and m["vqa"]["by_family"] == {"count": 0.5, "shape": 0.5}
    assert m["vqa"]["majority_baseline"] == 0.75   # "red" 2/2, "3" or "2" 1/2
    assert m["vqa"]["chance"] == 0.75              # one answer seen for "What color?", two for "How many?"
    assert m["caption"]["exact_match"] == 0.5
    assert 0 < m["caption"]["bleu"] < 100 and 0 < m["caption"]["rouge_l"] < 1 and m["caption"]["cider"] > 0


def test_evaluate_images_runs_a_multimodal_checkpoint(tmp_path, tiny_tokenizer):
    from openseason.data.image_tasks import write_suite
    from openseason.generation.llm import LLM
    from openseason.train.finetune import finetune

    from ..train.helpers_train import make_base, make_vision_encoder

    suite = tmp_path / "suite"
    write_suite(suite, n=8, n_eval=4, size=32)
    base = make_base(tmp_path / "base", tiny_tokenizer)
    encoder = make_vision_encoder(tmp_path / "encoder")
    run = finetune(base, suite / "train", "minigpt4", tmp_path / "run", progress=False, register=False,
                   max_steps=1, vision=str(encoder))
    result = evaluate_images(LLM.load(run["final"]), suite / "eval", max_new_tokens=4, batch_size=3)
    n = sum(1 for _ in open(suite / "eval" / "conversations.jsonl"))
    assert result["n"] == n == len(result["items"])
    assert result["caption"]["n"] == 4 and result["vqa"]["n"] == n - 4
    assert all(isinstance(i["prediction"], str) for i in result["items"])
