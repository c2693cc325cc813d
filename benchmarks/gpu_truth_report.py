"""Tables of a `benchmarks/gpu_truth.py` run (issue 22) for benchmarks/RESULTS.md.

Usage:
    python benchmarks/gpu_truth_report.py PATH/gpu_truth.json
        # appends the tables to benchmarks/RESULTS.md, copies the JSON to benchmarks/results/
    python benchmarks/gpu_truth_report.py PATH/gpu_truth.json --md-out /tmp/gpu_truth.md
        # writes the tables there only (a dry run's JSON is never appended to RESULTS.md)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

GIB = 2**30
MEMORY_TOL = 0.10  # issue 22: every memory row within 10%
STEP_TOL = 0.15  # issue 22: predicted step time within 15%


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("-" if v is None else str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def gib(n: float | None) -> str | None:
    return None if n is None else f"{n / GIB:.2f}"


def pct(x: float | None) -> str | None:
    return None if x is None else f"{x:+.1%}"


def rel(est: float | None, meas: float | None) -> float | None:
    return None if est is None or not meas else (est - meas) / meas


def tflops(x: float | None) -> str | None:
    return None if x is None else f"{x / 1e12:.1f}"


def fmt(x: float | None, spec: str = ".4g") -> str | None:
    return None if x is None else format(x, spec)


def steps_section(d: dict[str, Any]) -> str:
    rows = [[name, s.get("status"), s.get("wall_s"), s.get("budget_s"),
             (s.get("error") or s.get("why") or "").replace("|", "/")[:160]]
            for name, s in d["steps"].items()]
    return table(["step", "status", "wall s", "budget s", "error / note"], rows)


def profile_section(s: dict[str, Any]) -> str:
    prof = s.get("profile") or {}
    vs = s.get("vs_datasheet") or {}
    rows = [[k, tflops(v["measured"]), tflops(v["datasheet"]), pct(
        None if v["ratio"] is None else v["ratio"] - 1)] for k, v in vs.items()]
    bw, bw_sheet = prof.get("bandwidth_bytes_per_s"), prof.get("datasheet_bandwidth_bytes_per_s")
    rows.append(["copy GB/s", fmt(bw and bw / 1e9, ".0f"), fmt(bw_sheet and bw_sheet / 1e9, ".0f"),
                 pct(rel(bw, bw_sheet) if bw_sheet else None)])
    gpus = ", ".join(g.get("name", "?") for g in prof.get("gpus") or [])
    head = (f"`budgetlm profile --json`: {gpus or 'no GPU'} (datasheet row "
            f"{prof.get('spec_key')}), matmul sizes {prof.get('matmul_sizes')}; "
            f"notes: {'; '.join(prof.get('notes') or []) or 'none'}\n\n")
    return head + table(["dtype", "measured TFLOP/s", "datasheet TFLOP/s",
                         "measured vs datasheet"], rows)


def memory_row(r: dict[str, Any]) -> list[Any]:
    est, meas = r.get("estimate") or {}, r.get("measured") or {}
    if "error" in r or "skipped" in r:
        return [r["label"], *[None] * 9, (r.get("error") or r.get("skipped", ""))[:120]]
    if meas.get("oom"):
        return [r["label"], gib(est.get("tensor_peak")), None, None, gib(est.get("total")),
                None, None, None, None, None, "OOM"]
    parts = est.get("overhead_parts") or {}
    est_alloc = est["tensor_peak"] + parts.get("workspace", 0)
    alloc, used = meas.get("allocated"), meas.get("device_used")
    err_alloc, err_total = rel(est_alloc, alloc), rel(est.get("total"), used)
    within = [e for e in (err_alloc, err_total) if e is not None]
    flag = None if not within else ("yes" if max(map(abs, within)) <= MEMORY_TOL else "NO")
    return [r["label"], gib(est_alloc), gib(alloc), pct(err_alloc), gib(est.get("total")),
            gib(used), pct(err_total), gib(meas.get("reserved")),
            gib(est.get("device_remainder")), gib(used - alloc if used and alloc else None),
            flag]


def memory_section(s: dict[str, Any]) -> str:
    rows = [memory_row(r) for r in s.get("rows") or []]
    ctx = s.get("context_measured")
    head = (f"{s.get('steps_per_row')} training steps per row (fused AdamW / SGD as the trainer "
            "builds them; autocast; GradScaler for fp16). est alloc = Memory.tensor_peak + cuBLAS "
            "workspace against torch.cuda.max_memory_allocated(); est total = Memory.total "
            "(tensor_peak + device_remainder) against device memory in use after the steps "
            "(total - free, CUDA context included); remainder measured = device in use - "
            f"max_memory_allocated. CUDA context measured: {gib(ctx)} GiB.\n\n")
    return head + table(
        ["row", "est alloc GiB", "max_alloc GiB", "err", "est total GiB", "device used GiB",
         "err total", "max_reserved GiB", "est remainder GiB", "remainder measured GiB",
         f"within {MEMORY_TOL:.0%}"], rows)


def compile_section(s: dict[str, Any]) -> str:
    setup, res = s.get("setup") or {}, s.get("results") or {}
    pred = s.get("predicted_step_s")
    rows = [[mode, fmt(r["step_s"] * 1e3, ".1f"), f"{r['tokens_per_s']:,.0f}",
             pct(r["mfu"])[1:] if r.get("mfu") is not None else None,
             fmt(r["first_step_s"], ".1f"), fmt(pred and pred * 1e3, ".1f"),
             pct(rel(pred, r["step_s"]))] for mode, r in res.items()]
    head = (f"micro-batch {setup.get('micro_batch')} x seq {setup.get('seq_len')}, bf16 autocast; "
            f"model FLOPs/token {fmt(setup.get('model_flops_per_token'), '.4g')} "
            f"(estimate.model_flops_per_token); peak {tflops(setup.get('datasheet_bf16'))} "
            f"TFLOP/s ({setup.get('datasheet_source')}); predicted = estimator step time with "
            "the measured profile.\n\n")
    out = head + table(["mode", "step ms", "tokens/s", "MFU (datasheet bf16)", "first step s",
                        "predicted ms", "predicted vs measured"], rows)
    prof = s.get("profiler")
    if prof:
        out += f"\nTop kernels over 2 compiled steps ({prof['clock']} time):\n\n" + table(
            ["kernel", "calls", "self ms", "share"],
            [[k["name"].replace("|", "/"), k["calls"], fmt(k["self_us"] / 1e3, ".2f"),
              pct(k["share"])[1:] if k["share"] is not None else None] for k in prof["top"]])
    return out


def run_cells(run: dict[str, Any]) -> dict[str, Any]:
    res, ls = run.get("result") or {}, run.get("losses") or {}
    meas, pred = res.get("measured") or {}, res.get("predicted") or {}
    return {"rc": (run.get("cli") or {}).get("rc"), "res": res, "ls": ls, "meas": meas,
            "pred": pred}


def auto_section(s: dict[str, Any]) -> str:
    est = s.get("estimate") or {}
    a = run_cells(s.get("auto") or {})
    conf = s.get("configured") or {}
    rows = [["configured micro-batch", est.get("configured_micro_batch")],
            ["estimate total at it GiB", gib(est.get("estimate_total_at_configured"))],
            ["device memory GiB", gib(est.get("device_bytes"))],
            ["auto chose", a["res"].get("micro_batch")],
            ["run status / steps", f"{a['res'].get('status')} / {a['res'].get('steps')}"],
            ["peak allocated GiB", gib(a["meas"].get("peak_memory_allocated_bytes"))],
            ["predicted memory GiB", gib(a["pred"].get("memory_bytes"))],
            ["configured run: exit / OOM seen",
             f"{(conf.get('cli') or {}).get('rc')} / {conf.get('oom_seen')}" if conf else None]]
    return table(["micro_batch: auto", "value"], rows)


def fp16_section(s: dict[str, Any]) -> str:
    rows = []
    for prec, run in (s.get("runs") or {}).items():
        if "skipped" in run:
            rows.append([prec, "skipped", *[None] * 8])
            continue
        c = run_cells(run)
        res, ls = c["res"], c["ls"]
        rows.append([prec, res.get("status"), res.get("steps"), ls.get("all_finite"),
                     fmt(ls.get("first")), fmt(ls.get("last")), fmt(res.get("val_loss")),
                     fmt(res.get("entropy_rate")), fmt(res.get("tokens_per_s"), ",.0f"),
                     fmt(c["meas"].get("step_seconds_median") and
                         c["meas"]["step_seconds_median"] * 1e3, ".1f")])
    return table(["precision", "status", "steps", "losses finite", "first loss", "last loss",
                  "val loss", "entropy rate", "tokens/s", "step ms (median)"], rows)


def plan_section(s: dict[str, Any]) -> str:
    plan = s.get("plan") or {}
    top = (plan.get("top") or [{}])[0]
    c = run_cells(s.get("train") or {})
    pred, meas = c["pred"], c["meas"]
    plan_pred = pred.get("plan") or {}
    step = meas.get("step_seconds_median")
    peak = meas.get("peak_memory_allocated_bytes")
    rows = [
        ["step s (plan)", fmt(plan_pred.get("step_seconds")), fmt(step),
         pct(rel(plan_pred.get("step_seconds"), step))],
        ["step s (estimator, measured profile)", fmt(pred.get("step_seconds")), fmt(step),
         pct(rel(pred.get("step_seconds"), step))],
        ["memory GiB (plan)", gib(plan_pred.get("memory_bytes")), gib(peak),
         pct(rel(plan_pred.get("memory_bytes"), peak))],
        ["memory GiB (estimator)", gib(pred.get("memory_bytes")), gib(peak),
         pct(rel(pred.get("memory_bytes"), peak))],
    ]
    head = (f"`budgetlm plan --gpu-hours 0.05 --gpu auto`: {plan.get('interpretation')}; top "
            f"candidate {top.get('name')} ({top.get('params')} params, micro-batch "
            f"{top.get('micro_batch')} x seq {top.get('seq_len')}, {top.get('precision')}); "
            f"trained {c['res'].get('steps')} steps, status {c['res'].get('status')}. Measured "
            "memory is max_memory_allocated (the estimate's total adds the CUDA context); "
            f"targets: step within {STEP_TOL:.0%}, memory within {MEMORY_TOL:.0%}.\n\n")
    return head + table(["quantity", "predicted", "measured", "predicted vs measured"], rows)


SECTIONS = [
    ("1. Matmul throughput", "profile", profile_section),
    ("2. Memory: estimator vs CUDA allocator", "memory", memory_section),
    ("3. gpt2-124m bf16, torch.compile: step time and MFU", "compile_mfu", compile_section),
    ("4. micro_batch: auto", "auto_micro_batch", auto_section),
    ("5. fp16 (GradScaler) vs bf16, gpt2-124m", "fp16", fp16_section),
    ("6. plan --gpu auto, then train its top candidate", "plan_train", plan_section),
]


def render(d: dict[str, Any]) -> str:
    env = d.get("env") or {}
    device = env.get("device") or "no GPU (dry run)"
    out = [f"## GPU truth (issue 22) — {device} — {d.get('started')}\n",
           f"torch {env.get('torch')} (CUDA {env.get('cuda')}), Python {env.get('python')}, "
           f"peft {env.get('peft')}; git {env.get('git_sha')}; "
           f"{'DRY RUN (CPU, tiny shapes): not GPU numbers; ' if d.get('dry_run') else ''}"
           f"wall {d.get('wall_s')} s of a {d.get('budget_s')} s budget; "
           "raw JSON: benchmarks/results/gpu_truth.json.\n", steps_section(d)]
    for title, key, fn in SECTIONS:
        s = d["steps"].get(key) or {}
        out.append(f"### {title}\n")
        if s.get("status") in (None, "skipped"):
            out.append(f"not run ({s.get('why', 'not in this run')}).\n")
            continue
        try:
            out.append(fn(s))
        except Exception as exc:  # a partial step still gets its other sections rendered
            out.append(f"could not tabulate ({type(exc).__name__}: {exc}); see the raw JSON.\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", type=Path)
    ap.add_argument("--md-out", type=Path, default=None,
                    help="write the markdown here instead of appending to RESULTS.md")
    args = ap.parse_args(argv)
    d = json.loads(args.json.read_text())
    text = render(d)
    if args.md_out is not None:
        args.md_out.write_text(text)
        print(f"wrote {args.md_out}")
        return 0
    if d.get("dry_run"):
        print("gpu_truth_report: a dry run's JSON is not appended to RESULTS.md; use --md-out")
        return 2
    from common import append_results

    dest = HERE / "results" / "gpu_truth.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.json, dest)
    append_results(text)
    print(f"copied the raw JSON to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
