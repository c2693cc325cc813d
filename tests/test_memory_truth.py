"""The estimator's tensor peak against torch's MemTracker on a real training step of budgetlm's
model under fake tensors (benchmarks/memory_truth.py; the small shapes of its grid)."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import load_memory_truth

from budgetlm.config import ModelConfig, RunConfig, preset
from budgetlm.estimate import count_params, memory_breakdown
from budgetlm.estimate.memory import memory_phase_totals
from budgetlm.estimate.phases import PHASES, optimizer_temp_bytes

pytest.importorskip("torch.distributed._tools.mem_tracker")



@pytest.fixture(scope="module")
def truth() -> Any:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_memory_truth()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_results(truth: Any) -> list[dict[str, Any]]:
    return [truth.compare(row) for row in truth.SMALL_GRID]


def test_small_grid_covers_the_issue_axes(truth: Any) -> None:
    rows = truth.SMALL_GRID
    assert len(truth.GRID) >= 24 and {"gpt2-124m"} <= {r.shape for r in truth.GRID}
    assert {r.optimizer for r in rows} >= {"adamw", "sgd", "adafactor", "lion", "muon"}
    assert {r.precision for r in rows} == {"fp32", "bf16"}
    assert {r.checkpointing for r in rows} == {False, True}
    assert {1, 8} <= {r.micro_batch for r in rows}


def test_tensor_peak_within_two_percent_of_memtracker(small_results: list[dict]) -> None:
    bad = [(r["label"], f"{r['error']:+.2%}") for r in small_results if abs(r["error"]) > 0.02]
    assert not bad, bad


def test_tensor_peak_never_more_than_one_percent_below_memtracker(
    small_results: list[dict],
) -> None:
    bad = [(r["label"], f"{r['error']:+.2%}") for r in small_results if r["error"] < -0.01]
    assert not bad, bad


def test_peak_phase_is_in_the_tracked_section(small_results: list[dict]) -> None:
    """The phase the estimate names lies in the part of the step (forward / backward /
    optimizer) where MemTracker saw the peak, or ties with the phase that does."""
    for r in small_results:
        if r["section"] != r["measured"]["section"]:
            phases = r["memory"]["phases"]
            same = [p for p in PHASES if phases[p] == phases[r["phase"]]]
            assert any(r["measured"]["section"] == ("backward" if "backward" in p else p)
                       for p in same), r["label"]


def test_peak_is_the_largest_phase_not_a_sum_of_maxima() -> None:
    cfg = preset("gpt2-124m")
    mem = memory_breakdown(cfg, micro_batch=4, precision="bf16", device="cpu")
    assert mem.peak_phase == "loss_backward" and mem.grads == 0
    assert mem.tensor_peak == max(dict(mem.phases).values())
    assert mem.tensor_peak == sum(
        getattr(mem, k) for k in ("weights", "grads", "optimizer", "master", "activations",
                                  "logits", "temporaries"))


def test_optimizer_step_is_the_peak_for_short_sequences_and_large_tables() -> None:
    m = ModelConfig(n_layer=2, n_head=4, d_model=256, vocab_size=4096, seq_len=16,
                    tie_embeddings=False)
    cfg = RunConfig(model=m, optim={"name": "adamw"}, train={"micro_batch": 1, "device": "cpu"})
    mem = memory_breakdown(cfg)
    assert mem.peak_phase == "optimizer" and mem.grads == 4 * count_params(m).total
    # torch's single-tensor AdamW: sqrt(v) and the quotient for the head, plus the previous
    # parameter's quotient still alive
    assert mem.temporaries == optimizer_temp_bytes(m, "adamw", "cpu", 0.1)


def test_device_remainder_is_zero_on_cpu_and_named_on_cuda() -> None:
    cfg = preset("gpt2-124m")
    cpu = memory_breakdown(cfg, device="cpu")
    cuda = memory_breakdown(cfg, device="cuda")
    assert cpu.device_remainder == 0 and cpu.total == cpu.tensor_peak
    assert cuda.total == cuda.tensor_peak + cuda.device_remainder > cuda.tensor_peak
    d = cuda.to_dict()
    assert d["total"] == d["tensor_peak"] + d["device_remainder"]
    assert d["peak_phase"] in PHASES


def test_fused_adamw_on_cuda_has_no_step_temporaries() -> None:
    m = preset("gpt2-124m").model
    assert optimizer_temp_bytes(m, "adamw", "cuda") == 0
    assert optimizer_temp_bytes(m, "adamw", "cpu") > 0


def test_phase_totals_bound_the_total_where_a_two_point_line_does_not() -> None:
    """Each phase is affine in the micro-batch; their maximum is not, so a line through
    micro-batches 1 and 2 falls below the total once the peak moves to a steeper phase."""
    m = ModelConfig(n_layer=2, n_head=4, d_model=256, vocab_size=4096, seq_len=16, bias=False)
    cfg = RunConfig(model=m, train={"device": "cuda", "precision": "bf16"})
    totals = {b: memory_phase_totals(memory_breakdown(cfg, micro_batch=b), "cuda")
              for b in (1, 2, 64)}
    for b, t in totals.items():
        assert max(t.values()) == memory_breakdown(cfg, micro_batch=b).total
    line = totals[1]["embedding_backward"] + 63 * (
        max(totals[2].values()) - max(totals[1].values()))
    assert memory_breakdown(cfg, micro_batch=1).peak_phase == "embedding_backward"
    assert memory_breakdown(cfg, micro_batch=64).peak_phase == "loss_backward"
    assert line < 0.95 * max(totals[64].values())
    per_phase = max(t1 + 63 * (totals[2][p] - t1) for p, t1 in totals[1].items())
    assert abs(per_phase - max(totals[64].values())) <= 64  # affine per phase, up to rounding
