"""LoRA fine-tuning through peft in the trainer: only adapters (and asked-for norms/head) train,
frozen weights stay bit-identical, resume is exact, adapter files load in peft (budgetlm's and
transformers' names), and what the trainer cannot do is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from budgetlm.cli import app
from budgetlm.config import RunConfig, load_config
from budgetlm.errors import UserError
from budgetlm.estimate import lora_targets
from budgetlm.model import build_model
from budgetlm.train import sample_text, train
from budgetlm.train.finetune import (
    ADAPTER_DIR,
    NORMS,
    PEFT_PREFIX,
    base_model,
    extra_trainable,
    merged_model,
    model_from_checkpoint,
    plain_state_dict,
    prepare_model,
    save_adapter,
)
from budgetlm.train.rundir import RunDir, load_checkpoint

peft = pytest.importorskip("peft")

MARKOV = "synthetic:markov:order=1,vocab=16,seed=0,tokens=200000"


def lora_cfg(preset: str = "llama-tiny", *overrides: str) -> RunConfig:
    base = [
        f"data.source={MARKOV}", "model.seq_len=32", "train.micro_batch=8", "train.max_steps=30",
        "train.eval_interval=10", "train.eval_tokens=2048", "train.log_interval=1",
        "finetune.method=lora", "optim.lr=3e-3",
    ]
    return load_config(preset, base + list(overrides))


def run_cfg(run: Path) -> RunConfig:
    """The resolved config a run saved (vocabulary set from its corpus)."""
    return load_config(str(run / "config.yaml"))


def start_model(cfg: RunConfig) -> torch.nn.Module:
    """The weights a run of `cfg` starts from: the trainer seeds, then builds."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model)


def train_losses(run: Path) -> list[float]:
    return [r["loss"] for r in RunDir(run).read_metrics() if r.get("kind") == "train"]


def last_state(run: Path) -> dict[str, Any]:
    return torch.load(RunDir(run).latest_checkpoint(), map_location="cpu", weights_only=False)


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def test_lora_trains_only_the_adapters(tmp_path: Path) -> None:
    run = tmp_path / "r"
    res = train(lora_cfg(), run_dir=run)
    losses = train_losses(run)
    assert res.status == "completed"
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses
    cfg = run_cfg(run)
    start = start_model(cfg).state_dict()
    state = last_state(run)
    weights = state["model"]
    frozen = {k: v for k, v in weights.items() if not is_adapter(k)}
    assert len(frozen) == len(start)
    for name, t in start.items():  # every frozen weight bit-identical to the start
        key = PEFT_PREFIX + name
        key = key if key in frozen else key.replace(".weight", ".base_layer.weight").replace(
            ".bias", ".base_layer.bias")
        assert torch.equal(frozen[key], t), name
    adapters = {k: v for k, v in weights.items() if is_adapter(k)}
    assert any(k.endswith("lora_B.default.weight") and v.abs().sum() > 0
               for k, v in adapters.items())  # B starts at zero: it trained
    # optimizer state exists for the adapters and nothing else
    moments = [s["exp_avg"] for s in state["optimizer"]["state"].values()]
    assert sorted(m.shape for m in moments) == sorted(v.shape for v in adapters.values())
    trainable = sum(m.numel() for m in moments)
    wrapped = prepare_model(build_model(cfg.model), cfg)
    assert trainable == wrapped.get_nb_trainable_parameters()[0]
    rank = cfg.finetune.lora.rank
    assert trainable == rank * sum(t.adapter_params for t in lora_targets(cfg.model,
                                                                          cfg.finetune.lora))


def test_lora_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = lora_cfg("tiny", "train.max_steps=16", "train.eval_interval=4",
                   "finetune.lora.dropout=0.1", "finetune.lora.rank=4")
    train(cfg, run_dir=tmp_path / "full")

    def interrupt(rec: dict) -> None:
        if rec["step"] == 8:
            raise KeyboardInterrupt

    part = train(cfg, run_dir=tmp_path / "part", on_eval=interrupt)
    assert part.status == "interrupted" and part.steps == 8
    assert train(cfg, resume=tmp_path / "part").steps == 16
    assert train_losses(tmp_path / "full") == train_losses(tmp_path / "part")
    full, again = last_state(tmp_path / "full"), last_state(tmp_path / "part")
    assert full["model"].keys() == again["model"].keys()
    for name, t in full["model"].items():
        assert torch.equal(t, again["model"][name]), name


def test_full_method_leaves_the_model_alone() -> None:
    cfg = lora_cfg("tiny", "finetune.method=full")
    model = build_model(cfg.model)
    names = list(model.state_dict())
    assert prepare_model(model, cfg) is model
    assert merged_model(model) is model and base_model(model) is model
    assert list(model.state_dict()) == names
    assert all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())


def test_bf16_holds_frozen_weights_in_16_bits_and_trains_norms_and_head() -> None:
    cfg = lora_cfg("tiny", "train.precision=bf16", "finetune.lora.train_norms=true",
                   "finetune.lora.train_head=true")
    plain = build_model(cfg.model)
    wrapped = prepare_model(plain, cfg)
    extras = extra_trainable(plain, cfg)
    assert "lm_head.weight" in extras and plain.wte.weight.requires_grad  # tied: the embedding
    assert any(".ln_1." in n for n in extras) and "ln_f.weight" in extras
    trainable = {n: p for n, p in wrapped.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in wrapped.named_parameters() if not p.requires_grad}
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert {p.dtype for n, p in frozen.items()} == {torch.bfloat16}  # matrices, wpe
    assert sum(p.numel() for p in trainable.values()) == wrapped.get_nb_trainable_parameters()[0]
    x = torch.randint(0, cfg.model.vocab_size, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = wrapped(x, x)
    loss.backward()
    assert all(p.grad is not None for p in trainable.values())
    assert all(p.grad is None for p in frozen.values())
    merged = merged_model(wrapped)
    assert type(merged).__name__ == "GPT"
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    assert wrapped.base_model.model.blocks[0].attn.c_attn.lora_A  # the original keeps adapters


def test_bf16_lora_run_keeps_its_16_bit_frozen_weights(tmp_path: Path) -> None:
    run = tmp_path / "r"
    res = train(lora_cfg("llama-tiny", "train.precision=bf16", "train.max_steps=12",
                         "train.eval_interval=6"), run_dir=run)
    assert res.status == "completed"
    losses = train_losses(run)
    assert losses[-1] < losses[0] - 0.1, losses
    weights = last_state(run)["model"]
    start = start_model(run_cfg(run))
    norms = {f"{n}.weight" for n, m in start.named_modules() if isinstance(m, NORMS)}
    for name, t in start.state_dict().items():
        key = PEFT_PREFIX + name
        if key not in weights:
            key = key.replace(".weight", ".base_layer.weight")
        want = t if name in norms else t.to(torch.bfloat16)  # norms stay fp32
        assert weights[key].dtype == want.dtype and torch.equal(weights[key], want), name
    assert all(v.dtype == torch.float32 for k, v in weights.items() if is_adapter(k))


def test_activation_checkpointing_reaches_the_wrapped_model(tmp_path: Path) -> None:
    plain = train(lora_cfg("tiny", "train.max_steps=4"), run_dir=tmp_path / "a")
    ckpt = train(lora_cfg("tiny", "train.max_steps=4", "train.activation_checkpointing=true"),
                 run_dir=tmp_path / "b")
    assert ckpt.train_loss == pytest.approx(plain.train_loss, abs=1e-5)
    cfg = lora_cfg("tiny", "train.activation_checkpointing=true")
    model = build_model(cfg.model)
    model.activation_checkpointing = True
    assert prepare_model(model, cfg).activation_checkpointing is True


def test_native_adapter_is_what_peft_saves_and_loads(tmp_path: Path) -> None:
    run = tmp_path / "r"
    train(lora_cfg("llama-tiny", "train.max_steps=12", "train.eval_interval=6"), run_dir=run)
    cfg = run_cfg(run)
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    wrapped = prepare_model(start_model(cfg), cfg)
    wrapped.load_state_dict(best["model"])
    wrapped.save_pretrained(str(tmp_path / "by_peft"))
    from safetensors.torch import load_file

    ours = load_file(str(run / ADAPTER_DIR / "adapter_model.safetensors"))
    theirs = load_file(str(tmp_path / "by_peft" / "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    ours_cfg = json.loads((run / ADAPTER_DIR / "adapter_config.json").read_text())
    theirs_cfg = json.loads((tmp_path / "by_peft" / "adapter_config.json").read_text())
    for key in ("r", "lora_alpha", "lora_dropout", "bias", "peft_type", "fan_in_fan_out"):
        assert ours_cfg[key] == theirs_cfg[key], key
    assert sorted(ours_cfg["target_modules"]) == sorted(theirs_cfg["target_modules"])
    loaded = peft.PeftModel.from_pretrained(start_model(cfg), str(run / ADAPTER_DIR)).eval()
    merged = model_from_checkpoint(cfg, best).eval()
    x = torch.randint(0, cfg.model.vocab_size, (2, 32))
    with torch.no_grad():
        assert torch.allclose(loaded(x), merged(x), atol=1e-5)


def test_adapter_carries_trained_norms_and_a_tied_head(tmp_path: Path) -> None:
    cfg = lora_cfg("tiny", "finetune.lora.train_norms=true", "finetune.lora.train_head=true")
    torch.manual_seed(1)
    wrapped = prepare_model(build_model(cfg.model), cfg)
    start = {k: v.clone() for k, v in wrapped.state_dict().items()}
    with torch.no_grad():
        for p in wrapped.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    save_adapter(cfg, wrapped.state_dict(), base_model(wrapped), tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert {"lm_head", "wte", "ln_f", "blocks.0.ln_1"} <= set(saved["modules_to_save"])
    base = build_model(cfg.model)
    base.load_state_dict({k.removeprefix(PEFT_PREFIX).replace(".base_layer", ""): v
                          for k, v in start.items() if not is_adapter(k)})
    loaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    merged = merged_model(wrapped).eval()
    x = torch.randint(0, cfg.model.vocab_size, (2, 32))
    with torch.no_grad():
        assert torch.allclose(loaded(x), merged(x), atol=1e-5)


def test_init_from_and_sample_read_a_lora_run(tmp_path: Path) -> None:
    run = tmp_path / "r"
    train(lora_cfg("tiny", "train.max_steps=6", "train.eval_interval=3"), run_dir=run)
    best = load_checkpoint(run)
    merged = model_from_checkpoint(run_cfg(run), best)
    plain = plain_state_dict(best)
    assert plain.keys() == merged.state_dict().keys()
    assert all(torch.equal(v, merged.state_dict()[k]) for k, v in plain.items())
    start = start_model(run_cfg(run)).state_dict()
    qkv = "blocks.0.attn.c_attn.weight"
    assert not torch.equal(plain[qkv], start[qkv])  # adapters merged
    assert torch.equal(plain["wte.weight"], start["wte.weight"])  # not adapted
    again = train(lora_cfg("tiny", "train.max_steps=2", "finetune.method=full",
                           f"train.init_from={run}"), run_dir=tmp_path / "next")
    assert again.status == "completed"
    assert isinstance(sample_text(run, "\x01", max_new_tokens=4), str)


def bad_lora_cli(tmp_path: Path, *sets: str) -> Any:
    args = ["train", "tiny", "--data", MARKOV, "--max-steps", "2", "--run-dir",
            str(tmp_path / "r"), "--set", "finetune.method=lora"]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize(("sets", "needle"), [
    (("finetune.lora.target=[q_proj]",), "finetune.lora.target: q_proj"),
    (("finetune.lora.rank=0",), "finetune.lora.rank"),
    (("finetune.quantize=nf4",), "finetune.quantize: nf4"),
])
def test_what_the_trainer_cannot_do_is_one_line(
    tmp_path: Path, sets: tuple[str, ...], needle: str
) -> None:
    res = bad_lora_cli(tmp_path, *sets)
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert needle in text and "Traceback" not in text and len(text.splitlines()) == 1, text
    assert not (tmp_path / "r").exists()


def test_missing_peft_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    cfg = lora_cfg("tiny")
    with pytest.raises(UserError, match=r"pip install 'budgetlm\[finetune\]'"):
        prepare_model(build_model(cfg.model), cfg)


# ---------------------------------------------------------------------------------------------
# From a Hugging Face directory: adapters in transformers' names


def save_tiny_hf(kind: str, path: Path) -> Path:
    """A tiny random `transformers` model (vocabulary of the Markov corpus) saved into `path`."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(
            vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
        )
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.GPT2Config(vocab_size=16, n_embd=32, n_layer=2, n_head=4,
                                          n_positions=64, bos_token_id=0, eos_token_id=1)
        model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(str(path))
    return path


def hf_lora_cli(src: Path, run: Path, *sets: str) -> Any:
    args = ["train", "tiny", "--data", MARKOV, "--max-steps", "6", "--run-dir", str(run)]
    for s in ("model.from_pretrained=" + str(src), "model.seq_len=32", "train.micro_batch=8",
              "train.eval_interval=3", "train.eval_tokens=1024", "finetune.method=lora",
              "optim.lr=1e-2", *sets):
        args += ["--set", s]
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize(("kind", "sets"), [
    ("llama", ("finetune.lora.train_norms=true", "finetune.lora.train_head=true")),
    ("gpt2", ()),
    ("gpt2", ("finetune.lora.train_norms=true", "finetune.lora.train_head=true")),
])
def test_adapter_loads_into_the_transformers_model(
    tmp_path: Path, kind: str, sets: tuple[str, ...]
) -> None:
    transformers = pytest.importorskip("transformers")
    src, run = save_tiny_hf(kind, tmp_path / "hf"), tmp_path / "run"
    res = hf_lora_cli(src, run, *sets)
    assert res.exit_code == 0, res.output
    saved = json.loads((run / ADAPTER_DIR / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(src.resolve())
    assert saved["fan_in_fan_out"] is (kind == "gpt2")  # GPT-2's Conv1D
    probe = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(str(src)),
                                peft.LoraConfig(target_modules="all-linear",
                                                fan_in_fan_out=kind == "gpt2"))
    peft_all_linear = {n for n, m in probe.get_base_model().named_modules() if hasattr(m, "lora_A")}
    assert set(saved["target_modules"]) == peft_all_linear  # budgetlm's all-linear is peft's
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(src))
    loaded = peft.PeftModel.from_pretrained(hf, str(run / ADAPTER_DIR)).eval()
    cfg = run_cfg(run)
    untrained = merged_model(prepare_model(build_model(cfg.model), cfg)).eval()  # B = 0
    trained = model_from_checkpoint(cfg, load_checkpoint(run)).eval()
    x = torch.randint(0, 16, (2, 32))
    with torch.no_grad():
        theirs, ours = loaded(x).logits, trained(x)
        assert torch.allclose(theirs, ours, atol=1e-5), (theirs - ours).abs().max()
        assert not torch.allclose(ours, untrained(x), atol=1e-3)  # the adapter trained


def test_fused_qkv_on_a_llama_directory_cannot_name_its_adapter(tmp_path: Path) -> None:
    src = save_tiny_hf("llama", tmp_path / "hf")
    res = hf_lora_cli(src, tmp_path / "run", "model.fused_qkv=true")
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert "finetune.lora.target" in text and len(text.splitlines()) == 1, text


def test_lora_under_torchrun_matches_one_process(tmp_path: Path) -> None:
    import shutil

    from test_ddp import SETS, SINGLE, TWO_RANKS, losses, run_ok, train_cmd

    if shutil.which("torchrun") is None:
        pytest.skip("no torchrun")
    sets = [*SETS, "finetune.method=lora", "optim.lr=1e-2"]
    run_ok(train_cmd(*SINGLE, run=tmp_path / "one", sets=sets))
    run_ok(train_cmd(*TWO_RANKS, run=tmp_path / "two", sets=sets))
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-4
    assert (tmp_path / "two" / ADAPTER_DIR / "adapter_model.safetensors").is_file()
