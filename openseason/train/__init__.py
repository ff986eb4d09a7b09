"""Training: the one loop for every method (and pretraining), finetuning, merge and the quickstart.

    from openseason.train import TrainConfig, train, finetune
"""
from __future__ import annotations

from .loop import TrainConfig, TrainingError, train
# Imported here, not lazily: a function and its submodule share a name (train/finetune.py defines
# finetune()), and the import system binds the package attribute to the submodule when it is first
# loaded; binding the functions after that keeps `from openseason.train import finetune` a function.
from .finetune import finetune, merge_checkpoint  # noqa: E402
from .quickstart import quickstart  # noqa: E402

__all__ = ["TrainConfig", "TrainingError", "train", "finetune", "merge_checkpoint", "quickstart"]
