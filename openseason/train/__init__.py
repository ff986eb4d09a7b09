"""Training: the one loop for every method (and pretraining), finetuning, merge and the quickstart.

    from openseason.train import TrainConfig, train, finetune
"""
from __future__ import annotations

from .loop import TrainConfig, TrainingError, train

__all__ = ["TrainConfig", "TrainingError", "train", "finetune", "merge_checkpoint", "quickstart"]


def __getattr__(name):
    if name == "finetune":
        from .finetune import finetune
        return finetune
    if name == "merge_checkpoint":
        from .finetune import merge_checkpoint
        return merge_checkpoint
    if name == "quickstart":
        from .quickstart import quickstart
        return quickstart
    raise AttributeError(name)
