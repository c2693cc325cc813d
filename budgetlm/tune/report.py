"""What a study leaves behind, and how it reads back.

Under `runs/<name>/`: `trials.csv` and `trials.parquet` (Optuna's `trials_dataframe` columns —
number, values, times, duration, params_*, user_attrs_*, state — plus `tokens`, `wall_seconds`,
`outcome` and `reason`), `best.yaml` (the best trial's RunConfig, runnable by `budgetlm train`),
`report.html` (optimization history, learning curves on the cap axis, loss vs cost with its
Pareto front, parameter importances: inline SVG, no JavaScript) and `summary.json`.

`best.yaml` and `budgetlm export` write the trial's config as it ran. A trial capped by time is
written with a token cap instead: the tokens it reached (same data, same tokens-driven schedule
shape, reproducible on any machine); `keep_time_cap=True` keeps the time cap.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from budgetlm.config import RunConfig, to_yaml
from budgetlm.errors import UserError
from budgetlm.tune import storage as st
from budgetlm.tune.spec import AXIS_SCALE, Study
from budgetlm.tune.trials import short_params

_DROP = ("user_attrs_config", "user_attrs_heartbeat", "user_attrs_worker_start")
MIN_TRIALS_FOR_IMPORTANCE = 4


def all_trials(obj: Any) -> list[Any]:
    return list(st.retry(obj.get_trials, deepcopy=False))


def _values(t: Any) -> list[float] | None:
    return list(t.values) if t.values is not None else None


def best_trial(study: Study, obj: Any) -> Any | None:
    """Single objective: the lowest value. Pareto: the front's trial lowest on the first."""
    from optuna.trial import TrialState

    done = [t for t in all_trials(obj) if t.state == TrialState.COMPLETE and t.values]
    if not done:
        return None
    return min(done, key=lambda t: (t.values[0], t.number))


def pareto(study: Study, obj: Any) -> list[Any]:
    from optuna.trial import TrialState

    done = [t for t in all_trials(obj) if t.state == TrialState.COMPLETE and t.values]
    front = []
    for t in done:
        dominated = any(
            all(a <= b for a, b in zip(o.values, t.values, strict=True))
            and any(a < b for a, b in zip(o.values, t.values, strict=True))
            for o in done
        )
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: tuple(t.values))


# ---------------------------------------------------------------------------------------------
# Export


def export_config(
    study: Study, obj: Any, number: int | None = None, keep_time_cap: bool = False
) -> RunConfig:
    """The RunConfig of trial `number` (default: the best), ready for `budgetlm train`."""
    if number is None:
        trial = best_trial(study, obj)
        if trial is None:
            raise UserError(f"study {study.spec.name}: no completed trial yet")
    else:
        found = [t for t in all_trials(obj) if t.number == number]
        if not found:
            raise UserError(f"--trial {number}: study {study.spec.name} has no such trial")
        trial = found[0]
    raw = trial.user_attrs.get("config")
    if raw is None:
        why = trial.user_attrs.get("reason", trial.state.name)
        raise UserError(f"--trial {trial.number}: no config was built for it ({why})")
    d = json.loads(json.dumps(raw))
    cap = study.spec.trial_cap
    reached = {
        "steps": trial.user_attrs.get("steps"),
        "tokens": trial.user_attrs.get("tokens"),
        "train_seconds": trial.user_attrs.get("train_seconds"),
    }
    meta = d.setdefault("meta", {})
    meta.pop("fault", None)
    meta["tune"] = {
        "study": study.spec.name,
        "storage": study.storage_url,
        "trial": trial.number,
        "state": trial.state.name,
        "objectives": study.spec.objectives,
        "values": _values(trial),
        "params": trial.params,
        "trial_cap": {cap.kind: cap.value},
        "reached": reached,
    }
    d["name"] = f"{study.spec.name}-trial{trial.number}" if number is not None else (
        f"{study.spec.name}-best"
    )
    train = d["train"]
    if cap.kind == "time" and not keep_time_cap and reached["tokens"]:
        train["max_time"] = None
        train["max_tokens"] = int(reached["tokens"])
        train["eval_time_interval"] = None
        steps = int(reached["steps"] or 1)
        train["eval_interval"] = max(1, math.ceil(steps / max(1, study.spec.evals or 10)))
        meta["tune"]["note"] = (
            f"the trial was capped at {cap.value:g} s and reached {reached['tokens']} tokens; "
            "this config caps at those tokens so a rerun is reproducible"
        )
    return RunConfig.model_validate(d)


def write_config(cfg: RunConfig, path: Path, note: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {note}\n" + to_yaml(cfg))
    return path


# ---------------------------------------------------------------------------------------------
# Frames


def trials_frame(study: Study, obj: Any) -> Any:
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
            "number": t.number, "state": t.state.name, "values": _values(t),
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
        "pareto_front": [row(t) for t in pareto(study, obj)] if spec.multi else None,
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


def saved_line(s: dict[str, Any]) -> str:
    n = s["pruned_by_pruner"]
    if not n:
        return "pruning stopped no trial early"
    total = s["trial_seconds"] + s["saved_seconds"]
    share = 100 * s["saved_seconds"] / total if total else 0.0
    return (
        f"pruning stopped {n} trial(s) early and saved ~{s['saved_seconds']:.0f} trial-seconds "
        f"({share:.0f}% of the {total:.0f} s the trials would have taken unpruned)"
    )


# ---------------------------------------------------------------------------------------------
# HTML


def html_report(study: Study, obj: Any, s: dict[str, Any]) -> str:
    from optuna.trial import TrialState

    from budgetlm.tune import plots

    spec = study.spec
    trials = all_trials(obj)
    target = spec.objectives[0]
    sections: list[tuple[str, str]] = []

    # Optimization history.
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    best_line, best = [], math.inf
    for t in sorted(done, key=lambda t: t.number):
        best = min(best, t.values[0])
        best_line.append((t.number, best))
    series = [
        plots.Series("complete", [(t.number, t.values[0]) for t in done], plots.PALETTE[0],
                     labels=[f"trial {t.number}: {t.values[0]:.4f} {short_params(t.params)}"
                             for t in done]),
        plots.Series("pruned (last value)", [
            (t.number, t.intermediate_values[max(t.intermediate_values)]) for t in pruned
        ], plots.GRAY, hollow=True, labels=[f"trial {t.number}: {t.user_attrs.get('reason')}"
                                            for t in pruned]),
        plots.Series("best so far", best_line, plots.PALETTE[1], mode="steps"),
    ]
    sections.append(("Optimization history", plots.chart(series, f"{target} by trial", "trial",
                                                          target)))

    # Learning curves on the cap axis.
    if not spec.multi:
        kind = spec.trial_cap.kind
        scale = AXIS_SCALE[kind]
        unit = {"time": "seconds", "tokens": "tokens", "flops": "FLOPs", "steps": "steps"}[kind]
        curves = []
        best_n = s["best"]["number"] if s["best"] else None
        for t in trials:
            if not t.intermediate_values:
                continue
            pts = sorted((k / scale, v) for k, v in t.intermediate_values.items())
            color = plots.PALETTE[1] if t.number == best_n else (
                plots.PALETTE[0] if t.state == TrialState.COMPLETE else plots.GRAY
            )
            curves.append(plots.Series(f"trial {t.number}", pts, color, mode="lines",
                                       opacity=1.0 if t.number == best_n else 0.6,
                                       legend=t.number == best_n))
        sections.append((f"Learning curves (what the pruner saw, on the {kind} axis)",
                         plots.chart(curves, f"intermediate {target} vs {unit}", unit, target)))

    # Loss vs cost and the Pareto front.
    if spec.multi:
        xname = spec.objectives[1]
        pts = [(t.values[1], t.values[0]) for t in done]
    else:
        xname = "training FLOPs"
        done = [t for t in done if t.user_attrs.get("flops")]
        pts = [(float(t.user_attrs["flops"]), t.values[0]) for t in done]
    front_idx = plots.pareto_front(pts)
    front = [pts[i] for i in front_idx]
    labels = [f"trial {t.number}: {short_params(t.params)}" for t in done]
    sections.append(("Loss vs cost (Pareto front: nothing is both cheaper and better)", plots.chart(
        [plots.Series("trials", pts, plots.PALETTE[0], labels=labels),
         plots.Series("Pareto front", front, plots.PALETTE[1], mode="lines+markers",
                      labels=[labels[i] for i in front_idx])],
        f"{target} vs {xname}", xname, target, log_x=True,
    )))

    imp = s["importances"]
    sections.append((f"Parameter importances ({s['importance_method'] or 'too few trials'})",
                     plots.bars(list(imp.items()), f"importance for {target}",
                                "importance (sums to 1)")))

    rows = []
    for t in sorted(trials, key=lambda t: t.number)[:500]:
        vals = " / ".join(f"{v:.4g}" for v in t.values) if t.values else ""
        rows.append([t.number, t.state.name, vals, t.user_attrs.get("tokens") or "",
                     f"{t.user_attrs.get('wall_seconds') or 0:.1f}", short_params(t.params),
                     t.user_attrs.get("reason") or ""])
    sections.append(("Trials", plots.table(
        ["#", "state", " / ".join(spec.objectives), "tokens", "wall s", "params", "reason"], rows)))

    best_txt = ""
    if s["best"]:
        b = s["best"]
        best_txt = (f"Best: trial {b['number']}, {target} {b['values'][0]:.4f} "
                    f"({plots._esc(short_params(b['params']))}); "
                    "<code>budgetlm train best.yaml</code> runs it again.")
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(s["states"].items()))
    intro = (
        f"<p>Study <b>{plots._esc(spec.name)}</b> in <code>{plots._esc(study.storage_url)}</code>"
        f": {s['trials']} trials ({states}); objective {' & '.join(spec.objectives)}; "
        f"each trial capped at {plots._esc(spec.trial_cap.describe())}. {best_txt}</p>"
        f"<p>{plots._esc(saved_line(s))}; {s['never_launched']} never launched (invalid or "
        f"infeasible by the estimate). Open the storage in optuna-dashboard for more.</p>"
    )
    return plots.page(f"budgetlm study {spec.name}", sections, intro)


# ---------------------------------------------------------------------------------------------
# All outputs


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
                     f"best trial {s['best']['number']} of study {study.spec.name}")
        files["best"] = str(out / "best.yaml")
    (out / "report.html").write_text(html_report(study, obj, s))
    files["report"] = str(out / "report.html")
    s["files"] = files
    (out / "summary.json").write_text(json.dumps(s, indent=2, default=str) + "\n")
    return s


def render_summary(console: Any, s: dict[str, Any], study: Study) -> None:
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
