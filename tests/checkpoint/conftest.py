from __future__ import annotations

import pytest

from .helpers_checkpoint import tiny_model


@pytest.fixture
def model():
    return tiny_model(0)
