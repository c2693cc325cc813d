"""`budgetlm calibrate`: fit a corpus's scaling law from pilot runs, then plan the rest of the
budget from it. The pilots' trainer is imported when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from budgetlm.cli.budget import data_config, parse_budget
from budgetlm.cli.plan_view import print_plan
from budgetlm.cli.root import JsonOpt, app, console, err_console, guarded, print_json
from budgetlm.config.kinds import Parametrization
from budgetlm.errors import EXIT_INTERRUPTED

PLAN_ROWS = 5


@app.command()
@guarded
def calibrate(
    data: Annotated[str, typer.Option("--data", help="corpus the pilots train on")],
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="byte|char|bpe")] = None,
    time_budget: Annotated[
        str | None, typer.Option("--time", help="whole budget: wall time on this machine")
    ] = None,
    gpu_hours: Annotated[
        str | None, typer.Option("--gpu-hours", metavar="H", help="whole budget: this GPU's hours")
    ] = None,
    flops: Annotated[
        str | None, typer.Option("--flops", metavar="C", help="whole budget: training FLOPs")
    ] = None,
    fraction: Annotated[
        float, typer.Option("--pilot-fraction", help="share of the budget the pilots may use")
    ] = 0.2,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="fit file (pilots kept in <stem>.pilots/)")
    ] = Path("fit.json"),
    levels: Annotated[int, typer.Option("--levels", help="compute levels (IsoFLOP profiles)")] = 3,
    sizes: Annotated[int, typer.Option("--sizes", help="model sizes per level")] = 3,
    level_ratio: Annotated[
        float, typer.Option("--level-ratio", help="compute ratio of consecutive levels")
    ] = 3.0,
    size_spread: Annotated[
        float, typer.Option("--size-spread", help="parameter ratio of consecutive sizes")
    ] = 3.0,
    seq_len: Annotated[
        int | None, typer.Option("--seq-len", min=8, help="pilots' sequence length (default: "
                                 "the prior plan's)")
    ] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="bootstrap refits")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="seed of pilots and bootstrap")] = 0,
    parametrization: Annotated[
        Parametrization, typer.Option("--parametrization", help="the pilots' (and the plan's): "
                                      "standard, or mup at the µP lr prior (Cerebras-GPT's "
                                      "base lr 6e-3 at width 256)")
    ] = "standard",
    no_plan: Annotated[
        bool, typer.Option("--no-plan", help="fit only; do not plan the rest of the budget")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Fit this corpus's scaling law from pilot runs on IsoFLOP profiles; plan the rest from it."""
    budget = parse_budget(gpu_hours=gpu_hours, flops=flops, time_budget=time_budget,
                          command="calibrate")
    data_cfg = data_config(data, tokenizer)
    from budgetlm.calibrate import CalibrationInterrupted
    from budgetlm.calibrate import calibrate as run_calibrate

    out = err_console if json_out else console

    def log(msg: str) -> None:
        if not quiet:
            out.print(f"[dim]{msg}[/]", highlight=False, soft_wrap=True)

    try:
        res = run_calibrate(
            budget, data_cfg, output, fraction=fraction, levels=levels, sizes=sizes,
            level_ratio=level_ratio, size_spread=size_spread, seq_len=seq_len,
            bootstrap=bootstrap, seed=seed, write_plan=not no_plan, log=log,
            parametrization=parametrization,
        )
    except CalibrationInterrupted as exc:
        err_console.print(str(exc), highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if json_out:
        print_json({**res.fit, "fit_path": str(res.fit_path),
                    "plan_path": str(res.plan_path) if res.plan_path else None,
                    "reused": res.reused, "ran": res.ran, "seconds_now": res.seconds_now,
                    "seconds_reused": res.seconds_reused})
        return
    print_calibration(res)


def print_calibration(res: Any) -> None:
    """A calibration's outcome: the fit, the plan of the rest, what the pilots cost."""
    from budgetlm.calibrate.report import render_fit

    render_fit(console, res.fit)
    if res.plan is not None:
        print_plan(res.plan, PLAN_ROWS)
    console.print(
        f"{res.spent_line()}. wrote {res.fit_path}"
        + (f" and {res.plan_path}; run it: budgetlm train {res.plan_path}"
           if res.plan_path else ""),
        highlight=False, soft_wrap=True,
    )
    for note in res.notes:
        console.print(f"[dim]· {note}[/]", highlight=False, soft_wrap=True)
