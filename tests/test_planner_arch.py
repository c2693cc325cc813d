from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from budgetlm import hardware
from budgetlm import plan as planner
from budgetlm.cli import app
from budgetlm.config import ModelConfig, load_config
from budgetlm.errors import UserError
from budgetlm.estimate import memory_breakdown, model_flops_per_token
from budgetlm.plan import Budget, plan
from budgetlm.plan.arch import arch_ladder
from budgetlm.plan.pricing import estimator_config

runner = CliRunner()
GiB = 2**30


@pytest.fixture
def cpu_machine(monkeypatch: pytest.MonkeyPatch) -> hardware.HardwareProfile:
    """This machine, as a fake measured CPU profile (no measuring)."""
    prof = hardware.HardwareProfile(
        cpu_model="fake CPU", cpu_cores=2, memory_bytes=16 * GiB, gpus=[], device="cpu",
        matmul_flops={"fp32": 5e10, "bf16": 5e9}, bandwidth_bytes_per_s=None, measured=True,
        datasheet=None, device_memory_bytes=16 * GiB, gpu_count=0,
        created_at="2024-01-01T00:00:00Z", torch_version=None, python_version="3.11",
    )
    monkeypatch.setattr(hardware, "cached_profile", lambda: prof)
    monkeypatch.setattr(hardware, "load_profile", lambda *a, **k: prof)
    return prof


def _check_llama_rules(m: ModelConfig) -> None:
    d = m.d_model
    assert (m.positions, m.norm, m.mlp) == ("rope", "rmsnorm", "swiglu")
    assert m.bias is False and m.tie_embeddings is False and m.family == "gpt"
    if d >= 2048:
        assert m.head_dim == 128
    elif d >= 256:
        assert m.head_dim == 64
    else:
        assert m.head_dim <= 32
    assert m.n_head * m.head_dim == d
    assert m.kv_heads == (m.n_head // 4 if m.n_head % 4 == 0 else m.n_head)
    multiple = 256 if d >= 1024 else 64
    assert m.ff % multiple == 0 and 0 <= m.ff - 8 * d / 3 < multiple


def _hf_llama_params(m: ModelConfig) -> int:
    """sum(p.numel()) of transformers' Llama built from `m` on the meta device."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(
        vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=m.ff,
        num_hidden_layers=m.n_layer, num_attention_heads=m.n_head,
        num_key_value_heads=m.kv_heads, head_dim=m.head_dim, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False, max_position_embeddings=m.seq_len,
    )
    import torch

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def test_llama_candidates_follow_the_shape_rules() -> None:
    p = plan(Budget(gpu_hours=8, gpu="h100-sxm"))  # llama: the default for GPU plans
    assert p.arch == "llama"
    assert any(n.startswith("arch: llama") for n in p.notes)
    cands = p.candidates + p.infeasible
    assert cands and all(c.shape.arch == "llama" for c in cands)
    for c in cands:
        _check_llama_rules(c.model)
    widths = {s.d_model for s in arch_ladder("llama")}
    assert min(widths) < 256 and max(widths) >= 2048  # the rules hold over the whole ladder
    for s in arch_ladder("llama"):
        _check_llama_rules(planner.model_config(s, 256, 512, "gpt"))
    assert any(c.model.kv_heads < c.model.n_head for c in cands)  # grouped-query attention
    top = p.top
    assert top.params == _hf_llama_params(top.model)  # untied head, GQA, SwiGLU: exact
    assert top.active_params == top.params
    d = p.to_dict()
    assert d["arch"] == "llama" and d["loss_rule"] is None
    rec = d["top"]
    assert (rec["arch"], rec["n_kv_head"], rec["d_ff"]) == ("llama", top.model.kv_heads,
                                                            top.model.ff)
    assert p.config(0).model == top.model  # the exported config is the priced model


def _moe_total(m: ModelConfig) -> tuple[int, int]:
    """(total, active) parameters of the planner's MoE, counted from the architecture."""
    d, V, L, hd = m.d_model, m.vocab_size, m.n_layer, m.head_dim
    attn = d * m.n_head * hd * 2 + 2 * d * m.kv_heads * hd
    expert = 3 * d * m.expert_ff
    moe_layers = L - m.n_dense_layer
    total = (2 * V * d + d + L * (2 * d + attn) + m.n_dense_layer * 3 * d * m.ff
             + moe_layers * (d * m.n_expert + (m.n_expert + m.n_shared_expert) * expert))
    active = total - moe_layers * (m.n_expert - m.n_expert_active) * expert
    return total, active


def test_moe_candidates_count_all_experts_in_memory_and_active_flops_in_time() -> None:
    res = runner.invoke(app, ["plan", "--gpu-hours", "100", "--gpu", "h100-sxm", "--arch", "moe",
                              "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["arch"] == "moe" and d["top"]["n_expert"] == 64
    p = plan(Budget(gpu_hours=100, gpu="h100-sxm"), arch="moe")
    assert d["top"]["name"] == p.top.name and d["top"]["params"] == p.top.params
    peak = hardware.GPU_SPECS["h100-sxm"].peak_flops["bf16"]
    for c in p.candidates[:5] + [x for x in p.infeasible if x.params][:3]:
        m = c.model
        assert (m.n_expert, m.n_expert_active, m.n_shared_expert) == (64, 6, 2)
        assert m.n_dense_layer == 1 and m.moe_layers == m.n_layer - 1
        _check_llama_rules(m)
        total, active = _moe_total(m)
        assert c.params == total and c.active_params == active and total > 3 * active
        # time: active FLOPs (top-k + shared experts and the router), not all experts
        assert c.flops_per_token == model_flops_per_token(m)
        head_and_blocks = active - m.vocab_size * m.d_model - (2 * m.n_layer + 1) * m.d_model
        attention = 12 * m.n_layer * c.seq_len * m.n_head * m.head_dim
        assert c.flops_per_token == pytest.approx(6 * head_and_blocks + attention, rel=0.02)
        dense_all = model_flops_per_token(m.model_copy(update={"n_expert_active": 64}))
        assert dense_all > 3 * c.flops_per_token
        # memory: every expert resident (fp32 weights and AdamW's two fp32 states)
        cfg = estimator_config(m, c.precision, c.micro_batch, c.checkpointing, "adamw", "cuda")
        mem = memory_breakdown(cfg, micro_batch=c.micro_batch, precision=c.precision,
                               device="cuda")
        assert mem.weights >= 4 * total and mem.optimizer >= 8 * total
        assert c.memory_bytes is not None and c.memory_bytes >= 12 * total
        if not c.feasible:
            assert c.reason.startswith("does not fit")
    top = p.top
    assert top.memory_bytes <= 0.9 * hardware.GPU_SPECS["h100-sxm"].memory_bytes
    assert top.flops == pytest.approx(100 * 3600 * peak * top.mfu, rel=0.02)  # spends the hours
    assert any(c.reason.startswith("does not fit") for c in p.infeasible)  # all experts count


def test_arch_gpt2_plans_as_before(cpu_machine: object) -> None:
    p = plan(Budget(gpu_hours=8, gpu="h100-sxm"), arch="gpt2")
    # tests/golden/plan-gpu-hours-h100.json: the gpt2 ladder, each candidate with the BPE
    # vocabulary of its size (Tao et al. 2024; 32,768 for every candidate before, which made
    # L15-d1152 the top)
    assert (p.top.name, p.top.params, p.top.tokens, p.top.vocab_size) == (
        "L18-d1152-T1024-bf16", 307046016, 4752670720, 16640)
    rungs = {(s.n_layer, s.d_model, s.n_head) for s in planner.ladder()}
    for c in p.candidates + p.infeasible:
        assert c.shape.arch == "gpt2"
        assert (c.shape.n_layer, c.shape.d_model, c.shape.n_head) in rungs
        assert c.model == ModelConfig(
            family="gpt", n_layer=c.shape.n_layer, n_head=c.shape.n_head,
            d_model=c.shape.d_model, vocab_size=c.vocab_size, seq_len=c.seq_len, bias=False,
            dropout=0.0, tie_embeddings=True,
        )
        assert c.active_params == c.params
    assert p.config(0).name == "plan-L18-d1152"
    # the default: gpt2 on a CPU --time plan and for FLOPs with no GPU, llama on a GPU
    cpu = plan(Budget(seconds=600), timing=False)
    explicit = plan(Budget(seconds=600), timing=False, arch="gpt2")
    assert cpu.arch == "gpt2"
    assert [c.to_dict() for c in cpu.candidates] == [c.to_dict() for c in explicit.candidates]
    assert plan(Budget(flops=1e19)).arch == "gpt2"
    assert plan(Budget(flops=1e19, gpu="h100-sxm")).arch == "llama"


def test_moe_prior_is_marked_as_a_rule(tmp_path: Path) -> None:
    p = plan(Budget(gpu_hours=100, gpu="h100-sxm"), arch="moe")
    rule = p.loss_rule
    assert rule is not None and rule["kind"] == "rule" and rule["params"] == "active"
    assert any("MoE loss" in n and "a rule, not a fit" in n for n in p.notes)
    d = p.to_dict()
    assert d["loss_rule"] == rule
    out, js = p.write(tmp_path / "plan.yaml")
    assert json.loads(js.read_text())["loss_rule"]["kind"] == "rule"
    cfg = load_config(str(out))
    assert cfg.model.n_expert == 64
    pred = cfg.meta["predicted"]
    assert pred["loss_rule"]["kind"] == "rule" and pred["active_params"] == p.top.active_params
    # the law is evaluated at the active parameters, not the total
    top, law = p.top, p.law
    n_active = law.n_of(top.active_params, top.active_non_embedding_params)
    assert top.loss_law == pytest.approx(law.loss_repeated(n_active, top.tokens, None))
    assert top.loss_law > law.loss_repeated(law.n_of(top.params, top.non_embedding_params),
                                            top.tokens, None)
    assert plan(Budget(gpu_hours=100, gpu="h100-sxm"), arch="llama").loss_rule is None


def test_unknown_arch_is_one_line_error() -> None:
    res = runner.invoke(app, ["plan", "--gpu-hours", "8", "--arch", "mixtral"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --arch")
    assert "mixtral" in lines[0] and "gpt2, llama, moe" in lines[0]
    with pytest.raises(UserError, match="--arch: unknown architecture 'GPT2'"):
        plan(Budget(gpu_hours=8, gpu="h100-sxm"), arch="GPT2")
    assert math.isfinite(plan(Budget(gpu_hours=8, gpu="h100-sxm"), arch="gpt2").top.loss)
