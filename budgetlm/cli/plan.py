"""`budgetlm plan`: the best model, batch, precision and schedule for a budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from budgetlm.cli.budget import data_config, parse_budget, parse_count, parse_token_count
from budgetlm.cli.plan_view import cell_duration, print_plan
from budgetlm.cli.root import JsonOpt, app, console, err_console, guarded, print_json
from budgetlm.config.kinds import Parametrization
from budgetlm.errors import UserError
from budgetlm.plan import TIMED
from budgetlm.plan import plan as run_plan
from budgetlm.plan.arch import check_arch
from budgetlm.plan.lifetime import Inference
from budgetlm.plan.planner import TIME_AND_INFERENCE
from budgetlm.plan.plot import write_plot
from budgetlm.units import format_count, parse_number, short_bytes

GpuHoursOpt = Annotated[
    str | None, typer.Option("--gpu-hours", metavar="H", help="GPU-hours of --gpu")
]
GpuOpt = Annotated[
    str | None,
    typer.Option("--gpu", help="GPU from the datasheet table (h100-sxm, a100, ...) or auto"),
]
GpusOpt = Annotated[str, typer.Option("--gpus", metavar="K", help="GPUs in data parallel")]
NodesOpt = Annotated[
    str, typer.Option("--nodes", metavar="M", help="nodes the --gpus are spread over (whole "
                      "GPUs each; the plan prices the communication between them)"),
]
InterconnectOpt = Annotated[
    str | None,
    typer.Option("--interconnect", metavar="NAME", help="network between the nodes: ib-ndr, "
                 "ib-hdr, roce-400g, ethernet-100g or ethernet-25g (default: the GPU's usual)"),
]
FlopsOpt = Annotated[
    str | None, typer.Option("--flops", metavar="C", help="training FLOPs, e.g. 1e19")
]
TimeOpt = Annotated[
    str | None,
    typer.Option("--time", help="wall time on this machine: 10m, 90s, 1h30m or seconds"),
]
CostOpt = Annotated[
    str | None, typer.Option("--cost", metavar="AMOUNT", help="money to spend (with --price)")
]
PriceOpt = Annotated[
    str | None, typer.Option("--price", metavar="PER_GPU_HOUR", help="price of a GPU-hour")
]
DataOpt = Annotated[str | None, typer.Option("--data", help="corpus (its tokens are counted)")]
TokenizerOpt = Annotated[str | None, typer.Option("--tokenizer", help="byte|char|bpe")]
TokensOpt = Annotated[
    str | None,
    typer.Option("--tokens", metavar="N", help="unique tokens available (instead of --data)"),
]
PriorOpt = Annotated[
    str | None, typer.Option("--prior", help="loss prior: epoch (default), chinchilla or kaplan")
]
FinetuneOpt = Annotated[
    Path | None,
    typer.Option("--finetune", metavar="PATH", help="plan a fine-tune of this model: a local "
                 "Hugging Face model directory (config.json) or a budgetlm run directory; "
                 "needs --data"),
]
TaskOpt = Annotated[
    str,
    typer.Option("--task", help="with --finetune: lm (a corpus, default) or classification "
                 "(--data a labeled .jsonl/.csv/.parquet with text and label fields; "
                 "--finetune a budgetlm run)"),
]
FitOpt = Annotated[
    Path | None,
    typer.Option("--fit", help="plan from this corpus's fitted law (fit.json of calibrate)"),
]
SeqLenOpt = Annotated[
    list[int] | None, typer.Option("--seq-len", help="sequence lengths to try (repeatable)")
]
PrecisionOpt = Annotated[
    list[str] | None, typer.Option("--precision", help="precisions to try (repeatable)")
]
ArchOpt = Annotated[
    str | None,
    typer.Option("--arch", help="candidates' recipe: gpt2, llama or moe (default: llama on a "
                 "GPU, gpt2 on a CPU or for --flops without --gpu)"),
]
ScheduleOpt = Annotated[str, typer.Option("--schedule", help="wsd (default) or cosine")]
ParametrizationOpt = Annotated[
    Parametrization | None,
    typer.Option("--parametrization", help="standard (default; lr from DeepSeek LLM's prior) or "
                 "mup: µP configs at the µP lr prior, the same at every width (Cerebras-GPT's "
                 "base lr 6e-3 at width 256); with --fit, the pilots'"),
]
TimingOpt = Annotated[
    bool | None,
    typer.Option(
        "--timing/--no-timing",
        help="time a few real steps of the best candidates (--time only; default on)",
    ),
]
TimingAliasOpt = Annotated[bool | None, typer.Option("--calibrate/--no-calibrate", hidden=True)]
TopOpt = Annotated[int, typer.Option("--top", min=1, help="rows in the ranked table")]
InferenceTokensOpt = Annotated[
    str | None,
    typer.Option("--inference-tokens", metavar="N", help="tokens the model will process or "
                 "generate over its life: rank by training + inference cost (Sardana et al.)"),
]
InferenceGpuOpt = Annotated[
    str | None, typer.Option("--inference-gpu", metavar="NAME",
                             help="GPU inference runs on (default: the training GPU)"),
]
InferencePriceOpt = Annotated[
    str | None, typer.Option("--inference-price", metavar="PER_GPU_HOUR",
                             help="price of an inference GPU-hour (default: --price)"),
]
PlotOpt = Annotated[
    Path | None,
    typer.Option("--plot", metavar="PATH", help="draw the plan: loss vs time (or cost, FLOPs), "
                 "Pareto front, compute-optimal and 0.5x/2x points (.png or .html)"),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="write the top candidate as a runnable YAML (+ .json)"),
]


@app.command()
@guarded
def plan(
    gpu_hours: GpuHoursOpt = None,
    gpu: GpuOpt = None,
    gpus: GpusOpt = "1",
    nodes: NodesOpt = "1",
    interconnect: InterconnectOpt = None,
    flops: FlopsOpt = None,
    time_budget: TimeOpt = None,
    cost: CostOpt = None,
    price: PriceOpt = None,
    data: DataOpt = None,
    tokenizer: TokenizerOpt = None,
    tokens: TokensOpt = None,
    prior: PriorOpt = None,
    fit_file: FitOpt = None,
    seq_len: SeqLenOpt = None,
    precision: PrecisionOpt = None,
    arch: ArchOpt = None,
    schedule_name: ScheduleOpt = "wsd",
    parametrization: ParametrizationOpt = None,
    timing: TimingOpt = None,
    timing_alias: TimingAliasOpt = None,
    top: TopOpt = 10,
    output: OutputOpt = None,
    finetune: FinetuneOpt = None,
    task: TaskOpt = "lm",
    inference_tokens: InferenceTokensOpt = None,
    inference_gpu: InferenceGpuOpt = None,
    inference_price: InferencePriceOpt = None,
    plot: PlotOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Best model, batch, precision and schedule for a budget: ranked candidates, Pareto front.
    With --finetune PATH: full or LoRA fine-tunes of that model on --data."""
    budget = parse_budget(gpu_hours=gpu_hours, flops=flops, time_budget=time_budget, cost=cost,
                          price=price, gpu=gpu, gpus=gpus)
    budget = with_nodes(budget, nodes, interconnect, finetune is not None)
    check_task(task, finetune)
    if finetune is not None:
        given = {"--arch": arch, "--fit": fit_file, "--tokens": tokens, "--prior": prior,
                 "--inference-tokens": inference_tokens, "--plot": plot,
                 "--parametrization": parametrization}
        _plan_finetune(budget, finetune, data, tokenizer, seq_len, precision, schedule_name,
                       timing if timing is not None else timing_alias, given, top, output,
                       json_out, task)
        return
    check_arch(arch)
    inference = inference_of(inference_tokens, inference_gpu, inference_price)
    if inference is not None and inference.active and budget.kind == "time":
        raise UserError(TIME_AND_INFERENCE)
    fit = load_fit_file(fit_file) if fit_file is not None else None
    n_tokens = parse_token_count(tokens)
    data_cfg = data_config(data, tokenizer)
    result = _run_plan(
        budget, json_out, data=data_cfg, tokens=n_tokens, prior=prior or "epoch", fit=fit,
        seq_lens=seq_len or None, precisions=precision or None, schedule=schedule_name,
        timing=timing if timing is not None else timing_alias, arch=arch, inference=inference,
        parametrization=parametrization,
    )
    if plot is not None:
        write_plot(result, plot)
    _show(result, print_plan, top, output, json_out)


def _run_plan(budget: Any, json_out: bool, **options: Any) -> Any:
    """`budgetlm.plan.plan(budget, **options)`, with a status line on the terminal while it
    times candidates on this machine (a --time budget, not --json)."""
    status = None
    if budget.kind == "time" and options.get("timing") is not False and not json_out:
        status = err_console.status("planning (timing candidates on this machine)…")
        status.start()
    try:
        return run_plan(budget, **options)
    finally:
        if status is not None:
            status.stop()


def check_task(task: str, finetune: Path | None) -> None:
    """--task: lm, or classification with --finetune (a pretrained run)."""
    if task not in ("lm", "classification"):
        raise UserError(f"--task: expected lm or classification, got {task!r}")
    if task != "lm" and finetune is None:
        raise UserError("--task classification: needs --finetune RUN_DIR (the pretrained run "
                        "to fine-tune) and --data (the labeled rows)")


def inference_of(tokens: str | None, gpu: str | None, price: str | None) -> Inference | None:
    """--inference-tokens/-gpu/-price as an `Inference` (None without --inference-tokens)."""
    if tokens is None:
        for flag, value in (("--inference-gpu", gpu), ("--inference-price", price)):
            if value is not None:
                raise UserError(f"{flag}: needs --inference-tokens N")
        return None
    return Inference(
        tokens=parse_number(tokens, "--inference-tokens"), gpu=gpu,
        price=parse_number(price, "--inference-price") if price is not None else None,
    )


def _plan_finetune(budget: Any, path: Path, data: str | None, tokenizer: str | None,
                   seq_len: list[int] | None, precision: list[str] | None, schedule: str,
                   timing: bool | None, given: dict[str, Any], top: int, output: Path | None,
                   json_out: bool, task: str = "lm") -> None:
    """`plan --finetune PATH`: rank fine-tunes of PATH on --data (--time: steps timed on this
    machine unless --no-timing); print, --json or -o."""
    from budgetlm.plan.finetune_plan import plan_finetune

    for flag, value in given.items():
        if value is not None:
            raise UserError(f"{flag}: does not apply to --finetune (the model is PATH's, and "
                            "no loss is predicted for a fine-tune)")
    if data is None:
        raise UserError("--finetune: needs --data (the fine-tuning corpus)")
    status = None
    if budget.kind == "time" and timing is not False and not json_out:
        status = err_console.status("planning (timing fine-tunes on this machine)…")
        status.start()
    try:
        result = plan_finetune(budget, path, data, tokenizer=tokenizer,
                               seq_lens=seq_len or None, precisions=precision or None,
                               schedule=schedule, timing=timing, task=task)
    finally:
        if status is not None:
            status.stop()
    _show(result, print_finetune_plan, top, output, json_out)


def _show(result: Any, printer: Any, top: int, output: Path | None, json_out: bool) -> None:
    """Write plan.yaml/plan.json when asked (-o), then print the JSON or the table."""
    written = result.write(output) if output is not None else None
    if json_out:
        print_json({**result.to_dict(), **_written_field(written)})
        return
    printer(result, top)
    if written:
        console.print(
            f"wrote {written[0]} (the top candidate; run it: budgetlm train {written[0]}) and "
            f"{written[1]} ({len(result.candidates)} candidates)",
            highlight=False, soft_wrap=True,
        )


FINETUNE_COLUMNS = ("method", "trains", "prec", "mb×acc", "lr", "ep", "D", "time", "mem", "use")


def print_finetune_plan(p: Any, top: int) -> None:
    """A fine-tune plan: first line, the top `top` candidates (estimate-only rows marked), the
    notes."""
    console.print(p.first_line, highlight=False, soft_wrap=True)
    t = Table(title=f"fine-tunes of {p.base.name}, best {min(top, len(p.candidates))} of "
              f"{len(p.candidates)} (trains: trained params; D tokens, ep epochs; use: tokens "
              "put to use, the rank; † estimate only; ᵗ steps timed on this machine)",
              box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for col in FINETUNE_COLUMNS:
        t.add_column(col, justify="left" if col in ("method", "prec") else "right",
                     no_wrap=True)
    for c in p.candidates[:top]:
        mant, exp = f"{c.lr:.1e}".split("e")
        t.add_row(
            c.method.label + ("†" if c.estimate_only else ""), format_count(c.trainable_params),
            f"{c.precision}{'+ckpt' if c.checkpointing else ''} T{c.seq_len}",
            f"{c.micro_batch}×{c.grad_accum}" + (f"×{c.devices}" if c.devices > 1 else ""),
            f"{mant}e{int(exp)}", f"{c.epochs:.2g}", format_count(c.tokens),
            cell_duration(c.seconds) + ("ᵗ" if c.time_source == TIMED and c.seconds else ""),
            short_bytes(c.memory_bytes) if c.memory_bytes is not None else "-",
            format_count(c.useful_tokens),
        )
    console.print(t)
    for note in p.notes:
        console.print(f"[dim]· {note}[/]", highlight=False, soft_wrap=True)


def with_nodes(budget: Any, nodes: str, interconnect: str | None, finetune: bool) -> Any:
    """`budget` spread over --nodes joined by --interconnect (checked by `Budget`)."""
    n_nodes = parse_count(nodes, "--nodes") or 1
    if n_nodes == 1 and interconnect is None:
        return budget
    if finetune:
        raise UserError("--nodes/--interconnect: do not apply to --finetune")
    return dataclasses.replace(budget, nodes=n_nodes, interconnect=interconnect)


def _written_field(written: Any) -> dict[str, list[str]]:
    """{'written': [paths]} when --output wrote files, else nothing."""
    return {"written": [str(p) for p in written]} if written else {}


def load_fit_file(path: Path) -> dict[str, Any]:
    """A fit.json written by `budgetlm calibrate`, checked, as a dict."""
    from budgetlm.calibrate.report import load_fit

    return load_fit(path)
