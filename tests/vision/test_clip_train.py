"""The small CLIP trainer: the contrastive loss against a direct formula, a short run that learns
(zero-shot accuracy well above chance on held-out images), exact resume, and the saved image tower
loading through load_vision_encoder."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from openseason.data.image_tasks import write_suite
from openseason.errors import ConfigError, DataError
from openseason.vision import load_vision_encoder
from openseason.vision.clip_model import WordTokenizer, contrastive_loss
from openseason.vision.clip_train import train_clip


def test_contrastive_loss_is_symmetric_infonce():
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(0)) * 3
    i2t = -torch.stack([logits[i].log_softmax(0)[i] for i in range(5)]).mean()
    t2i = -torch.stack([logits[:, i].log_softmax(0)[i] for i in range(5)]).mean()
    torch.testing.assert_close(contrastive_loss(logits), (i2t + t2i) / 2)
    same = torch.zeros(5, 5, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True   # captions 0 and 1 are identical: not each other's negatives
    kept = [j for j in range(5) if j != 1]
    row0 = -logits[0, kept].log_softmax(0)[0]
    masked = contrastive_loss(logits, same)
    assert not torch.isclose(masked, contrastive_loss(logits))
    manual_rows = [row0] + [-(logits[i].masked_fill(same[i] & (torch.arange(5) != i), float("-inf"))
                              .log_softmax(0)[i]) for i in range(1, 5)]
    manual_cols = [-(logits[:, i].masked_fill(same[:, i] & (torch.arange(5) != i), float("-inf"))
                     .log_softmax(0)[i]) for i in range(5)]
    torch.testing.assert_close(masked, (torch.stack(manual_rows).mean() + torch.stack(manual_cols).mean()) / 2)


def test_word_tokenizer():
    tok = WordTokenizer.from_texts(["the digit 7 in red", "a red circle"], context_length=8)
    ids = tok.encode(["the digit 7 in red", "a blue circle"])
    assert ids.shape == (2, 8) and ids[0, 0] == tok.index["<sot>"] and ids[0, 6] == tok.index["<eot>"]
    assert ids[1, 2] == tok.index["<unk>"]
    with pytest.raises(ConfigError, match="longer than the text context"):
        tok.encode(["a " * 10])


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    write_suite(out, n=240, n_eval=80, seed=0, size=32, families=("shape", "digit"))
    return out


SMALL = dict(batch_size=48, lr=3e-3, warmup_steps=5, text_width=32, log_every=5, progress=False)


def test_training_learns_and_the_tower_loads(suite, tmp_path):
    report = train_clip(suite, tmp_path / "run", max_steps=60, save_every=0, **SMALL)
    zs = report["zero_shot"]
    assert set(zs) == {"shape/shape", "shape/color", "shape/place", "digit/digit", "digit/color"}
    # colour is what 60 steps learn first: far above chance (1/6)
    assert zs["shape/color"]["accuracy"] >= 0.6 and zs["digit/color"]["accuracy"] >= 0.6
    assert report["zero_shot_mean"] > 2 * report["chance_mean"]
    encoder = load_vision_encoder(tmp_path / "run" / "encoder")
    card = json.loads((tmp_path / "run" / "encoder" / "run_card.json").read_text())
    assert card["zero_shot"] == zs
    feats = encoder.encode([str(next((suite / "eval" / "images").iterdir()))])
    assert feats.shape == (1, encoder.num_tokens, encoder.hidden_size) == (1, 17, 64)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    assert load_vision_encoder(tmp_path / "run").config == encoder.config     # the run directory names its tower


def test_resume_continues_exactly(suite, tmp_path):
    full = train_clip(suite, tmp_path / "a", max_steps=12, save_every=6, **SMALL)
    train_clip(suite, tmp_path / "b", max_steps=6, save_every=6, **SMALL)   # "killed" after step 6
    resumed = train_clip(suite, tmp_path / "b", resume="auto", max_steps=12, save_every=6, **SMALL)
    assert resumed["final_loss"] == full["final_loss"]
    a = load_vision_encoder(tmp_path / "a" / "encoder").state_dict()
    b = load_vision_encoder(tmp_path / "b" / "encoder").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = train_clip(suite, tmp_path / "a", resume="auto", max_steps=12, save_every=6, **SMALL)
    assert again["steps"] == 12 and again["final_loss"] == full["final_loss"]    # finished: nothing retrained
    with pytest.raises(ConfigError, match="other options"):
        train_clip(suite, tmp_path / "b", resume="auto", max_steps=12, **{**SMALL, "lr": 1e-3})


def test_bad_inputs(tmp_path, suite):
    from openseason.errors import OpenseasonError
    with pytest.raises(DataError, match="not found"):
        train_clip(tmp_path / "nope", tmp_path / "o")
    with pytest.raises(ConfigError, match="batch-size"):
        train_clip(suite, tmp_path / "o", batch_size=1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OpenseasonError, match="not empty"):
        train_clip(suite, tmp_path / "full", max_steps=1)


def test_cli(suite, tmp_path, capsys):
    from openseason.cli import main

    out = tmp_path / "cli"
    assert main(["vision", "train-clip", "--data", str(suite), "--out", str(out), "--max-steps", "3",
                 "--batch-size", "8", "--text-width", "16", "--save-every", "0"]) == 0
    printed = capsys.readouterr().out
    assert "zero-shot digit/digit" in printed and f"{out}/encoder" in printed
    assert json.loads((out / "report.json").read_text())["steps"] == 3
    assert main(["vision", "train-clip", "--data", str(suite), "--out", str(out), "--max-steps", "0"]) == 2
