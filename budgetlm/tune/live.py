"""The table shown while a study runs: the latest trials and the budget."""

from __future__ import annotations

import time
from typing import Any

from budgetlm.tune.study import Tuner


def live_table(tuner: Tuner) -> Any:
    """The rich table shown while the study runs: the latest trials and the budget."""
    from rich import box
    from rich.table import Table

    spec = tuner.spec
    target = spec.objectives[0]
    with tuner.rows_lock:
        rows = [dict(r) for r in tuner.rows.values()]
    done = [r for r in rows if r.get("state") == "COMPLETE" and r.get("value") is not None]
    best = min(done, key=lambda r: r["value"]) if done else None
    budget = []
    if spec.budget.trials:
        budget.append(f"{len(rows)}/{spec.budget.trials} trials this run")
    if spec.budget.time:
        budget.append(f"{tuner.elapsed():.0f}/{spec.budget.time:g} s")
    best_txt = f" · best {target} {best['value']:.4f} (trial {best['number']})" if best else ""
    t = Table(title=f"tuning {spec.name} · {' · '.join(budget)}{best_txt}",
              box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("#", "state", target, "s", "params", "reason"):
        t.add_column(col, justify="left" if col in ("state", "params", "reason") else "right",
                     no_wrap=col != "reason", overflow="ellipsis")
    now = time.monotonic()
    for r in sorted(rows, key=lambda r: r["number"])[-18:]:
        secs = r.get("wall")
        if secs is None and r.get("started") is not None:
            secs = now - r["started"]
        value = r.get("value")
        t.add_row(
            str(r["number"]), r.get("state", ""),
            f"{value:.4f}" if isinstance(value, float) else "-",
            f"{secs:.0f}" if secs is not None else "",
            r.get("params", ""), (r.get("reason") or "")[:70],
        )
    return t
