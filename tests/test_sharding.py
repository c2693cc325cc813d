"""Memory per rank under DDP and FSDP2 (`budgetlm.estimate.sharding`) against torch's own trackers.

A steady-state step of budgetlm's model, sharded as the trainer shards it
(budgetlm.train.parallel: `fully_shard` on each `model.blocks[i]`, then on the root;
MixedPrecisionPolicy(bf16, reduce fp32) under bf16, autocast around the forward as well; hsdp on
a (nodes, ranks per node) mesh), runs under `FakeTensorMode` on device "cpu" with the "fake"
process group standing in for ranks 1..K-1: rank 0 of a world of 2, 4 or 8 in one process, no
real memory touched (torchtitan's memory estimation does the same). FSDPMemTracker (FSDP) and
MemTracker (DDP, built inside the tracker so its gradient buckets are seen; a comm hook that
returns the bucket stands in for the all-reduce, in place as NCCL's) give the peak the estimate
is compared with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from budgetlm.config import ModelConfig, RunConfig, preset
from budgetlm.errors import UserError
from budgetlm.estimate import count_params, memory_breakdown
from budgetlm.estimate.sharding import (
    FSDP_PHASES,
    LAYOUTS,
    layout_for,
    rank_memory,
    shard_units,
)

pytest.importorskip("torch.distributed._tools.fsdp2_mem_tracker")

WORLDS = (2, 4, 8)


@dataclass(frozen=True)
class Shape:
    """One configuration of the grid: a preset (or variant), precision, checkpointing, layout."""

    label: str
    model: dict[str, Any]
    precision: str
    checkpointing: bool
    micro_batch: int
    layout: str = "zero3"
    optimizer: str = "adamw"
    node: int | None = None  # hsdp: ranks per node (shard within, replicate across)

    def config(self) -> RunConfig:
        return RunConfig(
            model=ModelConfig(**self.model),
            optim={"name": self.optimizer},
            train={"precision": self.precision, "micro_batch": self.micro_batch,
                   "activation_checkpointing": self.checkpointing, "device": "cpu"},
        )


def _preset_model(name: str, **changes: Any) -> dict[str, Any]:
    return {**preset(name).model.model_dump(exclude_defaults=True), **changes}


# Odd widths and vocabularies make FSDP pad its dim-0 chunks; short sequences and micro-batch 1
# make parameters, gradients and optimizer state (what sharding changes) the bulk of the peak.
SHAPES = (
    Shape("tiny", _preset_model("tiny"), "fp32", False, 4),
    Shape("tiny-bf16-ckpt", _preset_model("tiny"), "bf16", True, 4),
    Shape("llama-tiny-ckpt", _preset_model("llama-tiny"), "fp32", True, 2),
    Shape("llama-tiny-bf16", _preset_model("llama-tiny"), "bf16", False, 2),
    Shape("moe-tiny", _preset_model("moe-tiny"), "fp32", False, 2),
    Shape("moe-tiny-bf16-ckpt", _preset_model("moe-tiny"), "bf16", True, 2),
    Shape("tiny-wide-short", _preset_model("tiny", d_model=200, n_head=4, n_layer=3,
                                           vocab_size=509, seq_len=16), "fp32", False, 1),
    Shape("llama-wide-short-bf16", _preset_model("llama-tiny", d_model=160, d_ff=432,
                                                 vocab_size=1001, seq_len=16), "bf16", False, 1),
    Shape("tiny-zero2", _preset_model("tiny", n_layer=3, seq_len=32, vocab_size=300), "fp32",
          False, 1, layout="zero2"),
    Shape("llama-zero2-bf16-ckpt", _preset_model("llama-tiny", seq_len=32), "bf16", True, 1,
          layout="zero2"),
    Shape("llama-wide-short-hsdp", _preset_model("llama-tiny", d_model=160, d_ff=432,
                                                 vocab_size=1001, seq_len=16), "fp32", False, 1,
          node=2),
    Shape("tiny-ddp", _preset_model("tiny"), "fp32", False, 2, layout="ddp"),
    Shape("llama-ddp-bf16-ckpt", _preset_model("llama-tiny", d_model=96, seq_len=32), "bf16",
          True, 1, layout="ddp"),
    Shape("moe-ddp-lion", _preset_model("moe-tiny", seq_len=16), "fp32", False, 1,
          layout="ddp", optimizer="lion"),
)


@contextlib.contextmanager
def _fake_world(world: int) -> Iterator[None]:
    """The "fake" process group: this process is rank 0 of `world`; collectives do nothing."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def _balanced_routing() -> Iterator[None]:
    """Fake tensors have no values, so an MoE's tokens per expert (torch.bincount, then
    split sizes) are unknown: route them evenly, as the estimate assumes. The counts are a real
    tensor (the fake mode admits it)."""
    import torch
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    real = torch.bincount

    def even(x: Any, weights: Any = None, minlength: int = 0) -> Any:
        n = x.numel()
        with unset_fake_temporarily():
            counts = torch.full((minlength,), n // minlength, dtype=torch.long)
            counts[: n % minlength] += 1
        return counts

    torch.bincount = even
    try:
        yield
    finally:
        torch.bincount = real


def _step(model: Any, opt: Any, x: Any, y: Any, precision: str, grad_clip: float | None,
          foreach: bool | None = None) -> None:
    """One optimizer step as budgetlm.train.loop runs it (the logits held until the next).

    foreach=False for FSDP: under FakeTensorMode, DTensor's `_foreach_norm` is tracked as two
    fake copies of every gradient shard (16 MB for four 2 MB shards), which real tensors never
    allocate (16 bytes, measured with real DTensors on the same fake process group); the
    per-tensor norms clip alike without that artefact."""
    import torch

    from budgetlm.train.runtime import autocast_ctx

    with autocast_ctx("cpu", precision):
        _, loss = model(x, y)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=foreach)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _warm_optimizer(model: Any, cfg: RunConfig) -> Any:
    """The optimizer, after one update with zero gradients has created its state."""
    import torch

    from budgetlm.optim import build_optimizer

    opt = build_optimizer(model, cfg.optim)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def _fsdp_peak(cfg: RunConfig, world: int, reshard: bool, node: int | None = None) -> int:
    """FSDPMemTracker's peak over the second of two steps (the first creates optimizer state)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from budgetlm.model import build_model

    m, prec = cfg.model, cfg.train.precision
    # outside the fake mode: it reads its rank map; hsdp as budgetlm.train.parallel builds it
    mesh = (init_device_mesh("cpu", (world // node, node), mesh_dim_names=("replicate", "shard"))
            if node else init_device_mesh("cpu", (world,)))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if prec == "bf16" else MixedPrecisionPolicy())
    with FakeTensorMode(allow_non_fake_inputs=True), _balanced_routing():
        torch.manual_seed(0)
        model = build_model(m).train()
        model.activation_checkpointing = cfg.train.activation_checkpointing
        for block in model.blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
        fully_shard(model, mesh=mesh, mp_policy=policy)  # the root: as the trainer does
        opt = _warm_optimizer(model, cfg)
        x = torch.randint(m.vocab_size, (cfg.train.micro_batch, m.seq_len))
        y = torch.randint(m.vocab_size, (cfg.train.micro_batch, m.seq_len))
        tracker = FSDPMemTracker(model, opt)
        tracker.track_inputs((x, y))
        with tracker:
            _step(model, opt, x, y, prec, cfg.optim.grad_clip, foreach=False)
        peak = tracker.get_tracker_snapshot("peak")
    return sum(d["Total"] for d in peak.values())


def _ddp_peak(cfg: RunConfig) -> int:
    """MemTracker's peak over a steady-state DDP step (the optimizer state made beforehand)."""
    import torch
    import torch.nn.parallel.distributed as ddp_module
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from budgetlm.model import build_model

    def keep_bucket(_state, bucket):  # type: ignore[no-untyped-def]  # DDP checks annotations
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    m, prec = cfg.model, cfg.train.precision
    saved = (ddp_module._verify_param_shape_across_processes, ddp_module._sync_module_states)
    # Both read parameter data to compare ranks; fake tensors have none.
    ddp_module._verify_param_shape_across_processes = lambda *a, **k: None
    ddp_module._sync_module_states = lambda *a, **k: None
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), _balanced_routing():
            torch.manual_seed(0)
            raw = build_model(m).train()
            raw.activation_checkpointing = cfg.train.activation_checkpointing
            opt = _warm_optimizer(raw, cfg)
            x = torch.randint(m.vocab_size, (cfg.train.micro_batch, m.seq_len))
            y = torch.randint(m.vocab_size, (cfg.train.micro_batch, m.seq_len))
            tracker = MemTracker()
            tracker.track_external(raw, opt, x, y)
            with tracker:
                model = ddp_module.DistributedDataParallel(raw)
                model.register_comm_hook(None, keep_bucket)
                _step(model, opt, x, y, prec, cfg.optim.grad_clip)
            peak = tracker.get_tracker_snapshot("peak")
    finally:
        ddp_module._verify_param_shape_across_processes, ddp_module._sync_module_states = saved
    return sum(d["Total"] for d in peak.values())


def measure(shape: Shape, world: int) -> dict[str, Any]:
    """Estimate and tracked peak of `shape` on rank 0 of `world`."""
    cfg = shape.config()
    node = min(shape.node, world) if shape.node else None
    est = rank_memory(cfg, world, shape.layout, parallel="hsdp" if node else None,
                      ranks_per_node=node)
    with _fake_world(world):
        if shape.layout == "ddp":
            tracked = _ddp_peak(cfg)
        else:
            tracked = _fsdp_peak(cfg, world, shape.layout == "zero3", node)
    return {"label": f"{shape.label}@{world}", "shape": shape, "world": world,
            "estimate": est.tensor_peak, "phase": est.peak_phase, "tracked": tracked,
            "error": (est.tensor_peak - tracked) / tracked}


@pytest.fixture(scope="module")
def grid() -> list[dict[str, Any]]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [measure(shape, world) for shape in SHAPES for world in WORLDS]
    finally:
        torch.set_num_threads(threads)


def _mixed_precision_checkpointed(shape: Shape) -> bool:
    return shape.layout in ("zero2", "zero3") and shape.precision == "bf16" and shape.checkpointing


def _residual_overcount(shape: Shape) -> int:
    """Bytes the estimate counts in fp32 that MixedPrecisionPolicy(bf16) keeps in 16 bits, at a
    checkpointed block's backward: the estimate's residual stream is fp32 (autocast keeps fp32
    parameters, so embeddings and block outputs are fp32), under MixedPrecisionPolicy it is bf16:
    each block's checkpointed input, the recomputed block's two norm inputs and the residual
    stream's gradients in its backward (two; one for SwiGLU, see phases.block_workspace_bytes)
    are 2 bytes an element smaller."""
    m = shape.config().model
    tokens = shape.micro_batch * m.seq_len
    grads = 1 if m.mlp == "swiglu" else 2
    return (m.n_layer + 2 + grads) * (4 - 2) * m.d_model * tokens


def test_grid_covers_the_acceptance_axes() -> None:
    fsdp = [s for s in SHAPES if s.layout in ("zero2", "zero3")]
    assert len({s.label for s in fsdp}) >= 8 and WORLDS == (2, 4, 8)
    assert {s.precision for s in fsdp} == {"fp32", "bf16"}
    assert {s.checkpointing for s in fsdp} == {False, True}
    assert {s.layout for s in SHAPES} == {"ddp", "zero2", "zero3"}
    assert any(s.node for s in SHAPES)  # hsdp: a 2-D mesh, sharded within a node
    families = {(s.model.get("n_expert", 0) > 0, s.model.get("mlp", "gelu")) for s in fsdp}
    assert {(False, "gelu"), (False, "swiglu"), (True, "swiglu")} <= families


@pytest.mark.slow
def test_rank_peak_within_five_percent_of_the_tracker(grid: list[dict[str, Any]]) -> None:
    """Every row but the bf16 mixed-precision checkpointed ones (next test) within 5%; most
    within 1%."""
    rows = [r for r in grid if not _mixed_precision_checkpointed(r["shape"])]
    bad = [(r["label"], f"{r['error']:+.2%}") for r in rows if abs(r["error"]) > 0.05]
    assert not bad, bad
    assert sum(abs(r["error"]) <= 0.01 for r in rows) >= 0.75 * len(rows)


@pytest.mark.slow
def test_mixed_precision_gap_is_the_fp32_residual_stream(grid: list[dict[str, Any]]) -> None:
    """bf16 FSDP with checkpointing: never more than 5% under the tracked peak, and over it by
    at most 5% plus the residual stream the estimate counts in fp32 (_residual_overcount), which
    for tiny is the whole gap (9.6-13.7% measured)."""
    rows = [r for r in grid if _mixed_precision_checkpointed(r["shape"])]
    assert len(rows) >= 6
    for r in rows:
        excess, bound = r["estimate"] - r["tracked"], 0.05 * r["tracked"]
        assert -bound <= excess <= bound + _residual_overcount(r["shape"]), (r["label"], excess)
    tiny = [r for r in rows if r["shape"].label == "tiny-bf16-ckpt"]
    assert all(r["estimate"] - r["tracked"] > 0.05 * r["tracked"] for r in tiny)
    assert all(abs(r["estimate"] - r["tracked"] - _residual_overcount(r["shape"]))
               <= 0.005 * r["tracked"] for r in tiny)


@pytest.mark.slow
def test_sharding_shrinks_the_tracked_peak_as_estimated(grid: list[dict[str, Any]]) -> None:
    """From 2 to 8 ranks the FSDP peak falls; DDP's does not, nor HSDP's over nodes of two
    ranks (1, 2 and 4 nodes); the estimate follows."""
    by = {(r["shape"].label, r["world"]): r for r in grid}
    for shape in SHAPES:
        two, eight = by[(shape.label, 2)], by[(shape.label, 8)]
        if shape.layout == "ddp" or shape.node:
            assert two["tracked"] == eight["tracked"] and two["estimate"] == eight["estimate"]
        else:
            drop_tracked = two["tracked"] - eight["tracked"]
            drop_est = two["estimate"] - eight["estimate"]
            assert drop_tracked > 0 and abs(drop_est - drop_tracked) <= 0.05 * two["tracked"]


# ---------------------------------------------------------------------------------------------
# The estimate alone


def test_shard_units_cover_every_parameter_and_pad_rank_zero() -> None:
    for name in ("tiny", "llama-tiny", "moe-tiny", "gpt2-124m", "t5-base", "bert-base"):
        m = preset(name).model
        one = shard_units(m, 1)
        assert one.numel == one.shard == count_params(m).total, name
        assert len(one.blocks) == m.n_layer + (m.decoder_layers if m.family == "t5" else 0)
        eight = shard_units(m, 8)
        assert eight.numel == one.numel
        assert one.numel / 8 <= eight.shard < one.numel / 8 + 64 * 1024, name
    m = ModelConfig(**_preset_model("tiny", vocab_size=509, d_model=200, n_head=4))
    root = shard_units(m, 8).root  # wte (509, 200) -> 64 rows; wpe (64, 200) -> 8; ln_f 25 + 25
    assert root.shard == 64 * 200 + 8 * 200 + 2 * 25
    with pytest.raises(UserError, match="ranks"):
        shard_units(m, 0)


def test_moe_blocks_differ_from_dense_blocks() -> None:
    units = shard_units(preset("moe-tiny").model, 2)
    dense, moe = units.blocks
    assert moe.numel > dense.numel  # four routed experts and a shared one vs one MLP


def _big() -> RunConfig:
    cfg = preset("gpt2-124m")
    return cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"precision": "bf16", "micro_batch": 1, "device": "cuda"})})


def test_layouts_order_memory_per_rank_and_shard_the_state() -> None:
    cfg = _big()
    n = count_params(cfg.model).total
    mem = {lay: rank_memory(cfg, 8, lay) for lay in LAYOUTS}
    assert mem["ddp"].tensor_peak > mem["zero1"].tensor_peak > mem["zero2"].tensor_peak
    assert mem["zero2"].tensor_peak > mem["zero3"].tensor_peak
    single = memory_breakdown(cfg)
    assert mem["ddp"].optimizer == single.optimizer == 8 * n
    for lay in ("zero1", "zero2", "zero3"):
        assert 8 * n / 8 <= mem[lay].optimizer < 8 * n / 8 * 1.01, lay
    assert mem["zero3"].weights < 4 * n / 8 * 1.01 + 4 * 1024 * 64 * 8  # shard + rope-free
    assert mem["ddp"].gathered == 0 and mem["zero3"].gathered > 0
    assert mem["ddp"].total > mem["ddp"].tensor_peak  # CUDA context, workspace, slack


def test_ddp_buckets_double_the_gradients_unless_they_are_views() -> None:
    cfg = _big()
    n = count_params(cfg.model).total
    plain = rank_memory(cfg, 4, "ddp")
    view = rank_memory(cfg, 4, "ddp", bucket_view=True)
    assert plain.comm == 4 * n and view.comm == 0
    assert plain.tensor_peak - view.tensor_peak == 4 * n
    assert rank_memory(cfg, 1, "ddp").comm == 0  # one process: no DDP wrapper


def test_hsdp_is_zero3_over_one_node() -> None:
    cfg = _big()
    hsdp = rank_memory(cfg, 32, parallel="hsdp", ranks_per_node=8)
    fsdp = rank_memory(cfg, 8, "zero3")
    assert hsdp.shard_ranks == 8 and hsdp.layout == "zero3"
    assert hsdp.tensor_peak == fsdp.tensor_peak and hsdp.phases == fsdp.phases
    with pytest.raises(UserError, match="ranks_per_node"):
        rank_memory(cfg, 32, parallel="hsdp")
    with pytest.raises(UserError, match="whole number of nodes"):
        rank_memory(cfg, 12, parallel="hsdp", ranks_per_node=8)


def test_layout_follows_the_train_section() -> None:
    assert layout_for("ddp") == "ddp"
    assert layout_for("fsdp") == "zero3" and layout_for("fsdp", False) == "zero2"
    assert layout_for("hsdp", True) == "zero3"
    with pytest.raises(UserError, match="train.parallel"):
        layout_for("pipeline")
    cfg = _big()
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"parallel": "fsdp", "reshard_after_forward": False})})
    assert rank_memory(cfg, 4).layout == "zero2"


def test_fsdp_phases_are_named_and_the_peak_is_their_maximum() -> None:
    mem = rank_memory(_big(), 8, "zero3")
    phases = dict(mem.phases)
    assert tuple(phases) == FSDP_PHASES
    assert mem.tensor_peak == max(phases.values()) == phases[mem.peak_phase]
    d = mem.to_dict()
    assert d["total"] == d["tensor_peak"] + d["device_remainder"]


@pytest.mark.parametrize("world", [0, -1, 2.5, True])
def test_bad_world_is_a_user_error(world: Any) -> None:
    with pytest.raises(UserError, match="world"):
        rank_memory(preset("tiny"), world)


def test_unknown_layout_is_a_user_error() -> None:
    with pytest.raises(UserError, match="layout"):
        rank_memory(preset("tiny"), 2, "zero4")
