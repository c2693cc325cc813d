"""The fine-tuning estimator against what peft and torch do, on models prepared exactly as the
trainer prepares them (`budgetlm.train.finetune.prepare_model`): trainable parameters against
peft's `get_nb_trainable_parameters()`, LoRA training FLOPs against `FlopCounterMode`, and the
tensor peak against `MemTracker` under fake tensors (the CPU method of tests/test_memory_truth.py
and benchmarks/memory_truth.py) for LoRA configs."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from budgetlm import estimate as est
from budgetlm.config import ModelConfig, RunConfig, preset
from budgetlm.errors import UserError
from budgetlm.estimate.lora_activations import lora_activation_bytes, lora_activation_pieces
from budgetlm.estimate.memory import step_sizes
from budgetlm.estimate.phases import PHASES, step_phases
from budgetlm.model import build_model

pytest.importorskip("peft")
from budgetlm.train.finetune import prepare_model  # noqa: E402  (needs peft)

LLAMA = {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False,
         "tie_embeddings": False}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lora_config(base: RunConfig | ModelConfig, lora: dict[str, Any] | None = None,
                quantize: str = "none", **train: Any) -> RunConfig:
    """`base` (a preset or a model) fine-tuned with LoRA (`lora` None: a full fine-tune)."""
    d = base.model_dump() if isinstance(base, RunConfig) else {"model": base.model_dump()}
    d["finetune"] = ({"method": "full"} if lora is None
                     else {"method": "lora", "lora": lora, "quantize": quantize})
    d["train"] = {**d.get("train", {}), "device": "cpu", **train}
    return RunConfig.model_validate(d)


def prepared(cfg: RunConfig) -> nn.Module:
    return prepare_model(build_model(cfg.model).train(), cfg)


# ---------------------------------------------------------------------------------------------
# Parameters

PRESET_LORAS = {
    "tiny": [{"rank": 4}, {"rank": 8, "target": ["c_proj"]}, {"rank": 16, "target": ["c_fc"]},
             {"rank": 2, "train_norms": True, "train_head": True}],
    "llama-tiny": [{"rank": 4}, {"rank": 8, "target": ["c_proj"]},
                   {"rank": 3, "target": ["w1", "c_attn"], "train_head": True},
                   {"rank": 2, "train_norms": True}],
    "moe-tiny": [{"rank": 4}, {"rank": 8, "target": ["w2"]},
                 {"rank": 5, "target": ["c_attn", "w3"], "train_norms": True, "train_head": True}],
}


@pytest.mark.parametrize("name", sorted(PRESET_LORAS))
def test_trainable_params_equal_peft(name: str) -> None:
    for lora in PRESET_LORAS[name]:
        cfg = lora_config(preset(name), lora)
        with torch.device("meta"):
            model = prepared(cfg)
        trainable, total = model.get_nb_trainable_parameters()
        count = est.trainable_count(cfg)
        assert (count.trainable, count.total) == (trainable, total), lora
        assert count.total == est.count_params(cfg.model).total + count.adapters
        if not (lora.get("train_norms") or lora.get("train_head")):
            assert count.adapters == count.trainable
        d = est.estimate(cfg).to_dict()
        assert (d["trainable_params"], d["params_with_adapters"]) == (trainable, total)
        assert d["params"] == est.count_params(cfg.model).total
        assert d["finetune"] == {"method": "lora", "rank": lora["rank"], "quantize": "none"}
        assert d["flops_per_token"] < d["model_flops_per_token"]


def test_full_fine_tune_trains_everything() -> None:
    cfg = preset("llama-tiny")
    count = est.trainable_count(cfg)
    assert count.trainable == count.total == est.count_params(cfg.model).total
    assert count.adapters == 0 and count.frozen == 0
    assert est.estimate(cfg).trainable == count
    assert "trainable_params" not in est.estimate(cfg).to_dict()  # a full run trains them all


def test_adapters_are_rank_times_widths_of_each_target() -> None:
    cfg = lora_config(preset("llama-tiny"), {"rank": 8})
    targets = est.lora_targets(cfg.model, cfg.finetune.lora)
    assert est.trainable_count(cfg).adapters == 8 * sum(t.d_in + t.d_out for t in targets)
    # the counted resolution is the listed one, in constant time in depth
    deep = cfg.model.model_copy(update={"n_layer": 10**5})
    big = lora_config(deep, {"rank": 8})
    assert est.trainable_count(big).adapters == 8 * 10**5 // 2 * sum(
        t.d_in + t.d_out for t in targets)


# ---------------------------------------------------------------------------------------------
# FLOPs


def counted_flops_per_token(cfg: RunConfig, batch: int = 2) -> float:
    """FlopCounterMode over a forward + backward of the prepared model (SDPA on the math
    backend, whose bmm the counter knows; see tests/test_estimate.py)."""
    m = cfg.model
    torch.manual_seed(0)
    model = prepared(cfg)
    model.get_base_model().activation_checkpointing = cfg.train.activation_checkpointing
    idx = torch.randint(m.vocab_size, (batch, m.seq_len))
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        _, loss = model(idx, idx)
        loss.backward()
    return counter.get_total_flops() / (batch * m.seq_len)


FLOP_CASES = [
    ("tiny", {"rank": 4}, False), ("tiny", {"rank": 8, "target": ["c_proj"]}, True),
    ("tiny", {"rank": 2, "train_norms": True, "train_head": True}, False),
    ("llama-tiny", {"rank": 4}, True), ("llama-tiny", {"rank": 3, "target": ["w2"]}, False),
    ("llama-tiny", {"rank": 16, "target": ["c_attn"], "train_head": True}, True),
    ("moe-tiny", {"rank": 4}, False), ("moe-tiny", {"rank": 8, "target": ["c_proj"]}, True),
    ("moe-tiny", {"rank": 2, "train_norms": True, "train_head": True}, False),
]


@pytest.mark.parametrize(("name", "lora", "checkpointing"), FLOP_CASES)
def test_lora_training_flops_match_flop_counter(name: str, lora: dict[str, Any],
                                                checkpointing: bool) -> None:
    cfg = lora_config(preset(name), lora, activation_checkpointing=checkpointing)
    fl = est.training_flops_per_token(cfg)
    counted = counted_flops_per_token(cfg)
    assert abs(fl.total - counted) / counted < 0.02, (fl, counted)
    assert (fl.recompute > 0) == checkpointing
    full = est.flops_per_token(cfg.model, checkpointing)
    assert fl.backward < full.backward  # no weight gradients for the frozen matrices


def test_training_flops_of_a_full_run_are_flops_per_token() -> None:
    for ckpt in (False, True):
        cfg = lora_config(preset("moe-tiny"), None, activation_checkpointing=ckpt)
        assert est.training_flops_per_token(cfg) == est.flops_per_token(cfg.model, ckpt)
    cfg = lora_config(preset("llama-tiny"), {"rank": 4})
    assert est.model_flops_per_token(cfg.model) == est.flops_per_token(cfg.model).model


def test_lora_flops_are_4n_plus_6_adapters_not_6n() -> None:
    """The docstring's derivation, term by term, on GPT-2 124M with every block Linear adapted:
    forward 2N + 2N_A; backward the frozen weights' input gradients 2N, no weight gradients,
    4N_A for the adapters, less what lies below the first adapter (block 0's c_attn input
    gradient, and its A's)."""
    cfg = lora_config(preset("gpt2-124m"), {"rank": 8})
    m, r, d = cfg.model, 8, cfg.model.d_model
    full = est.flops_per_token(m)
    lora = est.training_flops_per_token(cfg)
    n = est.count_params(m).matmul
    n_a = r * sum(t.d_in + t.d_out for t in est.lora_targets(m, cfg.finetune.lora))
    attention = m.n_layer * 2 * 2 * m.seq_len * d
    assert full.forward == 2 * n + attention and full.backward == 2 * full.forward
    assert lora.forward == full.forward + 2 * n_a
    below_first_adapter = 2 * d * 3 * d + 2 * r * d
    assert lora.backward == 2 * n + 2 * attention + 4 * n_a - below_first_adapter
    # about 4N instead of 6N for the matmuls: 2/3 of full training, plus the adapters
    matmuls = lora.model - 3 * attention
    assert matmuls == pytest.approx(4 * n + 6 * n_a, rel=1e-2)
    assert 0.66 < (lora.model - 6 * n_a) / full.model < 0.75


def test_step_time_prices_lora_flops() -> None:
    @dataclass
    class Profile:
        device: str = "cuda"
        measured: bool = False

        def peak(self, _precision: str) -> float:
            return 1e12

    lora = lora_config(preset("llama-tiny"), {"rank": 4})
    full = lora_config(preset("llama-tiny"), None)
    st_lora, st_full = est.step_time(lora, Profile()), est.step_time(full, Profile())
    assert st_lora is not None and st_full is not None
    tokens = lora.tokens_per_step
    assert st_lora.flops_per_step == est.training_flops_per_token(lora).total * tokens
    assert st_lora.seconds < st_full.seconds
    assert est.estimate(lora).flops == est.training_flops_per_token(lora)


# ---------------------------------------------------------------------------------------------
# Memory: what autograd keeps, and the peak against MemTracker


def test_a_frozen_linear_saves_no_input_for_backward() -> None:
    """The fact the activation count rests on: a Linear whose weight does not train keeps no
    reference to its input (only to the weight the gradient is multiplied by)."""
    x = torch.randn(4, 16, requires_grad=True)
    for trains in (True, False):
        lin = nn.Linear(16, 16, bias=False).requires_grad_(trains)
        saved: list[torch.Tensor] = []

        def pack(t: torch.Tensor, out: list[torch.Tensor] = saved) -> torch.Tensor:
            out.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lin(x)
        assert any(t.data_ptr() == x.data_ptr() for t in saved) == trains
        assert any(t.data_ptr() == lin.weight.data_ptr() for t in saved)


class _NoHook:
    def remove(self) -> None:
        pass


def _frozen_aware_tracker() -> Any:
    """MemTracker that puts no gradient hook on a frozen parameter (torch refuses one)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class Tracker(MemTracker):  # type: ignore[misc]
        def _track_module_params_and_buffers(self, module: nn.Module,
                                             install_grad_hooks: bool = True) -> Any:
            for p in module.parameters():
                if not p.requires_grad and self._param_to_grad_hook_handles.get(p) is None:
                    self._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

    return Tracker()


def _materialize_fake(model: nn.Module) -> None:
    """Meta parameters and buffers -> fake CPU tensors of the same dtype, tied ones kept tied.
    (The model is prepared on the meta device: `Module.to`, which peft calls, cannot swap fake
    tensors.)"""
    new: dict[int, nn.Parameter] = {}
    old = []
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            old.append(p)
            if id(p) not in new:
                new[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype),
                                          requires_grad=p.requires_grad)
            mod._parameters[name] = new[id(p)]
        for name, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[name] = torch.empty(b.shape, dtype=b.dtype)


def _total(snapshot: dict[Any, dict[Any, int]]) -> int:
    return sum(dev.get("Total", 0) for dev in snapshot.values())


def tracked_peak(cfg: RunConfig) -> tuple[int, str]:
    """MemTracker's peak over a steady-state training step of the prepared model, as
    benchmarks/memory_truth.py runs it (forward under autocast with the logits held, backward,
    gradient clipping, optimizer step, zero_grad), and the section it is in."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    from budgetlm.optim import build_optimizer
    from budgetlm.train.runtime import autocast_ctx

    m, mb = cfg.model, cfg.train.micro_batch
    assert isinstance(mb, int)
    with torch.device("meta"):
        model = build_model(m).train()
        model.activation_checkpointing = cfg.train.activation_checkpointing
        wrapped = prepare_model(model, cfg)
    item = getattr(FakeTensor, "item", None)
    FakeTensor.item = lambda self: 1.0  # torch's Adafactor reads a norm; memory does not depend
    try:
        with FakeTensorMode():
            _materialize_fake(wrapped)
            opt = build_optimizer(wrapped, cfg.optim)
            x = torch.randint(m.vocab_size, (mb, m.seq_len))
            trainable = [p for p in wrapped.parameters() if p.requires_grad]
            for p in trainable:  # one update creates the optimizer state
                p.grad = torch.zeros_like(p)
            opt.step()
            opt.zero_grad(set_to_none=True)
            tracker = _frozen_aware_tracker()
            tracker.track_external(wrapped, opt, x)
            marks = []
            with tracker:
                with autocast_ctx("cpu", cfg.train.precision):
                    _, loss = wrapped(x, x)
                marks.append(("forward", _total(tracker.get_tracker_snapshot("peak"))))
                loss.backward()
                marks.append(("backward", _total(tracker.get_tracker_snapshot("peak"))))
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                marks.append(("optimizer", _total(tracker.get_tracker_snapshot("peak"))))
            peak = _total(tracker.get_tracker_snapshot("peak"))
    finally:
        if item is None:
            del FakeTensor.item
        else:
            FakeTensor.item = item
    return peak, next(name for name, value in marks if value == peak)


SHAPES = {
    "gpt": ModelConfig(n_layer=2, n_head=4, d_model=128, vocab_size=256, seq_len=128),
    "llama": ModelConfig(n_layer=2, n_head=4, d_model=128, d_ff=352, vocab_size=256,
                         seq_len=128, **LLAMA),
    "qwen3": ModelConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=128, d_ff=352,
                         vocab_size=256, seq_len=64, qk_norm=True, fused_qkv=False,
                         **{**LLAMA, "tie_embeddings": True}),
    "gpt-short": ModelConfig(n_layer=2, n_head=4, d_model=256, vocab_size=4096, seq_len=16),
}
# (shape, micro-batch, precision, checkpointing, optimizer, lora)
TRUTH_ROWS = [
    ("gpt", 4, "fp32", False, "adamw", {}),
    ("gpt", 4, "bf16", False, "adamw", {}),
    ("gpt", 4, "bf16", True, "adamw", {}),
    ("gpt", 8, "fp32", True, "adamw", {"rank": 4, "dropout": 0.1}),
    ("gpt", 8, "bf16", True, "sgd", {"target": ["c_attn"]}),
    ("llama", 4, "fp32", True, "adamw", {}),
    ("llama", 8, "bf16", False, "adamw", {"rank": 4, "dropout": 0.1}),
    ("llama", 8, "bf16", True, "muon", {"target": ["c_proj", "w1"], "train_norms": True}),
    ("qwen3", 8, "bf16", False, "adamw", {"train_norms": True}),
    ("qwen3", 8, "fp32", True, "lion", {"train_head": True}),
    ("gpt-short", 1, "fp32", False, "adamw", {"train_head": True}),
    ("gpt-short", 1, "fp32", True, "sgd", {"rank": 64}),
]


def truth_config(row: tuple[str, int, str, bool, str, dict[str, Any]]) -> RunConfig:
    shape, mb, precision, ckpt, optimizer, lora = row
    cfg = lora_config(SHAPES[shape], lora, micro_batch=mb, precision=precision,
                      activation_checkpointing=ckpt)
    return cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"name": optimizer})})


@pytest.fixture(scope="module")
def truth_results() -> list[dict[str, Any]]:
    out = []
    for row in TRUTH_ROWS:
        cfg = truth_config(row)
        mem = est.memory_breakdown(cfg, device="cpu")
        peak, section = tracked_peak(cfg)
        out.append({"row": row, "memory": mem, "measured": peak, "section": section,
                    "error": (mem.tensor_peak - peak) / peak})
    return out


def test_truth_rows_cover_the_axes() -> None:
    assert {r[2] for r in TRUTH_ROWS} == {"fp32", "bf16"}
    assert {r[3] for r in TRUTH_ROWS} == {False, True}
    assert len({r[0] for r in TRUTH_ROWS}) >= 3


def test_lora_tensor_peak_within_two_percent_of_memtracker(
    truth_results: list[dict[str, Any]],
) -> None:
    bad = [(r["row"], f"{r['error']:+.2%}") for r in truth_results if abs(r["error"]) > 0.02]
    assert not bad, bad


def test_lora_tensor_peak_never_more_than_one_percent_below_memtracker(
    truth_results: list[dict[str, Any]],
) -> None:
    bad = [(r["row"], f"{r['error']:+.2%}") for r in truth_results if r["error"] < -0.01]
    assert not bad, bad


def test_lora_peak_phase_is_in_the_tracked_section(truth_results: list[dict[str, Any]]) -> None:
    seen = set()
    for r in truth_results:
        mem = r["memory"]
        phases = dict(mem.phases)
        same = [p for p in PHASES if phases[p] == phases[mem.peak_phase]]
        assert any(r["section"] == ("backward" if "backward" in p else p) for p in same), r["row"]
        seen.add(mem.peak_phase)
    assert len(seen) >= 4  # the grid reaches forward, loss, block and optimizer peaks


# ---------------------------------------------------------------------------------------------
# Memory pieces


def test_only_trainable_tensors_get_gradients_and_optimizer_state() -> None:
    cfg = lora_config(preset("llama-tiny"), {"rank": 8, "train_norms": True},
                      precision="bf16", micro_batch=1)
    count = est.trainable_count(cfg)
    mem = est.memory_breakdown(cfg)
    phases = step_phases(step_sizes(cfg, 1, "bf16", "adamw", False, "cuda"))
    assert phases["optimizer"]["grads"] == 4 * count.trainable
    assert mem.optimizer == 8 * count.trainable  # AdamW: two fp32 moments
    full = est.memory_breakdown(lora_config(preset("llama-tiny"), None, precision="bf16",
                                            micro_batch=1))
    assert mem.optimizer == 8 * count.trainable < full.optimizer / 5


def test_frozen_weights_held_in_16_bits_norms_and_trainables_in_fp32() -> None:
    m = preset("llama-tiny").model
    for precision, held in (("fp32", 4), ("bf16", 2)):
        cfg = lora_config(preset("llama-tiny"), {"rank": 8}, precision=precision)
        trainable, frozen = est.finetune_spec_counts(cfg)
        norms = sum(k * s.numel for s, k in frozen if s.role == "vector")  # RMSNorm weights
        rest = sum(k * s.numel for s, k in frozen) - norms
        sizes = step_sizes(cfg, 1, precision, "adamw", False, "cuda")
        rope = m.n_layer * 4 * m.seq_len * m.head_dim  # fp32 cos and sin tables
        assert sizes.params == held * rest + 4 * norms + 4 * sum(
            k * s.numel for s, k in trainable) + rope


def test_nf4_frozen_matrices_are_4_127_bits_an_estimate_only() -> None:
    n = 4096 * 4096
    assert 8 * est.nf4_bytes(n) / n == pytest.approx(4.127, abs=1e-3)
    model = ModelConfig(n_layer=4, n_head=8, d_model=512, vocab_size=1024, seq_len=64, **LLAMA)
    bf16 = lora_config(model, {"rank": 8}, precision="bf16")
    nf4 = lora_config(model, {"rank": 8}, quantize="nf4", precision="bf16")
    _, frozen = est.finetune_spec_counts(bf16)
    saved = sum(k * (2 * s.numel - est.nf4_bytes(s.numel)) for s, k in frozen
                if s.role == "matrix")
    a = step_sizes(bf16, 1, "bf16", "adamw", False, "cuda")
    b = step_sizes(nf4, 1, "bf16", "adamw", False, "cuda")
    assert a.params - b.params == saved
    mem = est.memory_breakdown(nf4)
    assert mem.tensor_peak < est.memory_breakdown(bf16).tensor_peak
    assert "estimate only" in mem.to_dict()["note"] and "note" not in est.memory_breakdown(
        bf16).to_dict()


def test_lora_checkpointing_keeps_block_inputs_in_the_stream_dtype() -> None:
    cfg = lora_config(preset("llama-tiny"), {"rank": 8}, precision="bf16")
    plan = est.lora_plan(cfg)
    assert plan is not None
    m = cfg.model
    kept = lora_activation_bytes(m, plan, 4, "bf16", True)
    _largest, _blocks, n, final = lora_activation_pieces(m, plan, "bf16", "cuda")
    assert kept == math.ceil(4 * m.seq_len * (2 * m.d_model * n + final))


def test_random_lora_configs_estimate_without_error() -> None:
    rng = random.Random(0)
    for _ in range(30):
        name = rng.choice(sorted(PRESET_LORAS))
        lora = rng.choice(PRESET_LORAS[name]) | {"dropout": rng.choice([0.0, 0.1])}
        cfg = lora_config(preset(name), lora, precision=rng.choice(["fp32", "bf16", "fp16"]),
                          activation_checkpointing=rng.random() < 0.5,
                          micro_batch=rng.choice([1, 3]))
        mem = est.memory_breakdown(cfg, device=rng.choice(["cpu", "cuda"]))
        assert mem.tensor_peak == max(dict(mem.phases).values()) > 0
        fl = est.training_flops_per_token(cfg)
        assert 0 < fl.model < est.flops_per_token(cfg.model).model


# ---------------------------------------------------------------------------------------------
# Bad input


def test_lora_of_a_t5_model_or_of_nothing_is_a_user_error() -> None:
    with pytest.raises(UserError, match="t5"):
        est.trainable_count(lora_config(preset("t5-base"), {"rank": 8}))
    with pytest.raises(UserError, match="finetune.lora.target"):
        est.memory_breakdown(lora_config(preset("tiny"), {"target": []}))
    with pytest.raises(UserError, match="w1 matches no Linear"):
        est.training_flops_per_token(lora_config(preset("tiny"), {"target": ["w1"]}))
    # training only the head is something
    assert est.trainable_count(lora_config(preset("tiny"), {"target": [], "train_head": True}))
