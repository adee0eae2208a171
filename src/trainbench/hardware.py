"""Peak FLOP/s that MFU divides by (docs/measurement.md).

Accelerator peaks are data, not code: `data/hardware.yaml` holds per-chip dense datasheet
peaks with their sources, and how many framework devices one chip shows (a Trainium2 chip is
4 logical NeuronCores, a TPU7x chip 2 TensorCores), so that a per-device peak is never
confused with a per-chip one. A device the table lacks gets no peak and a note, never a
guess. On the CPU there is no datasheet: a matmul probe (`measured_peak`; NumPy's in
`measure_cpu_matmul_peak`, a backend's own framework in its `matmul_peak`) measures it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import platform
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import yaml

from trainbench import metrics
from trainbench.errors import ConfigError

PEAK_DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")
"""Keys a table entry's peak_tflops may have."""

# Framework dtype names accepted for the table's keys.
_DTYPE_ALIASES = {"float32": "fp32", "tensorfloat32": "tf32", "bfloat16": "bf16",
                  "float16": "fp16", "float8": "fp8"}

_FIELDS = ("vendor", "unit", "devices_per_chip", "peak_tflops", "memory_gb",
           "memory_bandwidth_gbps", "aliases", "source")


@dataclass(frozen=True)
class Accelerator:
    """One device kind of the hardware table; peaks are per chip, dense, in TFLOP/s."""

    name: str
    vendor: str
    unit: str
    """What one framework device is (a GPU, a TPU chip or TensorCore, a NeuronCore)."""
    devices_per_chip: int
    """Framework devices one chip shows by default."""
    peak_tflops: dict[str, float] = field(hash=False)
    """Dense datasheet peak of one chip per dtype key (PEAK_DTYPES); only what the source states."""
    memory_gb: float
    memory_bandwidth_gbps: float
    source: str
    aliases: tuple[str, ...] = ()
    """Case-insensitive regexes over framework device names."""

    def peak_flops_per_device(self, dtype: str) -> float | None:
        """FLOP/s of ONE framework device: chip peak / devices_per_chip; None if not stated."""
        tflops = self.peak_tflops.get(_dtype_key(dtype))
        return None if tflops is None else tflops * 1e12 / self.devices_per_chip

    def matches(self, device_name: str) -> bool:
        """Whether `device_name` is this entry's name or matches one of its aliases."""
        name = device_name.strip()
        return (name.casefold() == self.name.casefold()
                or any(re.search(a, name, re.IGNORECASE) for a in self.aliases))


@dataclass
class PeakInfo:
    """The peak MFU divides by, and where it came from (stored in every record)."""

    flops_per_s: float | None
    """Peak of one framework device; None leaves MFU empty."""
    dtype: str
    source: str
    method: Literal["datasheet", "measured", "unknown"]
    note: str
    probe: dict[str, Any] | None = None
    """A measured peak's probe: its settings, median and slowest repeat rate, spread over
    repeats, and (trainbench.peakcache) when, where and under what load it was measured."""


def _dtype_key(dtype: str) -> str:
    key = dtype.strip().lower()
    return _DTYPE_ALIASES.get(key, key)


def _check_entry(name: str, entry: Any) -> None:
    where = f"hardware table entry {name!r}"
    if not isinstance(entry, dict) or set(entry) != set(_FIELDS):
        have = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise ConfigError(f"{where} has fields {have}; expected exactly {sorted(_FIELDS)}")
    dpc = entry["devices_per_chip"]
    if isinstance(dpc, bool) or not isinstance(dpc, int) or dpc < 1:
        raise ConfigError(f"{where}: devices_per_chip={dpc!r} must be a positive integer")
    peaks = entry["peak_tflops"]
    if not isinstance(peaks, dict) or not peaks:
        raise ConfigError(f"{where}: peak_tflops must map at least one dtype to a peak")
    for key, value in peaks.items():
        if key not in PEAK_DTYPES:
            raise ConfigError(f"{where}: peak_tflops key {key!r} is not one of {PEAK_DTYPES}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{where}: peak_tflops.{key}={value!r} must be a positive number")
    if not isinstance(entry["source"], str) or not entry["source"].strip():
        raise ConfigError(f"{where}: source must name where the numbers come from")
    for alias in entry["aliases"]:
        try:
            re.compile(alias)
        except re.error as err:
            raise ConfigError(f"{where}: alias {alias!r} is not a regular expression: {err}")


@functools.cache
def accelerators() -> dict[str, Accelerator]:
    """The hardware table (data/hardware.yaml), by trainbench's name for each device kind."""
    text = resources.files("trainbench").joinpath("data/hardware.yaml").read_text()
    table: dict[str, Accelerator] = {}
    for name, entry in yaml.safe_load(text).items():
        _check_entry(name, entry)
        table[name] = Accelerator(
            name=name, vendor=entry["vendor"], unit=entry["unit"],
            devices_per_chip=entry["devices_per_chip"],
            peak_tflops={k: float(v) for k, v in entry["peak_tflops"].items()},
            memory_gb=float(entry["memory_gb"]),
            memory_bandwidth_gbps=float(entry["memory_bandwidth_gbps"]),
            source=" ".join(entry["source"].split()), aliases=tuple(entry["aliases"]))
    return table


def lookup(device_name: str) -> Accelerator | None:
    """The table entry whose name or alias matches `device_name`, or None.

    Two matching entries are a bug in the table, not a user error: it raises RuntimeError.
    """
    found = [a for a in accelerators().values() if a.matches(device_name)]
    if len(found) > 1:
        raise RuntimeError(f"device {device_name!r} matches several hardware table entries: "
                           + ", ".join(a.name for a in found) + "; fix data/hardware.yaml")
    return found[0] if found else None


def resolve_peak(device_name: str, dtype: str) -> PeakInfo:
    """Datasheet peak of one `device_name` device for matmuls in `dtype`; None with a note when
    the device or its peak for that dtype is not in the table."""
    key = _dtype_key(dtype)
    acc = lookup(device_name)
    if acc is None:
        return PeakInfo(None, key, "", "unknown",
                        f"device {device_name!r} is not in trainbench's hardware table; "
                        "MFU left empty")
    flops = acc.peak_flops_per_device(key)
    if flops is None:
        return PeakInfo(None, key, acc.source, "unknown",
                        f"{acc.name}: the hardware table has no dense {key} peak (it has "
                        + ", ".join(acc.peak_tflops) + "); MFU left empty")
    per_chip = acc.peak_tflops[key]
    split = f" / {acc.devices_per_chip} devices per chip" if acc.devices_per_chip > 1 else ""
    return PeakInfo(flops, key, acc.source, "datasheet",
                    f"{acc.name}: dense {key} datasheet peak {per_chip:g} TFLOP/s per chip{split}"
                    f" = {flops / 1e12:g} TFLOP/s per device; a device is one {acc.unit}")


def _blas_name() -> str:
    """NumPy's BLAS as its build config names it, or "" where it does not say."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: no mode="dicts"; the version alone must do
        return ""


@dataclass(frozen=True)
class ProbeSettings:
    """How long a matmul probe runs: `repeats` timings of n x n products, each looping products
    for at least `min_time_s` after one untimed warm-up."""

    n: int
    repeats: int
    min_time_s: float


CPU_PROBE = ProbeSettings(n=1024, repeats=15, min_time_s=0.25)
"""The CPU peak's probe for torch and jax, about 4 s, run once per machine (the result is
cached: trainbench.peakcache). Measured on this project's shared 2-core machine, quiet:
run-to-run spread (max - min) / median over 6 rounds of 3.4% (torch) and 5.1% (jax); a 10 s
probe did no better (4.9%, 3.1%: benchmarks/cpu/cpu_peak_probe_40x.json). The machine itself
moves: within one process every framework's rate swings by 6-19% over 10 s
(benchmarks/cpu/cpu_peak_trace.json). On a busy machine no probe holds still (at load average
11-13 the spread was 62-103%: benchmarks/cpu/cpu_peak_probe.json), since a probe measures the
share of the CPU it gets; what holds MFU still is the cache."""

NUMPY_PROBE = ProbeSettings(n=2048, repeats=15, min_time_s=0.25)
"""The CPU peak's probe for NumPy (the reference backend, and any backend without a probe of its
own): 2048 x 2048 products. At 1024, NumPy's OpenBLAS ran at two speeds on this machine, ~175 or
~200 GFLOP/s (at 512: ~145 or ~200), for whole rounds, most often the slow one in a process
that loads NumPy alone; at 2048 the same rounds ran at 194-204 (benchmarks/cpu/README.md)."""

ACCELERATOR_PROBE = ProbeSettings(n=8192, repeats=10, min_time_s=0.1)
"""A GPU's MAMF probe: products large enough to saturate the device."""


def matmul_rates(product: Callable[[], object], probe: ProbeSettings) -> list[float]:
    """FLOP/s of each of `probe.repeats` timings of an n x n x n matrix product (the MAMF probe
    that every backend's framework shares).

    `product()` runs one product and returns when it has finished. After one untimed warm-up
    (buffers, kernel choice, threads), each repeat loops products for at least `min_time_s`; a
    product is 2*n^3 FLOPs.
    """
    product()
    rates = []
    for _ in range(probe.repeats):
        products = 0
        start = time.perf_counter()
        while True:
            product()
            products += 1
            elapsed = time.perf_counter() - start
            if elapsed >= probe.min_time_s:
                break
        rates.append(2 * probe.n**3 * products / elapsed)
    if not all(math.isfinite(r) and r > 0 for r in rates):
        raise RuntimeError(f"matmul probe measured {rates} FLOP/s")
    return rates


def measured_peak(product: Callable[[], object], probe: ProbeSettings, dtype: str, source: str,
                  what: str) -> PeakInfo:
    """The best rate of a matmul probe as a measured PeakInfo; slower repeats measure
    interference, not the machine. `what` names the product (e.g. "jitted jnp.matmul on cpu").

    The record keeps the probe's settings and its spread over repeats: (p90 - p10) / median, as
    trainbench.metrics.step_stats defines it for step times.
    """
    rates = matmul_rates(product, probe)
    stats = metrics.step_stats(rates)
    n = probe.n
    return PeakInfo(max(rates), dtype, source, "measured",
                    f"best of {probe.repeats} repeats of {n}x{n} {dtype} {what}, each looped for "
                    f"at least {probe.min_time_s:g} s after a warm-up; 2*n^3 FLOPs per product",
                    probe={**dataclasses.asdict(probe),
                           "rate_median": stats["median"], "rate_min": stats["min"],
                           "spread": stats["spread"]})


def measure_cpu_matmul_peak(dtype: str = "float32",
                            probe: ProbeSettings | None = None) -> PeakInfo:
    """Achievable CPU matmul FLOP/s of NumPy: the best repeat of `probe` (NUMPY_PROBE when None;
    see measured_peak)."""
    probe = NUMPY_PROBE if probe is None else probe
    # Named explicitly: whether NumPy knows "bfloat16" depends on whether ml_dtypes was imported.
    if dtype not in ("float64", "float32", "float16"):
        raise ConfigError(f"dtype={dtype!r} cannot be measured by the CPU probe (NumPy matmul); "
                          "choose one of: float64, float32, float16")
    dt = np.dtype(dtype)
    for label, value in (("n", probe.n), ("repeats", probe.repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{label}={value!r} must be a positive integer")
    if not probe.min_time_s > 0:
        raise ConfigError(f"min_time_s={probe.min_time_s!r} must be positive")

    n = probe.n
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dt)
    b = rng.standard_normal((n, n)).astype(dt)
    out = np.empty((n, n), dtype=dt)
    blas = _blas_name()
    source = f"numpy {np.__version__} matmul" + (f" ({blas})" if blas else "")
    return measured_peak(lambda: np.matmul(a, b, out=out), probe, dt.name, source,
                         "NumPy matmul on this CPU")


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo "model name"), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
