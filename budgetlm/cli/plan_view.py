"""A plan on the terminal: the ranked candidates, the Pareto front, the compute-optimal point
and the planner's notes."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from budgetlm.cli.root import console
from budgetlm.plan import TIMED
from budgetlm.plan.loss_units import RELATIVE, relative_cell
from budgetlm.plan.marginal import marginal_line
from budgetlm.units import format_count, format_count_fixed, short_bytes

RANKED_COLUMNS = ("L×d", "N", "D", "ep", "T", "mb×acc", "prec", "lr", "time", "mem")
FRONT_COLUMNS = ("L×d", "N", "D", "T", "prec", "mb×acc", "time", "mem")
FRONT_ROWS = 12
LEFT_ALIGNED = ("L×d", "prec")
ELIDED_WHEN_SAME = ("ep", "lr", "time")  # on several GPUs (width), said in the title


def print_plan(p: Any, top: int) -> None:
    """The whole plan: first line, top `top` candidates, Pareto front, optimum and notes."""
    console.print(p.first_line, highlight=False, soft_wrap=True)
    loss_column = _loss_column(p)
    best = _relative_to(p)
    arch = getattr(p, "arch", "gpt2")
    heads = (*RANKED_COLUMNS, loss_column)
    sharded = any(c.step is not None for c in p.candidates)
    shown = _moe_columns(heads) if arch == "moe" else heads
    same = ""
    if sharded:
        shown, same = _sharded_columns(shown, p.candidates[:top], heads)
    mup = " µP" if getattr(p, "parametrization", "standard") == "mup" else ""
    ranked = _table(
        f"ranked {arch}{mup} candidates"
        + (" by training + inference cost" if getattr(p, "lifetime", None) else "")
        + f" (best {min(top, len(p.candidates))} of "
        f"{len(p.candidates)} feasible; N params, "
        f"{'act active, D tokens' if arch == 'moe' else 'D tokens, ep epochs'}, T seq; "
        + (f"mb×acc and mem per GPU ({p.target.devices} GPUs); par: layout (+ck: "
           f"checkpointing), comm: share of the step{same}; " if sharded else "")
        + ("† estimate only; " if any(c.estimate_only for c in p.candidates[:top]) else "")
        + (f"{p.law.kind}: predicted loss, nats/token)" if best is None else
           f"Δ: predicted loss minus the top's, in the {p.law.name} {p.law.kind}'s nats/token, "
           "not this corpus's)"),
        shown,
    )
    for c in p.candidates[:top]:
        ranked.add_row(*(_cells(c, heads, best)[k] for k in shown))
    console.print(ranked)
    axes = " vs ".join(a.replace("_bytes", "") for a in p.pareto_axes)
    keep = (*FRONT_COLUMNS, loss_column)
    if sharded:
        keep = (*keep[:5], "par", *keep[5:])
    front = _table(f"Pareto front ({axes}: non-dominated)", keep)
    for c in p.front[:FRONT_ROWS]:
        front.add_row(*(_cells(c, heads, best)[k] for k in keep))
    console.print(front)
    console.print(_optimum_line(p), highlight=False, soft_wrap=True)
    if getattr(p, "marginal", None):
        rel = p.candidates[0].loss if getattr(p, "loss_shown", "absolute") == "relative" else None
        console.print(marginal_line(p.marginal, rel), highlight=False, soft_wrap=True)
    if any(c.extrapolated for c in p.candidates[:top]):
        console.print("[dim]* outside the range the law was fitted on[/]", highlight=False)
    for note in p.notes:
        console.print(f"[dim]· {note}[/]", highlight=False, soft_wrap=True)


def _cells(c: Any, heads: tuple[str, ...], best: float | None = None) -> dict[str, str]:
    """Candidate `c`'s cells by column: `plan_row` under `heads` (the loss relative to `best`
    when given), its active parameters, and on several GPUs its layout (checkpointing there,
    not with the precision) and the communication share of its step."""
    row = dict(zip(heads, plan_row(c, best), strict=True), act=format_count(c.active_params))
    if c.step is not None:
        row["prec"] = c.precision + ("†" if c.estimate_only else "")
        row["par"] = c.step_model.layout.label + ("+ck" if c.checkpointing else "")
        row["comm"] = f"{c.step.comm_share:.0%}"
        row["mb×acc"] = f"{c.micro_batch}×{c.grad_accum}"  # per GPU; the GPUs are in the title
    return row


def _sharded_columns(shown: tuple[str, ...], rows: list[Any],
                     heads: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """The ranked columns on several GPUs, and what the columns left out hold: the layout
    after the precision and the communication share after the time; for width, the epochs,
    lr and time only where they differ between the rows (a GPU-hours budget's time is its
    wall time for every row, a FLOP budget's lr the same for every row)."""
    out: list[str] = []
    same: list[str] = []
    for h in shown:
        cells = {_cells(c, heads)[h] for c in rows} if h in ELIDED_WHEN_SAME else set()
        if len(cells) == 1:
            same.append(f"{h} {cells.pop()}")
        else:
            out.append(h)
        if h == "prec":
            out.append("par")
        elif h == "time":
            out.append("comm")
    return tuple(out), (f"; {', '.join(same)} each" if same else "")


def _moe_columns(heads: tuple[str, ...]) -> tuple[str, ...]:
    """An MoE plan's ranked columns: active parameters after N, no epochs column (width)."""
    out = [h for h in heads if h != "ep"]
    return (*out[:2], "act", *out[2:])


def _relative_to(p: Any) -> float | None:
    """The top candidate's loss when the plan's losses are shown relative to it (a prior's, or
    a fit of another corpus: `plan.loss_units`); None when shown as they are."""
    if getattr(p, "loss_shown", None) == RELATIVE and p.candidates:
        return float(p.candidates[0].loss)
    return None


def _loss_column(p: Any) -> str:
    """The heading of the loss column: the law's kind, with the interval level of a fit; Δ
    and the kind when the losses are relative to the top candidate's."""
    kind = p.law.kind
    if _relative_to(p) is not None:
        return f"Δ {kind}"
    if kind == "fit" and p.candidates and p.candidates[0].loss_lo is not None:
        lvl = float(p.law.extra.get("interval_level", 0.9))
        kind = f"fit ({lvl:.0%} interval)"
    return kind


def _table(title: str, columns: tuple[str, ...]) -> Table:
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
              collapse_padding=True)
    for col in columns:
        t.add_column(col, justify="left" if col in LEFT_ALIGNED else "right", no_wrap=True)
    return t


def _optimum_line(p: Any) -> str:
    opt = p.optimum
    cf = opt["closed_form"]
    line = (
        f"compute-optimal for {opt['flops']:.3g} FLOPs ({p.law.name} {p.law.kind}, "
        f"{cf['method']}): N={format_count_fixed(cf['params'])}, "
        f"D={format_count_fixed(cf['tokens'])}; "
        f"top candidate: N={format_count_fixed(opt['top_candidate']['params'])}, "
        f"D={format_count_fixed(opt['top_candidate']['tokens'])}"
    )
    if "data_constrained" in opt:
        dc = opt["data_constrained"]
        line += (f"; data-constrained optimum: N={format_count_fixed(dc['params'])}, "
                 f"{dc['epochs']:.1f} epochs")
    return line


def cell_duration(seconds: float | None) -> str:
    """Seconds for a narrow table cell: '45s', '12.5m', '3.2h'; '-' when unknown."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def plan_row(c: Any, best: float | None = None) -> list[str]:
    """One candidate as the cells of the ranked table (RANKED_COLUMNS, then the loss; with
    `best`, the loss minus `best` and no interval: `plan.loss_units`)."""
    mant, exp = f"{c.lr:.1e}".split("e")
    batch = f"{c.micro_batch}×{c.grad_accum}" + (f"×{c.devices}" if c.devices > 1 else "")
    when = cell_duration(c.seconds)
    if c.time_source == TIMED and c.seconds is not None:
        when += "ᵗ"
    loss = (f"{c.loss:.3f}" if best is None else relative_cell(c.loss, best)) + (
        "*" if c.extrapolated else "")
    if c.loss_lo is not None and best is None:
        loss += f" ({c.loss_lo:.3f}–{c.loss_hi:.3f})"
    return [
        f"{c.shape.n_layer}×{c.shape.d_model}",
        format_count(c.params),
        format_count(c.tokens),
        f"{c.epochs:.1f}",
        str(c.seq_len),
        batch,
        c.precision + ("†" if c.estimate_only else "") + ("+ckpt" if c.checkpointing else ""),
        f"{mant}e{int(exp)}",
        when,
        short_bytes(c.memory_bytes) if c.memory_bytes is not None else "-",
        loss,
    ]
