"""The built-in trainer: `train(cfg) -> TrainResult` and what a run directory holds.

`api` (train, resolve_train_config, sample_text) · `state` (RunState, Counters, StopRun) ·
`loop` (the steps) · `batches` (micro-step batches, eval, auto micro-batch) · `runtime` (device,
autocast, process group) · `rundir` (the run directory) · `result` (TrainResult = result.json) ·
`progress` (the bar) · `finetune` (full or LoRA through peft: prepare_model, merged_model,
model_from_checkpoint, adapter files).
"""

from budgetlm.train.api import resolve_train_config, sample_text, train
from budgetlm.train.finetune import merged_model, model_from_checkpoint, prepare_model
from budgetlm.train.result import ResultFile, TrainResult, check_prediction
from budgetlm.train.state import StopRun

__all__ = [
    "ResultFile", "StopRun", "TrainResult", "check_prediction", "merged_model",
    "model_from_checkpoint", "prepare_model", "resolve_train_config", "sample_text", "train",
]
