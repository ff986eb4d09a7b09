"""Consistency tests run on one thread: faster on a shared 2-core machine, and the resume test
compares runs bit for bit, so every process must use the same thread count."""
import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def tiny():
    """Options for a tiny, fast run on digits."""
    return dict(base=8, batch_size=16, progress=False, tensorboard=False, sample_every=0, log_every=1)
