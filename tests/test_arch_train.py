"""Llama-family and mixture-of-experts models train: GQA equals MHA when it should, the presets
train on a CPU in seconds, experts receive tokens, resume is exact, every optimizer steps a MoE
model, checkpointing changes nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import curve, interrupted_then_resumed

from budgetlm.config import OPTIMIZERS, ModelConfig, OptimConfig, RunConfig, load_config
from budgetlm.model import build_model, n_params
from budgetlm.optim import build_optimizer
from budgetlm.train import train

REPO = Path(__file__).resolve().parent.parent
MARKOV = "synthetic:markov:order=1,vocab=16,seed=0,tokens=200000"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _llama(**kw: object) -> ModelConfig:
    base: dict[str, object] = dict(
        n_layer=2, n_head=4, d_model=32, vocab_size=41, seq_len=12, positions="rope",
        norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False,
    )
    base.update(kw)
    return ModelConfig(**base)


def _moe(**kw: object) -> ModelConfig:
    base: dict[str, object] = dict(
        n_kv_head=2, n_expert=4, n_expert_active=2, n_shared_expert=1, d_expert=24,
        n_dense_layer=1, n_layer=3,
    )
    base.update(kw)
    return _llama(**base)


def _tokens(cfg: ModelConfig, batch: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(cfg.vocab_size, (batch, cfg.seq_len), generator=g)


def _loss_and_grads(cfg: ModelConfig, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor,
                                                              list[torch.Tensor]]:
    torch.manual_seed(seed)
    model = build_model(cfg).train()
    idx = _tokens(cfg)
    torch.manual_seed(123)
    logits, loss = model(idx, idx)
    loss.backward()
    return model, logits.detach(), [p.grad.clone() for p in model.parameters()]


# ---------------------------------------------------------------------------------------------
# grouped-query attention


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("extra", [{}, {"qk_norm": True, "dropout": 0.1, "sliding_window": 5}])
def test_gqa_with_all_heads_equals_mha_bit_for_bit(attention: str, extra: dict) -> None:
    mha = _llama(attention=attention, **extra)
    gqa = _llama(attention=attention, n_kv_head=4, **extra)
    m1, out1, g1 = _loss_and_grads(mha)
    m2, out2, g2 = _loss_and_grads(gqa)
    assert [(n, p.shape) for n, p in m1.named_parameters()] == [
        (n, p.shape) for n, p in m2.named_parameters()
    ]
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(out1, out2)
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_gqa_equals_mha_whose_kv_heads_are_repeated_per_group(attention: str,
                                                              n_kv_head: int) -> None:
    """kv head j serves query heads j·g … j·g+g-1 (HF repeat_kv): an MHA model holding each kv
    head's weights g times in a row computes the same function."""
    gqa_cfg = _llama(attention=attention, n_kv_head=n_kv_head, qk_norm=True)
    gqa = build_model(gqa_cfg).eval()
    mha = build_model(_llama(attention=attention, qk_norm=True)).eval()
    state = dict(gqa.state_dict())
    H, dh, g = 4, 8, 4 // n_kv_head
    for i in range(gqa_cfg.n_layer):
        key = f"blocks.{i}.attn.c_attn.weight"
        q, k, v = state[key].split((H * dh, n_kv_head * dh, n_kv_head * dh))
        k = k.view(n_kv_head, dh, -1).repeat_interleave(g, dim=0).reshape(H * dh, -1)
        v = v.view(n_kv_head, dh, -1).repeat_interleave(g, dim=0).reshape(H * dh, -1)
        state[key] = torch.cat((q, k, v))
    mha.load_state_dict(state)
    idx = _tokens(gqa_cfg)
    assert torch.allclose(gqa(idx), mha(idx), atol=1e-5)
    wrong = dict(state)  # repeating the heads in the other order is a different function
    for i in range(gqa_cfg.n_layer):
        key = f"blocks.{i}.attn.c_attn.weight"
        q, k, v = wrong[key].split(H * dh)
        perm = torch.arange(H).view(n_kv_head, g).t().reshape(-1)
        k = k.view(H, dh, -1)[perm].reshape(H * dh, -1)
        v = v.view(H, dh, -1)[perm].reshape(H * dh, -1)
        wrong[key] = torch.cat((q, k, v))
    mha.load_state_dict(wrong)
    if n_kv_head > 1:
        assert not torch.allclose(gqa(idx), mha(idx), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# the presets train


def _records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-tiny", "moe-tiny"])
def test_llama_tiny_and_moe_tiny_train_on_cpu_in_under_a_minute(name: str, tmp_path: Path) -> None:
    run = tmp_path / name
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "budgetlm", "train", name, "--run-dir", str(run), "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "completed" and result["stop_reason"] == "max_steps"
    assert seconds < 60, f"{name} took {seconds:.1f} s"
    train_recs, evals = _records(run, "train"), _records(run, "eval")
    assert train_recs[-1]["loss"] < train_recs[0]["loss"] - 1.0
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert result["val_loss"] < math.log(256) - 2.0  # far below a uniform guess over bytes


def _moe_run(*overrides: str) -> RunConfig:
    base = [
        f"data.source={MARKOV}", "model.seq_len=32", "train.micro_batch=8",
        "train.max_steps=24", "train.eval_interval=6", "train.eval_tokens=2048",
        "train.log_interval=1",
    ]
    return load_config("moe-tiny", base + list(overrides))


def test_experts_receive_tokens(tmp_path: Path) -> None:
    cfg = _moe_run("model.n_layer=3", "model.n_dense_layer=1", "model.n_shared_expert=0")
    train(cfg, run_dir=tmp_path / "r")
    evals = _records(tmp_path / "r", "eval")
    assert [r["step"] for r in evals] == [6, 12, 18, 24]
    tokens_between_evals = 6 * 8 * 32
    for r in evals:
        load = r["expert_load"]
        assert len(load) == 2 and all(len(layer) == 4 for layer in load)  # 2 MoE blocks x 4
        for layer in load:
            assert all(n > 0 for n in layer), load
            assert sum(layer) == tokens_between_evals * 2  # each token goes to its top-2


def test_dense_model_logs_no_expert_load(tmp_path: Path) -> None:
    cfg = load_config("llama-tiny", [f"data.source={MARKOV}", "model.seq_len=32",
                                     "train.max_steps=4", "train.eval_interval=2",
                                     "train.eval_tokens=1024"])
    train(cfg, run_dir=tmp_path / "r")
    assert all("expert_load" not in r for r in _records(tmp_path / "r", "eval"))


def _last_weights(run: Path) -> dict[str, torch.Tensor]:
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem[5:]))
    return torch.load(ckpts[-1], map_location="cpu", weights_only=False)["model"]


def test_moe_resume_is_exact(tmp_path: Path) -> None:
    cfg = _moe_run("model.dropout=0.1")
    train(cfg, run_dir=tmp_path / "full")
    part, resumed = interrupted_then_resumed(cfg, tmp_path / "part", at=12)
    assert part.status == "interrupted" and part.steps == 12
    assert resumed.steps == 24
    assert curve(tmp_path / "full") == curve(tmp_path / "part")
    a, b = _last_weights(tmp_path / "full"), _last_weights(tmp_path / "part")
    assert a.keys() == b.keys() and any(".mlp.experts." in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    after = [r["expert_load"] for r in _records(tmp_path / "full", "eval") if r["step"] > 12]
    again_after = [r["expert_load"] for r in _records(tmp_path / "part", "eval") if r["step"] > 12]
    assert after == again_after


# ---------------------------------------------------------------------------------------------
# parameters, optimizers, checkpointing


def _closed_form_params(m: ModelConfig) -> int:
    """Llama-style (no bias, rmsnorm, untied, rope) count written out by hand."""
    d, dh, V = m.d_model, m.head_dim, m.vocab_size
    attn = d * (m.n_head + 2 * m.kv_heads) * dh + m.n_head * dh * d + (2 * dh if m.qk_norm else 0)
    per_mlp = 3 if m.mlp == "swiglu" else 2
    dense = per_mlp * d * m.ff
    moe = d * m.n_expert + (m.n_expert + m.n_shared_expert) * per_mlp * d * m.expert_ff
    blocks = m.n_layer * (attn + 2 * d) + (m.n_layer - m.moe_layers) * dense + m.moe_layers * moe
    return V * d + blocks + d + V * d


@pytest.mark.parametrize("seed", range(8))
def test_moe_param_count_matches_numel(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)

    def pick(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    n_head = pick(1, 4) * 2
    n_kv = [k for k in range(1, n_head + 1) if n_head % k == 0][pick(0, 1)]
    n_expert = pick(1, 6)
    cfg = _llama(
        n_layer=pick(1, 4), n_head=n_head, n_kv_head=n_kv, d_head=pick(1, 4) * 2,
        d_model=pick(2, 6) * 8, d_ff=pick(8, 40), qk_norm=bool(pick(0, 1)),
        mlp=("swiglu", "gelu")[pick(0, 1)], n_expert=n_expert,
        n_expert_active=pick(1, n_expert), n_shared_expert=pick(0, 2), d_expert=pick(4, 20),
    )
    cfg = cfg.model_copy(update={"n_dense_layer": pick(0, cfg.n_layer)})
    model = build_model(cfg)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert n_params(model) == sum(p.numel() for p in model.parameters()) == sum(unique.values())
    assert n_params(model) == _closed_form_params(cfg)
    moe_blocks = [b for b in model.blocks if hasattr(b.mlp, "router")]
    assert len(moe_blocks) == cfg.moe_layers


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_steps_a_moe_model(name: str) -> None:
    cfg = _moe(n_shared_expert=1)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = build_optimizer(model, OptimConfig(name=name, lr=1e-2, weight_decay=0.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    idx = _tokens(cfg, batch=4)
    _, loss = model(idx, idx)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    for n, p in model.named_parameters():
        assert torch.isfinite(p).all(), n
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    for part in ("mlp.router.weight", "mlp.experts.0.w1.weight", "mlp.shared.0.w2.weight",
                 "attn.c_attn.weight"):
        assert any(n.endswith(part) for n in moved), (name, part)
    _, loss2 = model(idx, idx)
    assert torch.isfinite(loss2)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_checkpointing_on_a_moe_model_keeps_loss_grads_and_load(dropout: float) -> None:
    cfg = _moe(dropout=dropout, sliding_window=6, qk_norm=True)
    model = build_model(cfg).train()
    idx = _tokens(cfg)
    results = []
    for on in (False, True):
        model.activation_checkpointing = on
        model.zero_grad(set_to_none=True)
        model.take_expert_load()
        torch.manual_seed(123)
        _, loss = model(idx, idx)
        loss.backward()
        load = model.take_expert_load()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()], load))
    (l0, g0, load0), (l1, g1, load1) = results
    assert abs(l0.item() - l1.item()) <= 1e-6
    for a, b in zip(g0, g1, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert load0 == load1  # the recompute in backward does not count tokens twice
    assert [sum(x) for x in load0] == [idx.numel() * cfg.n_expert_active] * cfg.moe_layers


# ---------------------------------------------------------------------------------------------
# the same function as Hugging Face's Llama and Qwen3


def _hf_state(hf_sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """HF Llama / Qwen3 weights under budgetlm's names (q, k, v fused into c_attn)."""
    out = {"wte.weight": hf_sd["model.embed_tokens.weight"],
           "ln_f.weight": hf_sd["model.norm.weight"], "lm_head.weight": hf_sd["lm_head.weight"]}
    names = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2",
             "self_attn.o_proj": "attn.c_proj", "self_attn.q_norm": "attn.q_norm",
             "self_attn.k_norm": "attn.k_norm", "mlp.gate_proj": "mlp.w1",
             "mlp.up_proj": "mlp.w3", "mlp.down_proj": "mlp.w2"}
    for i in range(n_layer):
        hf, ours = f"model.layers.{i}.", f"blocks.{i}."
        for a, b in names.items():
            if hf + a + ".weight" in hf_sd:
                out[ours + b + ".weight"] = hf_sd[hf + a + ".weight"]
        out[ours + "attn.c_attn.weight"] = torch.cat(
            [hf_sd[f"{hf}self_attn.{p}_proj.weight"] for p in "qkv"]
        )
    return out


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_gqa_model_computes_what_hf_computes(family: str) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = _llama(n_kv_head=2, d_head=6, d_ff=40, qk_norm=family == "qwen3", rope_theta=5e5,
                 norm_eps=1e-6)
    kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ff,
              num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
              num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim,
              max_position_embeddings=cfg.seq_len, rms_norm_eps=cfg.norm_eps,
              rope_theta=cfg.rope_theta, tie_word_embeddings=False, attention_bias=False)
    conf_cls = transformers.LlamaConfig if family == "llama" else transformers.Qwen3Config
    hf_cfg = conf_cls(**kw)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # norms too, so a swapped q_norm/k_norm would show
            p.copy_(torch.randn_like(p) * 0.3)
    ours = build_model(cfg).eval()
    ours.load_state_dict(_hf_state(hf.state_dict(), cfg.n_layer))
    idx = _tokens(cfg)
    with torch.no_grad():
        expected = hf(idx).logits
    assert torch.allclose(ours(idx), expected, atol=1e-4, rtol=1e-4)
