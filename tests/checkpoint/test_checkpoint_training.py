"""Training state: weights, optimizer moments, RNG streams and the trainer state survive a save/load."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from openseason.checkpoint import (OPTIMIZER_NAME, STATE_NAME, find_resume, is_dcp_checkpoint, load_train_checkpoint,
                                   save_dcp_checkpoint, load_dcp_checkpoint, save_train_checkpoint, step_dir)
from openseason.errors import CheckpointError

from .helpers_checkpoint import same_weights, tiny_model


def _step(model, optimizer):
    ids = torch.randint(0, 512, (2, 8))
    loss = model(ids).float().logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_save_load_restores_optimizer_rng_and_state(tmp_path):
    model = tiny_model(1).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _step(model, optimizer)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    out = save_train_checkpoint(step_dir(tmp_path, 1), model, optimizer, {"step": 1, "data": {"pos": 7}})
    assert out.name == "step-000001" and (out / STATE_NAME).exists() and (out / OPTIMIZER_NAME).exists()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    _step(model, optimizer)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    fresh = tiny_model(9).train()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    state = load_train_checkpoint(out, fresh, fresh_opt)
    assert state["step"] == 1 and state["data"] == {"pos": 7}
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])
    _step(fresh, fresh_opt)        # same moments + same RNG -> the same next step, bit for bit
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in reference.items())


def test_find_resume(tmp_path):
    model = tiny_model(1)
    assert find_resume(tmp_path / "none", "auto") is None and find_resume(tmp_path, None) is None
    for step in (2, 10):
        save_train_checkpoint(step_dir(tmp_path, step), model, None, {"step": step})
    (tmp_path / "step-000020").mkdir()            # no trainer_state.json: not a complete checkpoint
    assert find_resume(tmp_path, "auto") == step_dir(tmp_path, 10)
    assert find_resume(tmp_path, str(step_dir(tmp_path, 2))) == step_dir(tmp_path, 2)
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        find_resume(tmp_path, str(tmp_path / "step-000020"))


class _OneProcess:
    is_main, active, world_size = True, False, 1

    def barrier(self):
        pass


def test_dcp_round_trip_in_one_process(tmp_path):
    model = tiny_model(1).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _step(model, optimizer)
    out = save_dcp_checkpoint(_OneProcess(), tmp_path / "step-000001", model, optimizer, {"step": 1})
    assert is_dcp_checkpoint(out) and sorted(p.name for p in tmp_path.iterdir()) == ["step-000001"]
    fresh = tiny_model(9).train()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    assert load_dcp_checkpoint(_OneProcess(), out, fresh, fresh_opt)["step"] == 1
    assert same_weights(fresh, model)
    assert fresh_opt.state_dict()["state"][0]["exp_avg"].equal(optimizer.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(CheckpointError, match="not a distributed"):
        load_dcp_checkpoint(_OneProcess(), save_train_checkpoint(tmp_path / "plain", model, None, {"step": 0}),
                            fresh, fresh_opt)
