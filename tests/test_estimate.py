"""budgetlm.estimate against the real thing: parameters name by name, FLOPs against
FlopCounterMode, activations against the bytes autograd actually saves, HF reference counts."""

from __future__ import annotations

import contextlib
import json
import math
import random
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from budgetlm import estimate as est
from budgetlm.config import LARGE_PRESETS, PRESETS, ModelConfig, RunConfig, preset
from budgetlm.errors import UserError
from budgetlm.estimate.params import param_spec_counts
from budgetlm.model import build_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_model(rng: random.Random, family: str) -> ModelConfig:
    """A tiny model with every option drawn at random."""
    n_head = rng.choice([1, 2, 3, 4])
    d_model = rng.choice([12, 16, 24, 32])
    d_head = rng.choice([None, 4, 6, 8])
    if d_head is None and d_model % n_head:
        d_head = 8
    positions = rng.choice(["learned", "rope"])
    if positions == "rope" and (d_head or d_model // n_head) % 2:
        d_head = 4  # rotary pairs up channels
    return ModelConfig(
        family=family,
        n_layer=rng.randint(1, 3),
        n_head=n_head,
        d_model=d_model,
        d_head=d_head,
        d_ff=rng.choice([None, 20, 40, 64]),
        vocab_size=rng.randint(11, 97),
        seq_len=rng.choice([4, 8, 16, 24]),
        positions=positions,
        norm=rng.choice(["layernorm", "rmsnorm"]),
        mlp=rng.choice(["gelu", "relu", "swiglu"]),
        bias=rng.random() < 0.5,
        tie_embeddings=rng.random() < 0.5,
        attention=rng.choice(["sdpa", "eager"]),
        dropout=rng.choice([0.0, 0.0, 0.1]),
    )


def random_models(family: str, n: int = 24, seed: int = 0) -> list[ModelConfig]:
    rng = random.Random(f"{family}-{seed}")
    return [random_model(rng, family) for _ in range(n)]


def _run(model: ModelConfig, **train: object) -> RunConfig:
    return RunConfig(model=model, train=train)


# ---------------------------------------------------------------------------------------------
# Parameters


SMALL_PRESETS = [
    name
    for name, p in PRESETS.items()
    if name not in LARGE_PRESETS and p.get("model", {}).get("family", "gpt") in ("gpt", "bert")
]


def _assert_exact(m: ModelConfig) -> None:
    model = build_model(m)
    built = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert built == est.param_shapes(m)
    assert est.count_params(m).total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_preset_params_are_exact(name: str) -> None:
    _assert_exact(preset(name).model)


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_random_shapes_params_are_exact_name_by_name(family: str) -> None:
    for m in random_models(family):
        _assert_exact(m)


def test_gpt2_124m_has_124439808_params() -> None:
    pc = est.count_params(preset("gpt2-124m").model)
    assert pc.total == 124_439_808
    assert pc.embedding == 50257 * 768 + 1024 * 768
    assert pc.non_embedding == pc.total - pc.embedding
    # matmul: every block Linear plus the (tied) head, used once per token
    assert pc.matmul == 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 50257 * 768


def test_param_count_split_by_option() -> None:
    base = ModelConfig(n_layer=1, d_model=8, n_head=2, vocab_size=10, seq_len=4)
    n = est.count_params(base).total
    untied = est.count_params(base.model_copy(update={"tie_embeddings": False})).total
    assert untied - n == 10 * 8
    swiglu = est.count_params(base.model_copy(update={"mlp": "swiglu"})).total
    assert swiglu - n == 8 * 32 + 32  # one more d x ff matrix with its bias
    rope = est.count_params(base.model_copy(update={"positions": "rope"}))
    assert n - rope.total == 4 * 8 and rope.embedding == 10 * 8


def test_hf_reference_counts() -> None:
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        bert = transformers.BertForMaskedLM(transformers.BertConfig())
        t5 = transformers.T5ForConditionalGeneration(
            transformers.T5Config(
                vocab_size=32128,
                d_model=768,
                d_kv=64,
                d_ff=3072,
                num_layers=12,
                num_decoder_layers=12,
                num_heads=12,
                feed_forward_proj="relu",
                tie_word_embeddings=True,
            )
        )
    hf_bert = sum(p.numel() for p in bert.parameters())
    hf_t5 = sum(p.numel() for p in t5.parameters())
    ours_bert = est.count_params(preset("bert-base").model).total
    ours_t5 = est.count_params(preset("t5-base").model).total
    assert abs(ours_bert - hf_bert) / hf_bert < 0.005
    assert ours_bert - hf_bert == 2 * 768  # our pre-norm BERT's final LayerNorm
    assert abs(ours_t5 - hf_t5) / hf_t5 < 0.005


# ---------------------------------------------------------------------------------------------
# FLOPs


def _counted_flops_per_token(m: ModelConfig, checkpointing: bool, batch: int = 2) -> float:
    """FlopCounterMode over forward + backward. CPU SDPA's fused kernel is not in the
    counter's registry, so SDPA runs on the math backend (bmm: the same full-square count the
    registered CUDA flash/efficient kernels report)."""
    torch.manual_seed(0)
    model = build_model(m).train()
    model.activation_checkpointing = checkpointing
    idx = torch.randint(m.vocab_size, (batch, m.seq_len))
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        _, loss = model(idx, idx)
        loss.backward()
    return counter.get_total_flops() / (batch * m.seq_len)


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_training_flops_match_flop_counter(family: str) -> None:
    for m in random_models(family, n=20, seed=1):
        fl = est.flops_per_token(m)
        counted = _counted_flops_per_token(m, checkpointing=False)
        assert fl.recompute == 0
        assert abs(fl.forward + fl.backward - counted) / counted < 0.02, m


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_checkpointing_recompute_matches_flop_counter(family: str) -> None:
    for m in random_models(family, n=20, seed=2):
        fl = est.flops_per_token(m, checkpointing=True)
        plain = est.flops_per_token(m)
        counted = _counted_flops_per_token(m, checkpointing=True)
        assert fl.recompute > 0 and fl.forward == plain.forward
        assert abs(fl.total - counted) / counted < 0.02, m


def test_flops_follow_kaplan_6n_plus_attention() -> None:
    m = preset("gpt2-124m").model
    fl = est.flops_per_token(m)
    n = est.count_params(m).matmul
    assert fl.forward + fl.backward == 6 * n + 12 * 12 * 1024 * 768
    assert fl.backward == 2 * fl.forward
    assert fl.causal_halved is False


def test_model_flops_per_token_is_forward_plus_backward() -> None:
    for name in PRESETS:
        cfg = preset(name)
        fl = est.flops_per_token(cfg.model, checkpointing=True)
        model_flops = est.model_flops_per_token(cfg.model)
        assert model_flops == fl.forward + fl.backward
        assert est.estimate(cfg).to_dict()["flops_per_token"] == model_flops


def test_t5_flops_count_encoder_decoder_and_cross_attention() -> None:
    """Per encoder input token: encoder on T_in = 512, decoder and head on T_out (the span
    corruption targets), cross-attention over T_in, cross k/v projections over T_in."""
    m = preset("t5-base").model
    fl = est.flops_per_token(m)
    d, i, f, V, t_in, t_out = 768, 768, 3072, 32128, 512, m.decoder_seq_len
    assert t_out == 113
    enc = t_in * (12 * 2 * (4 * d * i + 2 * d * f) + 12 * 4 * t_in * i + 12 * 2 * 2 * d * i)
    dec = t_out * (12 * 2 * (6 * d * i + 2 * d * f) + 12 * 4 * (t_out + t_in) * i + 2 * V * d)
    assert fl.forward == (enc + dec) / t_in


# ---------------------------------------------------------------------------------------------
# Memory


def _mem(m: ModelConfig | None = None, **kw: object) -> est.Memory:
    cfg = _run(m or preset("nanogpt-cpu").model, micro_batch=8)
    return est.memory_breakdown(cfg, **kw)


def test_memory_fields_sum_to_total() -> None:
    mem = _mem()
    d = mem.to_dict()
    parts = ("weights", "grads", "optimizer", "master", "activations", "logits", "temporaries")
    assert d["total"] == mem.total == d["tensor_peak"] + d["device_remainder"]
    assert d["tensor_peak"] == sum(d[k] for k in parts)  # the peak phase's components
    assert d["tensor_peak"] == max(d["phases"].values()) == d["phases"][d["peak_phase"]]
    assert set(d) == {*parts, "tensor_peak", "peak_phase", "device_remainder", "total", "phases"}
    assert all(isinstance(d[k], int) and d[k] >= 0 for k in (*parts, "device_remainder"))


def test_mixed_precision_keeps_fp32_weights_and_no_master_copy() -> None:
    m = preset("gpt2-124m").model
    n = est.count_params(m)
    fp32, bf16 = _mem(m, precision="fp32"), _mem(m, precision="bf16")
    assert fp32.master == bf16.master == 0
    # the peak is the loss backward: no weight gradient exists yet
    assert fp32.peak_phase == bf16.peak_phase == "loss_backward"
    assert fp32.grads == bf16.grads == 0
    assert fp32.weights == 4 * n.total
    assert bf16.weights == 4 * n.total + 2 * n.matmul  # + autocast's 16-bit matmul weights


def test_checkpointing_lowers_activations() -> None:
    for m in (preset("gpt2-124m").model, preset("bert-base").model, preset("t5-base").model):
        assert _mem(m, checkpointing=True).activations < _mem(m, checkpointing=False).activations


def test_bf16_lowers_activations_and_logits() -> None:
    fp32, bf16 = _mem(precision="fp32"), _mem(precision="bf16")
    assert bf16.activations < fp32.activations
    assert bf16.logits < fp32.logits


def test_optimizer_state_ordering() -> None:
    m = preset("gpt2-124m").model
    state = {o: _mem(m, optimizer=o).optimizer for o in ("adamw", "sgd", "adafactor", "muon")}
    assert state["adamw"] > state["muon"] > state["sgd"] > state["adafactor"] > 0
    n = est.count_params(m).total
    assert state["adamw"] == 8 * n and state["sgd"] == 4 * n
    assert est.optimizer_state_bytes(m, "sgd", momentum=0.0) == 0
    assert est.optimizer_state_bytes(m, "lion") == 4 * n
    assert est.optimizer_state_bytes(m, "rmsprop", momentum=0.0) == 4 * n


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_optimizer_state_matches_budgetlm_optimizers(family: str) -> None:
    """Every optimizer of budgetlm.optim, after one step: the bytes of its state tensors."""
    optim = pytest.importorskip("budgetlm.optim")
    from budgetlm.config import OPTIMIZERS, OptimConfig

    m = random_models(family, n=1, seed=4)[0].model_copy(update={"tie_embeddings": False})
    for name in OPTIMIZERS:
        torch.manual_seed(0)
        model = build_model(m)
        opt = optim.build_optimizer(model, OptimConfig(name=name))
        idx = torch.randint(m.vocab_size, (2, m.seq_len))
        model(idx, idx)[1].backward()
        opt.step()
        state = sum(
            v.numel() * v.element_size()
            for st in opt.state.values()
            for v in st.values()
            if torch.is_tensor(v) and v.numel() > 1  # not the scalar step counters
        )
        assert state == est.optimizer_state_bytes(m, name), name


def test_adafactor_factors_matrices() -> None:
    m = ModelConfig(
        n_layer=1, d_model=8, n_head=2, vocab_size=10, seq_len=4, bias=False, norm="rmsnorm"
    )
    # wte 10x8, wpe 4x8, ln_1, c_attn 24x8, c_proj 8x8, ln_2, c_fc 32x8, c_proj 8x32, ln_f
    floats = (10 + 8) + (4 + 8) + 8 + (24 + 8) + (8 + 8) + 8 + (32 + 8) + (8 + 32) + 8
    assert est.optimizer_state_bytes(m, "adafactor") == 4 * floats


def test_larger_micro_batch_needs_more_activations() -> None:
    small, large = _mem(micro_batch=4), _mem(micro_batch=16)
    assert large.activations > small.activations and large.logits == 4 * small.logits
    assert large.weights == small.weights


def test_auto_micro_batch_counts_as_one() -> None:
    cfg = _run(preset("tiny").model, micro_batch="auto")
    assert est.memory_breakdown(cfg) == est.memory_breakdown(cfg, micro_batch=1)


def test_unknown_precision_or_optimizer_is_a_user_error() -> None:
    with pytest.raises(UserError, match="train.precision"):
        _mem(precision="fp8")
    with pytest.raises(UserError, match="optim.name"):
        _mem(optimizer="sophia")


def test_overhead_counts_the_cuda_context_only_on_cuda() -> None:
    cuda, cpu = _mem(device="cuda"), _mem(device="cpu")
    assert cuda.overhead >= est.CUDA_CONTEXT_BYTES > cpu.overhead
    parts = est.overhead_parts("cuda", 10**9)
    assert parts["context"] == est.CUDA_CONTEXT_BYTES
    assert parts["allocator_slack"] == int(est.ALLOCATOR_SLACK_FRACTION * 10**9)


def test_layer_activations_reduce_to_korthikanti() -> None:
    """Korthikanti et al. 2022: 34·s·b·h + 5·a·s²·b bytes per layer (16-bit, unfused attention,
    dropout, 4h GELU MLP). Ours differs by exactly what PyTorch autocast stores differently:
    fp32 residual stream at the two norms (+2·2·h), fp32 softmax output (+2·a·s), statistics."""
    d, H, T = 64, 4, 32
    m = ModelConfig(d_model=d, n_head=H, seq_len=T, attention="eager", dropout=0.1)
    per_token = est.layer_activation_bytes(m, "bf16", "cuda")
    assert per_token == 34 * d + 5 * H * T + 2 * 2 * d + 2 * H * T + 2 * 8


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
    ctx = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        model(idx, idx)
    return sum(storages.values())


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_activations_match_what_autograd_saves_on_cpu(family: str) -> None:
    """Per sequence, (saved(B=6) - saved(B=2)) / 4 cancels everything that does not scale with
    the batch (autocast's weight copies, rotary tables). It must equal activations plus the
    fp32 log-probabilities the loss keeps (the rest of `logits` is gradients, made later)."""
    worst = 0.0
    for i, m in enumerate(random_models(family, n=20, seed=3)):
        model = build_model(m).train()
        precision = "bf16" if i % 2 else "fp32"
        measured = _saved_bytes(model, m, 6, precision) - _saved_bytes(model, m, 2, precision)
        measured /= 4
        expected = est.activation_bytes(m, 1, precision, False, "cpu")
        expected += m.seq_len * m.vocab_size * 4
        err = abs(measured - expected) / measured
        worst = max(worst, err)
        assert err < (0.03 if m.dropout == 0 else 0.08), (m, precision, measured, expected)
    assert worst < 0.08


def test_checkpointed_activations_keep_block_inputs() -> None:
    m = preset("gpt2-124m").model
    per_token = est.activation_bytes(m, 1, "bf16", True) / m.seq_len
    # 12 block inputs in fp32 (4 bytes x 768); the recompute of one block is counted in the
    # block-backward phase, not here
    assert 12 * 4 * 768 < per_token < 12 * 4 * 768 + 8 * 768


# ---------------------------------------------------------------------------------------------
# Step time and the whole estimate


@dataclass
class FakeProfile:
    peak_flops: float | None = 1e12
    measured: bool = False
    device: str = "cuda"
    datasheet: dict | None = None

    def peak(self, precision: str) -> float | None:
        return self.peak_flops


def test_step_time_needs_a_profile_with_a_peak() -> None:
    cfg = preset("tiny")
    assert est.step_time(cfg, None) is None
    assert est.step_time(cfg, FakeProfile(peak_flops=None)) is None


def test_step_time_is_flops_over_peak_times_mfu() -> None:
    cfg = preset("gpt2-124m")
    st = est.step_time(cfg, FakeProfile(peak_flops=989e12))
    tokens = 16 * 32 * 1024
    n = est.count_params(cfg.model).total
    assert st.flops_per_step == est.flops_per_token(cfg.model).total * tokens
    assert st.mfu == est.default_mfu(n, "cuda")
    assert math.isclose(st.seconds, st.flops_per_step / (989e12 * st.mfu))
    assert st.source == "datasheet peak x default MFU"


def test_step_time_on_a_measured_gpu_scales_mfu_to_the_measured_peak() -> None:
    cfg = preset("gpt2-124m")
    sheet = est.step_time(cfg, FakeProfile(peak_flops=1000e12))
    meas = est.step_time(
        cfg,
        FakeProfile(peak_flops=750e12, measured=True, datasheet={"bf16": 1000e12}),
    )
    assert meas.source == "measured profile"
    assert math.isclose(meas.seconds, sheet.seconds)  # same achieved FLOP/s
    cpu = est.step_time(cfg, FakeProfile(peak_flops=1e11, measured=True, device="cpu"))
    assert cpu.mfu == est.default_mfu(est.count_params(cfg.model).total, "cpu")


def test_step_time_uses_timed_steps_when_the_profile_has_them() -> None:
    class Calibrated(FakeProfile):
        def timed_mfu(self, cfg: RunConfig) -> float:
            return 0.5

    st = est.step_time(preset("tiny"), Calibrated())
    assert st.source == "timed" and st.mfu == 0.5


def test_default_mfu_is_monotone_and_bounded() -> None:
    for device in ("cuda", "cpu"):
        values = [est.default_mfu(int(10**e), device) for e in range(3, 13)]
        assert all(0 < v < 0.6 for v in values)
        assert values == sorted(values)
    assert est.default_mfu(10**6) < 0.1 < est.default_mfu(10**8)


def test_estimate_to_dict_is_json_ready() -> None:
    cfg = preset("gpt2-124m")
    e = est.estimate(cfg, FakeProfile())
    d = json.loads(json.dumps(e.to_dict()))
    assert d["params"] == 124_439_808
    assert d["flops_per_token"] == d["flops"]["forward"] + d["flops"]["backward"]
    assert d["tokens_per_step"] == 16 * 32 * 1024
    assert d["micro_batch"] == 16 and d["precision"] == "bf16" and d["optimizer"] == "adamw"
    assert d["checkpointing"] is False
    assert d["memory"]["total"] == e.memory.total
    assert d["step_time"]["source"] == "datasheet peak x default MFU"
    assert est.estimate(cfg).to_dict()["step_time"] is None


def test_estimate_with_checkpointing_reports_recompute_outside_flops_per_token() -> None:
    cfg = preset("tiny").model_copy(deep=True)
    cfg.train.activation_checkpointing = True
    d = est.estimate(cfg).to_dict()
    assert d["flops"]["recompute"] > 0
    assert d["flops"]["total"] > d["flops_per_token"]


def test_estimate_covers_every_preset() -> None:
    for name in PRESETS:
        d = est.estimate(preset(name)).to_dict()
        assert d["params"] > 0 and d["memory"]["total"] > 0


def test_importing_estimate_does_not_import_torch() -> None:
    code = "import budgetlm.estimate, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Depth and size bounds


def _deep(family: str, n_layer: int) -> ModelConfig:
    return preset("tiny").model.model_copy(update={"family": family, "n_layer": n_layer})


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_param_spec_counts_sum_to_the_listed_tensors(family: str) -> None:
    for m in random_models(family, n=8, seed=3):
        listed = est.param_specs(m)
        counted = param_spec_counts(m)
        assert sum(k * s.numel for s, k in counted) == sum(s.numel for s in listed)
        assert est.count_params(m).total == sum(s.numel for s in listed)
        names = {s.name for s in listed}
        assert all(s.name in names for s, _ in counted)
        assert est.block_matmul_params(m) == sum(s.numel for s in listed if s.role == "matrix")


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_estimate_is_constant_time_in_depth(family: str) -> None:
    big = 2 * 10**9
    cfg = preset("tiny").model_copy(update={"model": _deep(family, big)})
    t0 = time.perf_counter()
    pc = est.count_params(cfg.model)
    fl = est.flops_per_token(cfg.model, checkpointing=True)
    st = est.step_time(cfg, FakeProfile(peak_flops=1e15))
    assert time.perf_counter() - t0 < 1.0
    # exactly linear in depth: c(L) = c(2) + (L - 2) * (c(3) - c(2))
    two, three = (est.count_params(_deep(family, n)) for n in (2, 3))
    for field in ("total", "embedding", "non_embedding", "matmul"):
        per_block = getattr(three, field) - getattr(two, field)
        assert getattr(pc, field) == getattr(two, field) + (big - 2) * per_block
    assert est.block_matmul_params(_deep(family, big)) == big // 2 * est.block_matmul_params(
        _deep(family, 2)
    )
    f2, f3 = (est.flops_per_token(_deep(family, n), checkpointing=True) for n in (2, 3))
    for part in ("forward", "backward", "recompute"):
        expected = getattr(f2, part) + (big - 2) * (getattr(f3, part) - getattr(f2, part))
        assert getattr(fl, part) == pytest.approx(expected, rel=1e-12)
    assert st is not None and math.isfinite(st.seconds) and st.seconds > 0


def _limited_memory() -> None:
    import resource

    limit = 3 << 30  # a depth-proportional list of a billion blocks would need 8 GiB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _estimate_cli(*sets: str) -> tuple[subprocess.CompletedProcess, float]:
    args = [sys.executable, "-m", "budgetlm", "estimate", "tiny", "--json"]
    for s in sets:
        args += ["--set", s]
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, timeout=30, preexec_fn=_limited_memory)
    return r, time.perf_counter() - t0


def test_estimate_cli_answers_a_billion_layers_at_once() -> None:
    base, base_s = _estimate_cli("model.n_layer=2")
    deep, deep_s = _estimate_cli("model.n_layer=1000000000")
    assert base.returncode == 0, base.stderr
    assert deep.returncode == 0, deep.stderr
    assert deep_s < base_s + 1.0  # the same start-up cost; the estimate itself is instant
    d = json.loads(deep.stdout)
    assert d["params"] == est.count_params(_deep("gpt", 10**9)).total
    assert math.isfinite(d["flops_per_token"]) and 1e15 < d["memory"]["total"] < 1e30


def test_sizes_beyond_any_hardware_are_one_line_errors() -> None:
    r, _ = _estimate_cli("model.n_layer=1000000000", "model.d_model=1000000", "model.n_head=1")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "beyond any hardware" in lines[0] and "n_layer=1000000000" in lines[0]
    assert "1.2e+22 parameters" in lines[0]


def test_size_bounds_name_the_fields() -> None:
    huge = _deep("gpt", 10**400)
    with pytest.raises(UserError, match=r"^model: 5e\+404 parameters .*beyond any hardware"):
        est.count_params(huge)
    with pytest.raises(UserError, match=r"^model: .*FLOPs per token .*seq_len=10{18}"):
        est.flops_per_token(
            preset("tiny").model.model_copy(
                update={"positions": "rope", "seq_len": 10**18, "d_model": 4096, "n_head": 32}
            )
        )
    cfg = preset("tiny")
    for mb in (0, -3, True, 2.5):
        bad = cfg.model_copy(update={"train": cfg.train.model_copy(update={"micro_batch": mb})})
        with pytest.raises(UserError, match=r"^train\.micro_batch: must be a whole number"):
            est.memory_breakdown(bad)
        with pytest.raises(UserError, match=r"^train\.micro_batch: must be a whole number"):
            est.step_time(bad, FakeProfile())
    with pytest.raises(UserError, match=r"^train\.micro_batch x model\.seq_len: "):
        est.memory_breakdown(cfg, micro_batch=10**14)
    accum = cfg.model_copy(update={"train": cfg.train.model_copy(update={"grad_accum": 10**13})})
    with pytest.raises(UserError, match=r"^train\.micro_batch x train\.grad_accum x model\."):
        est.step_time(accum, FakeProfile())
