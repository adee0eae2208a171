"""The measured CPU peak, cached per machine so that MFU holds still from run to run.

A CPU has no datasheet peak: trainbench measures one with a matmul probe (trainbench.hardware).
Probing in every run made MFU move with the probe's noise, and cost seconds per run of a sweep.
So the first run on a machine probes once and stores the result in a JSON file keyed by the
machine's fingerprint (host, CPU model, usable cores, thread settings, the backend's framework
versions), the backend and the dtype; later runs, and every run of a sweep, read it. Each
record cites the file and when and under what load the probe ran.

Where: $TRAINBENCH_CACHE_DIR, else $XDG_CACHE_HOME/trainbench, else ~/.cache/trainbench.
TRAINBENCH_REMEASURE_PEAK=1 probes again and replaces the entry (after a change the
fingerprint cannot see, e.g. the machine was busy when it was measured).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any, Callable

from trainbench import hardware

CACHE_ENV = "TRAINBENCH_CACHE_DIR"
REMEASURE_ENV = "TRAINBENCH_REMEASURE_PEAK"
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS")
"""Environment variables that change how many cores a matmul uses, hence its rate."""


def cache_dir() -> Path:
    """Where measured peaks are kept (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "trainbench"


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_fingerprint(versions: dict[str, str]) -> dict[str, Any]:
    """What a measured CPU peak depends on: host, CPU model and architecture, usable cores,
    thread settings, and the versions of the framework that ran the probe."""
    return {"host": socket.gethostname(), "cpu": hardware.cpu_name(),
            "arch": platform.machine(), "usable_cpus": usable_cpus(),
            "threads_env": {k: os.environ[k] for k in _THREAD_VARS if k in os.environ},
            "versions": dict(sorted(versions.items()))}


def cache_path(directory: Path, backend: str, dtype: str, fingerprint: dict[str, Any]) -> Path:
    """The entry of one backend and dtype on the machine `fingerprint` describes."""
    digest = hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return directory / f"cpu_peak_{backend}_{dtype}_{digest}.json"


def _read(path: Path, fingerprint: dict[str, Any]) -> hardware.PeakInfo | None:
    """The cached peak, or None when absent, unreadable or from another machine."""
    try:
        entry = json.loads(path.read_text())
        if entry["fingerprint"] != fingerprint:
            return None
        peak = hardware.PeakInfo(**entry["peak"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not peak.flops_per_s or peak.method != "measured":
        return None
    return peak


def _write(path: Path, fingerprint: dict[str, Any], peak: hardware.PeakInfo) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "peak": dataclasses.asdict(peak)},
                              indent=2))
    os.replace(tmp, path)  # atomic: a reader sees the old entry or the new one


def cpu_peak(backend: str, dtype: str, versions: dict[str, str],
             probe: Callable[[], hardware.PeakInfo], directory: Path | None = None,
             remeasure: bool | None = None) -> hardware.PeakInfo:
    """The measured CPU peak of `backend` for `dtype`: the cached one, or `probe()`'s, stored.

    Processes that ask at once (a parallel sweep, the ranks of a torchrun) wait on a file lock
    while one of them probes, so the probe runs alone and once. The returned PeakInfo's probe
    dict says when and under what load it was measured, and which cache file holds it. A probe
    that finds no peak (flops_per_s None) is returned and not cached.
    """
    directory = cache_dir() if directory is None else directory
    if remeasure is None:
        remeasure = os.environ.get(REMEASURE_ENV, "") not in ("", "0")
    fingerprint = machine_fingerprint(versions)
    path = cache_path(directory, backend, dtype, fingerprint)
    directory.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = None if remeasure else _read(path, fingerprint)
        if cached is not None:
            cached.probe = {**(cached.probe or {}), "cache_hit": True}
            return cached
        load_before = os.getloadavg()[0]
        measured_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        peak = probe()
        if not peak.flops_per_s:
            return peak
        peak.probe = {**(peak.probe or {}), "measured_at": measured_at,
                      "load_avg_1min_before_after": [load_before, os.getloadavg()[0]],
                      "usable_cpus": usable_cpus(), "cache_file": str(path)}
        _write(path, fingerprint, peak)
        peak.probe["cache_hit"] = False
        return peak
