"""Command line: each command parses its input, calls one library function, and prints.

Heavy modules (torch, optuna, pandas) are imported inside the commands that need them so that
`budgetlm estimate` and `budgetlm plan` answer in about a second.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from budgetlm import __version__
from budgetlm.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError

app = typer.Typer(
    name="budgetlm",
    help="Plan, estimate, tune and train language models on a fixed compute budget.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override a config field: key=value (repeatable)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object")]


def guarded(fn: F) -> F:
    """Turn user errors into one line on stderr and exit 2; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"budgetlm {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="show version"),
    ] = False,
) -> None:
    """budgetlm: what model, batch, precision and schedule give the best model for this budget."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def human_count(n: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# schema


@app.command()
@guarded
def schema(
    kind: Annotated[str, typer.Argument(help="run (RunConfig) or study (StudySpec)")] = "run",
) -> None:
    """Print the JSON Schema of a config file (for editor completion)."""
    if kind == "run":
        from budgetlm.config import json_schema

        sys.stdout.write(json_schema() + "\n")
    elif kind == "study":
        try:
            from budgetlm.tune import study_json_schema
        except ImportError:
            raise UserError("schema study: the tuner is not available in this build") from None
        sys.stdout.write(study_json_schema() + "\n")
    else:
        raise UserError(f"schema: unknown kind {kind!r}; expected run or study")


# ---------------------------------------------------------------------------------------------
# profile


@app.command()
@guarded
def profile(
    json_out: JsonOpt = False,
    refresh: Annotated[bool, typer.Option("--refresh", help="measure again, ignore cache")] = False,
) -> None:
    """Measure this machine: CPU, GPUs (nvidia-ml-py), matmul FLOP/s per dtype, bandwidth."""
    from budgetlm.hardware import load_profile

    if json_out:
        prof = load_profile(refresh=refresh)
        _print_json(prof.to_dict())
        return
    with err_console.status("measuring this machine…"):
        prof = load_profile(refresh=refresh)
    table = Table(title="hardware profile", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for k, v in prof.summary_rows():
        table.add_row(k, v)
    console.print(table)


# ---------------------------------------------------------------------------------------------
# estimate


@app.command()
@guarded
def estimate(
    config: Annotated[str, typer.Argument(help="preset name or RunConfig YAML file")],
    micro_batch: Annotated[int | None, typer.Option("--micro-batch", "-b", min=1)] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="fp32|bf16|fp16")] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="optimizer name")] = None,
    checkpointing: Annotated[
        bool | None,
        typer.Option("--checkpointing/--no-checkpointing", help="activation checkpointing"),
    ] = None,
    gpu: Annotated[
        str | None, typer.Option("--gpu", help="estimate step time on this GPU (datasheet)")
    ] = None,
    overrides: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Parameters, FLOPs per token and a memory breakdown for one config."""
    from budgetlm.config import load_config
    from budgetlm.estimate import estimate as run_estimate

    sets = list(overrides or [])
    if micro_batch is not None:
        sets.append(f"train.micro_batch={micro_batch}")
    if precision is not None:
        sets.append(f"train.precision={precision}")
    if optimizer is not None:
        sets.append(f"optim.name={optimizer}")
    if checkpointing is not None:
        sets.append(f"train.activation_checkpointing={str(checkpointing).lower()}")
    cfg = load_config(config, sets)
    prof = _profile_for(gpu)
    est = run_estimate(cfg, prof)
    if json_out:
        _print_json(est.to_dict())
        return
    _print_estimate(est.to_dict(), cfg.name)


def _profile_for(gpu: str | None) -> Any:
    """The datasheet profile of a named GPU, else this machine's cached profile (never measures)."""
    from budgetlm import hardware

    if gpu is not None:
        return hardware.reference_profile(gpu)
    return hardware.cached_profile()


def _print_estimate(d: dict[str, Any], name: str) -> None:
    t = Table(title=f"estimate: {name}", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    t.add_row("parameters", f"{d['params']:,} ({human_count(d['params'])})")
    t.add_row("  non-embedding", f"{d['non_embedding_params']:,}")
    t.add_row("  embedding", f"{d['embedding_params']:,}")
    fl = d["flops"]
    t.add_row("FLOPs/token forward", human_count(fl["forward"]))
    t.add_row("FLOPs/token backward", human_count(fl["backward"]))
    t.add_row("FLOPs/token recompute", human_count(fl["recompute"]))
    t.add_row("FLOPs/token training", human_count(fl["total"]))
    t.add_row(
        "setting",
        f"micro-batch {d['micro_batch']} · {d['precision']} · {d['optimizer']}"
        f" · checkpointing {'on' if d['checkpointing'] else 'off'}",
    )
    for k, v in d["memory"].items():
        label = "memory total" if k == "total" else f"  {k}"
        t.add_row(label, human_bytes(v))
    st = d.get("step_time")
    if st:
        t.add_row(
            "step time",
            f"{st['seconds'] * 1e3:.1f} ms"
            f" ({human_count(st['flops_per_s'])}FLOP/s; {st['source']})",
        )
    console.print(t)


# ---------------------------------------------------------------------------------------------
# train / sample


@app.command()
@guarded
def train(
    config: Annotated[str, typer.Argument(help="preset name or RunConfig YAML file")] = "tiny",
    data: Annotated[str | None, typer.Option("--data", help="corpus source")] = None,
    val_data: Annotated[str | None, typer.Option("--val-data", help="validation source")] = None,
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="byte|char|bpe")] = None,
    max_time: Annotated[float | None, typer.Option("--max-time", help="wall seconds cap")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="steps cap")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="tokens cap")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="output directory")] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue this run directory")
    ] = None,
    overrides: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a GPT or BERT-style model under caps; writes a run directory."""
    from budgetlm.train.api import resolve_train_config
    from budgetlm.train.api import train as run_train

    cfg = resolve_train_config(
        config,
        overrides=overrides,
        data=data,
        val_data=val_data,
        tokenizer=tokenizer,
        max_time=max_time,
        max_steps=max_steps,
        max_tokens=max_tokens,
        resume=resume,
    )
    result = run_train(cfg, run_dir=run_dir, resume=resume, progress=not (quiet or json_out))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for the run
        return
    if json_out:
        _print_json(result.to_dict())
    else:
        _print_result(result.to_dict())
    if result.status == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)


def _print_result(d: dict[str, Any]) -> None:
    t = Table(title=f"run {d.get('run_dir', '')}", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    keys = [
        "status", "val_loss", "val_bpb", "best_val_loss", "steps", "tokens", "wall_seconds",
        "tokens_per_s", "achieved_flops_per_s", "mfu_vs_measured_peak",
    ]
    for k in keys:
        v = d.get(k)
        if v is None:
            continue
        if isinstance(v, float):
            v = f"{v:.4g}"
        t.add_row(k.replace("_", " "), str(v))
    console.print(t)


@app.command()
@guarded
def sample(
    run_dir: Annotated[Path, typer.Argument(help="a GPT run directory")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="text to continue")] = "\n",
    tokens: Annotated[int, typer.Option("--tokens", "-n", min=1, help="tokens to generate")] = 200,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0)] = 0.8,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1)] = 50,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Generate text from a trained GPT run."""
    from budgetlm.train.api import sample_text

    text = sample_text(
        run_dir, prompt=prompt, max_new_tokens=tokens, temperature=temperature, top_k=top_k,
        seed=seed,
    )
    sys.stdout.write(text + "\n")


# ---------------------------------------------------------------------------------------------
# plan


@app.command()
@guarded
def plan(
    gpu_hours: Annotated[
        str | None, typer.Option("--gpu-hours", metavar="H", help="GPU-hours of --gpu")
    ] = None,
    gpu: Annotated[
        str | None,
        typer.Option("--gpu", help="GPU from the datasheet table (h100-sxm, a100, ...) or auto"),
    ] = None,
    gpus: Annotated[
        str, typer.Option("--gpus", metavar="K", help="GPUs in data parallel")
    ] = "1",
    flops: Annotated[
        str | None, typer.Option("--flops", metavar="C", help="training FLOPs, e.g. 1e19")
    ] = None,
    time_budget: Annotated[
        str | None,
        typer.Option("--time", help="wall time on this machine: 10m, 90s, 1h30m or seconds"),
    ] = None,
    cost: Annotated[
        str | None, typer.Option("--cost", metavar="AMOUNT", help="money to spend (with --price)")
    ] = None,
    price: Annotated[
        str | None, typer.Option("--price", metavar="PER_GPU_HOUR", help="price of a GPU-hour")
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="corpus (its tokens are counted)")
    ] = None,
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="byte|char|bpe")] = None,
    tokens: Annotated[
        str | None,
        typer.Option("--tokens", metavar="N", help="unique tokens available (instead of --data)"),
    ] = None,
    prior: Annotated[
        str, typer.Option("--prior", help="loss prior: epoch (default), chinchilla or kaplan")
    ] = "epoch",
    fit_file: Annotated[
        Path | None,
        typer.Option("--fit", help="plan from this corpus's fitted law (fit.json of calibrate)"),
    ] = None,
    seq_len: Annotated[
        list[int] | None, typer.Option("--seq-len", help="sequence lengths to try (repeatable)")
    ] = None,
    precision: Annotated[
        list[str] | None, typer.Option("--precision", help="precisions to try (repeatable)")
    ] = None,
    schedule_name: Annotated[
        str, typer.Option("--schedule", help="wsd (default) or cosine")
    ] = "wsd",
    calibrate: Annotated[
        bool | None,
        typer.Option(
            "--calibrate/--no-calibrate",
            help="time a few real steps of the best candidates (--time only; default on)",
        ),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="rows in the ranked table")] = 10,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="write the top candidate as a runnable YAML (+ .json)"),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Best model, batch, precision and schedule for a budget: ranked candidates, Pareto front."""
    from budgetlm.plan import plan as run_plan
    from budgetlm.units import parse_number

    budget = _budget(gpu_hours, flops, time_budget, cost, price, gpu, gpus)
    fit = _load_fit(fit_file) if fit_file is not None else None
    n_tokens = None if tokens is None else parse_number(tokens, "--tokens")
    if n_tokens is not None and n_tokens <= 0:
        raise UserError(f"--tokens: must be positive, got {tokens}")
    data_cfg = _plan_data(data, tokenizer)
    quiet = json_out
    status = None
    if budget.kind == "time" and calibrate is not False and not quiet:
        status = err_console.status("planning (timing candidates on this machine)…")
        status.start()
    try:
        result = run_plan(
            budget,
            data=data_cfg,
            tokens=int(n_tokens) if n_tokens is not None else None,
            prior=prior,
            fit=fit,
            seq_lens=seq_len or None,
            precisions=precision or None,
            schedule=schedule_name,
            calibrate=calibrate,
        )
    finally:
        if status is not None:
            status.stop()
    written = result.write(output) if output is not None else None
    if json_out:
        d = result.to_dict()
        if written:
            d["written"] = [str(p) for p in written]
        _print_json(d)
        return
    _print_plan(result, top)
    if written:
        console.print(
            f"wrote {written[0]} (the top candidate; run it: budgetlm train {written[0]}) and "
            f"{written[1]} ({len(result.candidates)} candidates)",
            highlight=False, soft_wrap=True,
        )


def _budget(gpu_hours: str | None, flops: str | None, time_budget: str | None,
            cost: str | None, price: str | None, gpu: str | None, gpus: str) -> Any:
    from budgetlm.plan import Budget
    from budgetlm.units import parse_duration, parse_number

    def num(text: str | None, flag: str) -> float | None:
        return None if text is None else parse_number(text, flag)

    n_gpus = num(gpus, "--gpus")
    if n_gpus is None or n_gpus != int(n_gpus):
        raise UserError(f"--gpus: expected a whole number, got {gpus!r}")
    return Budget(
        gpu_hours=num(gpu_hours, "--gpu-hours"),
        flops=num(flops, "--flops"),
        seconds=parse_duration(time_budget) if time_budget is not None else None,
        cost=num(cost, "--cost"),
        price=num(price, "--price"),
        gpu=gpu,
        gpus=int(n_gpus),
    )


def _load_fit(path: Path) -> dict[str, Any]:
    from budgetlm.calibrate.report import load_fit

    return load_fit(path)


def _plan_data(source: str | None, tokenizer: str | None) -> Any:
    from budgetlm.config import DataConfig
    from budgetlm.errors import format_validation_error

    if source is None:
        if tokenizer is not None:
            raise UserError("--tokenizer: applies to --data")
        return None
    fields: dict[str, Any] = {"source": source}
    if tokenizer is not None:
        fields["tokenizer"] = tokenizer
    try:
        return DataConfig(**fields)
    except Exception as exc:  # pydantic ValidationError
        if hasattr(exc, "errors"):
            raise UserError(format_validation_error(exc, prefix="data.")) from None
        raise


def _print_plan(p: Any, top: int) -> None:
    from rich import box

    console.print(p.first_line, highlight=False, soft_wrap=True)
    kind = p.law.kind
    t = Table(
        title=f"ranked candidates (best {min(top, len(p.candidates))} of "
              f"{len(p.candidates)} feasible; N params, D tokens, ep epochs, T seq; "
              f"{kind}: predicted loss, nats/token)",
        box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True,
    )
    if kind == "fit" and p.candidates and p.candidates[0].loss_lo is not None:
        lvl = float(p.law.extra.get("interval_level", 0.9))
        kind = f"fit ({lvl:.0%} interval)"
    heads = ("L×d", "N", "D", "ep", "T", "mb×acc", "prec", "lr", "time", "mem", kind)
    for col in heads:
        t.add_column(col, justify="left" if col in ("L×d", "prec") else "right", no_wrap=True)
    for c in p.candidates[:top]:
        t.add_row(*_plan_row(c))
    console.print(t)
    axes = " vs ".join(a.replace("_bytes", "") for a in p.pareto_axes)
    f = Table(title=f"Pareto front ({axes}: non-dominated)", box=box.SIMPLE_HEAD, pad_edge=False,
              padding=(0, 1), collapse_padding=True)
    keep = ("L×d", "N", "D", "T", "prec", "mb×acc", "time", "mem", kind)
    for col in keep:
        f.add_column(col, justify="left" if col in ("L×d", "prec") else "right", no_wrap=True)
    for c in p.front[:12]:
        row = dict(zip(heads, _plan_row(c), strict=True))
        f.add_row(*(row[k] for k in keep))
    console.print(f)
    opt = p.optimum
    cf = opt["closed_form"]
    console.print(
        f"compute-optimal for {opt['flops']:.3g} FLOPs ({p.law.name} {p.law.kind}, "
        f"{cf['method']}): N={human_count(cf['params'])}, D={human_count(cf['tokens'])}; "
        f"top candidate: N={human_count(opt['top_candidate']['params'])}, "
        f"D={human_count(opt['top_candidate']['tokens'])}"
        + (f"; data-constrained optimum: N={human_count(opt['data_constrained']['params'])}, "
           f"{opt['data_constrained']['epochs']:.1f} epochs" if "data_constrained" in opt else ""),
        highlight=False, soft_wrap=True,
    )
    if any(c.extrapolated for c in p.candidates[:top]):
        console.print("[dim]* outside the range the law was fitted on[/]", highlight=False)
    for note in p.notes:
        console.print(f"[dim]· {note}[/]", highlight=False, soft_wrap=True)


def _short_bytes(n: float) -> str:
    for div, unit in ((2**40, "T"), (2**30, "G"), (2**20, "M"), (2**10, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}B"


def _sig(n: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def _plan_row(c: Any) -> list[str]:
    mant, exp = f"{c.lr:.1e}".split("e")
    batch = f"{c.micro_batch}×{c.grad_accum}" + (f"×{c.devices}" if c.devices > 1 else "")
    if c.seconds is None:
        when = "-"
    elif c.seconds < 120:
        when = f"{c.seconds:.0f}s"
    elif c.seconds < 7200:
        when = f"{c.seconds / 60:.1f}m"
    else:
        when = f"{c.seconds / 3600:.1f}h"
    if c.time_source == "calibrated" and c.seconds is not None:
        when += "ᶜ"
    return [
        f"{c.shape.n_layer}×{c.shape.d_model}",
        _sig(c.params),
        _sig(c.tokens),
        f"{c.epochs:.1f}",
        str(c.seq_len),
        batch,
        c.precision + ("+ckpt" if c.checkpointing else ""),
        f"{mant}e{int(exp)}",
        when,
        _short_bytes(c.memory_bytes) if c.memory_bytes is not None else "-",
        f"{c.loss:.3f}" + ("*" if c.extrapolated else "")
        + (f" ({c.loss_lo:.3f}–{c.loss_hi:.3f})" if c.loss_lo is not None else ""),
    ]


@app.command()
@guarded
def calibrate(
    data: Annotated[str, typer.Option("--data", help="corpus the pilots train on")],
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="byte|char|bpe")] = None,
    time_budget: Annotated[
        str | None, typer.Option("--time", help="whole budget: wall time on this machine")
    ] = None,
    gpu_hours: Annotated[
        str | None, typer.Option("--gpu-hours", metavar="H", help="whole budget: this GPU's hours")
    ] = None,
    flops: Annotated[
        str | None, typer.Option("--flops", metavar="C", help="whole budget: training FLOPs")
    ] = None,
    fraction: Annotated[
        float, typer.Option("--pilot-fraction", help="share of the budget the pilots may use")
    ] = 0.2,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="fit file (pilots kept in <stem>.pilots/)")
    ] = Path("fit.json"),
    levels: Annotated[int, typer.Option("--levels", help="compute levels (IsoFLOP profiles)")] = 3,
    sizes: Annotated[int, typer.Option("--sizes", help="model sizes per level")] = 3,
    level_ratio: Annotated[
        float, typer.Option("--level-ratio", help="compute ratio of consecutive levels")
    ] = 3.0,
    size_spread: Annotated[
        float, typer.Option("--size-spread", help="parameter ratio of consecutive sizes")
    ] = 3.0,
    seq_len: Annotated[
        int | None, typer.Option("--seq-len", min=8, help="pilots' sequence length (default: "
                                 "the prior plan's)")
    ] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="bootstrap refits")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="seed of pilots and bootstrap")] = 0,
    no_plan: Annotated[
        bool, typer.Option("--no-plan", help="fit only; do not plan the rest of the budget")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Fit this corpus's scaling law from pilot runs on IsoFLOP profiles; plan the rest from it."""
    from budgetlm.calibrate import CalibrationInterrupted
    from budgetlm.calibrate import calibrate as run_calibrate
    from budgetlm.calibrate.report import render_fit

    budget = _budget(gpu_hours, flops, time_budget, None, None, None, "1")
    data_cfg = _plan_data(data, tokenizer)
    out = err_console if json_out else console

    def log(msg: str) -> None:
        if not quiet:
            out.print(f"[dim]{msg}[/]", highlight=False, soft_wrap=True)

    try:
        res = run_calibrate(
            budget, data_cfg, output, fraction=fraction, levels=levels, sizes=sizes,
            level_ratio=level_ratio, size_spread=size_spread, seq_len=seq_len,
            bootstrap=bootstrap, seed=seed, write_plan=not no_plan, log=log,
        )
    except CalibrationInterrupted as exc:
        err_console.print(str(exc), highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if json_out:
        _print_json({**res.fit, "fit_path": str(res.fit_path),
                     "plan_path": str(res.plan_path) if res.plan_path else None,
                     "reused": res.reused, "ran": res.ran})
        return
    render_fit(console, res.fit)
    if res.plan is not None:
        _print_plan(res.plan, 5)
    total = res.fit.get("budget", {})
    share = ""
    if total.get("seconds"):
        share = f" ({res.pilot_seconds / float(total['seconds']):.0%} of the budget)"
    console.print(
        f"pilots: {res.ran} run, {res.reused} reused; {res.pilot_seconds:.0f} s{share}. "
        f"wrote {res.fit_path}" + (f" and {res.plan_path}; run it: budgetlm train "
                                   f"{res.plan_path}" if res.plan_path else ""),
        highlight=False, soft_wrap=True,
    )
    for note in res.notes:
        console.print(f"[dim]· {note}[/]", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# tune / report / export

StudyArg = Annotated[Path, typer.Argument(help="study file (YAML); see `budgetlm schema study`")]
StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="storage URL (sqlite:///…, journal:PATH, postgresql://…)"),
]
StudySetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s",
        help="override the study file: budget.trials=10, space.optim.lr.high=0.1, or a "
        "RunConfig field for every trial (model.n_layer=4); repeatable",
    ),
]


@app.command()
@guarded
def tune(
    study_file: StudyArg,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=1, help="trials at once on this machine")
    ] = None,
    storage: StorageOpt = None,
    overrides: StudySetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no live table")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Tune hyperparameters: one capped subprocess per trial, pruning on the budget axis."""
    from budgetlm.tune import load_study, run_study
    from budgetlm.tune.report import render_summary

    study = load_study(study_file, overrides, storage)
    summary = run_study(study, workers=workers, console=err_console if json_out else console,
                        quiet=quiet or json_out)
    if json_out:
        _print_json(summary)
        return
    render_summary(console, summary, study)
    for err in summary.get("errors") or []:
        err_console.print(f"[red]tuner error:[/] {err.strip().splitlines()[-1]}", highlight=False)


@app.command()
@guarded
def report(
    study_file: Annotated[
        Path, typer.Argument(help="study file (YAML), or a fit.json written by calibrate")
    ],
    storage: StorageOpt = None,
    overrides: StudySetOpt = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="fit.json only: where to draw (default .png)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Summarize a study (best trial, Pareto front, pruning) or a fit (IsoFLOP curves, PNG)."""
    if study_file.suffix == ".json":
        from budgetlm.calibrate.report import report_fit

        got = report_fit(study_file, png=png, console=None if json_out else console)
        if json_out:
            _print_json(got)
        return
    from budgetlm.tune import load_study, report_study
    from budgetlm.tune.report import render_summary

    study = load_study(study_file, overrides, storage)
    summary = report_study(study)
    if json_out:
        _print_json(summary)
        return
    render_summary(console, summary, study)


@app.command()
@guarded
def export(
    study_file: StudyArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="RunConfig YAML to write")],
    trial: Annotated[
        int | None, typer.Option("--trial", "-t", min=0, help="trial number (default: the best)")
    ] = None,
    keep_time_cap: Annotated[
        bool,
        typer.Option("--keep-time-cap", help="keep a time cap (default: the tokens it reached)"),
    ] = False,
    storage: StorageOpt = None,
    overrides: StudySetOpt = None,
) -> None:
    """Write one trial's config as a RunConfig file that `budgetlm train` runs."""
    from budgetlm.tune import export_trial, load_study

    study = load_study(study_file, overrides, storage)
    cfg = export_trial(study, trial, output, keep_time_cap=keep_time_cap)
    console.print(f"wrote {output} ({cfg.name}); run it: budgetlm train {output}",
                  highlight=False, soft_wrap=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
