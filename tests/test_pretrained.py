"""Pretrained weights from a local Hugging Face directory (`model.from_pretrained`) and export back
(`budgetlm export RUN_DIR --hf OUT_DIR`): tiny random GPT-2 and Llama models made with
`transformers` and `save_pretrained` into temp dirs, never downloaded."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from budgetlm import estimate as est  # noqa: E402
from budgetlm.cli import app  # noqa: E402
from budgetlm.config import ModelConfig, RunConfig, dump_config, load_config  # noqa: E402
from budgetlm.config.hf_export import hf_config_data, hf_export_type  # noqa: E402
from budgetlm.config.io import pretrained_model_data, with_overrides  # noqa: E402
from budgetlm.errors import UserError  # noqa: E402
from budgetlm.model import build_model, hf_module_names, load_pretrained  # noqa: E402
from budgetlm.model.hf_weights import from_hf_state, to_hf_state  # noqa: E402

runner = CliRunner()
VOCAB = 300
LLAMA = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": VOCAB,
         "max_position_embeddings": 64, "tie_word_embeddings": False}
GPT2 = {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": VOCAB, "n_positions": 64,
        "bos_token_id": None, "eos_token_id": None}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """gpt2, llama and llama saved in shards (an index file and several safetensors)."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    llama.save_pretrained(root / "llama")
    llama.save_pretrained(root / "llama_sharded", max_shard_size="60KB")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2))
    gpt2.save_pretrained(root / "gpt2")
    assert (root / "llama_sharded" / "model.safetensors.index.json").is_file()
    assert len(list((root / "llama_sharded").glob("*.safetensors"))) > 1
    return {"gpt2": root / "gpt2", "llama": root / "llama",
            "llama_sharded": root / "llama_sharded"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "budget", "model", "token", "layer", "the"]
    text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(400))
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(text)
    return path


def _model_cfg(directory: Path, **over: Any) -> ModelConfig:
    data = {**pretrained_model_data(str(directory)), "from_pretrained": str(directory), **over}
    return RunConfig(model=data).model


def _hf(directory: Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval()


def _tokens(n: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, n), generator=torch.Generator().manual_seed(seed))


def _assert_same_logits(ours: torch.nn.Module, theirs: Any, idx: torch.Tensor) -> None:
    with torch.no_grad():
        a, b = ours.eval()(idx), theirs(idx).logits
    assert a.shape == b.shape
    assert b.std() > 1e-2  # a real comparison, not of two constant tensors
    assert (a - b).abs().max().item() < 1e-5


def _one_line(res: Any) -> str:
    text = res.output.strip()
    assert res.exit_code == 2, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    return text


# ---------------------------------------------------------------------------------------------
# Weights in


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama_sharded"])
@pytest.mark.parametrize("fused", [True, False])
def test_logits_equal_transformers(hf_dirs: dict[str, Path], name: str, fused: bool) -> None:
    cfg = _model_cfg(hf_dirs[name], fused_qkv=fused)
    model = build_model(cfg)
    load_pretrained(model, cfg, hf_dirs[name])
    _assert_same_logits(model, _hf(hf_dirs[name]), _tokens())


def test_config_maps_gelu_new_and_separate_projections(hf_dirs: dict[str, Path]) -> None:
    gpt2, llama = _model_cfg(hf_dirs["gpt2"]), _model_cfg(hf_dirs["llama"])
    assert (gpt2.mlp, gpt2.fused_qkv, gpt2.tie_embeddings) == ("gelu_tanh", True, True)
    assert (llama.mlp, llama.fused_qkv, llama.n_kv_head, llama.vocab_size) == (
        "swiglu", False, 2, VOCAB)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_estimated_params_equal_the_transformers_model(hf_dirs: dict[str, Path],
                                                       name: str) -> None:
    cfg = _model_cfg(hf_dirs[name])
    hf_total = sum(p.numel() for p in _hf(hf_dirs[name]).parameters())
    assert est.count_params(cfg).total == hf_total
    assert sum(p.numel() for p in build_model(cfg).parameters()) == hf_total


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_hf_module_names_map_linears_one_to_one(hf_dirs: dict[str, Path], name: str) -> None:
    cfg = _model_cfg(hf_dirs[name])
    model = build_model(cfg)
    load_pretrained(model, cfg, hf_dirs[name])
    ours, theirs = dict(model.named_modules()), dict(_hf(hf_dirs[name]).named_modules())
    names = hf_module_names(cfg)
    assert len(names) == 1 + cfg.n_layer * (4 if name == "gpt2" else 7)
    for mine, hf_name in names.items():
        a, b = ours[mine].weight, theirs[hf_name].weight
        conv1d = name == "gpt2" and mine != "lm_head"  # GPT-2's Conv1D stores (in, out)
        assert torch.equal(a, b.t() if conv1d else b), mine


def test_a_shorter_context_keeps_the_first_position_rows(hf_dirs: dict[str, Path]) -> None:
    cfg = _model_cfg(hf_dirs["gpt2"], seq_len=16)
    model = build_model(cfg)
    load_pretrained(model, cfg, hf_dirs["gpt2"])
    _assert_same_logits(model, _hf(hf_dirs["gpt2"]), _tokens(16))


def test_state_dict_round_trips_through_hf_names() -> None:
    for cfg in (ModelConfig(n_layer=2, fused_qkv=False),
                ModelConfig(n_layer=2, positions="rope", norm="rmsnorm", mlp="swiglu",
                            bias=False, n_kv_head=1, qk_norm=True, tie_embeddings=False)):
        state = build_model(cfg).state_dict()
        back = from_hf_state(to_hf_state(state, cfg), cfg)
        assert back.keys() == state.keys()
        assert all(torch.equal(back[k], state[k]) for k in state)


# ---------------------------------------------------------------------------------------------
# Config resolution


def test_explicit_model_keys_override_the_checkpoint_config(hf_dirs: dict[str, Path],
                                                            tmp_path: Path) -> None:
    spec = tmp_path / "ft.yaml"
    spec.write_text(f"preset: nanogpt-cpu\nmodel:\n  from_pretrained: {hf_dirs['llama']}\n"
                    "  seq_len: 32\n")
    cfg = load_config(str(spec), ["model.dropout=0.1"])
    assert (cfg.model.d_model, cfg.model.n_layer, cfg.model.seq_len) == (64, 2, 32)
    assert cfg.model.dropout == 0.1 and cfg.model.positions == "rope"
    via_set = with_overrides(load_config("tiny"),
                             [f"model.from_pretrained={hf_dirs['gpt2']}", "model.seq_len=16"])
    assert (via_set.model.d_model, via_set.model.mlp, via_set.model.seq_len) == (
        64, "gelu_tanh", 16)


def test_a_resolved_config_does_not_read_the_directory_again(hf_dirs: dict[str, Path],
                                                             tmp_path: Path) -> None:
    moved = tmp_path / "llama"
    shutil.copytree(hf_dirs["llama"], moved)
    cfg = RunConfig(model={**pretrained_model_data(str(moved)), "from_pretrained": str(moved)})
    dump_config(cfg, tmp_path / "config.yaml")
    shutil.rmtree(moved)
    assert load_config(str(tmp_path / "config.yaml")).model == cfg.model


# ---------------------------------------------------------------------------------------------
# Train from pretrained, export back


def _train(run: Path, corpus: Path, directory: Path, *sets: str) -> None:
    res = runner.invoke(app, [
        "train", "tiny", "--run-dir", str(run), "--data", str(corpus), "--max-steps", "2",
        "--set", f"model.from_pretrained={directory}", "--set", "model.seq_len=32",
        "--set", "train.micro_batch=2", "--set", "train.eval_tokens=128",
        "--set", "train.device=cpu", "--set", "optim.lr=1e-2", "-q", "--json", *sets,
    ])
    assert res.exit_code == 0, res.output


def _export(run: Path, out: Path) -> None:
    res = runner.invoke(app, ["export", str(run), "--hf", str(out), "--json"])
    assert res.exit_code == 0, res.output


def _run_model(run: Path) -> torch.nn.Module:
    from budgetlm.train.finetune import model_from_checkpoint
    from budgetlm.train.rundir import load_checkpoint

    cfg = load_config(str(run / "config.yaml"))
    return model_from_checkpoint(cfg, load_checkpoint(run, "test"))


def _bpe_tokenizer_file(directory: Path, text: str, vocab_size: int) -> None:
    from budgetlm.data.tokenizers import BpeTokenizer

    BpeTokenizer.train(text, vocab_size).hf.save(str(directory / "tokenizer.json"))


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_train_from_pretrained_then_export_loads_in_transformers(
    hf_dirs: dict[str, Path], corpus: Path, tmp_path: Path, name: str
) -> None:
    src = hf_dirs[name]
    sets: tuple[str, ...] = ()
    if name == "llama":  # its own tokenizer.json (280 ids < 300) for data.tokenizer=pretrained
        src = tmp_path / "llama_tok"
        shutil.copytree(hf_dirs["llama"], src)
        _bpe_tokenizer_file(src, corpus.read_text(), 280)
        sets = ("--set", "data.tokenizer=pretrained")
    run, out = tmp_path / "run", tmp_path / "out"
    _train(run, corpus, src, *sets)
    cfg = load_config(str(run / "config.yaml"))
    assert cfg.model.vocab_size == VOCAB  # the checkpoint's, not the tokenizer's
    trained = _run_model(run)
    before = build_model(cfg.model)
    load_pretrained(before, cfg.model, src)
    assert not torch.equal(trained.state_dict()["wte.weight"], before.state_dict()["wte.weight"])
    _export(run, out)
    exported = json.loads((out / "config.json").read_text())
    assert exported["model_type"] == name
    assert (out / "tokenizer.json").is_file() == (name == "llama")
    _assert_same_logits(trained, _hf(out), _tokens())
    assert RunConfig(model={**pretrained_model_data(str(out)), "from_pretrained": str(out)}
                     ).model.model_dump(exclude={"from_pretrained", "seq_len"}) == \
        cfg.model.model_dump(exclude={"from_pretrained", "seq_len"})


def _fake_run(run: Path, model: ModelConfig) -> torch.nn.Module:
    """A run directory holding `model` with random weights in its best checkpoint."""
    cfg = RunConfig(model=model)
    net = build_model(cfg.model)
    (run / "checkpoints").mkdir(parents=True)
    dump_config(cfg, run / "config.yaml")
    torch.save({"model": net.state_dict(), "counters": {"step": 7},
                "config": cfg.model_dump(mode="json")}, run / "checkpoints" / "best.pt")
    return net


@pytest.mark.parametrize(("model", "model_type"), [
    ({"mlp": "gelu_tanh", "fused_qkv": False, "n_head": 4, "d_model": 32}, "gpt2"),
    ({"mlp": "gelu", "tie_embeddings": False, "d_model": 32}, "gpt2"),
    ({"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False,
      "n_head": 4, "n_kv_head": 2, "d_model": 32}, "llama"),
    ({"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "qk_norm": True,
      "n_head": 4, "d_head": 12, "d_model": 32, "fused_qkv": False}, "qwen3"),
    ({"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "qkv_bias": True,
      "d_model": 32, "tie_embeddings": False}, "qwen2"),
    ({"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False,
      "sliding_window": 4, "d_model": 32, "seq_len": 16}, "mistral"),
])
def test_export_of_a_model_trained_from_scratch(tmp_path: Path, model: dict[str, Any],
                                                model_type: str) -> None:
    net = _fake_run(tmp_path / "run", ModelConfig(**model))
    _export(tmp_path / "run", tmp_path / "out")
    hf = _hf(tmp_path / "out")
    assert hf.config.model_type == model_type
    _assert_same_logits(net, hf, torch.randint(0, 256, (2, 16)))


def test_export_type_names_the_field_that_prevents_it() -> None:
    for model, field in (
        ({"norm": "rmsnorm"}, "model.norm"),
        ({"bias": False}, "model.bias"),
        ({"n_kv_head": 1}, "model.n_kv_head"),
        ({"positions": "rope", "mlp": "gelu", "norm": "rmsnorm"}, "model.mlp"),
        ({"family": "bert"}, "model.family"),
        ({"n_expert": 4}, "model.n_expert"),
        ({"parametrization": "mup", "mup_base_width": 32}, "model.parametrization"),
    ):
        with pytest.raises(UserError, match=field):
            hf_export_type(ModelConfig(**model))
    assert hf_export_type(ModelConfig(parametrization="mup", mup_base_width=64)) == "gpt2"  # m=1
    m = ModelConfig(positions="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    with pytest.raises(UserError, match="no longer the qwen3"):
        hf_export_type(m, "qwen3")
    assert hf_config_data(m, "mistral", {"model_type": "mistral", "bos_token_id": 1})[
        "bos_token_id"] == 1


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, one line naming the field or file


def _train_line(tmp_path: Path, corpus: Path, directory: Path, *sets: str) -> str:
    return _one_line(runner.invoke(app, [
        "train", "tiny", "--run-dir", str(tmp_path / "run"), "--data", str(corpus),
        "--max-steps", "1", "--set", f"model.from_pretrained={directory}",
        "--set", "model.seq_len=32", "--set", "train.device=cpu", *sets,
    ]))


def test_a_directory_without_config_json(tmp_path: Path, corpus: Path) -> None:
    (tmp_path / "empty").mkdir()
    text = _train_line(tmp_path, corpus, tmp_path / "empty")
    assert "model.from_pretrained" in text and "has no config.json" in text


def test_a_checkpoint_whose_shapes_do_not_match(hf_dirs: dict[str, Path], tmp_path: Path,
                                                corpus: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(hf_dirs["llama"], bad)
    raw = json.loads((bad / "config.json").read_text())
    raw["intermediate_size"] = 96
    (bad / "config.json").write_text(json.dumps(raw))
    text = _train_line(tmp_path, corpus, bad)
    assert "model.safetensors: tensor model.layers.0.mlp." in text and "expects" in text


def test_a_missing_tensor_is_named(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(hf_dirs["llama"], bad)
    tensors = load_file(str(bad / "model.safetensors"))
    tensors.pop("model.norm.weight")
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    cfg = _model_cfg(bad)
    with pytest.raises(UserError, match="model.norm.weight missing"):
        load_pretrained(build_model(cfg), cfg, bad)


def test_an_unsupported_model_type(tmp_path: Path, corpus: Path) -> None:
    gemma = tmp_path / "gemma"
    transformers.GemmaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=1, intermediate_size=64, vocab_size=300,
                             head_dim=16).save_pretrained(gemma)
    text = _train_line(tmp_path, corpus, gemma)
    assert "model.from_pretrained" in text and "'gemma'" in text and "not supported" in text


def test_pretrained_tokenizer_needs_tokenizer_json(hf_dirs: dict[str, Path], tmp_path: Path,
                                                   corpus: Path) -> None:
    text = _train_line(tmp_path, corpus, hf_dirs["llama"], "--set", "data.tokenizer=pretrained")
    assert "data.tokenizer" in text and "tokenizer.json" in text


def test_a_tokenizer_larger_than_the_vocabulary(hf_dirs: dict[str, Path], tmp_path: Path,
                                                corpus: Path) -> None:
    src = tmp_path / "llama_tok"
    shutil.copytree(hf_dirs["llama"], src)
    _bpe_tokenizer_file(src, corpus.read_text() + "".join(map(chr, range(0x100, 0x200))), 400)
    text = _train_line(tmp_path, corpus, src, "--set", "data.tokenizer=pretrained")
    assert "data.tokenizer" in text and f"({VOCAB})" in text


def test_export_refuses_a_used_directory_and_a_non_run(tmp_path: Path) -> None:
    _fake_run(tmp_path / "run", ModelConfig(d_model=32))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    text = _one_line(runner.invoke(app, ["export", str(tmp_path / "run"), "--hf",
                                         str(tmp_path / "out")]))
    assert "--hf" in text and "not an empty directory" in text
    text = _one_line(runner.invoke(app, ["export", str(tmp_path), "--hf", str(tmp_path / "o")]))
    assert "not a run directory" in text
    _fake_run(tmp_path / "run2", ModelConfig(d_model=32, norm="rmsnorm"))
    text = _one_line(runner.invoke(app, ["export", str(tmp_path / "run2"), "--hf",
                                         str(tmp_path / "o")]))
    assert "model.norm" in text


# ---------------------------------------------------------------------------------------------
# Separate q, k, v projections in the estimator


def _saved_bytes(model: torch.nn.Module, m: ModelConfig, batch: int, precision: str) -> int:
    """Bytes of the distinct storages autograd saves for backward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    idx = torch.randint(m.vocab_size, (batch, m.seq_len))
    ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
           else contextlib.nullcontext())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        model(idx, idx)
    return sum(storages.values())


def test_separate_projections_counted_name_by_name_and_in_activations() -> None:
    """Per sequence, (saved(B=6) - saved(B=2)) / 4 against the estimate, for fused_qkv false
    over positions, heads, attention kernels, precisions and dropout."""
    rng = random.Random(18)
    for i in range(16):
        m = ModelConfig(
            n_layer=2, n_head=rng.choice([1, 2, 4]), d_model=32, seq_len=16, vocab_size=50,
            positions=rng.choice(["learned", "rope"]), attention=rng.choice(["sdpa", "eager"]),
            mlp=rng.choice(["gelu", "gelu_tanh", "swiglu"]), dropout=rng.choice([0.0, 0.1]),
            bias=rng.random() < 0.5, fused_qkv=False,
        )
        if m.n_head > 1 and rng.random() < 0.5:
            m = m.model_copy(update={"n_kv_head": 1})
        model = build_model(m).train()
        assert {n: tuple(p.shape) for n, p in model.named_parameters()} == est.param_shapes(m)
        precision = "bf16" if i % 2 else "fp32"
        measured = (_saved_bytes(model, m, 6, precision) - _saved_bytes(model, m, 2, precision)) / 4
        expected = est.activation_bytes(m, 1, precision, False, "cpu") + m.seq_len * 50 * 4
        assert abs(measured - expected) / measured < 0.01, (m, precision, measured, expected)
