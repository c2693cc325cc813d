"""Communication per optimizer step (`budgetlm.estimate.comm`) and the link and network table
(`budgetlm.hardware.interconnect`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from budgetlm.config import RunConfig, preset
from budgetlm.errors import UserError
from budgetlm.estimate import comm_time, comm_volume, count_params
from budgetlm.estimate.comm import DDP_BUCKET_BYTES, DEFAULT_OVERLAP
from budgetlm.estimate.sharding import shard_units
from budgetlm.hardware import GPU_SPECS, LINKS, NETWORKS, fabric, lookup_network
from budgetlm.hardware.interconnect import DEFAULT_NETWORKS, GPU_LINKS


def _cfg(precision: str = "bf16", grad_accum: int = 64) -> RunConfig:
    cfg = preset("gpt2-124m")
    return cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"precision": precision, "grad_accum": grad_accum})})


# ---------------------------------------------------------------------------------------------
# Volumes


def test_ddp_all_reduces_the_fp32_gradients_once_per_step() -> None:
    cfg = _cfg()
    n = count_params(cfg.model).total
    vol = comm_volume(cfg, 8, "ddp")
    (ar,) = vol.collectives
    assert ar.kind == "all_reduce" and ar.scope == "world"
    assert ar.bytes_sent == pytest.approx(2 * 7 / 8 * 4 * n, abs=1)
    assert ar.calls == 1 + -(-(4 * n - 2**20) // DDP_BUCKET_BYTES)  # 25 MiB buckets
    assert comm_volume(cfg, 1, "ddp").bytes_sent == 0


def test_zero1_moves_what_ddp_moves() -> None:
    cfg = _cfg()
    assert abs(comm_volume(cfg, 8, "zero1").bytes_sent - comm_volume(cfg, 8, "ddp").bytes_sent) <= 2


def test_fsdp_gathers_in_bf16_and_reduces_in_fp32_every_micro_step() -> None:
    cfg = _cfg("bf16", grad_accum=64)
    units = shard_units(cfg.model, 8)
    z3 = comm_volume(cfg, 8, "zero3")
    z2 = comm_volume(cfg, 8, "zero2")
    assert z3.micro_steps == 8  # 64 micro-batches over 8 ranks
    assert comm_volume(_cfg("bf16", grad_accum=6), 4, "zero3").micro_steps == 3  # half batches
    kinds = {(c.kind, c.what): c for c in z3.collectives}
    fwd = kinds[("all_gather", "parameters for the forward")]
    assert fwd.bytes_sent == 8 * 2 * 7 * units.shard
    assert fwd.calls == 8 * (1 + cfg.model.n_layer)
    bwd = kinds[("all_gather", "block parameters for the backward")]
    assert bwd.bytes_sent == 8 * 2 * 7 * sum(b.shard for b in units.blocks)
    rs = kinds[("reduce_scatter", "gradients")]
    assert rs.bytes_sent == 8 * 4 * 7 * units.shard
    assert z3.bytes_sent - z2.bytes_sent == bwd.bytes_sent  # zero2 keeps the forward's blocks
    # (k-1)/k of 2 + 4 bytes a parameter and 2 more a block parameter (DESIGN §10: about 3x
    # the parameters in the communication dtype; the root is gathered once)
    n = count_params(cfg.model).total
    in_blocks = sum(b.numel for b in units.blocks)
    assert z3.bytes_sent / 8 == pytest.approx(7 / 8 * (6 * n + 2 * in_blocks), rel=0.001)


def test_fp32_fsdp_gathers_four_bytes() -> None:
    cfg = _cfg("fp32", grad_accum=8)
    fwd = comm_volume(cfg, 8, "zero3").collectives[0]
    assert fwd.bytes_sent == 4 * 7 * shard_units(cfg.model, 8).shard


def test_hsdp_shards_in_the_node_and_all_reduces_shards_across() -> None:
    cfg = _cfg("bf16", grad_accum=64)
    vol = comm_volume(cfg, 32, "zero3", parallel="hsdp", ranks_per_node=8)
    assert vol.shard_ranks == 8 and vol.micro_steps == 2
    scopes = {c.scope for c in vol.collectives}
    assert scopes == {"node", "across"}
    (ar,) = [c for c in vol.collectives if c.scope == "across"]
    assert ar.ranks == 4 and ar.calls == 1 + cfg.model.n_layer  # the last micro-step only
    assert ar.bytes_sent == pytest.approx(2 * 3 / 4 * 4 * shard_units(cfg.model, 8).shard, abs=1)
    with pytest.raises(UserError, match="ranks_per_node"):
        comm_volume(cfg, 12, "zero3", parallel="hsdp", ranks_per_node=8)


@pytest.mark.parametrize("bad", [0, -3, 1.5, True])
def test_bad_micro_steps_and_world_are_user_errors(bad: Any) -> None:
    with pytest.raises(UserError, match="micro_steps"):
        comm_volume(_cfg(), 8, "zero3", micro_steps=bad)
    with pytest.raises(UserError, match="world"):
        comm_volume(_cfg(), bad, "ddp")


def test_unknown_layout_is_a_user_error() -> None:
    with pytest.raises(UserError, match="layout"):
        comm_volume(_cfg(), 8, "zero9")


# ---------------------------------------------------------------------------------------------
# Time


def test_time_is_bytes_over_the_slowest_link_plus_latency() -> None:
    cfg = _cfg()
    one_node = fabric("h100-sxm", 8, 1)
    t = comm_time(cfg, one_node, "ddp")
    (ar,) = t.volume.collectives
    assert t.seconds == pytest.approx(ar.bytes_sent / 450e9 + ar.calls * 10e-6)
    assert t.latency_seconds == pytest.approx(ar.calls * 10e-6)
    assert t.bottleneck.startswith("NVLink 4")
    eight_nodes = comm_time(cfg, fabric("h100-sxm", 64, 8), "ddp")  # NDR: 8 x 50 GB/s a node
    assert eight_nodes.bandwidths["world"] == pytest.approx(400e9)
    assert eight_nodes.bottleneck.startswith("InfiniBand NDR")


def test_ethernet_is_slower_than_infiniband_and_says_why() -> None:
    cfg = _cfg()
    ib = comm_time(cfg, fabric("h100", 64, 8), "zero3")
    eth = comm_time(cfg, fabric("h100", 64, 8, "ethernet-100g"), "zero3")
    assert eth.seconds > 20 * ib.seconds  # 12.5 GB/s a node against 400
    assert eth.bottleneck == "Ethernet 100 Gb/s"


def test_overlap_hides_a_fraction_never_more_than_the_compute() -> None:
    cfg = _cfg()
    f = fabric("h100", 64, 8, "ethernet-25g")
    free = comm_time(cfg, f, "zero3")
    assert free.overlap == DEFAULT_OVERLAP
    assert free.exposed_seconds == pytest.approx((1 - DEFAULT_OVERLAP) * free.seconds)
    short = comm_time(cfg, f, "zero3", compute_seconds=0.01)
    assert short.exposed_seconds == pytest.approx(short.seconds - 0.01)
    assert comm_time(cfg, f, "zero3", overlap=0.0).exposed_seconds == free.seconds
    with pytest.raises(UserError, match="overlap"):
        comm_time(cfg, f, "zero3", overlap=1.5)
    assert free.to_dict()["bottleneck"] == "Ethernet 100 Gb/s".replace("100", "25")


def test_hsdp_time_uses_the_node_link_inside_and_the_nics_across() -> None:
    t = comm_time(_cfg(), fabric("h100", 32, 4), "zero3", parallel="hsdp")
    assert t.bandwidths["node"] == pytest.approx(450e9)
    assert t.bandwidths["across"] == pytest.approx(400e9 / 8)  # a node's NICs, 8 ranks at once


def test_comm_time_reads_any_fabric_like_object() -> None:
    fake = SimpleNamespace(gpus=4, nodes=2, gpus_per_node=2, intra_bytes_per_s=100e9,
                           inter_bytes_per_s=10e9, intra_latency_s=0.0, inter_latency_s=0.0)
    t = comm_time(_cfg(), fake, "ddp")
    (ar,) = t.volume.collectives
    assert t.seconds == pytest.approx(ar.bytes_sent / 10e9)


# ---------------------------------------------------------------------------------------------
# Links and networks


def test_every_datasheet_gpu_has_a_node_link_with_a_source() -> None:
    assert set(GPU_LINKS) == set(GPU_SPECS)
    for key in GPU_SPECS:
        link = LINKS[GPU_LINKS[key]]
        assert len(link.source) > 30 and link.bidirectional_gb_s > 0, key
    assert LINKS["nvlink4"].bidirectional_gb_s == 900
    assert LINKS["nvlink5"].bidirectional_gb_s == 1800
    assert LINKS["nvlink3"].bidirectional_gb_s == 600
    assert LINKS["xgmi"].bidirectional_gb_s == 896
    assert GPU_LINKS["h200"] == "nvlink4" and GPU_LINKS["b200"] == GPU_LINKS["gb200"] == "nvlink5"
    assert GPU_LINKS["l40s"] == "pcie4" and GPU_LINKS["mi300x"] == "xgmi"
    assert set(DEFAULT_NETWORKS.values()) <= set(NETWORKS)


def test_per_direction_is_half_the_bidirectional_figure() -> None:
    f = fabric("h100", 16, 2)
    assert f.intra_bytes_per_s == 450e9  # NVLink 4: 900 GB/s both ways
    assert f.inter_bytes_per_s == 8 * 400e9 / 8  # 8 NICs of 400 Gb/s, full duplex
    assert NETWORKS["ib-ndr"].nic_gbit_s == 400 and NETWORKS["ib-hdr"].nic_gbit_s == 200
    assert NETWORKS["ethernet-25g"].nic_bytes_per_s == 25e9 / 8
    assert fabric("h100", 8).inter_bytes_per_s is None  # one node: no network crossed
    assert "per direction" in f.describe()


def test_network_names_and_nic_counts() -> None:
    assert lookup_network("IB NDR").key == "ib-ndr"
    assert lookup_network("Ethernet_100G").key == "ethernet-100g"
    assert fabric("h100", 16, 2, "roce-400g", nics_per_node=4).inter_bytes_per_s == 4 * 50e9
    assert fabric("a100", 16, 2).network.key == "ib-hdr"
    assert fabric("l4", 16, 2).network.key == "ethernet-100g"


def test_unknown_network_lists_the_known_ones() -> None:
    with pytest.raises(UserError) as info:
        lookup_network("ib-ndx")
    msg = str(info.value)
    assert msg.startswith("--interconnect 'ib-ndx': unknown network; did you mean ib-ndr")
    assert all(k in msg for k in NETWORKS) and "\n" not in msg


@pytest.mark.parametrize(("gpus", "nodes", "match"), [
    (0, 1, "--gpus"), (8, 0, "--nodes"), (12, 8, "whole number of GPUs per node"),
    (2.5, 1, "--gpus"),
])
def test_bad_fabric_is_a_user_error(gpus: Any, nodes: Any, match: str) -> None:
    with pytest.raises(UserError, match=match):
        fabric("h100", gpus, nodes)


def test_unknown_gpu_is_the_datasheet_user_error() -> None:
    with pytest.raises(UserError, match="unknown GPU"):
        fabric("h1000", 8)
