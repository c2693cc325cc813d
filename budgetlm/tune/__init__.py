"""Hyperparameter tuning on a budget: a study file -> an Optuna study of capped trials.

    budgetlm tune STUDY.yaml [--workers N] [--storage URL] [--set key=value]...
    budgetlm report STUDY.yaml          # tables, CSV/Parquet, best.yaml, report.html
    budgetlm export STUDY.yaml [--trial N] -o FILE

Modules: `spec` (the study file, trial configs, feasibility), `storage` (optuna storages,
SQLite retries, stale trials), `runner` (one trial in a child process with a hard cap),
`child` (the child's entry point), `study` (the ask/tell loop, workers, pruning) and `report`
(outputs). Nothing heavy is imported with the package (a trial's child process imports it):
`spec` loads on first use, optuna, pandas and torch when needed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["StudySpec", "export_trial", "load_study", "report_study", "run_study",
           "study_json_schema"]


def run_study(study: Any, workers: int | None = None, console: Any = None,
              quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) the study until its budget is spent; write the outputs; the summary."""
    from budgetlm.tune.study import Tuner

    interactive = console is not None and console.is_terminal and not quiet
    log = None if (quiet or console is None or interactive) else (
        lambda msg: console.print(msg, highlight=False, soft_wrap=True)
    )
    tuner = Tuner(study, workers, log=log)
    try:
        return _run(tuner, study, console, quiet, interactive)
    finally:
        tuner.close()


def _run(tuner: Any, study: Any, console: Any, quiet: bool, interactive: bool) -> dict[str, Any]:
    from contextlib import nullcontext

    from budgetlm.tune.report import write_outputs
    from budgetlm.tune.study import live_table

    status = console.status("preparing (profile, data, storage)…") if interactive else None
    with status if status is not None else nullcontext():
        tuner.prepare()
    if console is not None and not quiet:
        for note in tuner.notes:
            console.print(f"[yellow]{note}[/]", highlight=False, soft_wrap=True)
    if interactive:
        from rich.live import Live

        live = Live(get_renderable=lambda: live_table(tuner), console=console,
                    refresh_per_second=2, transient=True)
        ctx: Any = live
    else:
        ctx = nullcontext()
    try:
        with ctx:
            tuner.run()
    except KeyboardInterrupt:
        try:
            write_outputs(study, tuner.obj)
        except Exception:  # noqa: BLE001 - the interrupt matters more than the report
            pass
        raise
    summary = write_outputs(study, tuner.obj)
    summary["elapsed_seconds"] = round(tuner.elapsed(), 1)
    summary["workers"] = tuner.workers
    summary["notes"] = summary.get("notes", []) + tuner.notes
    summary["errors"] = tuner.errors
    return summary


def report_study(study: Any) -> dict[str, Any]:
    """Re-read the study from its storage and (re)write its outputs."""
    from budgetlm.tune.report import write_outputs
    from budgetlm.tune.study import open_study

    obj, _ = open_study(study, create=False)
    return write_outputs(study, obj)


def export_trial(study: Any, number: int | None, output: Any,
                 keep_time_cap: bool = False) -> Any:
    """Write trial `number`'s (default: the best) RunConfig to `output`; the config."""
    from pathlib import Path

    from budgetlm.tune.report import export_config, write_config
    from budgetlm.tune.study import open_study

    obj, _ = open_study(study, create=False)
    cfg = export_config(study, obj, number, keep_time_cap=keep_time_cap)
    which = f"trial {number}" if number is not None else "best trial"
    write_config(cfg, Path(output), f"{which} of study {study.spec.name}")
    return cfg


def __getattr__(name: str) -> Any:
    if name in ("StudySpec", "load_study", "study_json_schema"):
        from budgetlm.tune import spec

        return getattr(spec, name)
    raise AttributeError(f"module 'budgetlm.tune' has no attribute {name!r}")
