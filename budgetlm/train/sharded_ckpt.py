"""Sharded checkpoints of fsdp/hsdp runs, with `torch.distributed.checkpoint` (DCP).

A sharded checkpoint is a directory beside the single-file ones (checkpoints/step_XXXXXXXX.dcp,
best.dcp):

    .metadata, *.distcp   model and optimizer state (`get_state_dict`), each rank its shards
    trainer.pt            counters, RNG, config and loss scaler, as a single-file checkpoint
                          holds them beside the weights

Every rank writes into one hidden temporary directory, then rank 0 renames it into place: a
reader sees the whole checkpoint or none of it. The ranks must share the checkpoint directory
(one machine, or a file system every node mounts).

DCP reshards on load: a checkpoint written by N ranks loads into M ranks or into one process
(a plain model), and a single-file checkpoint loads into a sharded model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

SHARDED_SUFFIX = ".dcp"
TRAINER_FILE = "trainer.pt"
METADATA_FILE = ".metadata"


def save_sharded(path: Path, model: Any, opt: Any, trainer_state: dict[str, Any],
                 main: bool) -> Path:
    """Write the sharded checkpoint `path` (a directory); every rank calls this together."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = path.with_name(f".{path.name}.tmp")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp)
    if main:
        torch.save(trainer_state, tmp / TRAINER_FILE)
        _rename_into_place(tmp, path)
    dist.barrier()
    return path


def _rename_into_place(tmp: Path, path: Path) -> None:
    """`tmp` becomes `path`; a directory already there is moved aside first, then removed."""
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint of either kind (file or sharded directory)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def load_sharded(path: Path, model: Any, opt: Any) -> None:
    """Model and optimizer state from the sharded checkpoint `path`, resharded to this run's
    layout (sharded over its ranks, or whole in one process); all ranks call this together.
    A checkpoint that does not fit the model raises RuntimeError."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optimizer": optim_sd}
    try:
        dcp.load(state, checkpoint_id=path)
    except CheckpointException as exc:  # a BaseException: one rank's failure, told on each
        raise RuntimeError(str(exc)) from None
    set_state_dict(
        model, opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )


def load_whole_into_sharded(state: dict[str, Any], model: Any, opt: Any) -> None:
    """A single-file checkpoint's model and optimizer (whole tensors; optimizer state keyed by
    parameter index, in the order of the optimizer's groups) into a sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in opt.param_groups for p in group["params"]]
    saved = state["optimizer"]
    optim_sd = {
        "state": {order[i]: v for i, v in saved["state"].items()},
        "param_groups": [
            {**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]
        ],
    }
    set_state_dict(
        model, opt, model_state_dict=state["model"], optim_state_dict=optim_sd,
        options=StateDictOptions(full_state_dict=True),
    )


def load_model_weights(path: Path) -> dict[str, Any]:
    """The whole model state dict of the sharded checkpoint `path`, on the CPU, read in this
    process alone (for init_from and sampling)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = dcp.FileSystemReader(str(path)).read_metadata()
    prefix = "model."
    weights = {
        key[len(prefix):]: torch.empty(md.size, dtype=md.properties.dtype)
        for key, md in meta.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(md, TensorStorageMetadata)
    }
    dcp.load({"model": weights}, checkpoint_id=path, no_dist=True)
    return weights
