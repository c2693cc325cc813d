"""Calibrated predictions on this CPU: fit the corpus's own law from pilots, plan, and check it.

1. `budgetlm calibrate --data builtin:pystdlib --tokenizer byte --time 20m -o W/fit.json`: pilots
   on IsoFLOP profiles within --pilot-fraction of the budget, the fit, and a plan for what is
   left (W/fit.plan.yaml). Its wall time (process start to exit) is the pilots' cost.
2. `budgetlm train W/fit.plan.yaml`: the fitted plan, unchanged. result.json holds the predicted
   val loss with its interval and the actual one (on the same validation windows as the pilots).
3. The prior plan at equal budget: `budgetlm plan --time REST` with the published prior (Epoch
   AI's Chinchilla refit) for the same remaining wall time, then `budgetlm train` of its top
   candidate. With --strict-prior it also gets the whole budget (pilots' time included), the
   harder comparison.
4. Both (all) final models are evaluated again on the whole validation split.

Prints a table and appends it to benchmarks/RESULTS.md. Takes the budget plus the prior run(s)
(about 37 minutes at 20 minutes; 57 with --strict-prior) on 2 cores. Run it on an idle machine:
the pilots' and runs' timings are the measurement.

    python benchmarks/calibration.py [--budget 20m] [--workdir DIR] [--strict-prior] [--no-append]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, machine, reevaluate, run_cli  # noqa: E402

DATA = ["--data", "builtin:pystdlib", "--tokenizer", "byte"]




def _seconds(text: str) -> float:
    from budgetlm.units import parse_duration

    return parse_duration(text)


def _run(label: str, cfg: Path, run_dir: Path, env: dict[str, str]) -> dict:
    print(f"[{label}] budgetlm train {cfg}", flush=True)
    res, wall = run_cli("train", str(cfg), "--run-dir", str(run_dir), "--quiet", env=env)
    loss, bpb, _ = reevaluate(run_dir)
    return {"label": label, "res": res, "wall": wall, "whole_loss": loss, "whole_bpb": bpb}


def _recipe(cfg: Path) -> tuple:
    """What decides a run's quality besides its time cap: model, optimizer, schedule, batch."""
    c = yaml.safe_load(Path(cfg).read_text())
    t = c["train"]
    return (tuple(sorted(c["model"].items())), tuple(sorted(c["optim"].items())),
            tuple(sorted(c["schedule"].items())), t["micro_batch"], t["grad_accum"],
            t["precision"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="20m", help="whole budget (wall time), e.g. 20m")
    ap.add_argument("--pilot-fraction", type=float, default=0.2)
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here")
    ap.add_argument("--strict-prior", action="store_true",
                    help="also train the prior plan for the whole budget")
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of every step (OMP_NUM_THREADS) for pilots, plans and "
                    "runs alike; 1 keeps timings steady when anything else shares the CPU")
    args = ap.parse_args(argv)
    total = _seconds(args.budget)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="budgetlm-calibration-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    os.environ.update(OMP_NUM_THREADS=str(args.threads))  # this process's re-evaluation too
    started = datetime.now(UTC)
    try:
        load0 = os.getloadavg()[0]
    except OSError:
        load0 = float("nan")

    print(f"[calibrate] budget {total:.0f} s, workdir {work}", flush=True)
    fit, cal_wall = run_cli("calibrate", *DATA, "--time", f"{total}s", "--pilot-fraction",
                         str(args.pilot_fraction), "-o", str(work / "fit.json"), "--quiet",
                         env=env)
    plan_yaml = Path(fit["plan_path"])
    rest = total - cal_wall  # what the user has left: the whole calibrate command counted
    fitted = _run("fitted plan", plan_yaml, work / "fitted", env)

    prior_plan, _ = run_cli("plan", "--time", f"{rest:.1f}s", *DATA, "-o",
                         str(work / "prior.yaml"), env=env)
    prior = _run("prior plan", work / "prior.yaml", work / "prior", env)
    runs = [fitted, prior]
    if args.strict_prior:
        run_cli("plan", "--time", f"{total:.1f}s", *DATA, "-o", str(work / "prior_full.yaml"),
             env=env)
        runs.append(_run("prior plan, whole budget", work / "prior_full.yaml",
                         work / "prior_full", env))

    pred = fitted["res"]["prediction"]
    pilots = fit["pilots"]
    kap = fit["forms"]["kaplan"]
    share = cal_wall / total
    lines = [
        f"## calibration — {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine()}. Load average at the start: {load0:.1f}. Corpus: builtin:pystdlib "
        f"(Python stdlib sources), byte tokenizer, {fit['unique_tokens']:,} training tokens. "
        f"Budget: {total:.0f} s of wall time; OMP_NUM_THREADS={args.threads} for every process. "
        f"Command: `python benchmarks/calibration.py "
        f"--budget {args.budget}`.",
        "",
        f"Pilots: `budgetlm calibrate --time {total:.0f}s --pilot-fraction "
        f"{args.pilot_fraction}` ran {len(pilots)} pilots on {len(fit['levels'])} IsoFLOP "
        f"levels ({', '.join(f'{c:.2g}' for c in fit['levels'])} FLOPs), seq len "
        f"{fit['seq_len']}; the whole command took {cal_wall:.0f} s = **{share:.1%} of the "
        f"budget** (pilots {fit['pilot_seconds']:.0f} s as counted inside).",
        "",
        "Fitted law (nats/token, 90% bootstrap intervals): "
        + ", ".join(f"{k} = {fit['law'][k]:.4g} [{fit['intervals'][k][0]:.3g}, "
                    f"{fit['intervals'][k][1]:.3g}]"
                    for k in ("E", "A", "B", "alpha", "beta"))
        + f"; residual std {fit['residual_std']:.4f} (log); E held at or below "
        f"{fit['e_ceiling']['value']:.4f} nats/token, the best compression rate of the "
        "validation tokens ("
        + ", ".join(f"{k} {v:.4f}" for k, v in fit["e_ceiling"]["rates"].items()) + ").",
        "",
        "Kaplan form fitted to the same pilots: "
        + ", ".join(f"{k} = {kap['law'][k]:.4g}" for k in ("n_c", "d_c", "alpha_n", "alpha_d"))
        + f"; residual std {kap['residual_std']:.4f} (log). Predictions: the geometric mean of "
        "the two forms; the interval spans both forms' intervals.",
        "",
        "| level | pilot | params | tokens | FLOPs | wall s | val loss | fitted (Chinchilla) "
        "| fitted (Kaplan) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in pilots:
        lines.append(
            f"| {p['level'] + 1} | {p['name']} | {p['params']:,} | {int(p['tokens']):,} | "
            f"{(p['flops'] or 0):.3g} | {(p['wall_seconds'] or 0):.1f} | "
            + (f"{p['val_loss']:.4f} | {p['fitted_loss']:.4f} | {p['fitted_loss_kaplan']:.4f} |"
               if p["val_loss"] is not None else f"{p['state']} | - | - |")
        )
    lines += [
        "",
        "| run | shape | params | tokens | train s | predicted val bpb [90%] | val bpb (run) "
        "| error | inside | val bpb (whole val) |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: |",
    ]
    for r in runs:
        res = r["res"]
        m = yaml.safe_load((Path(res["run_dir"]) / "config.yaml").read_text())["model"]
        shape = f"L{m['n_layer']}-d{m['d_model']}-T{m['seq_len']}"
        if r is fitted and pred:
            p_txt = (f"{pred['predicted_bpb']:.4f} [{pred['bpb_lo']:.4f}, {pred['bpb_hi']:.4f}]")
            err = f"{pred['error']:+.2%}"
            inside = "yes" if pred["inside"] else "**no**"
        else:
            p_txt, err, inside = "(prior: other units)", "-", "-"
        lines.append(
            f"| {r['label']} | {shape} | {res['params']:,} | {res['tokens']:,} | "
            f"{res['train_seconds']:.0f} | {p_txt} | {res['val_bpb']:.4f} | {err} | {inside} | "
            f"{r['whole_bpb']:.4f} |"
        )
    top = prior_plan["top"]
    same = _recipe(plan_yaml) == _recipe(work / "prior.yaml")
    lines += [
        "",
        f"Fitted plan: {Path(plan_yaml).name} -> {fit['plan']['name']}; prior plan for the "
        f"same {rest:.0f} s: {top['name']}"
        + (" (the same model, batch, lr and schedule: the two runs differ only in the time "
           "each was given and in timing noise)." if same else "."),
    ]
    checks = [
        ("pilots use <= 25% of the budget", share <= 0.25),
        ("actual val bpb inside the predicted interval", bool(pred and pred["inside"])),
        ("within 3% of the point prediction", bool(pred and abs(pred["error"]) <= 0.03)),
        ("fitted plan no worse than the prior plan at equal budget (whole val)"
         + (": the same configuration, equal by construction (the time-capped runs trained "
            f"{fitted['res']['tokens']:,} and {prior['res']['tokens']:,} tokens: "
            f"{fitted['whole_bpb'] / prior['whole_bpb'] - 1:+.2%} is the machine's throughput "
            "noise)" if same else ""),
         same or fitted["whole_bpb"] <= prior["whole_bpb"]),
    ]
    if args.strict_prior:
        checks.append(("fitted plan (pilots included) no worse than the prior plan given the "
                       "whole budget", fitted["whole_bpb"] <= runs[-1]["whole_bpb"]))
    lines.append("")
    lines += [f"- {'PASS' if ok else 'FAIL'}: {what}" for what, ok in checks]
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        append_results(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
