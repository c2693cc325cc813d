"""`budgetlm profile` (measure this machine) and `budgetlm estimate` (one config's parameters,
FLOPs, memory and step time)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from budgetlm import hardware
from budgetlm.cli.root import JsonOpt, SetOpt, app, console, err_console, guarded, print_json
from budgetlm.config import load_config
from budgetlm.estimate import estimate as run_estimate
from budgetlm.units import format_count_fixed, human_bytes


@app.command()
@guarded
def profile(
    json_out: JsonOpt = False,
    refresh: Annotated[bool, typer.Option("--refresh", help="measure again, ignore cache")] = False,
) -> None:
    """Measure this machine: CPU, GPUs (nvidia-ml-py), matmul FLOP/s per dtype, bandwidth."""
    if json_out:
        prof = hardware.load_profile(refresh=refresh)
        print_json(prof.to_dict())
        return
    with err_console.status("measuring this machine…"):
        prof = hardware.load_profile(refresh=refresh)
    table = Table(title="hardware profile", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for k, v in prof.summary_rows():
        table.add_row(k, v)
    console.print(table)


@app.command()
@guarded
def estimate(
    config: Annotated[
        str,
        typer.Argument(
            help="preset name, RunConfig YAML file, or a Hugging Face config.json (or the model "
            "directory holding it)"
        ),
    ],
    micro_batch: Annotated[int | None, typer.Option("--micro-batch", "-b", min=1)] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="fp32|bf16|fp16")] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="optimizer name")] = None,
    checkpointing: Annotated[
        bool | None,
        typer.Option("--checkpointing/--no-checkpointing", help="activation checkpointing"),
    ] = None,
    gpu: Annotated[
        str | None, typer.Option("--gpu", help="estimate step time on this GPU (datasheet)")
    ] = None,
    overrides: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Parameters, FLOPs per token and a memory breakdown for one config."""
    sets = [
        *(overrides or []),
        *estimate_overrides(micro_batch, precision, optimizer, checkpointing),
    ]
    cfg = load_config(config, sets)
    est = run_estimate(cfg, profile_for(gpu))
    notes = cfg.meta.get("hf_not_described")
    for note in notes if isinstance(notes, list) else []:
        err_console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    if json_out:
        print_json(est.to_dict())
        return
    print_estimate(est.to_dict(), cfg.name)


def estimate_overrides(micro_batch: int | None, precision: str | None, optimizer: str | None,
                       checkpointing: bool | None) -> list[str]:
    """The `key=value` config overrides that estimate's shortcut flags stand for."""
    sets = []
    if micro_batch is not None:
        sets.append(f"train.micro_batch={micro_batch}")
    if precision is not None:
        sets.append(f"train.precision={precision}")
    if optimizer is not None:
        sets.append(f"optim.name={optimizer}")
    if checkpointing is not None:
        sets.append(f"train.activation_checkpointing={str(checkpointing).lower()}")
    return sets


def profile_for(gpu: str | None) -> Any:
    """The datasheet profile of a named GPU, else this machine's cached profile (never measures)."""
    if gpu is not None:
        return hardware.reference_profile(gpu)
    return hardware.cached_profile()


def print_estimate(d: dict[str, Any], name: str) -> None:
    """An estimate (its dict form) as a two-column table."""
    t = Table(title=f"estimate: {name}", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    t.add_row("parameters", f"{d['params']:,} ({format_count_fixed(d['params'])})")
    t.add_row("  non-embedding", f"{d['non_embedding_params']:,}")
    t.add_row("  embedding", f"{d['embedding_params']:,}")
    fl = d["flops"]
    t.add_row("FLOPs/token forward", format_count_fixed(fl["forward"]))
    t.add_row("FLOPs/token backward", format_count_fixed(fl["backward"]))
    t.add_row("FLOPs/token recompute", format_count_fixed(fl["recompute"]))
    t.add_row("FLOPs/token training", format_count_fixed(fl["total"]))
    t.add_row(
        "setting",
        f"micro-batch {d['micro_batch']} · {d['precision']} · {d['optimizer']}"
        f" · checkpointing {'on' if d['checkpointing'] else 'off'}",
    )
    for k, v in d["memory"].items():
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            continue  # per-phase detail: in --json
        label = "memory total" if k == "total" else f"  {k.replace('_', ' ')}"
        t.add_row(label, v if isinstance(v, str) else human_bytes(v))
    st = d.get("step_time")
    if st:
        t.add_row(
            "step time",
            f"{st['seconds'] * 1e3:.1f} ms"
            f" ({format_count_fixed(st['flops_per_s'])}FLOP/s; {st['source']})",
        )
    console.print(t)
