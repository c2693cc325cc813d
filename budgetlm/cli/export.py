"""`budgetlm export`: a trained run as a Hugging Face model directory (`RUN_DIR --hf OUT_DIR`),
or one study trial as a runnable config (`STUDY_FILE -o OUTPUT`, `budgetlm.cli.tune`). torch is
imported when a run is exported."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from budgetlm.cli import tune
from budgetlm.cli.root import JsonOpt, app, console, guarded, print_json
from budgetlm.errors import UserError


@app.command()
@guarded
def export(
    source: Annotated[
        Path, typer.Argument(help="a run directory (with --hf) or a study file (with -o)")
    ],
    hf: Annotated[
        Path | None,
        typer.Option("--hf", help="write the run as a Hugging Face model directory here"),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="study: the RunConfig YAML to write")
    ] = None,
    trial: Annotated[
        int | None,
        typer.Option("--trial", "-t", min=0, help="study: trial number (default: the best)"),
    ] = None,
    keep_time_cap: Annotated[
        bool,
        typer.Option("--keep-time-cap", help="study: keep a time cap (default: the tokens it "
                     "reached)"),
    ] = False,
    storage: tune.StorageOpt = None,
    overrides: tune.StudySetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a run as a Hugging Face model (RUN_DIR --hf OUT_DIR: config.json,
    model.safetensors, tokenizer.json) or a study trial as a RunConfig (STUDY_FILE -o OUTPUT)."""
    if hf is None:
        if output is None:
            raise UserError("export: give --hf OUT_DIR (for a run directory) or -o OUTPUT (for a "
                            "study file)")
        tune.export(source, output, trial, keep_time_cap, storage, overrides)
        return
    study_flags = {"--output": output, "--trial": trial, "--storage": storage,
                   "--set": overrides, "--keep-time-cap": keep_time_cap or None}
    given = [flag for flag, value in study_flags.items() if value is not None]
    if given:
        raise UserError(f"export --hf: {given[0]} is for a study file, not a run directory")
    from budgetlm.train.export import export_hf

    written = export_hf(source, hf)
    if json_out:
        print_json(written)
        return
    console.print(f"wrote {written['path']} ({written['model_type']}, step {written['step']}: "
                  f"{', '.join(written['files'])}); load it with "
                  "transformers.AutoModelForCausalLM.from_pretrained", highlight=False,
                  soft_wrap=True)
