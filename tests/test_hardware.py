"""Hardware profiles: datasheet lookup, detection, CPU micro-benchmarks, cache, reference plans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from budgetlm.errors import UserError
from budgetlm.hardware import (
    DTYPE_KEYS,
    GPU_SPECS,
    PEAK_KEYS,
    GpuInfo,
    HardwareProfile,
    cache_path,
    cached_profile,
    detect_cpu,
    detect_gpus,
    load_profile,
    lookup_gpu,
    measure,
    reference_profile,
)
from budgetlm.hardware import cache as profile_cache
from budgetlm.units import GiB

# ---------------------------------------------------------------------------------------------
# Datasheet table and lookup


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("H100", "h100-sxm"),
        ("h100", "h100-sxm"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("h100-sxm", "h100-sxm"),
        ("H100 SXM5", "h100-sxm"),
        ("h100 pcie", "h100-pcie"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H100 NVL", "h100-nvl"),
        ("H200", "h200"),
        ("NVIDIA H200", "h200"),
        ("a100", "a100-80gb"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("NVIDIA A100 80GB PCIe", "a100-80gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA A100-PCIE-40GB", "a100-40gb"),
        ("A100_40GB", "a100-40gb"),
        ("V100", "v100"),
        ("Tesla V100-SXM2-32GB", "v100"),
        ("Tesla V100-SXM2-16GB", "v100-16gb"),
        ("NVIDIA L4", "l4"),
        ("Tesla T4", "t4"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("rtx4090", "rtx-4090"),
        ("RTX 4090", "rtx-4090"),
        ("NVIDIA A10G", "a10g"),
        ("NVIDIA A10", "a10"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L40", "l40"),
        ("NVIDIA GeForce RTX 3090", "rtx-3090"),
    ],
)
def test_lookup_gpu_accepts_keys_aliases_and_driver_names(name: str, key: str) -> None:
    assert lookup_gpu(name).key == key


def test_lookup_gpu_every_key_and_alias_resolves_to_its_row() -> None:
    for key, spec in GPU_SPECS.items():
        assert lookup_gpu(key) is spec
        assert lookup_gpu(key.upper()) is spec
        assert lookup_gpu(spec.name) is spec
        for alias in spec.aliases:
            assert lookup_gpu(alias) is spec, alias


@pytest.mark.parametrize("name", ["h1000", "H10", "rtx 5090", "tpu-v5", ""])
def test_lookup_gpu_unknown_is_a_one_line_user_error(name: str) -> None:
    with pytest.raises(UserError) as info:
        lookup_gpu(name)
    msg = str(info.value)
    assert msg.startswith(f"--gpu {name!r}: unknown GPU")
    assert "known: " in msg and "h100-sxm" in msg
    assert "\n" not in msg


def test_lookup_gpu_unknown_suggests_close_names() -> None:
    with pytest.raises(UserError, match=r"did you mean h100-sxm"):
        lookup_gpu("h1000")
    with pytest.raises(UserError, match=r"did you mean rtx-4090"):
        lookup_gpu("rtx 4080")


def test_gpu_specs_have_sources_and_positive_peaks() -> None:
    assert {"h100-sxm", "h100-pcie", "h200", "a100-80gb", "a100-40gb", "v100", "l4", "t4",
            "rtx-4090", "a10g", "l40s", "rtx-3090"} <= set(GPU_SPECS)
    for key, spec in GPU_SPECS.items():
        assert spec.key == key
        assert len(spec.source) > 20, key
        assert spec.memory_bytes >= 16 * GiB
        assert spec.bandwidth_bytes_per_s > 1e11
        assert {"fp32", "fp16"} <= set(spec.peak_flops) <= set(PEAK_KEYS)
        for dtype, flops in spec.peak_flops.items():
            assert flops > 1e12, (key, dtype)
        assert spec.peak_flops["fp16"] > spec.peak_flops["fp32"]  # tensor cores


def test_gpu_specs_match_design_table() -> None:
    # DESIGN §6: dense bf16 (fp16 where no bf16), vendor datasheets.
    expected = {
        ("h100-sxm", "bf16"): 989e12, ("h100-sxm", "fp16"): 989e12,
        ("h100-sxm", "tf32"): 494.5e12, ("h100-sxm", "fp32"): 66.9e12,
        ("h100-pcie", "bf16"): 756e12, ("h200", "bf16"): 989e12,
        ("a100-80gb", "bf16"): 312e12, ("a100-80gb", "tf32"): 156e12,
        ("a100-80gb", "fp32"): 19.5e12, ("a100-40gb", "bf16"): 312e12,
        ("v100", "fp16"): 125e12, ("v100", "fp32"): 15.7e12,
        ("l4", "bf16"): 121e12, ("t4", "fp16"): 65e12, ("rtx-4090", "bf16"): 165e12,
    }
    for (key, dtype), flops in expected.items():
        assert GPU_SPECS[key].peak_flops[dtype] == pytest.approx(flops, rel=0.005), (key, dtype)
    for key in ("v100", "t4"):
        assert "bf16" not in GPU_SPECS[key].peak_flops
    memory_gib = {"h100-sxm": 80, "h200": 141, "a100-80gb": 80, "a100-40gb": 40, "v100": 32,
                  "v100-16gb": 16, "l4": 24, "t4": 16, "rtx-4090": 24}
    for key, gib in memory_gib.items():
        assert GPU_SPECS[key].memory_bytes == gib * GiB


def test_new_datasheet_rows_carry_dense_peaks_and_sources() -> None:
    expected = {
        ("b200", "bf16"): 2.25e15, ("b200", "tf32"): 1.1e15, ("b200", "fp32"): 75e12,
        ("b200", "fp8"): 4.5e15, ("gb200", "bf16"): 2.5e15, ("gb200", "fp8"): 5e15,
        ("gb200", "fp32"): 80e12, ("h20", "bf16"): 148e12, ("h20", "fp32"): 44e12,
        ("mi300x", "bf16"): 1307.4e12, ("mi300x", "fp8"): 2614.9e12,
        ("mi300x", "fp32"): 163.4e12, ("mi300x", "tf32"): 653.7e12,
    }
    for (key, dtype), flops in expected.items():
        assert GPU_SPECS[key].peak_flops[dtype] == pytest.approx(flops, rel=0.001), (key, dtype)
    memory_gib = {"b200": 180, "gb200": 186, "h20": 96, "mi300x": 192}
    for key, gib in memory_gib.items():
        assert GPU_SPECS[key].memory_bytes == gib * GiB
    assert GPU_SPECS["mi300x"].source.startswith("AMD Instinct MI300X product page")
    assert "fp8" not in GPU_SPECS["h20"].peak_flops  # no source gives it
    for name, key in [("NVIDIA B200", "b200"), ("NVIDIA GB200", "gb200"), ("NVIDIA H20", "h20"),
                      ("AMD Instinct MI300X", "mi300x"), ("H200", "h200")]:
        assert lookup_gpu(name).key == key


def test_fp8_peaks_are_dense_and_above_bf16() -> None:
    with_fp8 = {k for k, s in GPU_SPECS.items() if "fp8" in s.peak_flops}
    assert {"h100-sxm", "h100-pcie", "h200", "b200", "gb200", "mi300x", "l40s", "l4"} <= with_fp8
    assert "fp8" not in DTYPE_KEYS and PEAK_KEYS == (*DTYPE_KEYS, "fp8")
    for key in with_fp8:
        peaks = GPU_SPECS[key].peak_flops
        assert peaks["fp8"] == pytest.approx(2 * peaks["bf16"], rel=0.02), key  # L40S: 733 vs 724
        assert "fp8" in GPU_SPECS[key].source.lower(), key
    assert GPU_SPECS["h100-sxm"].peak_flops["fp8"] == pytest.approx(1979e12)


def test_fp8_changes_nothing_a_profile_prints_or_prices() -> None:
    prof = reference_profile("h100")
    labels = [label for label, _value in prof.summary_rows() if label.startswith("Peak")]
    assert labels == [f"Peak {k}" for k in DTYPE_KEYS]
    assert prof.peak("bf16") == 989e12 and prof.peak("fp8") == 1979e12
    assert prof.peak_source("fp8") == "datasheet"


# ---------------------------------------------------------------------------------------------
# Detection


def test_detect_gpus_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    gpus = detect_gpus()
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert isinstance(gpus, list)
    if not Path("/proc/driver/nvidia").exists():
        assert gpus == []


def test_detect_gpus_without_driver_returns_empty(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail() -> None:
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=fail))
    assert detect_gpus() == []
    assert capsys.readouterr() == ("", "")


def _fake_nvml(names: list[str]) -> types.SimpleNamespace:
    def mem(i: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(total=(80 if "80GB" in names[i] else 24) * 1024**3)

    return types.SimpleNamespace(
        NVML_CLOCK_SM=1,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(names),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda i: f"GPU-{i:04d}-uuid",
        nvmlDeviceGetName=lambda i: names[i].encode(),  # older bindings return bytes
        nvmlDeviceGetMemoryInfo=mem,
        nvmlDeviceGetClockInfo=lambda i, kind: 1755,
        nvmlDeviceGetMaxClockInfo=lambda i, kind: 1980,
    )


def test_detect_gpus_reads_nvml_and_matches_datasheet_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = ["NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090", "Some Future GPU"]
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(names))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = detect_gpus()
    assert [g.name for g in gpus] == names
    assert [g.spec_key for g in gpus] == ["h100-sxm", "rtx-4090", None]
    assert gpus[0] == GpuInfo(0, "NVIDIA H100 80GB HBM3", 80 * 1024**3, 1755, 1980, "h100-sxm")

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [g.index for g in detect_gpus()] == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-0002")
    assert [g.index for g in detect_gpus()] == [2]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus() == []


def test_detect_cpu() -> None:
    model, cores, ram = detect_cpu()
    assert model
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert ram > 256 * 1024**2


# ---------------------------------------------------------------------------------------------
# Measurement (CPU)


@pytest.fixture(scope="module")
def cpu_profile() -> HardwareProfile:
    return measure("cpu", seconds=1.0)


def test_measure_cpu_gives_positive_throughput(cpu_profile: HardwareProfile) -> None:
    p = cpu_profile
    assert p.measured and p.device == "cpu" and p.gpu_count == 0
    assert p.matmul_flops["fp32"] > 1e8  # any CPU of this century does > 0.1 GFLOP/s
    assert p.bandwidth_bytes_per_s is not None and p.bandwidth_bytes_per_s > 1e8
    assert {"fp32", "bf16"} <= set(p.matmul_flops)
    assert all(n >= 128 for n in p.matmul_sizes.values())
    assert p.device_memory_bytes == p.memory_bytes > 0
    assert p.torch_version and p.python_version and p.created_at
    assert p.datasheet is None
    assert p.measure_seconds is not None and p.measure_seconds < 10


def test_measured_cpu_peak_uses_measurements_only(cpu_profile: HardwareProfile) -> None:
    p = cpu_profile
    assert p.peak("fp32") == p.matmul_flops["fp32"]
    assert p.peak("bfloat16") == p.peak("bf16") == p.matmul_flops["bf16"]
    assert p.peak_source("fp32") == "measured"
    assert p.peak("tf32") is None and p.peak_source("tf32") is None  # a CPU has no datasheet
    assert p.bandwidth() == p.bandwidth_bytes_per_s
    assert p.devices == 1


def test_measure_stays_within_its_budget() -> None:
    pytest.importorskip("torch")
    start = time.perf_counter()
    p = measure("cpu", seconds=0.5)
    assert time.perf_counter() - start < 5.0
    assert p.matmul_flops["fp32"] > 0


def test_measure_rejects_a_device_that_is_not_there() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(UserError, match="--device 'tpu'"):
        measure("tpu", seconds=0.1)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            measure("cuda", seconds=0.1)


def test_summary_rows_are_label_value_strings(cpu_profile: HardwareProfile) -> None:
    rows = cpu_profile.summary_rows()
    assert rows and all(isinstance(a, str) and isinstance(b, str) for a, b in rows)
    labels = [a for a, _ in rows]
    assert "Peak fp32" in labels and "Memory bandwidth" in labels and "CPU" in labels
    ref_labels = [a for a, _ in reference_profile("a100").summary_rows()]
    assert "Peak bf16" in ref_labels and "Note" in ref_labels


# ---------------------------------------------------------------------------------------------
# Serialisation


def test_to_dict_from_dict_round_trip(cpu_profile: HardwareProfile) -> None:
    for p in (cpu_profile, reference_profile("h100", count=8)):
        d = json.loads(json.dumps(p.to_dict()))
        q = HardwareProfile.from_dict(d)
        assert q == p
        assert q.peak("fp32") == p.peak("fp32")


def test_from_dict_ignores_unknown_keys_and_rejects_missing_ones(
    cpu_profile: HardwareProfile,
) -> None:
    d = cpu_profile.to_dict()
    d["from_the_future"] = 1
    d["gpus"] = [{"index": 0, "name": "x", "memory_bytes": 1, "also_new": 2}]
    assert HardwareProfile.from_dict(d).gpus == [GpuInfo(0, "x", 1)]
    del d["cpu_model"]
    with pytest.raises(TypeError):
        HardwareProfile.from_dict(d)


# ---------------------------------------------------------------------------------------------
# Cache


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BUDGETLM_CACHE_DIR", str(tmp_path))
    return tmp_path


def _counting_measure(profile: HardwareProfile, calls: list[int]):
    def fake(device: str | None = None, seconds: float = 1.0, progress=None) -> HardwareProfile:
        calls.append(1)
        return HardwareProfile.from_dict(profile.to_dict())

    return fake


def test_cache_path_honours_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BUDGETLM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_path() == tmp_path / "xdg" / "budgetlm" / "profile.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_path() == Path.home() / ".cache" / "budgetlm" / "profile.json"
    monkeypatch.setenv("BUDGETLM_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_path() == tmp_path / "mine" / "profile.json"


def test_profile_cache_lives_under_xdg_cache_home_unless_budgetlm_cache_dir_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpu_profile: HardwareProfile
) -> None:
    xdg, mine = tmp_path / "xdg", tmp_path / "mine"
    monkeypatch.delenv("BUDGETLM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    calls: list[int] = []
    monkeypatch.setattr(profile_cache, "measure", _counting_measure(cpu_profile, calls))
    first = load_profile()
    assert calls == [1]
    assert (xdg / "budgetlm" / "profile.json").is_file()
    assert cached_profile() == first

    monkeypatch.setenv("BUDGETLM_CACHE_DIR", str(mine))
    assert cached_profile() is None  # the XDG cache is not consulted
    load_profile()
    assert calls == [1, 1]
    assert (mine / "profile.json").is_file()
    assert not (mine / "budgetlm").exists()
    saved = json.loads((xdg / "budgetlm" / "profile.json").read_text())
    assert len(saved["profiles"]) == 1  # the XDG file was left alone


def test_load_profile_measures_once_then_reads_the_cache(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch, cpu_profile: HardwareProfile
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(profile_cache, "measure", _counting_measure(cpu_profile, calls))
    assert cached_profile() is None
    first = load_profile()
    assert calls == [1]
    assert (cache_dir / "profile.json").exists()
    assert [p.name for p in cache_dir.iterdir()] == ["profile.json"]  # no temp files left

    def boom(*args: object, **kwargs: object) -> HardwareProfile:
        raise AssertionError("measured although a cached profile exists")

    monkeypatch.setattr(profile_cache, "measure", boom)
    assert load_profile() == first
    assert cached_profile() == first

    monkeypatch.setattr(profile_cache, "measure", _counting_measure(cpu_profile, calls))
    load_profile(refresh=True)
    assert calls == [1, 1]


def test_cache_is_stale_when_the_machine_changes(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch, cpu_profile: HardwareProfile
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(profile_cache, "measure", _counting_measure(cpu_profile, calls))
    load_profile()
    assert cached_profile() is not None
    monkeypatch.setattr(profile_cache, "installed_torch_version", lambda: "99.0")
    assert cached_profile() is None
    load_profile()
    assert calls == [1, 1]
    saved = json.loads((cache_dir / "profile.json").read_text())
    assert len(saved["profiles"]) == 2  # one entry per machine key


@pytest.mark.parametrize("text, why", [
    ("{ not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"version": 1, "profiles": 7}', "no 'profiles' mapping"),
    ("KEY", "the entry for this machine is invalid"),
])
def test_corrupt_profile_cache_is_reported_and_remeasured(
    text: str, why: str, cache_dir: Path, monkeypatch: pytest.MonkeyPatch,
    cpu_profile: HardwareProfile, capsys: pytest.CaptureFixture[str],
) -> None:
    if text == "KEY":  # a valid file whose entry for this machine is garbage
        text = json.dumps({"version": 1, "profiles": {
            profile_cache.cache_key(): {**cpu_profile.to_dict(), "cpu_cores": "many"}}})
    path = cache_dir / "profile.json"
    path.write_text(text)
    assert cached_profile() is None
    calls: list[int] = []
    monkeypatch.setattr(profile_cache, "measure", _counting_measure(cpu_profile, calls))
    measured = load_profile()
    assert calls == [1] and cached_profile() == measured  # measured again and rewritten
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # said once, although read three times
    assert lines[0].startswith(f"note: profile cache {path} is unusable") and why in lines[0]
    assert "measured again" in lines[0]
    assert json.loads(path.read_text())["profiles"]  # a valid cache again


def test_stale_or_missing_profile_cache_is_not_reported(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch, cpu_profile: HardwareProfile,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(profile_cache, "measure", _counting_measure(cpu_profile, calls))
    load_profile()
    (cache_dir / "profile.json").write_text(json.dumps({"version": 0, "profiles": {}}))
    load_profile()
    assert calls == [1, 1]
    assert capsys.readouterr().err == ""


def test_cached_profile_does_not_import_torch(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch, cpu_profile: HardwareProfile
) -> None:
    monkeypatch.setattr(profile_cache, "measure", _counting_measure(cpu_profile, []))
    load_profile()
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "import budgetlm.hardware as h\n"
        "assert 'torch' not in sys.modules, 'import'\n"
        "p = h.cached_profile()\n"
        "assert p is not None and p.measured, 'cache miss'\n"
        "assert 'torch' not in sys.modules, 'cached_profile'\n"
        "assert h.load_profile() == p\n"
        "assert 'torch' not in sys.modules, 'load_profile'\n"
        "print(time.perf_counter() - t)\n"
    )
    env = {**os.environ, "BUDGETLM_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 1.0  # import + cache read, excluding interpreter start


# ---------------------------------------------------------------------------------------------
# Reference (datasheet) profiles


def test_reference_profile_uses_datasheet_peaks() -> None:
    p = reference_profile("h100")
    assert p.measured is False and p.device == "cuda" and p.gpu_count == 1
    assert p.peak("bf16") == 989e12
    assert p.peak("fp32") == 66.9e12
    assert p.peak_source("bf16") == "datasheet"
    assert p.device_memory_bytes == 80 * GiB
    assert p.bandwidth() == pytest.approx(3.35e12)
    assert any(n.startswith("unmeasured: datasheet peak") for n in p.notes)
    assert p.spec_key == "h100-sxm"


def test_reference_profile_counts_gpus_and_knows_missing_dtypes() -> None:
    p = reference_profile("Tesla T4", count=4)
    assert p.gpu_count == 4 and len(p.gpus) == 4 and p.devices == 4
    assert p.peak("fp16") == 65e12
    assert p.peak("bf16") is None  # Turing has no bf16
    with pytest.raises(UserError, match="--gpus 0"):
        reference_profile("h100", count=0)
    with pytest.raises(UserError, match="unknown GPU"):
        reference_profile("h1000")
