"""Running pilots one at a time through the trial runner, and the record of what ran.

Each pilot runs in a child process (`budgetlm.runner.process`: forked or spawned, a hard time
limit, a stall watchdog). Each finished pilot is appended to `pilots.jsonl`; a rerun of the same
command reuses them. Before each level the pilots left are scaled down if the ones so far ran
slower than predicted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from budgetlm.calibrate.design import Design, Pilot, PilotDesigner, rescale_rest
from budgetlm.config import validate
from budgetlm.runner.caps import TrialCap
from budgetlm.runner.launch import make_launcher, ready
from budgetlm.runner.process import run_trial_process
from budgetlm.units import write_json


class CalibrationInterrupted(KeyboardInterrupt):
    """Ctrl-C during the pilots: the message says what was kept (exit 130)."""


def read_records(path: Path) -> dict[str, dict[str, Any]]:
    """The pilot records of `pilots.jsonl` by key (a line cut short by a crash is skipped)."""
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(rec, dict) and "key" in rec:
            out[rec["key"]] = rec
    return out


def append_record(path: Path, rec: dict[str, Any]) -> None:
    """Append one pilot record to `pilots.jsonl` (flushed: it survives a crash after it)."""
    with path.open("a") as f:
        f.write(json.dumps(rec, default=str) + "\n")
        f.flush()


def pilot_record(p: Pilot, outcome: Any) -> dict[str, Any]:
    """What pilots.jsonl keeps of pilot `p`'s run."""
    a = outcome.attrs
    return {
        "key": p.key, "state": outcome.state, "kind": outcome.kind,
        "reason": outcome.reason, "val_loss": a.get("val_loss"),
        "val_bpb": a.get("val_bpb"), "tokens": a.get("tokens"),
        "steps": a.get("steps"), "flops": a.get("flops"),
        "wall_seconds": a.get("wall_seconds"), "train_seconds": a.get("train_seconds"),
        "predicted_seconds": p.predicted_seconds, "params": p.params,
        "run_dir": a.get("run_dir"),
    }


class PilotRunner:
    """Runs the design's missing pilots, level by level; `records` and `spent` grow as they
    finish. `spent`: wall seconds of the calibration so far (design and earlier pilots)."""

    def __init__(self, d: Design, designer: PilotDesigner, state: Path,
                 records: dict[str, dict[str, Any]], spent: float, say: Callable[[str], None],
                 launcher_kind: str):
        self.d = d
        self.designer = designer
        self.state = state
        self.records = records
        self.done = {k: r for k, r in records.items() if r.get("state") == "complete"}
        self.spent = spent
        self.say = say
        self.launcher_kind = launcher_kind
        self.launcher: Any = None
        self.ran = 0
        self.notes = list(d.notes)

    def run(self) -> None:
        """Run every missing pilot (CalibrationInterrupted on Ctrl-C, with what was kept)."""
        try:
            for level in range(len(self.d.levels)):
                self._run_level(level)
        except KeyboardInterrupt:
            finished = sum(1 for p in self.d.pilots if p.key in self.done)
            raise CalibrationInterrupted(
                f"calibrate: interrupted; {finished} of {len(self.d.pilots)} pilots are finished "
                f"and kept in {self.state}: run the same command again to continue"
            ) from None
        finally:
            if self.launcher is not None:
                self.launcher.close()

    def _todo(self, level: int) -> list[Pilot]:
        return [p for p in self.d.pilots if p.level == level and p.key not in self.done]

    def _run_level(self, level: int) -> None:
        d = self.d
        if not self._todo(level):
            return
        measured = [(float(r["wall_seconds"]), float(r["predicted_seconds"]))
                    for r in self.done.values() if r.get("predicted_seconds")]
        slow = (sum(a for a, _ in measured) / sum(b for _, b in measured)) if measured else 1.0
        started = any(p.key in self.done for p in d.pilots if p.level == level)
        note = None if started else rescale_rest(self.designer, d, level, self.spent,
                                                 max(1.0, slow))
        if note:
            self.notes.append(note)
            d.notes = self.notes
            write_json(self.state / "design.json", d.to_dict(), indent=1)
            self.say(note)
        for p in self._todo(level):
            self._run_pilot(p)

    def _run_pilot(self, p: Pilot) -> None:
        if self.launcher is None:
            self.launcher = ready(make_launcher(self.launcher_kind))
        i = self.d.pilots.index(p) + 1
        self.say(f"pilot {i}/{len(self.d.pilots)}: level {p.level + 1} ({p.level_flops:.3g} "
                 f"FLOPs) {p.name} {p.params:,} params, {p.tokens:,} tokens"
                 + (f", ~{p.predicted_seconds:.0f} s" if p.predicted_seconds else ""))
        limit = 3 * (p.predicted_seconds or 600.0) + 30.0
        outcome = run_trial_process(
            validate(p.config), self.state / "runs" / p.key, TrialCap(time=limit, grace=0.0),
            launcher=self.launcher,
        )
        self.ran += 1
        rec = pilot_record(p, outcome)
        if outcome.kind == "interrupted":
            raise KeyboardInterrupt
        append_record(self.state / "pilots.jsonl", rec)
        self.spent += float(rec.get("wall_seconds") or 0.0)
        self.records[p.key] = rec
        if outcome.state == "complete":
            self.done[p.key] = rec
            self.say(f"  val loss {float(rec['val_loss']):.4f} nats/token, "
                     f"{float(rec['wall_seconds']):.1f} s")
        else:
            self.say(f"  {outcome.kind}: {outcome.reason}")
