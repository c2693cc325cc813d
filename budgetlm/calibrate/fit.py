"""Fitting the pilots: L(N, D) = E + A/N^alpha + B/D^beta and Kaplan et al.'s form.

On (total parameters, effective tokens, final validation loss in nats/token): Huber loss on
log-loss from many starts, bootstrap intervals (`budgetlm.laws.fitting`). Repeated epochs enter
as Muennighoff et al.'s effective data D'. E is held at or below the best compression rate of
the validation tokens (`budgetlm.laws.entropy`): pilots' loss curves flatten early, and a free fit
reads that as a floor. Kaplan et al.'s form, with no floor, is fitted to the same pilots.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

from budgetlm import laws
from budgetlm.calibrate.design import Design, eval_tokens
from budgetlm.config import DataConfig
from budgetlm.errors import UserError
from budgetlm.laws.entropy import entropy_bound
from budgetlm.laws.fitting.chinchilla import fit_law
from budgetlm.laws.fitting.kaplan import fit_kaplan

MIN_PILOTS = 5  # finished pilots a fit needs
PREDICTION = ("geometric mean of the Chinchilla-form law and the Kaplan-form law fitted to the "
              "same pilots; intervals span both forms' intervals")


def pilot_rows(d: Design, records: dict[str, dict[str, Any]], unique: int) -> list[dict[str, Any]]:
    """One row per pilot of the design: what it reached (or why it did not finish)."""
    rows = []
    for p in d.pilots:
        r = records.get(p.key, {})
        loss = r.get("val_loss")
        ok = r.get("state") == "complete" and loss is not None and math.isfinite(float(loss))
        tokens = float(r.get("tokens") or 0.0)
        rows.append({
            "key": p.key, "name": p.name, "level": p.level, "level_flops": p.level_flops,
            "n_layer": p.n_layer, "d_model": p.d_model, "n_head": p.n_head,
            "params": p.params, "tokens": tokens if ok else p.tokens,
            "effective_tokens": laws.effective_data(tokens, unique) if ok else None,
            "epochs": laws.epochs(tokens, unique) if ok else None,
            "flops": r.get("flops"), "val_loss": float(loss) if ok else None,
            "val_bpb": r.get("val_bpb") if ok else None,
            "wall_seconds": r.get("wall_seconds"), "predicted_seconds": p.predicted_seconds,
            "state": "complete" if ok else (r.get("kind") or "missing"),
            "reason": None if ok else r.get("reason"),
        })
    return rows


def _finished(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    good = [r for r in rows if r["state"] == "complete"]
    if len(good) < MIN_PILOTS:
        bad = [f"{r['name']} ({r['reason'] or r['state']})" for r in rows if r not in good]
        raise UserError(
            f"calibrate: only {len(good)} of {len(rows)} pilots finished (a fit needs "
            f"{MIN_PILOTS}): " + "; ".join(bad[:3])
        )
    return good


def fit_pilots(d: Design, records: dict[str, dict[str, Any]], corpus: Any, data: DataConfig,
               budget: Any, fraction: float, bootstrap: int, seed: int) -> dict[str, Any]:
    """Both forms fitted to the finished pilots: fit.json's fields up to `design_seconds`."""

    unique = int(len(corpus.train))
    rows = pilot_rows(d, records, unique)
    good = _finished(rows)
    cols = ([r["params"] for r in good], [r["effective_tokens"] for r in good],
            [r["val_loss"] for r in good])
    ceiling = entropy_bound(corpus.val, int(corpus.tokenizer.vocab_size))
    lf = fit_law(*cols, bootstrap=bootstrap, seed=seed,
                 e_max=ceiling["value"] if ceiling else None)
    kf = fit_kaplan(*cols, bootstrap=bootstrap, seed=seed)
    for r, res, kres in zip(good, lf.residuals, kf.residuals, strict=True):
        r["fitted_loss"] = lf.loss(r["params"], r["effective_tokens"])
        r["residual"] = res
        r["fitted_loss_kaplan"] = kf.loss(r["params"], r["effective_tokens"])
        r["residual_kaplan"] = kres
    ratios = [r["val_bpb"] / r["val_loss"] for r in good if r.get("val_bpb") and r["val_loss"]]
    return {
        "kind": "budgetlm-fit", "version": 1,
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **lf.to_dict(),
        "forms": {"kaplan": kf.to_dict()},
        "prediction": PREDICTION,
        "e_ceiling": ceiling,
        "fit_range": [min(r["params"] for r in good), max(r["params"] for r in good),
                      min(r["effective_tokens"] for r in good),
                      max(r["effective_tokens"] for r in good)],
        "seq_len": d.seq_len, "precision": d.precision, "optimizer": "adamw",
        "parametrization": d.parametrization if d.parametrization != "standard" else None,
        "eval_tokens": eval_tokens(d.seq_len, int(len(corpus.val))),
        "unique_tokens": unique,
        "bpb_per_nat": sum(ratios) / len(ratios) if ratios else None,
        "data": {"source": data.source, "tokenizer": data.tokenizer,
                 "vocab_size": int(corpus.tokenizer.vocab_size),
                 "sha256": corpus.info.get("sha256")},
        "levels": d.levels, "pilots": rows,
        "budget": budget.to_dict(), "pilot_fraction": fraction,
        "pilot_budget_seconds": d.pilot_seconds_budget,
        "pilot_budget_flops": d.pilot_flops_budget,
        "design_seconds": round(d.design_seconds, 3),
    }
