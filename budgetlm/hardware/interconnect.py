"""How GPUs talk: the link inside a node per GPU, the network between nodes, and a `Fabric`
(GPU, GPU count, node count, network) that the communication estimate reads.

Bandwidths are stored as vendors quote them and said so: NVLink, Infinity Fabric and PCIe
figures are *bidirectional* totals per GPU (both directions added up), network figures are per
NIC and *per direction* (links are full duplex). The communication estimate
(`budgetlm.estimate.comm`) uses bytes sent by one rank, so it divides the bidirectional figures
by two: `Fabric.intra_bytes_per_s` and `Fabric.inter_bytes_per_s` are per direction.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from budgetlm.errors import UserError
from budgetlm.hardware.datasheet import lookup_gpu

# Assumed seconds per collective call (launch and the ring's first hops), not measured here:
# the order of NCCL's small-message latency inside a node and across an InfiniBand fabric.
INTRA_NODE_LATENCY_S = 10e-6
INTER_NODE_LATENCY_S = 30e-6


@dataclass(frozen=True)
class Link:
    """A GPU's link to the other GPUs of its node: `bidirectional_gb_s` is both directions added
    up, per GPU (how NVLink, Infinity Fabric and PCIe are quoted)."""

    key: str
    name: str
    bidirectional_gb_s: float
    source: str

    @property
    def per_direction_bytes_per_s(self) -> float:
        return self.bidirectional_gb_s / 2 * 1e9


@dataclass(frozen=True)
class Network:
    """A node-to-node network: `nic_gbit_s` per NIC and per direction (full duplex),
    `nics_per_node` NICs in a node unless told otherwise."""

    key: str
    name: str
    nic_gbit_s: float
    nics_per_node: int
    source: str

    @property
    def nic_bytes_per_s(self) -> float:
        return self.nic_gbit_s * 1e9 / 8


def _link(key: str, name: str, gb_s: float, source: str) -> Link:
    return Link(key, name, gb_s, source)


_PCIE_RATES = "PCIe x16 per PCI-SIG signalling (Gen3 8, Gen4 16, Gen5 32 GT/s a lane)"
LINKS: dict[str, Link] = {k.key: k for k in (
    _link("nvlink2", "NVLink 2 (6 links)", 300,
          "NVIDIA Tesla V100 datasheet (2020): NVLink 300 GB/s (bidirectional, per GPU)"),
    _link("nvlink3", "NVLink 3 (12 links)", 600,
          "NVIDIA A100 Tensor Core GPU datasheet (2021): NVLink 600 GB/s (SXM, bidirectional)"),
    _link("nvlink4", "NVLink 4 (18 links)", 900,
          "NVIDIA H100 datasheet (2023) and H200 datasheet (2024), SXM: NVLink 900 GB/s "
          "(bidirectional, 18 links of 50 GB/s)"),
    _link("nvlink5", "NVLink 5 (18 links)", 1800,
          "NVIDIA HGX B200 / GB200 NVL72 specifications (2024): fifth-generation NVLink "
          "1.8 TB/s per GPU (bidirectional)"),
    _link("xgmi", "AMD Infinity Fabric (7 peer links)", 7 * 128,
          "AMD Instinct MI300X product page (2023): 8 Infinity Fabric links, 128 GB/s peak each "
          "(bidirectional); in the 8-GPU platform 7 of them reach the 7 peers: 896 GB/s"),
    _link("pcie3", "PCIe Gen3 x16", 32,
          f"NVIDIA Tesla V100 / T4 datasheets: PCIe 32 GB/s (bidirectional); {_PCIE_RATES}"),
    _link("pcie4", "PCIe Gen4 x16", 64,
          "NVIDIA A100 datasheet (2021) and L40S datasheet (2023): PCIe Gen4 x16 64 GB/s "
          "(bidirectional)"),
    _link("pcie5", "PCIe Gen5 x16", 128,
          "NVIDIA H100 datasheet (2023): PCIe Gen5 128 GB/s (bidirectional)"),
)}

# The link a node of these GPUs uses for collectives. PCIe cards: PCIe (GeForce cards have no
# peer-to-peer, so their traffic also crosses host memory; NVLink bridges of PCIe cards join
# pairs only and are ignored). a100-* and v100* are the SXM boards their families default to.
GPU_LINKS: dict[str, str] = {
    "h100-sxm": "nvlink4", "h100-pcie": "pcie5", "h100-nvl": "pcie5", "h200": "nvlink4",
    "a100-80gb": "nvlink3", "a100-40gb": "nvlink3", "v100": "nvlink2", "v100-16gb": "nvlink2",
    "l4": "pcie4", "t4": "pcie3", "rtx-4090": "pcie4", "rtx-3090": "pcie4", "a10g": "pcie4",
    "a10": "pcie4", "l40s": "pcie4", "l40": "pcie4", "b200": "nvlink5", "gb200": "nvlink5",
    "h20": "nvlink4", "mi300x": "xgmi",
}

NETWORKS: dict[str, Network] = {n.key: n for n in (
    Network("ib-ndr", "InfiniBand NDR 400 Gb/s", 400, 8,
            "NVIDIA DGX H100 datasheet (2023): 8x single-port ConnectX-7, 400 Gb/s "
            "InfiniBand each (one per GPU)"),
    Network("ib-hdr", "InfiniBand HDR 200 Gb/s", 200, 8,
            "NVIDIA DGX A100 datasheet (2020): 8x single-port ConnectX-6, 200 Gb/s HDR "
            "InfiniBand each (one per GPU)"),
    Network("roce-400g", "RoCE v2 over 400 GbE", 400, 8,
            "IEEE 802.3bs-2017 (400GbE); NVIDIA ConnectX-7 (2022) runs 400 GbE with RoCE; "
            "one NIC per GPU assumed, as DGX nodes wire their InfiniBand"),
    Network("ethernet-100g", "Ethernet 100 Gb/s", 100, 1,
            "IEEE 802.3ba-2010 (100GbE); one NIC per node assumed"),
    Network("ethernet-25g", "Ethernet 25 Gb/s", 25, 1,
            "IEEE 802.3by-2016 (25GbE); one NIC per node assumed"),
)}

# The network a multi-node plan assumes when none is named: what the vendor's 8-GPU reference
# systems ship with (DGX H100/H200/B200: NDR; DGX A100: HDR); RoCE for the MI300X platform;
# 100 GbE for PCIe cards.
DEFAULT_NETWORKS: dict[str, str] = {
    "h100-sxm": "ib-ndr", "h200": "ib-ndr", "b200": "ib-ndr", "gb200": "ib-ndr",
    "h20": "ib-ndr", "a100-80gb": "ib-hdr", "a100-40gb": "ib-hdr", "v100": "ib-hdr",
    "v100-16gb": "ib-hdr", "mi300x": "roce-400g",
}


def lookup_network(name: str) -> Network:
    """The network named `name` (case and spaces ignored); UserError listing the known ones."""
    key = name.strip().lower().replace(" ", "-").replace("_", "-")
    if key in NETWORKS:
        return NETWORKS[key]
    close = difflib.get_close_matches(key, list(NETWORKS), n=2, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UserError(f"--interconnect {name!r}: unknown network; {hint}known: "
                    f"{', '.join(NETWORKS)}")


@dataclass(frozen=True)
class Fabric:
    """`gpus` GPUs of datasheet row `gpu` in `nodes` nodes, linked by `link` inside a node and
    `network` (with `nics_per_node` NICs) between nodes (None on one node)."""

    gpu: str
    gpus: int
    nodes: int
    link: Link
    network: Network | None
    nics_per_node: int

    @property
    def gpus_per_node(self) -> int:
        return self.gpus // self.nodes

    @property
    def intra_bytes_per_s(self) -> float:
        """One GPU's bytes per second to its node's other GPUs, per direction."""
        return self.link.per_direction_bytes_per_s

    @property
    def inter_bytes_per_s(self) -> float | None:
        """One node's bytes per second to the other nodes, per direction (all its NICs), or
        None on one node."""
        if self.network is None or self.nodes == 1:
            return None
        return self.nics_per_node * self.network.nic_bytes_per_s

    @property
    def intra_latency_s(self) -> float:
        return INTRA_NODE_LATENCY_S

    @property
    def inter_latency_s(self) -> float:
        return INTER_NODE_LATENCY_S

    def describe(self) -> str:
        """'64 x h100-sxm in 8 nodes: NVLink 4 (18 links) 450 GB/s per direction; InfiniBand
        NDR 400 Gb/s x 8 NICs = 400 GB/s per node per direction'."""
        text = (f"{self.gpus} x {self.gpu} in {self.nodes} node{'s' * (self.nodes > 1)}: "
                f"{self.link.name} {self.intra_bytes_per_s / 1e9:.0f} GB/s per direction")
        inter = self.inter_bytes_per_s
        if inter is not None and self.network is not None:
            text += (f"; {self.network.name} x {self.nics_per_node} NIC"
                     f"{'s' * (self.nics_per_node > 1)} = {inter / 1e9:.0f} GB/s per node per "
                     "direction")
        return text


def _whole(value: object, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{flag} {value!r}: must be a whole number >= 1")
    return value


def fabric(gpu: str, gpus: int, nodes: int = 1, interconnect: str | None = None,
           nics_per_node: int | None = None) -> Fabric:
    """The fabric of `gpus` GPUs named `gpu` (a datasheet name or key) in `nodes` nodes, joined by
    the network `interconnect` (a NETWORKS key; None: the GPU's DEFAULT_NETWORKS entry, else
    ethernet-100g). `nics_per_node` overrides the network's usual NIC count."""
    key = lookup_gpu(gpu).key
    gpus = _whole(gpus, "--gpus")
    nodes = _whole(nodes, "--nodes")
    if gpus % nodes:
        raise UserError(f"--gpus {gpus}: not a whole number of GPUs per node over --nodes "
                        f"{nodes}")
    network = lookup_network(interconnect or DEFAULT_NETWORKS.get(key, "ethernet-100g"))
    nics = network.nics_per_node if nics_per_node is None else _whole(nics_per_node, "--nics")
    return Fabric(key, gpus, nodes, LINKS[GPU_LINKS[key]], network, nics)

