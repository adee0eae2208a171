"""How still the CPU peak probe holds: its run-to-run spread, against the shorter probe it replaced.

    python scripts/bench_cpu_peak.py                          # numpy, torch, jax; 5 rounds
    python scripts/bench_cpu_peak.py --frameworks torch --rounds 8 --json peak.json
    python scripts/bench_cpu_peak.py --trace 10 --rounds 3           # rate over time, per process

Each round runs the old probe (best of 5 x 0.2 s of 1024 x 1024 products) and trainbench's CPU
probe (trainbench.hardware.CPU_PROBE, 1024 x 1024, for torch and jax; NUMPY_PROBE, 2048 x 2048,
for numpy) once per framework, interleaved, on the float32 matmul each backend's probe uses.
Per probe it prints the median peak over rounds and the run-to-run spread, (max - min) / median
of the rounds' peaks. The JSON keeps every round, the load
average and the core count: on a shared machine a probe measures the share of the CPU it gets,
which is why trainbench caches the peak per machine (trainbench.peakcache).

With --trace SECONDS it instead records, `--rounds` times per framework in turn, the rate of
consecutive 0.25 s windows for SECONDS seconds in one process: whether the rate moves within a
process (the machine) or only between probes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Callable

from trainbench import hardware

OLD_PROBE = hardware.ProbeSettings(n=1024, repeats=5, min_time_s=0.2)
"""The per-run probe before trainbench cached the CPU peak."""


def numpy_product(n: int) -> Callable[[], object]:
    import numpy as np

    a, b = np.ones((n, n), np.float32), np.ones((n, n), np.float32)
    out = np.empty_like(a)
    return lambda: np.matmul(a, b, out=out)


def torch_product(n: int) -> Callable[[], object]:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty_like(a)
    return lambda: torch.matmul(a, b, out=out)


def jax_product(n: int) -> Callable[[], object]:
    import jax
    import jax.numpy as jnp

    a = b = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    return lambda: matmul(a, b).block_until_ready()


PRODUCTS = {"numpy": numpy_product, "torch": torch_product, "jax": jax_product}


def trainbench_probe(framework: str) -> hardware.ProbeSettings:
    """The probe trainbench runs for `framework`'s CPU peak (NumPy's products are larger)."""
    return hardware.NUMPY_PROBE if framework == "numpy" else hardware.CPU_PROBE


def run_to_run(peaks: list[float]) -> dict[str, float]:
    """Median of the rounds' peaks and their spread, (max - min) / median."""
    median = statistics.median(peaks)
    return {"median": median, "spread": (max(peaks) - min(peaks)) / median}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", nargs="+", default=list(PRODUCTS), choices=list(PRODUCTS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trace", type=float, default=None, metavar="SECONDS",
                        help="record each framework's rate in 0.25 s windows for SECONDS")
    parser.add_argument("--json", default=None, help="write the result to this JSON file")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error(f"--rounds {args.rounds} must be at least 2 (a spread needs two)")
    if args.trace is not None and not args.trace >= 0.5:
        parser.error(f"--trace {args.trace} must be at least 0.5 seconds (two windows)")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.trace is not None:
        return trace(args, argv)
    probes = {f: {"old": OLD_PROBE, "trainbench": trainbench_probe(f)} for f in args.frameworks}
    products = {(f, p.n): PRODUCTS[f](p.n) for f in args.frameworks for p in probes[f].values()}
    rounds: dict[str, dict[str, list[float]]] = {f: {p: [] for p in probes[f]}
                                                 for f in args.frameworks}
    load_start = list(os.getloadavg())
    for r in range(args.rounds):
        for framework in args.frameworks:
            for name, probe in probes[framework].items():
                peak = hardware.measured_peak(products[(framework, probe.n)], probe, "float32",
                                              framework, "matmul")
                rounds[framework][name].append(peak.flops_per_s)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    summary = {f: {p: run_to_run(v) for p, v in by_probe.items()}
               for f, by_probe in rounds.items()}
    for framework, by_probe in summary.items():
        for name, s in by_probe.items():
            settings = probes[framework][name]
            print(f"{framework:6} {name:10} probe ({settings.repeats} x {settings.min_time_s:g} s, "
                  f"n={settings.n}):"
                  f" median {s['median'] / 1e9:7.1f} GFLOP/s, run-to-run spread "
                  f"{100 * s['spread']:5.1f}%")
    finish(args.json, argv, "trainbench.bench_cpu_peak/1", load_start,
           probes={f: {k: dataclasses.asdict(v) for k, v in by_name.items()}
                   for f, by_name in probes.items()},
           rounds_flops_per_s=rounds, summary=summary)
    return 0


def finish(path: str | None, argv: list[str] | None, schema: str, load_start: list[float],
           **results: object) -> None:
    """Print the load average over the run; write `results` to the JSON file `path` (if any)
    with the command, the time, the machine and the load average."""
    load_end = list(os.getloadavg())
    print(f"load average {load_start[0]:.1f} -> {load_end[0]:.1f} on {os.cpu_count()} cores")
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({
        "schema": schema,
        "command": "python scripts/bench_cpu_peak.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": hardware.cpu_name(), "cpu_count": os.cpu_count(),
        "load_avg_start": load_start, "load_avg_end": load_end, **results}, indent=2))


TRACE_WINDOW_S = 0.25


def trace(args: argparse.Namespace, argv: list[str] | None) -> int:
    """--trace: consecutive windows' rates within one process, per framework and round."""
    windows = {f: hardware.ProbeSettings(n=trainbench_probe(f).n,
                                         repeats=max(2, round(args.trace / TRACE_WINDOW_S)),
                                         min_time_s=TRACE_WINDOW_S) for f in args.frameworks}
    products = {f: PRODUCTS[f](windows[f].n) for f in args.frameworks}
    traces: dict[str, list[list[float]]] = {f: [] for f in products}
    load_start = list(os.getloadavg())
    for r in range(args.rounds):
        for framework, product in products.items():
            rates = hardware.matmul_rates(product, windows[framework])
            traces[framework].append(rates)
            s = run_to_run(rates)
            print(f"{framework:6} round {r + 1}: {len(rates)} windows, "
                  f"{min(rates) / 1e9:6.1f}-{max(rates) / 1e9:6.1f} GFLOP/s, spread within the "
                  f"process {100 * s['spread']:5.1f}%; first half's best "
                  f"{max(rates[:len(rates) // 2]) / 1e9:6.1f}, second half's "
                  f"{max(rates[len(rates) // 2:]) / 1e9:6.1f}", flush=True)
    finish(args.json, argv, "trainbench.bench_cpu_peak.trace/1", load_start,
           windows={f: dataclasses.asdict(w) for f, w in windows.items()},
           traces_flops_per_s=traces)
    return 0


if __name__ == "__main__":
    sys.exit(main())
