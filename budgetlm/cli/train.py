"""`budgetlm train` (train under caps, write a run directory) and `budgetlm sample` (generate
text from a trained GPT run). The trainer, and torch with it, is imported when they run."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from budgetlm.cli.budget import parse_count
from budgetlm.cli.root import JsonOpt, SetOpt, app, console, guarded, print_json
from budgetlm.errors import EXIT_INTERRUPTED
from budgetlm.units import parse_duration, require_finite

RESULT_ROWS = (
    "status", "val_loss", "val_bpb", "val_accuracy", "val_f1", "best_val_loss", "steps",
    "tokens", "wall_seconds", "tokens_per_s", "achieved_flops_per_s", "mfu_vs_measured_peak",
)


@app.command()
@guarded
def train(
    config: Annotated[
        str | None,
        typer.Argument(help="preset or RunConfig YAML (default: tiny; not with --resume)"),
    ] = None,
    data: Annotated[str | None, typer.Option("--data", help="corpus source")] = None,
    val_data: Annotated[str | None, typer.Option("--val-data", help="validation source")] = None,
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="byte|char|bpe")] = None,
    max_time: Annotated[
        str | None, typer.Option("--max-time", help="wall time cap: 10m, 90s, 1h30m or seconds")
    ] = None,
    max_steps: Annotated[
        str | None, typer.Option("--max-steps", help="steps cap: 2000, 2e3, 20k")
    ] = None,
    max_tokens: Annotated[
        str | None, typer.Option("--max-tokens", help="tokens cap: 2e6, 400M, 1.5B")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="output directory")] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue this run directory")
    ] = None,
    overrides: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a GPT, BERT-style or T5 model (a language model, or a classifier on labeled data)
    under caps; writes a run directory."""
    from budgetlm.train import resolve_train_config
    from budgetlm.train import train as run_train

    cfg = resolve_train_config(
        config,
        overrides=overrides,
        data=data,
        val_data=val_data,
        tokenizer=tokenizer,
        max_time=parse_duration(max_time, "--max-time") if max_time is not None else None,
        max_steps=parse_count(max_steps, "--max-steps"),
        max_tokens=parse_count(max_tokens, "--max-tokens"),
        resume=resume,
    )
    result = run_train(cfg, run_dir=run_dir, resume=resume, progress=not (quiet or json_out))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for the run
        return
    if json_out:
        print_json(result.to_dict())
    else:
        print_result(result.to_dict())
    if result.status == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)


def print_result(d: dict[str, Any]) -> None:
    """A run's result (its dict form) as a two-column table of the headline numbers."""
    t = Table(title=f"run {d.get('run_dir', '')}", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    for k in RESULT_ROWS:
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
    from budgetlm.train import sample_text

    require_finite(temperature, "--temperature")
    text = sample_text(
        run_dir, prompt=prompt, max_new_tokens=tokens, temperature=temperature, top_k=top_k,
        seed=seed,
    )
    sys.stdout.write(text + "\n")
