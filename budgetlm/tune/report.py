"""What a study leaves behind, and how it reads back.

Under `runs/<name>/`: `trials.csv` and `trials.parquet` (Optuna's `trials_dataframe` columns —
number, values, times, duration, params_*, user_attrs_*, state — plus `tokens`, `wall_seconds`,
`outcome` and `reason`), `best.yaml` (the best trial's RunConfig, runnable by `budgetlm train`;
see budgetlm.tune.export), `report.html` (optimization history, learning curves on the cap axis,
loss vs cost with its Pareto front, parameter importances: inline SVG, no JavaScript; see
budgetlm.tune.report_html) and `summary.json`. A Pareto study's front is optuna's
`best_trials`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from budgetlm.tune import storage as st
from budgetlm.tune.export import (
    all_trials,
    best_trial,
    export_config,
    trial_values,
    unfinished_line,
    write_config,
)
from budgetlm.tune.report_html import html_report, saved_line
from budgetlm.tune.spec import Study
from budgetlm.tune.trials import short_params
from budgetlm.units import atomic_write_text, write_json

__all__ = ["export_config", "pareto_front", "render_summary", "saved_line", "summarize",
           "trials_frame", "write_config", "write_outputs"]

_DROP = ("user_attrs_config", "user_attrs_heartbeat", "user_attrs_worker_start")
MIN_TRIALS_FOR_IMPORTANCE = 4


def pareto_front(obj: Any) -> list[Any]:
    """A Pareto study's front (optuna's `best_trials`), in order of the objective values."""
    return sorted(st.retry(lambda: obj.best_trials), key=lambda t: tuple(t.values))


def trials_frame(study: Study, obj: Any) -> Any:
    """The trials as a pandas frame: optuna's `trials_dataframe` plus tokens, wall_seconds,
    outcome and reason."""
    import pandas as pd

    attrs = ("number", "values" if study.spec.multi else "value", "datetime_start",
             "datetime_complete", "duration", "params", "user_attrs", "state")
    df = st.retry(obj.trials_dataframe, attrs=attrs)
    if df.empty:
        return pd.DataFrame(columns=["number", "state", "tokens", "wall_seconds", "outcome",
                                     "reason"])
    df = df.drop(columns=[c for c in _DROP if c in df.columns])
    for col, src in (("tokens", "user_attrs_tokens"), ("wall_seconds", "user_attrs_wall_seconds"),
                     ("outcome", "user_attrs_outcome"), ("reason", "user_attrs_reason")):
        df[col] = df[src] if src in df.columns else None
    return df


def _parquet_safe(df: Any) -> Any:
    """Object columns of mixed types become strings (pyarrow wants one type per column)."""
    import pandas as pd

    out = df.copy()
    for col in out.columns:
        if out[col].dtype != object:
            continue
        vals = [v for v in out[col]
                if v is not None and not (isinstance(v, float) and math.isnan(v))]
        kinds = {type(v) for v in vals}
        if kinds <= {int, float} and kinds:
            out[col] = pd.to_numeric(out[col], errors="coerce")
        elif kinds and not kinds <= {str} and not kinds <= {bool}:
            out[col] = [None if v is None or (isinstance(v, float) and math.isnan(v))
                        else (v if isinstance(v, str) else json.dumps(v, default=str))
                        for v in out[col]]
    return out


# ---------------------------------------------------------------------------------------------
# Summary


def _importances(study: Study, obj: Any) -> tuple[dict[str, float], str]:
    """Parameter importances for the first objective: fANOVA when scikit-learn is installed,
    else PED-ANOVA (Watanabe et al. 2023; no extra dependency). ({}, "") with too few trials."""
    import warnings

    import optuna
    from optuna.trial import TrialState

    done = st.retry(obj.get_trials, deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, ""
    try:
        import sklearn  # noqa: F401

        ev, name = optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"
    except ImportError:
        ev, name = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
    try:
        target = (lambda t: t.values[0]) if study.spec.multi else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(obj, evaluator=ev, target=target)
        return {k: float(v) for k, v in imp.items()}, name
    except Exception:  # too few trials, a single point, constant params
        return {}, ""


def summarize(study: Study, obj: Any) -> dict[str, Any]:
    """The study's summary (summary.json, `budgetlm report --json`)."""
    from optuna.trial import TrialState

    trials = all_trials(obj)
    states: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
        if t.state != TrialState.WAITING:
            k = t.user_attrs.get("outcome", t.state.name.lower())
            outcomes[k] = outcomes.get(k, 0) + 1
    by_pruner = [t for t in trials if t.user_attrs.get("outcome") == "pruned"]
    saved = sum(float(t.user_attrs.get("saved_seconds") or 0.0) for t in by_pruner)
    spent = sum(float(t.user_attrs.get("wall_seconds") or 0.0) for t in trials)
    best = best_trial(study, obj)
    spec = study.spec

    def row(t: Any) -> dict[str, Any]:
        return {
            "number": t.number, "state": t.state.name, "values": trial_values(t),
            "params": t.params, "outcome": t.user_attrs.get("outcome"),
            "reason": t.user_attrs.get("reason"), "tokens": t.user_attrs.get("tokens"),
            "wall_seconds": t.user_attrs.get("wall_seconds"),
            "val_bpb": t.user_attrs.get("val_bpb"),
        }

    return {
        "study": spec.name,
        "storage": study.storage_url,
        "objectives": spec.objectives,
        "trial_cap": {spec.trial_cap.kind: spec.trial_cap.value},
        "trials": len(trials),
        "states": states,
        "outcomes": outcomes,
        "best": row(best) if best is not None else None,
        "unfinished": unfinished_line(trials) if best is None else None,
        "pareto_front": [row(t) for t in pareto_front(obj)] if spec.multi else None,
        "top": [row(t) for t in sorted(
            (t for t in trials if t.state == TrialState.COMPLETE and t.values),
            key=lambda t: (t.values[0], t.number))[:10]],
        "pruned_by_pruner": len(by_pruner),
        "saved_seconds": round(saved, 1),
        "trial_seconds": round(spent, 1),
        "never_launched": sum(outcomes.get(k, 0) for k in ("invalid", "infeasible")),
        "failures": [
            {"number": t.number, "outcome": t.user_attrs.get("outcome"),
             "reason": t.user_attrs.get("reason")}
            for t in trials if t.state == TrialState.FAIL
        ],
    } | dict(zip(("importances", "importance_method"), _importances(study, obj), strict=True))


def write_outputs(study: Study, obj: Any) -> dict[str, Any]:
    """Write trials.csv/.parquet, best.yaml, report.html, summary.json; return the summary."""
    out = study.outdir
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(study, obj)
    files: dict[str, str] = {}
    df = trials_frame(study, obj)
    df.to_csv(out / "trials.csv", index=False)
    files["csv"] = str(out / "trials.csv")
    try:
        _parquet_safe(df).to_parquet(out / "trials.parquet", index=False)
        files["parquet"] = str(out / "trials.parquet")
    except Exception as exc:  # a frame pyarrow cannot type; the CSV still holds it
        s.setdefault("notes", []).append(f"trials.parquet not written: {exc}")
    if s["best"] is not None:
        cfg = export_config(study, obj)
        write_config(cfg, out / "best.yaml",
                     f"best trial {s['best']['number']} of study {study.spec.name}",
                     flag="study output")
        files["best"] = str(out / "best.yaml")
    atomic_write_text(out / "report.html", html_report(study, obj, s))
    files["report"] = str(out / "report.html")
    s["files"] = files
    write_json(out / "summary.json", s)
    return s


def render_summary(console: Any, s: dict[str, Any], study: Study,
                   unfinished: bool = True) -> None:
    """The summary as a rich table and a few lines on `console`; `unfinished`: say why there
    is no best trial when none finished."""
    from rich import box
    from rich.table import Table

    spec = study.spec
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(s["states"].items()))
    what = "Pareto front" if spec.multi else "best trials"
    t = Table(
        title=f"study {spec.name}: {s['trials']} trials ({states}); {what}",
        box=box.SIMPLE_HEAD, pad_edge=False,
    )
    for col in ("#", " / ".join(spec.objectives), "tokens", "wall s", "params"):
        t.add_column(col, justify="left" if col == "params" else "right", overflow="fold")
    rows = s["pareto_front"] if spec.multi else s["top"]
    for r in rows:
        vals = " / ".join(f"{v:.4g}" for v in r["values"]) if r["values"] else "-"
        t.add_row(str(r["number"]), vals, f"{r.get('tokens') or 0:,}",
                  f"{r.get('wall_seconds') or 0:.1f}", short_params(r["params"]))
    console.print(t)
    if spec.multi:
        console.print(f"Pareto front: {len(s['pareto_front'] or [])} trial(s) "
                      f"({' vs '.join(spec.objectives)})", highlight=False)
    if s["best"]:
        b = s["best"]
        console.print(f"best: trial {b['number']} {spec.objectives[0]} {b['values'][0]:.4f} "
                      f"({short_params(b['params'])})", highlight=False, soft_wrap=True)
    elif unfinished and s.get("unfinished"):
        console.print(f"[yellow]{s['unfinished']}[/]", highlight=False, soft_wrap=True)
    if s["importances"]:
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(s["importances"].items())[:4])
        console.print(f"importance ({s['importance_method']}): {top}", highlight=False,
                      soft_wrap=True)
    console.print(saved_line(s) + f"; {s['never_launched']} never launched "
                  "(invalid or infeasible)", highlight=False, soft_wrap=True)
    for f in s["failures"][:10]:
        console.print(f"[dim]trial {f['number']} failed ({f['outcome']}): {f['reason']}[/]",
                      highlight=False, soft_wrap=True)
    files = s.get("files") or {}
    if files:
        console.print("wrote " + ", ".join(files.values()), highlight=False, soft_wrap=True)
