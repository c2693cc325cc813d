"""`budgetlm plan`: the best model, batch, precision and schedule for a budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from budgetlm.cli.budget import data_config, parse_budget, parse_token_count
from budgetlm.cli.plan_view import print_plan
from budgetlm.cli.root import JsonOpt, app, console, err_console, guarded, print_json
from budgetlm.plan import plan as run_plan
from budgetlm.plan.arch import check_arch

GpuHoursOpt = Annotated[
    str | None, typer.Option("--gpu-hours", metavar="H", help="GPU-hours of --gpu")
]
GpuOpt = Annotated[
    str | None,
    typer.Option("--gpu", help="GPU from the datasheet table (h100-sxm, a100, ...) or auto"),
]
GpusOpt = Annotated[str, typer.Option("--gpus", metavar="K", help="GPUs in data parallel")]
FlopsOpt = Annotated[
    str | None, typer.Option("--flops", metavar="C", help="training FLOPs, e.g. 1e19")
]
TimeOpt = Annotated[
    str | None,
    typer.Option("--time", help="wall time on this machine: 10m, 90s, 1h30m or seconds"),
]
CostOpt = Annotated[
    str | None, typer.Option("--cost", metavar="AMOUNT", help="money to spend (with --price)")
]
PriceOpt = Annotated[
    str | None, typer.Option("--price", metavar="PER_GPU_HOUR", help="price of a GPU-hour")
]
DataOpt = Annotated[str | None, typer.Option("--data", help="corpus (its tokens are counted)")]
TokenizerOpt = Annotated[str | None, typer.Option("--tokenizer", help="byte|char|bpe")]
TokensOpt = Annotated[
    str | None,
    typer.Option("--tokens", metavar="N", help="unique tokens available (instead of --data)"),
]
PriorOpt = Annotated[
    str, typer.Option("--prior", help="loss prior: epoch (default), chinchilla or kaplan")
]
FitOpt = Annotated[
    Path | None,
    typer.Option("--fit", help="plan from this corpus's fitted law (fit.json of calibrate)"),
]
SeqLenOpt = Annotated[
    list[int] | None, typer.Option("--seq-len", help="sequence lengths to try (repeatable)")
]
PrecisionOpt = Annotated[
    list[str] | None, typer.Option("--precision", help="precisions to try (repeatable)")
]
ArchOpt = Annotated[
    str | None,
    typer.Option("--arch", help="candidates' recipe: gpt2, llama or moe (default: llama on a "
                 "GPU, gpt2 on a CPU or for --flops without --gpu)"),
]
ScheduleOpt = Annotated[str, typer.Option("--schedule", help="wsd (default) or cosine")]
TimingOpt = Annotated[
    bool | None,
    typer.Option(
        "--timing/--no-timing",
        help="time a few real steps of the best candidates (--time only; default on)",
    ),
]
TimingAliasOpt = Annotated[bool | None, typer.Option("--calibrate/--no-calibrate", hidden=True)]
TopOpt = Annotated[int, typer.Option("--top", min=1, help="rows in the ranked table")]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="write the top candidate as a runnable YAML (+ .json)"),
]


@app.command()
@guarded
def plan(
    gpu_hours: GpuHoursOpt = None,
    gpu: GpuOpt = None,
    gpus: GpusOpt = "1",
    flops: FlopsOpt = None,
    time_budget: TimeOpt = None,
    cost: CostOpt = None,
    price: PriceOpt = None,
    data: DataOpt = None,
    tokenizer: TokenizerOpt = None,
    tokens: TokensOpt = None,
    prior: PriorOpt = "epoch",
    fit_file: FitOpt = None,
    seq_len: SeqLenOpt = None,
    precision: PrecisionOpt = None,
    arch: ArchOpt = None,
    schedule_name: ScheduleOpt = "wsd",
    timing: TimingOpt = None,
    timing_alias: TimingAliasOpt = None,
    top: TopOpt = 10,
    output: OutputOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Best model, batch, precision and schedule for a budget: ranked candidates, Pareto front."""
    budget = parse_budget(gpu_hours=gpu_hours, flops=flops, time_budget=time_budget, cost=cost,
                          price=price, gpu=gpu, gpus=gpus)
    check_arch(arch)
    fit = load_fit_file(fit_file) if fit_file is not None else None
    n_tokens = parse_token_count(tokens)
    data_cfg = data_config(data, tokenizer)
    if timing is None:
        timing = timing_alias
    status = None
    if budget.kind == "time" and timing is not False and not json_out:
        status = err_console.status("planning (timing candidates on this machine)…")
        status.start()
    try:
        result = run_plan(
            budget,
            data=data_cfg,
            tokens=n_tokens,
            prior=prior,
            fit=fit,
            seq_lens=seq_len or None,
            precisions=precision or None,
            schedule=schedule_name,
            timing=timing,
            arch=arch,
        )
    finally:
        if status is not None:
            status.stop()
    written = result.write(output) if output is not None else None
    if json_out:
        print_json({**result.to_dict(), **_written_field(written)})
        return
    print_plan(result, top)
    if written:
        console.print(
            f"wrote {written[0]} (the top candidate; run it: budgetlm train {written[0]}) and "
            f"{written[1]} ({len(result.candidates)} candidates)",
            highlight=False, soft_wrap=True,
        )


def _written_field(written: Any) -> dict[str, list[str]]:
    """{'written': [paths]} when --output wrote files, else nothing."""
    return {"written": [str(p) for p in written]} if written else {}


def load_fit_file(path: Path) -> dict[str, Any]:
    """A fit.json written by `budgetlm calibrate`, checked, as a dict."""
    from budgetlm.calibrate.report import load_fit

    return load_fit(path)
