"""Budgets and where they are spent (DESIGN §3).

`--time` is wall time on this machine, priced with its measured profile; `--gpu-hours` /
`--cost` are device-hours of a GPU (this machine's if it has one, else the named or a reference
H100 SXM from the datasheet table, "unmeasured"); `--flops` is model FLOPs (6·N·D plus attention)
with no device unless `--gpu` names one. `resolve_target` turns a `Budget` into a `Target`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from budgetlm import hardware
from budgetlm.errors import UserError
from budgetlm.units import format_flops_rate, format_seconds, require_finite

REFERENCE_GPU = "h100-sxm"
GPU_MEMORY_MARGIN = 0.90  # plan to use at most this share of device memory
CPU_MEMORY_MARGIN = 0.50  # of host RAM: leave room for the OS, data and other processes
# the budget flags each command takes (`Budget.command`), as its "no budget given" names them
BUDGET_FLAGS = {
    "plan": "--gpu-hours H, --flops C, --time 10m or --cost AMOUNT --price PER_GPU_HOUR",
    "calibrate": "--gpu-hours H, --flops C or --time 10m",
}


def _positive(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    value = require_finite(value, what)
    if value <= 0:
        raise UserError(f"{what}: must be positive, got {value:g}")
    return value


@dataclass
class Budget:
    """Exactly one of gpu_hours, flops, seconds (`--time`) or cost (with price per GPU-hour).

    gpu: a GPU name from the datasheet table, "auto" or None (this machine's GPU, else the
    reference H100 SXM); gpus: how many of them (data parallel, replicated or sharded); nodes:
    the machines they are spread over (gpus / nodes in each); interconnect: the network between
    the nodes (`budgetlm.hardware.NETWORKS`; None: the GPU's usual one); command: the command
    the budget was typed for ("plan" or "calibrate"), which its messages name with its flags.
    """

    gpu_hours: float | None = None
    flops: float | None = None
    seconds: float | None = None
    cost: float | None = None
    price: float | None = None
    gpu: str | None = None
    gpus: int = 1
    command: str = field(default="plan", compare=False, repr=False)
    nodes: int = 1
    interconnect: str | None = None

    def __post_init__(self) -> None:
        given = [
            name for name, v in (("--gpu-hours", self.gpu_hours), ("--flops", self.flops),
                                 ("--time", self.seconds), ("--cost", self.cost))
            if v is not None
        ]
        if not given:
            flags = BUDGET_FLAGS.get(self.command, BUDGET_FLAGS["plan"])
            raise UserError(f"{self.command}: no budget given; pass one of {flags}")
        if len(given) > 1:
            raise UserError(f"{self.command}: give one budget, not {' and '.join(given)}")
        self.gpu_hours = _positive(self.gpu_hours, "--gpu-hours")
        self.flops = _positive(self.flops, "--flops")
        self.seconds = _positive(self.seconds, "--time")
        self.cost = _positive(self.cost, "--cost")
        if self.cost is not None and self.price is None:
            raise UserError("--cost: needs --price (currency per GPU-hour)")
        if self.price is not None:
            if self.cost is None:
                raise UserError("--price: applies to a --cost budget only")
            self.price = _positive(self.price, "--price")
        if self.gpus is None or self.gpus < 1:
            raise UserError(f"--gpus: must be at least 1, got {self.gpus}")
        if self.seconds is not None and self.gpu not in (None, "auto"):
            raise UserError(
                "--gpu: a --time budget is wall time on this machine; use --gpu-hours to plan "
                "for another GPU"
            )
        self._check_nodes()

    def _check_nodes(self) -> None:
        """--nodes and --interconnect: whole GPUs per node, a known network between nodes."""
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, int) or self.nodes < 1:
            raise UserError(f"--nodes: must be a whole number >= 1, got {self.nodes!r}")
        if self.gpus % self.nodes:
            raise UserError(f"--gpus {self.gpus}: not a whole number of GPUs per node over "
                            f"--nodes {self.nodes}")
        if self.interconnect is not None:
            if self.nodes == 1:
                raise UserError(f"--interconnect {self.interconnect}: the network between "
                                "nodes; give --nodes M (more than 1) as well")
            self.interconnect = hardware.lookup_network(self.interconnect).key
        if self.nodes > 1 and self.seconds is not None:
            raise UserError(f"--nodes {self.nodes}: a --time budget is wall time on this "
                            "machine (one node); use --gpu-hours to plan for several nodes")
        if self.nodes > 1 and self.flops is not None and self.gpu in (None, "auto"):
            raise UserError(f"--nodes {self.nodes}: a --flops budget prices no device; name "
                            "one with --gpu")

    @property
    def kind(self) -> str:
        """"gpu_hours", "flops", "time" or "cost"."""
        if self.gpu_hours is not None:
            return "gpu_hours"
        if self.flops is not None:
            return "flops"
        if self.seconds is not None:
            return "time"
        return "cost"

    @property
    def device_hours(self) -> float | None:
        """GPU-hours of a --gpu-hours or --cost budget (None for the others)."""
        if self.gpu_hours is not None:
            return self.gpu_hours
        if self.cost is not None and self.price:
            return self.cost / self.price
        return None

    def to_dict(self) -> dict[str, Any]:
        """The budget as given: its kind, the values set, and the GPU count."""
        out = {"kind": self.kind}
        for k in ("gpu_hours", "flops", "seconds", "cost", "price", "gpu"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        out["gpus"] = self.gpus
        if self.nodes > 1:
            out["nodes"] = self.nodes
        if self.interconnect is not None:
            out["interconnect"] = self.interconnect
        return out


class PlanProfile:
    """A hardware profile as the planner prices it: fp32 on CUDA runs with TF32 matmuls (the
    trainer enables TF32), so its peak is the TF32 one; everything else is the profile's."""

    def __init__(self, base: Any):
        self.base = base
        self.device = base.device
        self.measured = bool(base.measured)

    def peak(self, precision: str) -> float | None:
        """Matmul FLOP/s in `precision` (None: no peak, so not planned in it)."""
        if precision == "fp32" and self.device == "cuda":
            return self.base.peak("tf32") or self.base.peak("fp32")
        return self.base.peak(precision)


@dataclass
class Target:
    """Where and how long: the budget interpreted."""

    kind: str  # "time" (this machine) | "gpu" (device-hours) | "flops"
    device: str  # "cpu" | "cuda" | "none"
    profile: PlanProfile | None
    devices: int = 1
    wall_seconds: float | None = None
    flops: float | None = None
    memory_bytes: int | None = None  # per device
    memory_limit: float | None = None  # per device, after the margin
    memory_strict: bool = True  # False: the limit only picks the micro-batch (--flops, no --gpu)
    source: str = "none"  # "measured" | "datasheet" | "none"
    name: str = ""
    first_line: str = ""
    notes: list[str] = field(default_factory=list)
    fabric: Any = None  # hardware.Fabric of several GPUs (None: one GPU, or no interconnect row)
    nodes: int = 1


def memory_margin(device: str) -> float:
    """Share of a device's memory a plan may use."""
    return GPU_MEMORY_MARGIN if device == "cuda" else CPU_MEMORY_MARGIN


def gpu_name(profile: Any) -> str:
    """The name of a profile's first GPU ("GPU" when it names none)."""
    if getattr(profile, "gpus", None):
        return profile.gpus[0].name
    return "GPU"


def local_flops_target(profile: Any, flops: float, name: str, first_line: str) -> Target:
    """`flops` of training spent on the machine of `profile` (a HardwareProfile)."""
    return Target(
        kind="flops", device=profile.device, profile=PlanProfile(profile), flops=flops,
        memory_bytes=profile.device_memory_bytes,
        memory_limit=memory_margin(profile.device) * profile.device_memory_bytes,
        source="measured" if profile.measured else "datasheet", name=name, first_line=first_line,
    )


def resolve_target(budget: Budget, profile: Any = None) -> Target:
    """Interpret `budget`: the device, its profile and source, seconds or FLOPs available.

    `profile` (a HardwareProfile) replaces this machine's for --time budgets and the detected
    or named GPU for --gpu-hours / --cost (tests pass fake profiles here).
    """
    if budget.kind == "time":
        return _time_target(budget, profile)
    if budget.kind == "flops":
        return _flops_target(budget, profile)
    return _gpu_hours_target(budget, profile)


def _time_target(budget: Budget, profile: Any) -> Target:
    """Wall time on this machine, priced with its (measured) profile."""
    seconds = float(budget.seconds)  # type: ignore[arg-type]
    measured_now = False
    if profile is None:
        profile = hardware.cached_profile()
    if profile is None:
        profile = hardware.load_profile()  # measures once (~10 s, imports torch) and caches
        measured_now = True
    prof = PlanProfile(profile)
    devices = profile.devices if profile.device == "cuda" else 1
    if budget.gpus > devices:
        raise UserError(
            f"--gpus {budget.gpus}: this machine has {devices} "
            f"{'GPU' if profile.device == 'cuda' else 'CPU device'}(s)"
        )
    devices = budget.gpus if profile.device == "cuda" else 1
    what = (f"{devices} x {gpu_name(profile)}" if profile.device == "cuda"
            else f"{profile.cpu_model} ({profile.cpu_cores} cores)")
    src = "measured" if profile.measured else "datasheet"
    best = max((p for p in ("fp32", "bf16", "fp16") if prof.peak(p)),
               key=lambda p: prof.peak(p) or 0.0, default="fp32")
    peak = prof.peak(best) or 0.0
    first = (
        f"budget: {format_seconds(seconds)} of wall time on this machine, {what}; "
        f"{src} matmul peak {format_flops_rate(peak)} {best}"
        f"{' (measured just now)' if measured_now else ''}; step times are estimates"
    )
    notes: list[str] = []
    return Target(
        kind="time", device=profile.device, profile=prof, devices=devices,
        wall_seconds=seconds, memory_bytes=profile.device_memory_bytes,
        memory_limit=memory_margin(profile.device) * profile.device_memory_bytes, source=src,
        name=what, first_line=first, notes=notes,
        fabric=gpu_fabric(budget, profile, devices, notes) if profile.device == "cuda" else None,
    )


def _flops_target(budget: Budget, profile: Any) -> Target:
    """Model FLOPs, on no device unless --gpu names one."""
    flops = float(budget.flops)  # type: ignore[arg-type]
    if budget.gpu in (None, "auto"):
        ref = hardware.lookup_gpu(REFERENCE_GPU)
        return Target(
            kind="flops", device="none", profile=None, flops=flops, source="none",
            memory_bytes=ref.memory_bytes, memory_limit=GPU_MEMORY_MARGIN * ref.memory_bytes,
            memory_strict=False, name="no device",
            first_line=(
                f"budget: {flops:.3g} FLOPs of training compute (model FLOPs: 6·N·D plus "
                "attention); no device named (--gpu): no time estimate, and memory only "
                f"picks the micro-batch (as on one {ref.name}), it rules nothing out"
            ),
        )
    base = profile if profile is not None else hardware.reference_profile(budget.gpu, budget.gpus)
    notes: list[str] = []
    where = gpus_in_nodes(budget, gpu_name(base))
    return Target(
        kind="flops", device="cuda", profile=PlanProfile(base), devices=budget.gpus, flops=flops,
        memory_bytes=base.device_memory_bytes,
        memory_limit=GPU_MEMORY_MARGIN * base.device_memory_bytes,
        source="measured" if base.measured else "datasheet",
        name=where,
        first_line=(
            f"budget: {flops:.3g} FLOPs of training compute (model FLOPs: 6·N·D plus "
            f"attention) on {where}; time from the "
            f"{'measured' if base.measured else 'datasheet'} peak x default MFU"
        ),
        notes=notes, fabric=gpu_fabric(budget, base, budget.gpus, notes), nodes=budget.nodes,
    )


def _gpu_profile(budget: Budget, notes: list[str]) -> tuple[Any, str]:
    """The profile a --gpu-hours / --cost budget is priced on, and why a reference GPU was
    taken ("" when it was not)."""
    here = hardware.cached_profile()
    if budget.gpu not in (None, "auto"):
        spec = hardware.lookup_gpu(budget.gpu)  # UserError with close matches
        if here is not None and here.device == "cuda" and here.spec_key == spec.key:
            return here, ""
        return hardware.reference_profile(spec.key, budget.gpus), ""
    detected = [] if here is not None else hardware.detect_gpus()
    if here is not None and here.device == "cuda":
        return here, ""
    if detected and detected[0].spec_key:
        notes.append("this machine's GPU is not profiled yet: datasheet figures "
                     "(run budgetlm profile to measure it)")
        return hardware.reference_profile(detected[0].spec_key, budget.gpus), ""
    reason = "no GPU on this machine" if not detected else (
        f"this machine's {detected[0].name} has no datasheet row"
    )
    return hardware.reference_profile(REFERENCE_GPU, budget.gpus), reason


def _gpu_hours_target(budget: Budget, profile: Any) -> Target:
    """GPU-hours (or a cost converted to GPU-hours) of this machine's, a named or a reference
    GPU."""
    hours = float(budget.device_hours)  # type: ignore[arg-type]
    notes: list[str] = []
    reference_reason = ""
    if profile is None:
        profile, reference_reason = _gpu_profile(budget, notes)
    if budget.gpus > 1 and profile.measured and budget.gpus > profile.gpu_count:
        notes.append(
            f"--gpus {budget.gpus}: this machine has {profile.gpu_count}; the plan prices "
            f"{budget.gpus} of its GPUs"
        )
    prof = PlanProfile(profile)
    devices = budget.gpus
    wall = hours * 3600.0 / devices
    src = "measured" if profile.measured else "datasheet"
    name = gpu_name(profile)
    peak = prof.peak("bf16") or prof.peak("fp16") or prof.peak("fp32") or 0.0
    how = (
        f"{src} peak {format_flops_rate(peak)} x default MFU by model size"
        + ("" if profile.measured else " (unmeasured)")
    )
    if budget.kind == "cost":
        lead = (f"budget: {budget.cost:g} at {budget.price:g}/GPU-hour = {hours:.3g} GPU-hours")
    else:
        lead = f"budget: {hours:.3g} GPU-hours"
    if reference_reason:
        where = f" of a reference {name} ({reference_reason}; --gpu NAME plans for another)"
    else:
        where = f" of {name}" + (" (this machine)" if profile.measured else "")
    fab = gpu_fabric(budget, profile, devices, notes)
    spread = f" in {budget.nodes} nodes" if budget.nodes > 1 else ""
    return Target(
        kind="gpu", device="cuda", profile=prof, devices=devices, wall_seconds=wall,
        memory_bytes=profile.device_memory_bytes,
        memory_limit=GPU_MEMORY_MARGIN * profile.device_memory_bytes, source=src,
        name=gpus_in_nodes(budget, name), first_line=f"{lead}{where}, {devices} x "
        f"{format_seconds(wall)} wall{spread}; {how}", notes=notes, fabric=fab, nodes=budget.nodes,
    )


def gpus_in_nodes(budget: Budget, gpu: str) -> str:
    """'64 x NVIDIA H100 SXM in 8 nodes' ('... x GPU' on one node)."""
    return f"{budget.gpus} x {gpu}" + (f" in {budget.nodes} nodes" if budget.nodes > 1 else "")


def gpu_fabric(budget: Budget, profile: Any, devices: int, notes: list[str]) -> Any:
    """The interconnect of `devices` GPUs of `profile` in budget.nodes nodes
    (`hardware.fabric`); None on one GPU, or when the GPU has no datasheet row (then the plan
    prices no communication, and says so in `notes`)."""
    if devices < 2:
        return None
    key = getattr(profile, "spec_key", None)
    if key is None:
        notes.append(f"communication not priced: {gpu_name(profile)} has no datasheet row, so "
                     "no interconnect figures")
        return None
    return hardware.fabric(key, devices, budget.nodes, budget.interconnect)
