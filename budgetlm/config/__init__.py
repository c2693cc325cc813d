"""Typed run configuration: one `RunConfig` flows from the CLI through estimate, plan, tune, train.

Every field carries its own help text (it becomes the JSON Schema description). Validation errors
name the field at fault. Presets are plain dicts merged over the defaults; `key=value` overrides
address fields by dotted path (`model.n_layer=6`, `train.precision=bf16`).

`schema` holds the models, `strict` their rules for numbers and switches, `presets` the named
starting points, `io` loading (a duplicate-key-safe, depth-bounded YAML reader), overrides and
dumps.
"""

from budgetlm.config.finetune import FinetuneConfig, LoraConfig
from budgetlm.config.io import (
    apply_overrides,
    check_path,
    dump_config,
    json_schema,
    load_config,
    parse_override,
    read_yaml,
    set_path,
    to_yaml,
    with_overrides,
    with_values,
)
from budgetlm.config.kinds import OPTIMIZERS, PRECISIONS
from budgetlm.config.prediction import Prediction
from budgetlm.config.presets import LARGE_PRESETS, PRESETS, preset
from budgetlm.config.schema import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    tokens_per_step,
    validate,
)
from budgetlm.config.spans import SpanLengths, span_corruption_lengths
from budgetlm.config.strict import StrictModel

__all__ = [
    "LARGE_PRESETS", "OPTIMIZERS", "PRECISIONS", "PRESETS", "DataConfig", "FinetuneConfig",
    "LoraConfig", "ModelConfig",
    "OptimConfig", "Prediction", "RunConfig", "ScheduleConfig", "SpanLengths", "StrictModel",
    "TrainConfig",
    "apply_overrides", "check_path", "dump_config", "json_schema", "load_config",
    "parse_override", "preset", "read_yaml", "set_path", "span_corruption_lengths", "to_yaml",
    "tokens_per_step",
    "validate", "with_overrides", "with_values",
]
