"""`budgetlm tune` (run a hyperparameter study), `budgetlm report` (summarize a study or a fit)
and `budgetlm export` (one trial as a runnable config). Optuna is imported when they run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

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
    study_file: Annotated[
        Path | None,
        typer.Argument(help="study file (YAML); see `budgetlm schema study`; or --around"),
    ] = None,
    around: Annotated[
        Path | None,
        typer.Option("--around", help="a plan (budgetlm plan -o): tune µP proxies of it, "
                     "transfer the best to its width, train that with the time left"),
    ] = None,
    share: Annotated[
        float | None,
        typer.Option("--share", help="around: share of the plan's time spent tuning (0.2)"),
    ] = None,
    proxy_width: Annotated[
        int | None,
        typer.Option("--proxy-width", help="around: the proxies' d_model (default d_model/4)"),
    ] = None,
    trial_time: Annotated[
        float | None, typer.Option("--trial-time", help="seconds per trial (time cap)")
    ] = None,
    no_train: Annotated[
        bool, typer.Option("--no-train", help="around: write transferred.yaml, do not train it")
    ] = False,
    name: Annotated[
        str | None, typer.Option("--name", help="study name (the folder runs/<name>)")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=1, help="trials at once on this machine")
    ] = None,
    storage: StorageOpt = None,
    overrides: StudySetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no live table")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Tune hyperparameters: one capped subprocess per trial, pruning on the budget axis; with
    --around, µP proxies of a planned model, then the planned model with the best of them."""
    started = time.monotonic()
    from budgetlm.tune import load_study, run_study
    from budgetlm.tune.around import AroundOptions
    from budgetlm.tune.report import render_summary
    from budgetlm.tune.spec import around_study

    if (study_file is None) == (around is None):
        raise UserError("tune: give a study file or --around PLAN.yaml" + (
            ", not both" if around is not None else ""))
    options = AroundOptions(share=share, proxy_width=proxy_width, trial_time=trial_time,
                            train_after=False if no_train else None, name=name)
    if around is not None:
        study = around_study(around, overrides, storage, options)
    else:
        study = load_study(study_file, overrides, storage, options)  # type: ignore[arg-type]
    live = err_console if json_out else console
    if study.spec.around is not None:
        _tune_around(study, workers, live, quiet or json_out, json_out, started)
        return
    summary = run_study(study, workers=workers, console=live, quiet=quiet or json_out)
    if json_out:
        print_json(summary)
    else:
        render_summary(console, summary, study, unfinished=False)
        for err in summary.get("errors") or []:
            err_console.print(f"[red]tuner error:[/] {escape(err.strip().splitlines()[-1])}",
                              highlight=False)
    if summary.get("best") is None:
        raise UserError(summary.get("unfinished") or "no trial finished")


def _tune_around(study: Any, workers: int | None, live: Any, quiet: bool, json_out: bool,
                 started: float) -> None:
    """`tune --around`: the study, the transfer, the final run; exit 2 when that run failed."""
    from budgetlm.tune.around_run import run_around

    record = run_around(study, workers=workers, console=live, quiet=quiet,
                        show=None if json_out else console, started=started)
    if json_out:
        print_json(record)
    final = record.get("final")
    if final and final["state"] != "complete":
        raise UserError(f"the transferred run ended {final['status']}: {final['reason']} "
                        f"({final['run_dir']}; the study and {record['transferred']} are kept)")


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
