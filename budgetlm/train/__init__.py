"""The built-in trainer: `train(cfg) -> TrainResult` and what a run directory holds."""

from budgetlm.train.api import TrainResult, resolve_train_config, sample_text, train

__all__ = ["TrainResult", "resolve_train_config", "sample_text", "train"]
