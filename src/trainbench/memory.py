"""Peak memory: one meaning per device kind, the same for every backend (docs/measurement.md).

- On the CPU, where the model lives in host memory: how much the process's resident set grew at
  its peak during the run (peak RSS during build + steps - RSS before them). Measured by the core
  for every backend alike; the framework's import is before the baseline, so it does not count.
- On accelerators: the framework's peak device allocation (torch.cuda.max_memory_allocated,
  JAX's peak_bytes_in_use), which the backend reports.

A backend's own figure (e.g. XLA's buffer plan on the CPU) stays in the record beside it under
its own name (`memory.framework`), never in `memory.peak_bytes`.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

MEASURES = {"cpu": "host_rss_growth"}
"""What memory.peak_bytes measures per device kind; every other kind: DEVICE_MEASURE."""
DEVICE_MEASURE = "device_peak_allocation"
LABELS = {"host_rss_growth": "RSS growth", DEVICE_MEASURE: "device peak"}
"""How the report names each measure next to its figure."""


def measure_for(device_kind: str) -> str:
    """The meaning of peak memory on devices of `device_kind` (cpu | gpu | tpu | neuron)."""
    return MEASURES.get(device_kind, DEVICE_MEASURE)


def _status_kib(field: str) -> int | None:
    """A "VmRSS"/"VmHWM" line of /proc/self/status in bytes; None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _lifetime_peak_rss() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0:
    /proc/self/clear_refs, value 5); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssGrowth:
    """The process's peak RSS growth from its creation to `result()`."""

    def __init__(self) -> None:
        self.reset = _reset_peak_rss()
        self.start = _status_kib("VmRSS")

    def result(self) -> tuple[int | None, str]:
        """(bytes, how it was measured)."""
        if self.start is None:
            return None, "no /proc/self/status here: the process's RSS cannot be read"
        if self.reset:
            peak = _status_kib("VmHWM")
            how = "VmHWM reset at the start"
        else:
            peak = _lifetime_peak_rss()
            how = ("the process's lifetime peak (its peak mark could not be reset), so an upper "
                   "bound")
        if peak is None:
            return None, "no VmHWM in /proc/self/status"
        return max(0, peak - self.start), (f"host process peak RSS during build and steps minus "
                                           f"its RSS before them ({how})")


def record(device_kind: str, host: tuple[int | None, str],
           framework: tuple[int | None, str]) -> dict[str, Any]:
    """The record's memory section: peak_bytes in the meaning of `device_kind` (host RSS growth
    on the CPU, else the framework's device figure) and the framework's figure under its name."""
    measure = measure_for(device_kind)
    chosen = host if measure == "host_rss_growth" else framework
    return {"peak_bytes": chosen[0], "kind": chosen[1], "measure": measure,
            "framework": {"bytes": framework[0], "kind": framework[1]}}
