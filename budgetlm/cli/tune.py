"""`budgetlm tune` (run a hyperparameter study), `budgetlm report` (summarize a study or a fit)
and `budgetlm export` (one trial as a runnable config). Optuna is imported when they run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from budgetlm.cli.root import JsonOpt, app, console, err_console, guarded, print_json
from budgetlm.errors import UserError

StudyArg = Annotated[Path, typer.Argument(help="study file (YAML); see `budgetlm schema study`")]
StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="storage URL (sqlite:///…, journal:PATH, postgresql://…)"),
]
StudySetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s",
        help="override the study file: budget.trials=10, space.optim.lr.high=0.1, or a "
        "RunConfig field for every trial (model.n_layer=4); repeatable",
    ),
]


@app.command()
@guarded
def tune(
    study_file: StudyArg,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=1, help="trials at once on this machine")
    ] = None,
    storage: StorageOpt = None,
    overrides: StudySetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no live table")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Tune hyperparameters: one capped subprocess per trial, pruning on the budget axis."""
    from budgetlm.tune import load_study, run_study
    from budgetlm.tune.report import render_summary

    study = load_study(study_file, overrides, storage)
    summary = run_study(study, workers=workers, console=err_console if json_out else console,
                        quiet=quiet or json_out)
    if json_out:
        print_json(summary)
    else:
        render_summary(console, summary, study, unfinished=False)
        for err in summary.get("errors") or []:
            err_console.print(f"[red]tuner error:[/] {escape(err.strip().splitlines()[-1])}",
                              highlight=False)
    if summary.get("best") is None:
        raise UserError(summary.get("unfinished") or "no trial finished")


@app.command()
@guarded
def report(
    study_file: Annotated[
        Path, typer.Argument(help="study file (YAML), or a fit.json written by calibrate")
    ],
    storage: StorageOpt = None,
    overrides: StudySetOpt = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="fit.json only: where to draw (default .png)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Summarize a study (best trial, Pareto front, pruning) or a fit (IsoFLOP curves, PNG)."""
    if study_file.suffix == ".json":
        from budgetlm.calibrate.report import report_fit

        got = report_fit(study_file, png=png, console=None if json_out else console)
        if json_out:
            print_json(got)
        return
    from budgetlm.tune import load_study, report_study
    from budgetlm.tune.report import render_summary

    study = load_study(study_file, overrides, storage)
    summary = report_study(study)
    if json_out:
        print_json(summary)
        return
    render_summary(console, summary, study)


@guarded
def export(  # registered as `budgetlm export` by budgetlm.cli.export (which also exports runs)
    study_file: StudyArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="RunConfig YAML to write")],
    trial: Annotated[
        int | None, typer.Option("--trial", "-t", min=0, help="trial number (default: the best)")
    ] = None,
    keep_time_cap: Annotated[
        bool,
        typer.Option("--keep-time-cap", help="keep a time cap (default: the tokens it reached)"),
    ] = False,
    storage: StorageOpt = None,
    overrides: StudySetOpt = None,
) -> None:
    """Write one trial's config as a RunConfig file that `budgetlm train` runs."""
    from budgetlm.tune import export_trial, load_study

    study = load_study(study_file, overrides, storage)
    cfg = export_trial(study, trial, output, keep_time_cap=keep_time_cap)
    console.print(f"wrote {output} ({cfg.name}); run it: budgetlm train {output}",
                  highlight=False, soft_wrap=True)
