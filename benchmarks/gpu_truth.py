"""GPU truth (issue 22): budgetlm's memory, speed and precision predictions against one real GPU.

One prepared script for a short GPU lease. Each step runs as a child process of this script with
its own time budget (killed, with its own children, when it runs over), so a crash, an OOM or a
missing feature in one step is recorded and the next step still runs; steps run in order of
value and are skipped once the whole budget is spent. Every step writes what it has as it goes,
so a step stopped at its limit still reports its finished rows.

Steps: profile (`budgetlm profile --json`), memory (estimator rows against
max_memory_allocated / max_memory_reserved / device memory in use), compile_mfu (gpt2-124m bf16
with torch.compile: step time, MFU against the datasheet, profiler top kernels), auto_micro_batch
(`train.micro_batch: auto` on a shape whose huge configured micro-batch does not fit), fp16
(GradScaler run of a 124M model against bf16), plan_train (`budgetlm plan --gpu auto` and
`budgetlm train` of its top candidate: predicted vs measured step time and memory).

Usage:
    bash benchmarks/gpu_truth.sh               # on the GPU machine; results in $OUT
    python benchmarks/gpu_truth.py --dry-run   # the same code paths on CPU, tiny shapes (< 2 min)

Writes OUT/gpu_truth.json (raw); `benchmarks/gpu_truth_report.py` turns it into tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
T0 = float(os.environ.get("GPU_TRUTH_T0") or time.time())  # the parent's start
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def stamp(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.time() - T0:6.1f}s] {msg}", flush=True)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def run_cmd(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `cmd` in its own process group; on timeout kill the whole group."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT, start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return {"cmd": " ".join(cmd[2:] if cmd[1:2] == ["-m"] else cmd[1:]), "rc": proc.returncode,
            "timed_out": timed_out, "wall_s": round(time.perf_counter() - t, 2),
            "stdout": out, "stderr_tail": err[-3000:]}


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: float  # on the GPU
    min_s: float  # skip the step when less than this is left
    dry_budget_s: float


STEPS = [
    Step("profile", 50, 15, 18),
    Step("memory", 85, 25, 30),
    Step("compile_mfu", 100, 40, 16),
    Step("auto_micro_batch", 60, 25, 20),
    Step("fp16", 75, 30, 18),
    Step("plan_train", 70, 30, 22),
]


class Ctx:
    """One child step: its flags, working directory, deadline and the JSON it fills in."""

    def __init__(self, dry: bool, work: Path, out: Path, budget: float) -> None:
        self.dry, self.work, self.out = dry, work, out
        self.deadline = time.time() + budget
        self.data: dict[str, Any] = {}
        self.env = {**os.environ, "PYTHONWARNINGS": "ignore",
                    "BUDGETLM_CACHE_DIR": str(work / "cache"),
                    "PYTHONPATH": os.pathsep.join(
                        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        os.environ.update({k: self.env[k] for k in ("BUDGETLM_CACHE_DIR", "PYTHONPATH")})

    def left(self) -> float:
        return self.deadline - time.time()

    def need(self, seconds: float) -> float:
        """Seconds a sub-step needs before it is started: a quarter of that in a dry run."""
        return seconds / 4 if self.dry else seconds

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        write_json(self.out, self.data)

    def budgetlm(self, *args: str, cap: float | None = None) -> dict[str, Any]:
        """`python -m budgetlm ARGS` within the time left (or `cap` seconds, whichever is less)."""
        timeout = self.left() - 2 if cap is None else min(cap, self.left() - 2)
        stamp(f"  budgetlm {' '.join(args)} (timeout {timeout:.0f}s)")
        res = run_cmd([sys.executable, "-m", "budgetlm", *args], timeout, self.env)
        stamp(f"  -> rc {res['rc']} in {res['wall_s']}s{' TIMED OUT' if res['timed_out'] else ''}")
        return res


def cuda(torch: Any) -> bool:
    return bool(torch.cuda.is_available())


def datasheet_spec(torch: Any, dry: bool) -> tuple[Any, str]:
    """The datasheet row of this GPU (dry run: the H200's row as a stand-in) and its source."""
    from budgetlm.hardware import lookup_gpu, match_gpu

    if cuda(torch):
        name = torch.cuda.get_device_name()
        spec = match_gpu(name)
        return spec, f"match_gpu({name!r})"
    return lookup_gpu("h200"), "dry run: h200 datasheet row as a stand-in (no GPU)"


# ---------------------------------------------------------------------------------------- steps


def step_profile(c: Ctx) -> None:
    res = c.budgetlm("profile", "--json", "--refresh")
    stdout = res.pop("stdout")
    c.put("cli", res)
    if res["rc"] == 0:
        prof = json.loads(stdout)
        c.put("profile", prof)
        measured, sheet = prof.get("matmul_flops") or {}, prof.get("datasheet") or {}
        c.put("vs_datasheet", {k: {"measured": v, "datasheet": sheet.get(k),
                                   "ratio": v / sheet[k] if sheet.get(k) else None}
                               for k, v in measured.items()})
    smi = run_cmd(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                   "power.limit", "--format=csv"], 20) if not c.dry else None
    c.put("nvidia_smi", smi and smi["stdout"])


GPU_SHAPES: dict[str, dict[str, Any]] = {
    "gpt2-124m": dict(n_layer=12, n_head=12, d_model=768, vocab_size=50257, seq_len=1024),
    "llama-gqa-1024": dict(  # llama-tiny's recipe scaled up; GQA 16 query / 4 kv heads
        n_layer=8, n_head=16, n_kv_head=4, d_model=1024, d_ff=2816, vocab_size=32000,
        seq_len=2048, positions="rope", norm="rmsnorm", mlp="swiglu", bias=False,
        tie_embeddings=False),
    "llama3-8b-2L": dict(  # two blocks of Llama-3-8B's width; GQA 32 / 8
        n_layer=2, n_head=32, n_kv_head=8, d_model=4096, d_ff=14336, vocab_size=128256,
        seq_len=1024, positions="rope", norm="rmsnorm", mlp="swiglu", bias=False,
        tie_embeddings=False, rope_theta=500000.0),
}
DRY_SHAPES: dict[str, dict[str, Any]] = {
    "gpt2-124m": dict(n_layer=2, n_head=2, d_model=64, vocab_size=256, seq_len=32),
    "llama-gqa-1024": dict(n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_ff=160,
                           vocab_size=256, seq_len=32, positions="rope", norm="rmsnorm",
                           mlp="swiglu", bias=False, tie_embeddings=False),
    "llama3-8b-2L": dict(n_layer=1, n_head=4, n_kv_head=1, d_model=64, d_ff=160,
                         vocab_size=256, seq_len=32, positions="rope", norm="rmsnorm",
                         mlp="swiglu", bias=False, tie_embeddings=False),
}
# shape, micro_batch, precision, checkpointing, optimizer, finetune method
MEMORY_ROWS: list[tuple[str, int, str, bool, str, str]] = [
    ("gpt2-124m", 8, "bf16", False, "adamw", "full"),
    ("gpt2-124m", 8, "fp32", False, "adamw", "full"),
    ("gpt2-124m", 8, "bf16", True, "adamw", "full"),
    ("gpt2-124m", 16, "bf16", False, "sgd", "full"),
    ("gpt2-124m", 32, "bf16", True, "adamw", "full"),
    ("gpt2-124m", 4, "fp32", True, "sgd", "full"),
    ("gpt2-124m", 8, "fp16", False, "adamw", "full"),
    ("llama-gqa-1024", 8, "bf16", False, "adamw", "full"),
    ("llama-gqa-1024", 8, "bf16", True, "adamw", "full"),
    ("llama-gqa-1024", 4, "fp32", False, "sgd", "full"),
    ("llama3-8b-2L", 2, "bf16", False, "adamw", "full"),
    ("llama3-8b-2L", 4, "bf16", True, "adamw", "full"),
    ("llama3-8b-2L", 2, "fp32", False, "sgd", "full"),
    ("gpt2-124m", 8, "bf16", False, "adamw", "lora"),
    ("llama3-8b-2L", 4, "bf16", False, "adamw", "lora"),
]
MEMORY_STEPS = 3


def memory_config(row: tuple[str, int, str, bool, str, str], dry: bool) -> Any:
    from budgetlm.config import ModelConfig, RunConfig

    shape, mb, prec, ckpt, opt, method = row
    return RunConfig(
        model=ModelConfig(**(DRY_SHAPES if dry else GPU_SHAPES)[shape]),
        optim={"name": opt, "momentum": 0.9, "weight_decay": 0.1},
        train={"precision": prec, "micro_batch": mb, "activation_checkpointing": ckpt,
               "device": "cuda"},
        finetune={"method": method},
    )


def memory_estimate(cfg: Any) -> dict[str, Any]:
    from budgetlm.estimate import memory_breakdown, overhead_parts

    mem = memory_breakdown(cfg, device="cuda")
    return {"tensor_peak": mem.tensor_peak, "device_remainder": mem.device_remainder,
            "total": mem.total, "overhead_parts": overhead_parts("cuda", mem.tensor_peak),
            "breakdown": mem.to_dict()}


def build_on(torch: Any, cfg: Any, dev: Any) -> Any:
    """The model for `cfg` as the trainer prepares it, built directly on `dev`."""
    from budgetlm.model import build_model
    from budgetlm.train.finetune import prepare_model

    with dev:
        model = build_model(cfg.model)
    model = model.to(dev).train()
    model.activation_checkpointing = cfg.train.activation_checkpointing
    return prepare_model(model, cfg)


def train_steps(torch: Any, cfg: Any, model: Any, opt: Any, dev: Any, n: int) -> list[float]:
    """`n` training steps as the trainer does them (autocast, GradScaler for fp16, clip)."""
    from budgetlm.train.runtime import autocast_ctx

    m, mb = cfg.model, cfg.train.micro_batch
    scaler = torch.amp.GradScaler(dev.type, enabled=cfg.train.precision == "fp16")
    params = [p for p in model.parameters() if p.requires_grad]
    losses = []
    for _ in range(n):
        x = torch.randint(m.vocab_size, (mb, m.seq_len), device=dev)
        with autocast_ctx(dev.type, cfg.train.precision):
            logits, loss = model(x, x)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        del logits, loss
    return losses


def memory_measure(torch: Any, cfg: Any, dev: Any, steps: int) -> dict[str, Any]:
    import gc

    from budgetlm.optim import build_optimizer

    t = time.perf_counter()
    on_gpu = dev.type == "cuda"
    model = opt = None
    try:
        model = build_on(torch, cfg, dev)
        opt = build_optimizer(model, cfg.optim, fused=True if on_gpu else None)
        if on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated() if on_gpu else None
        losses = train_steps(torch, cfg, model, opt, dev, steps)
        out: dict[str, Any] = {"oom": False, "start_allocated": start, "losses": losses}
        if on_gpu:
            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            out.update(allocated=int(torch.cuda.max_memory_allocated()),
                       reserved=int(torch.cuda.max_memory_reserved()),
                       device_used=int(total - free))
    except torch.OutOfMemoryError as exc:
        out = {"oom": True, "error": str(exc)[:300]}
    finally:
        del model, opt
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
    out["seconds"] = round(time.perf_counter() - t, 2)
    return out


def step_memory(c: Ctx) -> None:
    import torch

    dev = torch.device("cuda" if cuda(torch) else "cpu")
    if cuda(torch):
        torch.zeros(1, device=dev)
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        c.put("context_measured", int(total - free - torch.cuda.memory_reserved()))
        c.put("device_total", int(total))
    steps = 1 if c.dry else MEMORY_STEPS
    c.put("steps_per_row", steps)
    rows: list[dict[str, Any]] = []
    for row in MEMORY_ROWS:
        shape, mb, prec, ckpt, opt, method = row
        label = f"{shape} b={mb} {prec} {'ckpt' if ckpt else '-'} {opt}" + (
            " lora" if method == "lora" else "")
        if c.left() < c.need(8):
            rows.append({"label": label, "skipped": "step budget spent"})
            continue
        rec: dict[str, Any] = {"label": label, "shape": shape, "micro_batch": mb,
                               "precision": prec, "checkpointing": ckpt, "optimizer": opt,
                               "method": method}
        try:
            cfg = memory_config(row, c.dry)
            rec["estimate"] = memory_estimate(cfg)
            if c.dry:  # the GPU row's config is checked too; the tiny one is measured
                rec["estimate_gpu_shape"] = memory_estimate(memory_config(row, False))
            rec["measured"] = memory_measure(torch, cfg, dev, steps)
        except Exception as exc:  # a missing feature (peft, an optimizer) is a result too
            rec["error"] = f"{type(exc).__name__}: {exc}"[:500]
        rows.append(rec)
        c.put("rows", rows)
        meas = rec.get("measured") or {}
        est = rec.get("estimate", {}).get("tensor_peak", 0)
        stamp(f"  {label}: est tensor_peak {est / 2**30:.2f} GiB,"
              f" max_alloc {(meas.get('allocated') or 0) / 2**30:.2f} GiB"
              f"{' ERROR ' + rec['error'] if 'error' in rec else ''}")
    c.put("rows", rows)


def compile_config(dry: bool, micro_batch: int) -> Any:
    from budgetlm.config import preset, with_values

    cfg = preset("tiny" if dry else "gpt2-124m")
    return with_values(cfg, {"train.micro_batch": micro_batch, "train.grad_accum": 1,
                             "train.precision": "bf16", "train.compile": True})


def timed_steps(torch: Any, fn: Callable[[], None], n: int, on_gpu: bool) -> float:
    if on_gpu:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    if on_gpu:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


def top_kernels(torch: Any, fn: Callable[[], None], on_gpu: bool, k: int = 5) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=acts) as prof:
        for _ in range(2):
            fn()
        if on_gpu:
            torch.cuda.synchronize()

    def dev_time(e: Any) -> float:
        if not on_gpu:
            return float(e.self_cpu_time_total)
        return float(getattr(e, "self_device_time_total", 0)
                     or getattr(e, "self_cuda_time_total", 0))

    events = [e for e in prof.key_averages() if dev_time(e) > 0]
    total = sum(dev_time(e) for e in events)
    events.sort(key=dev_time, reverse=True)
    return {"clock": "device" if on_gpu else "cpu", "total_us_2_steps": total,
            "top": [{"name": e.key[:120], "calls": e.count, "self_us": dev_time(e),
                     "share": dev_time(e) / total if total else None} for e in events[:k]]}


def step_compile_mfu(c: Ctx, micro_batch: int) -> None:
    import torch

    from budgetlm.estimate import estimate, model_flops_per_token
    from budgetlm.hardware import cached_profile
    from budgetlm.model import build_model
    from budgetlm.optim import build_optimizer
    from budgetlm.train.runtime import autocast_ctx

    on_gpu = cuda(torch)
    dev = torch.device("cuda" if on_gpu else "cpu")
    cfg = compile_config(c.dry, micro_batch)
    m = cfg.model
    spec, spec_source = datasheet_spec(torch, c.dry)
    flops_tok = model_flops_per_token(m)
    if on_gpu:
        p = torch.cuda.get_device_properties(0)
        c.put("device", {"name": p.name, "capability": f"{p.major}.{p.minor}",
                         "sm_count": p.multi_processor_count, "memory_bytes": p.total_memory})
    c.put("setup", {"model": m.model_dump(), "micro_batch": micro_batch, "seq_len": m.seq_len,
                    "model_flops_per_token": flops_tok, "datasheet_source": spec_source,
                    "datasheet_bf16": spec.peak_flops.get("bf16") if spec else None})
    try:
        prof = cached_profile()
        est = estimate(cfg, prof)
        c.put("predicted_step_s", est.step.seconds if est.step else None)
    except Exception as exc:
        c.put("predicted_step_s_error", f"{type(exc).__name__}: {exc}"[:300])
    torch.manual_seed(0)
    model = build_model(m).to(dev).train()
    opt = build_optimizer(model, cfg.optim, fused=True if on_gpu else None)
    x = torch.randint(m.vocab_size, (micro_batch, m.seq_len), device=dev)

    def make_step(net: Any) -> Callable[[], None]:
        def one() -> None:
            with autocast_ctx(dev.type, "bf16"):
                _, loss = net(x, x)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return one

    n = 2 if c.dry else 20
    results: dict[str, Any] = {}
    peak = spec.peak_flops.get("bf16") if spec else None
    for mode in ("eager", "compiled"):
        net = model if mode == "eager" else torch.compile(model, backend="eager" if c.dry else
                                                          "inductor")
        step = make_step(net)
        t = time.perf_counter()
        step()  # first step: compilation for `compiled`
        first = time.perf_counter() - t
        timed_steps(torch, step, 2, on_gpu)  # warm-up
        sec = timed_steps(torch, step, n, on_gpu)
        tok_s = micro_batch * m.seq_len / sec
        results[mode] = {"first_step_s": first, "step_s": sec, "tokens_per_s": tok_s,
                         "steps_timed": n, "mfu": flops_tok * tok_s / peak if peak else None}
        c.put("results", results)
        stamp(f"  {mode}: step {sec * 1e3:.1f} ms, {tok_s:,.0f} tok/s, "
              f"MFU {results[mode]['mfu'] or 0:.1%} (first step {first:.1f}s)")
        if c.left() < c.need(15):
            break
    if c.left() > c.need(15):
        c.put("profiler", top_kernels(torch, step, on_gpu))
    if on_gpu:
        c.put("max_memory_allocated", int(torch.cuda.max_memory_allocated()))


def read_run(run_dir: Path) -> dict[str, Any]:
    """result.json and the training losses of metrics.jsonl of a run directory."""
    out: dict[str, Any] = {}
    res = run_dir / "result.json"
    if res.exists():
        r = json.loads(res.read_text())
        out["result"] = {k: r.get(k) for k in (
            "status", "stop_reason", "steps", "tokens", "wall_seconds", "train_seconds",
            "val_loss", "train_loss", "params", "micro_batch", "tokens_per_s",
            "achieved_flops_per_s", "measured_peak_flops", "mfu_vs_measured_peak",
            "entropy_rate", "predicted", "measured")}
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        losses = []
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            if "loss" in rec and "step" in rec:
                losses.append((rec["step"], rec["loss"]))
        vals = [v for _, v in losses if v is not None]
        out["losses"] = {"n": len(losses), "all_finite": all(
            v is not None and math.isfinite(v) for _, v in losses),
            "first": vals[0] if vals else None, "last": vals[-1] if vals else None,
            "min": min(vals) if vals else None, "every_10th": losses[::10]}
    return out


def train_run(c: Ctx, name: str, spec: str, steps: int, sets: list[str],
              data: str, cap: float | None = None) -> dict[str, Any]:
    run_dir = c.work / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a run directory from an earlier try
    args = [spec, "--data", data, "--max-steps", str(steps), "--run-dir", str(run_dir), "-q"]
    for s in sets:
        args += ["--set", s]
    res = c.budgetlm("train", *args, cap=cap)
    res.pop("stdout")
    return {"cli": res, **read_run(run_dir)}


def step_auto_micro_batch(c: Ctx) -> None:
    import torch

    from budgetlm.config import preset, with_values
    from budgetlm.estimate import memory_breakdown

    spec = "tiny" if c.dry else "gpt2-124m"
    huge = 64 if c.dry else 1024
    device_bytes = torch.cuda.mem_get_info()[1] if cuda(torch) else None
    cfg = with_values(preset(spec), {"train.precision": "bf16", "train.grad_accum": 1})
    c.put("estimate", {"configured_micro_batch": huge, "device_bytes": device_bytes,
                       "estimate_total_at_configured": memory_breakdown(
                           cfg, micro_batch=huge, device="cuda").total,
                       "estimate_total_by_mb": {b: memory_breakdown(
                           cfg, micro_batch=b, device="cuda").total
                           for b in (2 ** i for i in range(11))}})
    data = ("synthetic:markov:order=1,vocab=64,tokens=200000" if c.dry else
            "synthetic:markov:order=0,vocab=50257,tokens=4000000")
    sets = ["train.precision=bf16", "train.grad_accum=1", "schedule.warmup_steps=1",
            "train.eval_interval=1000", "train.eval_tokens=8192", "train.keep_last=1"]
    c.put("auto", train_run(c, "auto", spec, 3 if c.dry else 5,
                            [*sets, "train.micro_batch=auto"], data))
    if c.left() > c.need(35):  # the configured micro-batch itself, expected to run out of memory
        run = train_run(c, "configured", spec, 1, [*sets, f"train.micro_batch={huge}"], data,
                        cap=min(60.0, c.left() - 5))
        err = run["cli"]["stderr_tail"]
        run["oom_seen"] = "OutOfMemory" in err or "out of memory" in err
        run["cli"]["stderr_tail"] = err[-600:]
        c.put("configured", run)


def step_fp16(c: Ctx) -> None:
    spec = "tiny" if c.dry else "gpt2-124m"
    steps = 10 if c.dry else 150
    data = ("synthetic:markov:order=1,vocab=64,tokens=200000" if c.dry else
            "synthetic:markov:order=0,vocab=50257,tokens=4000000")
    sets = ["train.grad_accum=1", f"train.micro_batch={4 if c.dry else 16}",
            f"model.seq_len={32 if c.dry else 512}", "schedule.warmup_steps=20",
            "train.log_interval=1", f"train.eval_interval={5 if c.dry else 50}",
            "train.eval_tokens=16384", "train.keep_last=1"]
    runs: dict[str, Any] = {}
    for prec in ("fp16", "bf16"):
        if c.left() < c.need(20):
            runs[prec] = {"skipped": "step budget spent"}
            break
        runs[prec] = train_run(c, prec, spec, steps, [*sets, f"train.precision={prec}"], data,
                               cap=c.left() / (2 if prec == "fp16" else 1) - 2)
        c.put("runs", runs)
        ls = runs[prec].get("losses", {})
        stamp(f"  {prec}: losses finite {ls.get('all_finite')}, last {ls.get('last')}")
    c.put("runs", runs)


def step_plan_train(c: Ctx) -> None:
    top = c.work / "top.yaml"
    gpu = "h200" if c.dry else "auto"
    res = c.budgetlm("plan", "--gpu-hours", "0.05", "--gpu", gpu, "--top", "3", "--json",
                     "-o", str(top), cap=60)
    stdout = res.pop("stdout")
    c.put("plan_cli", res)
    if res["rc"] != 0:
        return
    plan = json.loads(stdout)
    c.put("plan", {k: plan.get(k) for k in ("interpretation", "arch", "device", "budget",
                                             "notes", "elapsed_s")}
          | {"top": (plan.get("candidates") or [])[:3]})
    sets = ["data.max_bytes=8000000", "train.eval_interval=1000", "train.eval_tokens=16384",
            "train.keep_last=1"]
    if c.dry:
        sets += ["model.n_layer=1", "model.d_model=64", "model.n_head=2", "model.d_ff=128",
                 "model.seq_len=32", "train.micro_batch=2", "data.max_bytes=200000",
                 "data.bpe_vocab_size=512"]
    c.put("train", train_run(c, "plan_run", str(top), 2 if c.dry else 30, sets,
                             "builtin:pystdlib"))


STEP_FUNCS: dict[str, Callable[[Ctx], None]] = {
    "profile": step_profile,
    "memory": step_memory,
    "compile_mfu": lambda c: step_compile_mfu(c, 4 if c.dry else 16),
    "auto_micro_batch": step_auto_micro_batch,
    "fp16": step_fp16,
    "plan_train": step_plan_train,
}


# ------------------------------------------------------------------------------------- driver


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "host": platform.node()}
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda  # no CUDA context here: the steps measure memory
    except Exception as exc:
        env["torch_error"] = repr(exc)
    try:
        from budgetlm.hardware import detect_gpus

        gpus = detect_gpus()  # nvidia-ml-py
        env["gpus"] = [dataclasses.asdict(g) for g in gpus]
        env["device"] = gpus[0].name if gpus else None
    except Exception as exc:
        env["gpus_error"] = repr(exc)
    for mod in ("peft", "pydantic", "transformers", "triton"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as exc:
            env[mod] = f"missing ({type(exc).__name__})"
    sha = run_cmd(["git", "rev-parse", "HEAD"], 10) if (ROOT / ".git").exists() else None
    env["git_sha"] = sha["stdout"].strip() if sha and sha["rc"] == 0 else None
    return env


def run_child(name: str, dry: bool, work: Path, out: Path, budget: float) -> int:
    c = Ctx(dry, work, out, budget)
    c.put("started", time.time())
    try:
        STEP_FUNCS[name](c)
        c.put("status", "ok")
        return 0
    except Exception as exc:
        c.put("status", "error")
        c.put("error", f"{type(exc).__name__}: {exc}"[:1000])
        c.put("traceback", traceback.format_exc()[-3000:])
        traceback.print_exc()
        return 1


def run_parent(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["GPU_TRUTH_T0"] = str(T0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    total = args.budget or (112.0 if args.dry_run else 330.0)
    deadline = T0 + total
    report: dict[str, Any] = {"dry_run": args.dry_run, "budget_s": total,
                              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              "env": environment(), "steps": {}}
    target = out / "gpu_truth.json"
    write_json(target, report)
    stamp(f"env: {json.dumps(report['env'])}")
    wanted = [s for s in STEPS if not args.steps or s.name in args.steps.split(",")]
    for s in wanted:
        left = deadline - time.time()
        if left < (min(s.min_s, s.dry_budget_s / 2) if args.dry_run else s.min_s):
            report["steps"][s.name] = {"status": "skipped", "why": f"{left:.0f}s left"}
            stamp(f"skip {s.name}: {left:.0f}s left")
            continue
        budget = min(s.dry_budget_s if args.dry_run else s.budget_s, left)
        stamp(f"step {s.name} (budget {budget:.0f}s)")
        child_json = work / f"step_{s.name}.json"
        child_json.unlink(missing_ok=True)
        cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--child", s.name,
               "--child-json", str(child_json), "--work", str(work), "--budget", str(budget)]
        res = run_cmd(cmd + (["--dry-run"] if args.dry_run else []), budget + 5)
        sys.stdout.write(res.pop("stdout"))
        data = json.loads(child_json.read_text()) if child_json.exists() else {}
        status = "timed_out" if res["timed_out"] else data.get("status", f"rc {res['rc']}")
        report["steps"][s.name] = {**data, "status": status, "rc": res["rc"],
                                   "wall_s": res["wall_s"], "budget_s": budget,
                                   "stderr_tail": res["stderr_tail"][-1500:]}
        write_json(target, report)
        stamp(f"step {s.name}: {status} in {res['wall_s']}s")
    report["wall_s"] = round(time.time() - T0, 1)
    write_json(target, report)
    stamp(f"done: wrote {target} ({report['wall_s']}s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, same code paths")
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/gpu_truth_out")
    ap.add_argument("--work", default="/tmp/gpu_truth_work", help="run dirs, cache, token cache")
    ap.add_argument("--budget", type=float, default=None, help="total seconds (330; dry 112)")
    ap.add_argument("--steps", default="", help="comma-separated subset of the steps")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return run_child(args.child, args.dry_run, Path(args.work), Path(args.child_json),
                         args.budget)
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
