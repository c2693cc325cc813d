"""The progress bar of an interactive run (rank 0 only)."""

from __future__ import annotations

import time
from typing import Any


class ProgressBar:
    """A rich progress bar: share of the binding cap done, step, loss, val loss, tokens/s."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.task = self.p.add_task("train", total=1.0, info="")
        self.p.start()
        self.last = 0.0

    def update(self, s: Any, c: Any, p: float) -> None:
        now = time.perf_counter()
        if now - self.last < 0.2:
            return
        self.last = now
        rate = c.tokens / c.train_seconds if c.train_seconds else 0.0
        loss = f"{c.last_loss:.3f}" if c.last_loss is not None else "-"
        val = f" val {c.last_val:.3f}" if c.last_val is not None else ""
        info = f"step {c.step} · loss {loss}{val} · {rate:,.0f} tok/s"
        self.p.update(self.task, completed=p, info=info)

    def close(self) -> None:
        self.p.stop()


def progress_bar(s: Any) -> ProgressBar | None:
    """A bar when the run shows progress and this is rank 0, else None."""
    if not s.progress or not s.dist.main:
        return None
    return ProgressBar()
