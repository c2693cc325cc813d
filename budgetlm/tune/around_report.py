"""around.json (`AroundFile`'s dict form) as a rich table: the plan alone against the
transferred settings, then the tuning time, the trials and the final run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from budgetlm.tune.trials import short_params


def _num(v: Any, fmt: str = ".3g") -> str:
    return "-" if v is None else format(v, fmt)


def _batch(s: dict[str, Any]) -> str:
    tokens = s.get("batch_tokens")
    per = f" = {tokens:,} tokens" if tokens else ""
    return f"{s['micro_batch']} x {s['grad_accum']}{per}"


def _schedule(s: dict[str, Any]) -> str:
    tail = (f"decay {_num(s['decay_fraction'])}" if s.get("decay_fraction") is not None
            else f"min lr x{_num(s['min_lr_ratio'])}")
    return f"{s['schedule']}, warmup {_num(s['warmup_fraction'])}, {tail}"


def settings_rows(plan: dict[str, Any], moved: dict[str, Any] | None) -> list[tuple[str, ...]]:
    """(what, plan alone, transferred) rows."""
    rows = [
        ("optimizer", lambda s: s["optimizer"]),
        ("lr", lambda s: _num(s["lr"])),
        ("hidden lr (lr / m)", lambda s: _num(s["hidden_lr"]) if s["hidden_lr"] is not None
         else "muon_lr"),
        ("init_std", lambda s: _num(s["init_std"])),
        ("batch (micro x accum)", _batch),
        ("schedule", _schedule),
        ("dropout", lambda s: _num(s.get("dropout"))),
        ("parametrization", lambda s: f"{s['parametrization']} (m = {s['width_mult']:.3g})"),
    ]
    return [(name, get(plan), get(moved) if moved else "-") for name, get in rows]


def render_around(console: Any, d: dict[str, Any]) -> None:
    """`d` (around.json) on `console`: a table and a few lines."""
    from rich import box
    from rich.table import Table

    t = Table(title=f"tune --around {d['plan']}: proxies at d_model {d['proxy_width']} -> "
                    f"{d['d_model']} (m = {d['width_mult']:.3g})",
              box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("", "plan alone", "transferred"):
        t.add_column(col, justify="left")
    for row in settings_rows(d["plan_settings"], d.get("transferred_settings")):
        t.add_row(*row)
    console.print(t)
    n = d["trials"]
    console.print(
        f"tuning: {d['tuning_seconds']:.1f} s of the plan's {d['total_seconds']:g} s "
        f"({100 * d['tuning_fraction']:.1f}%; share {d['share']:g}); trials {n['total']} "
        f"({n['complete']} complete, {n['pruned']} pruned, {n['failed']} failed)",
        highlight=False, soft_wrap=True)
    best = d.get("best")
    if best:
        console.print(f"best: trial {best['number']} {best['objective']} {best['value']:.4f} "
                      f"({short_params(best['params'])})", highlight=False, soft_wrap=True)
    final = d.get("final")
    if final:
        console.print(
            f"final run ({final['status']}: {final['reason']}): val_loss "
            f"{_num(final['val_loss'], '.4f')}, val_bpb {_num(final['val_bpb'], '.4f')}, "
            f"{_num(final['wall_seconds'], '.1f')} s wall, {final['run_dir']}",
            highlight=False, soft_wrap=True)
    elif d.get("transferred"):
        console.print(f"not trained; run it: budgetlm train {d['transferred']}",
                      highlight=False, soft_wrap=True)
    for note in d.get("notes") or []:
        console.print(f"[yellow]{note}[/]", highlight=False, soft_wrap=True)
    if d.get("transferred"):
        moved = Path(d["transferred"])
        console.print(f"wrote {moved}, {moved.parent / 'around.json'}", highlight=False,
                      soft_wrap=True)
