"""A trial's config as it ran, written back as a RunConfig that `budgetlm train` runs.

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
from budgetlm.tune.spec import Study
from budgetlm.units import atomic_write_text


def all_trials(obj: Any) -> list[Any]:
    """Every trial of the optuna study `obj` (not deep-copied)."""
    return list(st.retry(obj.get_trials, deepcopy=False))


def trial_values(t: Any) -> list[float] | None:
    """A trial's objective values as a list, or None."""
    return list(t.values) if t.values is not None else None


def best_trial(study: Study, obj: Any) -> Any | None:
    """Single objective: the lowest value. Pareto: the front's trial lowest on the first."""
    from optuna.trial import TrialState

    done = [t for t in all_trials(obj) if t.state == TrialState.COMPLETE and t.values]
    if not done:
        return None
    return min(done, key=lambda t: (t.values[0], t.number))


def unfinished_line(trials: list[Any]) -> str:
    """Why there is no best trial: 'no trial finished: 3 diverged' (how each trial ended)."""
    counts: dict[str, int] = {}
    for t in trials:
        if t.state.name == "WAITING":
            continue
        kind = t.user_attrs.get("outcome") or t.state.name.lower()
        counts[kind] = counts.get(kind, 0) + 1
    if not counts:
        return "no trial finished: none has run yet"
    return "no trial finished: " + ", ".join(f"{n} {kind}" for kind, n in counts.items())


def _chosen_trial(study: Study, obj: Any, number: int | None) -> Any:
    """The best trial, or trial `number` when it finished; UserError saying why not."""
    if number is None:
        trial = best_trial(study, obj)
        if trial is None:
            raise UserError(f"study {study.spec.name}: {unfinished_line(all_trials(obj))}")
        return trial
    found = [t for t in all_trials(obj) if t.number == number]
    if not found:
        raise UserError(f"--trial {number}: study {study.spec.name} has no such trial")
    trial = found[0]
    if trial.state.name != "COMPLETE" or not trial.values:
        kind = trial.user_attrs.get("outcome") or trial.state.name.lower()
        reason = trial.user_attrs.get("reason")
        why = kind if not reason else reason if reason.startswith(kind) else f"{kind}: {reason}"
        raise UserError(f"--trial {number}: trial {number} did not finish ({why})")
    return trial


def export_config(
    study: Study, obj: Any, number: int | None = None, keep_time_cap: bool = False
) -> RunConfig:
    """The RunConfig of trial `number` (default: the best), ready for `budgetlm train`; only a
    trial that finished is exported."""
    trial = _chosen_trial(study, obj, number)
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
        "values": trial_values(trial),
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


def check_output_file(path: Path, flag: str = "--output") -> None:
    """UserError unless `path` can be a file to write: not a directory, no file for a parent."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory; give a file path such as "
                        f"{path / 'trial.yaml'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: {parent} is not a directory")
            break


def write_config(cfg: RunConfig, path: Path, note: str, flag: str = "--output") -> Path:
    """`cfg` as YAML under a `# note` line, written atomically; UserError naming `path` when
    it cannot be written."""
    check_output_file(path, flag)
    try:
        return atomic_write_text(path, f"# {note}\n" + to_yaml(cfg))
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write ({exc.strerror or exc})") from None
