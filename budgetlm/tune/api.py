"""What the command line calls: run a study, (re)write its report, export one trial."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from budgetlm.tune.export import check_output_file, export_config, write_config
from budgetlm.tune.live import live_table
from budgetlm.tune.report import write_outputs
from budgetlm.tune.spec import Study
from budgetlm.tune.study import Tuner, open_study


def run_study(study: Study, workers: int | None = None, console: Any = None,
              quiet: bool = False,
              after: Callable[[Tuner, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the study until its budget is spent; write the outputs; the summary.
    `after(tuner, summary)` runs once the outputs are written, while the tuner's trial
    launcher is still up (`tune --around` trains its transferred config with it)."""
    interactive = console is not None and console.is_terminal and not quiet
    log = None if (quiet or console is None or interactive) else (
        lambda msg: console.print(msg, highlight=False, soft_wrap=True)
    )
    tuner = Tuner(study, workers, log=log)
    try:
        summary = _run(tuner, study, console, quiet, interactive)
        if after is not None:
            after(tuner, summary)
        return summary
    finally:
        tuner.close()


def _run(
    tuner: Tuner, study: Study, console: Any, quiet: bool, interactive: bool
) -> dict[str, Any]:
    """Prepare, run the workers (under a live table on a terminal), write the outputs."""
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


def report_study(study: Study) -> dict[str, Any]:
    """Re-read the study from its storage and (re)write its outputs."""
    obj, _ = open_study(study, create=False)
    return write_outputs(study, obj)


def export_trial(study: Study, number: int | None, output: Any,
                 keep_time_cap: bool = False) -> Any:
    """Write trial `number`'s (default: the best) RunConfig to `output`; the config."""
    check_output_file(Path(output))
    obj, _ = open_study(study, create=False)
    cfg = export_config(study, obj, number, keep_time_cap=keep_time_cap)
    which = f"trial {number}" if number is not None else "best trial"
    write_config(cfg, Path(output), f"{which} of study {study.spec.name}")
    return cfg
