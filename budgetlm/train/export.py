"""A trained run written back as a Hugging Face model directory (`budgetlm export RUN_DIR --hf`).

OUT_DIR gets `config.json` (`config.hf_export`: the original model type and settings for a run
that came `from_pretrained`, else gpt2 or a Llama-family type by the model's shape),
`model.safetensors` (`model.hf_weights.to_hf_state`, fp32) and, when the run's tokenizer is a
`tokenizers` one (bpe, pretrained), its `tokenizer.json` (a pretrained tokenizer's
tokenizer_config.json and special_tokens_map.json travel along), so
`transformers.AutoModelForCausalLM.from_pretrained(OUT_DIR)` loads it. The weights are the run's
best checkpoint if it kept one, else the latest; a LoRA run's adapters are merged in. The
directory is written beside OUT_DIR and renamed into place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from budgetlm.config import RunConfig, load_config
from budgetlm.config.hf_export import hf_config_data, hf_export_type
from budgetlm.config.io import read_json
from budgetlm.errors import UserError
from budgetlm.model.hf_weights import SINGLE_FILE, to_hf_state
from budgetlm.train.finetune import model_from_checkpoint
from budgetlm.train.rundir import load_checkpoint

TOKENIZER_FILE = "tokenizer.json"
_TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json")


def _original_config(cfg: RunConfig) -> dict[str, Any] | None:
    """The config.json of the directory the run's model came from, when it is still there."""
    src = cfg.model.from_pretrained
    if src is None:
        return None
    path = Path(src).expanduser() / "config.json"
    return read_json(path) if path.is_file() else None


def _tokenizer_files(run_dir: Path, cfg: RunConfig) -> dict[str, Path]:
    """OUT_DIR file name -> the file to copy: the run's `tokenizers` file as tokenizer.json
    (bpe.json of a bpe run, tokenizer.json of a pretrained one) and, for a pretrained one, the
    model directory's tokenizer settings."""
    tok_dir = run_dir / "tokenizer"
    out: dict[str, Path] = {}
    for name in ("bpe.json", TOKENIZER_FILE):
        if (tok_dir / name).is_file():
            out[TOKENIZER_FILE] = tok_dir / name
    if TOKENIZER_FILE in out and cfg.data.tokenizer == "pretrained" and cfg.model.from_pretrained:
        src = Path(cfg.model.from_pretrained).expanduser()
        out.update({n: src / n for n in _TOKENIZER_EXTRAS if (src / n).is_file()})
    return out


def _target(out_dir: Path) -> None:
    """OUT_DIR must be new or an empty directory."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"--hf {out_dir}: exists and is not an empty directory")


def export_hf(run_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write the run in `run_dir` as a Hugging Face model directory `out_dir`; returns what was
    written (model_type, files, checkpoint step)."""
    from safetensors.torch import save_file

    run, out = Path(run_dir), Path(out_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"export {run}: not a run directory (no config.yaml)")
    _target(out)
    cfg = load_config(str(run / "config.yaml"))
    original = _original_config(cfg)
    model_type = hf_export_type(cfg.model, original.get("model_type") if original else None)
    config = hf_config_data(cfg.model, model_type, original)
    checkpoint = load_checkpoint(run, "export")
    model = model_from_checkpoint(cfg, checkpoint)
    tensors = {k: t.detach().to("cpu").float().contiguous().clone()
               for k, t in to_hf_state(model.state_dict(), cfg.model).items()}
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(tensors, str(tmp / SINGLE_FILE), metadata={"format": "pt"})
        copied = _tokenizer_files(run, cfg)
        for name, src in copied.items():
            shutil.copyfile(src, tmp / name)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"--hf {out}: cannot write it ({exc.strerror or exc})") from None
    step = (checkpoint.get("counters") or {}).get("step")
    return {"model_type": model_type, "path": str(out), "step": step,
            "files": sorted(["config.json", SINGLE_FILE, *copied])}
