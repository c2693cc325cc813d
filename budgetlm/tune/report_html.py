"""`report.html`: a study on one page (inline SVG, no JavaScript).

Sections: optimization history, learning curves on the cap axis (what the pruner saw), loss vs
cost with its Pareto front, parameter importances, and the table of trials.
"""

from __future__ import annotations

import math
from typing import Any

from budgetlm.plan.pareto import non_dominated
from budgetlm.runner.caps import AXIS_SCALE
from budgetlm.tune import plots
from budgetlm.tune.export import all_trials
from budgetlm.tune.spec import Study, StudySpec
from budgetlm.tune.trials import short_params

CAP_AXIS_LABEL = {"time": "seconds", "tokens": "tokens", "flops": "FLOPs", "steps": "steps"}


def saved_line(s: dict[str, Any]) -> str:
    """One sentence on what pruning saved."""
    n = s["pruned_by_pruner"]
    if not n:
        return "pruning stopped no trial early"
    total = s["trial_seconds"] + s["saved_seconds"]
    share = 100 * s["saved_seconds"] / total if total else 0.0
    return (
        f"pruning stopped {n} trial(s) early and saved ~{s['saved_seconds']:.0f} trial-seconds "
        f"({share:.0f}% of the {total:.0f} s the trials would have taken unpruned)"
    )


def html_report(study: Study, obj: Any, s: dict[str, Any]) -> str:
    """The report page of `study` (optuna study `obj`, summary `s`)."""
    from optuna.trial import TrialState

    spec = study.spec
    trials = all_trials(obj)
    target = spec.objectives[0]
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    sections = [("Optimization history", _history_chart(trials, done, target))]
    if not spec.multi:
        best_n = s["best"]["number"] if s["best"] else None
        sections.append((
            f"Learning curves (what the pruner saw, on the {spec.trial_cap.kind} axis)",
            _learning_curves_chart(spec, trials, best_n),
        ))
    sections.append(("Loss vs cost (Pareto front: nothing is both cheaper and better)",
                     _cost_chart(spec, done)))
    imp = s["importances"]
    sections.append((f"Parameter importances ({s['importance_method'] or 'too few trials'})",
                     plots.bars(list(imp.items()), f"importance for {target}",
                                "importance (sums to 1)")))
    sections.append(("Trials", _trials_table(spec, trials)))
    return plots.page(f"budgetlm study {spec.name}", sections, _intro(study, s))


def _history_chart(trials: list[Any], done: list[Any], target: str) -> str:
    """Each trial's value by number, pruned trials' last values, and the best so far."""
    from optuna.trial import TrialState

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
    return plots.chart(series, f"{target} by trial", "trial", target)


def _learning_curves_chart(spec: StudySpec, trials: list[Any], best_n: int | None) -> str:
    """The intermediate values of every trial on the cap's axis, the best trial highlighted."""
    from optuna.trial import TrialState

    target = spec.objectives[0]
    kind = spec.trial_cap.kind
    scale = AXIS_SCALE[kind]
    unit = CAP_AXIS_LABEL[kind]
    curves = []
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
    return plots.chart(curves, f"intermediate {target} vs {unit}", unit, target)


def _cost_chart(spec: StudySpec, done: list[Any]) -> str:
    """The first objective against the second (a Pareto study) or the training FLOPs, with the
    front of the points drawn."""
    target = spec.objectives[0]
    if spec.multi:
        xname = spec.objectives[1]
        pts = [(t.values[1], t.values[0]) for t in done]
    else:
        xname = "training FLOPs"
        done = [t for t in done if t.user_attrs.get("flops")]
        pts = [(float(t.user_attrs["flops"]), t.values[0]) for t in done]
    front_idx = sorted(non_dominated(pts), key=lambda i: pts[i])
    front = [pts[i] for i in front_idx]
    labels = [f"trial {t.number}: {short_params(t.params)}" for t in done]
    return plots.chart(
        [plots.Series("trials", pts, plots.PALETTE[0], labels=labels),
         plots.Series("Pareto front", front, plots.PALETTE[1], mode="lines+markers",
                      labels=[labels[i] for i in front_idx])],
        f"{target} vs {xname}", xname, target, log_x=True,
    )


def _trials_table(spec: StudySpec, trials: list[Any]) -> str:
    """The first 500 trials, one row each."""
    rows = []
    for t in sorted(trials, key=lambda t: t.number)[:500]:
        vals = " / ".join(f"{v:.4g}" for v in t.values) if t.values else ""
        rows.append([t.number, t.state.name, vals, t.user_attrs.get("tokens") or "",
                     f"{t.user_attrs.get('wall_seconds') or 0:.1f}", short_params(t.params),
                     t.user_attrs.get("reason") or ""])
    return plots.table(
        ["#", "state", " / ".join(spec.objectives), "tokens", "wall s", "params", "reason"], rows)


def _intro(study: Study, s: dict[str, Any]) -> str:
    """The page's first paragraphs: the study, its trials, the best one, what pruning saved."""
    spec = study.spec
    esc = plots.escape
    best_txt = ""
    if s["best"]:
        b = s["best"]
        best_txt = (f"Best: trial {b['number']}, {spec.objectives[0]} {b['values'][0]:.4f} "
                    f"({esc(short_params(b['params']))}); "
                    "<code>budgetlm train best.yaml</code> runs it again.")
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(s["states"].items()))
    return (
        f"<p>Study <b>{esc(spec.name)}</b> in <code>{esc(study.storage_url)}</code>"
        f": {s['trials']} trials ({states}); objective {' & '.join(spec.objectives)}; "
        f"each trial capped at {esc(spec.trial_cap.describe())}. {best_txt}</p>"
        f"<p>{esc(saved_line(s))}; {s['never_launched']} never launched (invalid or "
        f"infeasible by the estimate). Open the storage in optuna-dashboard for more.</p>"
    )
