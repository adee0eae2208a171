"""Measure the two ceilings every later GPU figure is divided by, and print the device's facts.

    python3 scripts/gpu_ceilings.py --out ceilings.json               # on a CUDA GPU
    python3 scripts/gpu_ceilings.py --device cpu --gemm-n 256 --copy-mb 16   # the code path only

- MAMF ("maximum achievable matmul FLOP/s", Bekman's term): an n x n x n bfloat16 torch.matmul
  on random data (never zeros: they run faster than real data), 2 n^3 FLOPs per product. A slice
  of the product is first checked against float32 arithmetic on the same inputs
  (relative Frobenius error <= 1e-2, bfloat16 output rounding is ~4e-3).
- Copy bandwidth: one device-to-device copy of --copy-mb megabytes, counting bytes read plus
  bytes written (2 x size), as the vendor's and KINDS-style figures do; the copy is checked equal.

Each is warmed up, then timed --repeats times one call at a time (CUDA events on a GPU, the host
clock after the work on the CPU); the JSON holds every time, the median and the best. Beside
them, the hardware table's datasheet figures for the device, and each ceiling as a fraction.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable


def versions() -> dict[str, str | None]:
    """Installed versions of the stacks the campaign uses, read without importing them."""
    out: dict[str, str | None] = {}
    for dist in ("torch", "triton", "jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax",
                 "liger-kernel", "hydra-core", "trainbench"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def device_facts(torch: Any, device: str) -> dict[str, Any]:
    facts: dict[str, Any] = {"python": sys.version.split()[0], "versions": versions(),
                             "cuda_runtime": torch.version.cuda}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        facts.update(name=p.name, compute_capability=f"{p.major}.{p.minor}",
                     multiprocessors=p.multi_processor_count, memory_bytes=p.total_memory,
                     l2_bytes=getattr(p, "L2_cache_size", None),
                     device_count=torch.cuda.device_count())
    else:
        facts.update(name="cpu")
    return facts


def time_ms(fn: Callable[[], object], torch: Any, device: str, warmup: int,
            repeats: int) -> list[float]:
    """Milliseconds of each of `repeats` calls of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def summarize(times_ms: list[float], work: float, unit_scale: float) -> dict[str, Any]:
    """Median and best rate of `work` units per call, scaled (e.g. 1e12 for TFLOP/s)."""
    median, best = statistics.median(times_ms), min(times_ms)
    return {"times_ms": times_ms, "median_ms": median, "best_ms": best,
            "median": work / (median / 1e3) / unit_scale, "best": work / (best / 1e3) / unit_scale}


def measure_gemm(torch: Any, device: str, n: int, warmup: int, repeats: int) -> dict[str, Any]:
    a = torch.randn(n, n, device=device).to(torch.bfloat16)
    b = torch.randn(n, n, device=device).to(torch.bfloat16)
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    torch.matmul(a, b, out=out)
    rows = min(n, 64)
    ref = a[:rows].float() @ b.float()
    rel_err = float(torch.linalg.norm(out[:rows].float() - ref) / torch.linalg.norm(ref))
    if not rel_err <= 1e-2:  # also catches NaN
        raise RuntimeError(f"bf16 matmul is wrong: relative error {rel_err:.3g} > 1e-2")
    stats = summarize(time_ms(lambda: torch.matmul(a, b, out=out), torch, device, warmup, repeats),
                      2 * n**3, 1e12)
    return {"dtype": "bfloat16", "n": n, "flops_per_call": 2 * n**3, "rel_err_vs_fp32": rel_err,
            "tflops_median": stats.pop("median"), "tflops_best": stats.pop("best"), **stats}


def measure_copy(torch: Any, device: str, megabytes: int, warmup: int,
                 repeats: int) -> dict[str, Any]:
    size = megabytes * 10**6
    src = torch.empty(size, dtype=torch.uint8, device=device).random_(0, 256)
    dst = torch.empty_like(src)
    stats = summarize(time_ms(lambda: dst.copy_(src), torch, device, warmup, repeats),
                      2 * size, 1e9)
    if not torch.equal(dst, src):
        raise RuntimeError("device copy is wrong: destination differs from source")
    return {"bytes": size, "counting": "bytes read + bytes written (2 x size)",
            "gbps_median": stats.pop("median"), "gbps_best": stats.pop("best"), **stats}


def datasheet(name: str) -> dict[str, Any] | None:
    """The hardware table's entry for the device, if trainbench is importable and has one."""
    try:
        from trainbench import hardware
    except ImportError:
        return None
    acc = hardware.lookup(name)
    if acc is None:
        return None
    peak = acc.peak_flops_per_device("bf16")
    return {"entry": acc.name, "bf16_tflops": peak / 1e12 if peak else None,
            "memory_bandwidth_gbps": acc.memory_bandwidth_gbps, "source": acc.source}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--gemm-n", type=int, default=8192, help="matrix side (default 8192)")
    parser.add_argument("--copy-mb", type=int, default=4000,
                        help="bytes copied, in MB (default 4000: far beyond the L2)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    for flag in ("gemm_n", "copy_mb", "repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be at least 1")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_ceilings.py: --device cuda but torch.cuda.is_available() is False "
              "(use --device cpu to exercise the code path)", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    facts = device_facts(torch, args.device)
    print(json.dumps(facts, indent=1))
    result: dict[str, Any] = {"facts": facts,
                              "gemm": measure_gemm(torch, args.device, args.gemm_n, args.warmup,
                                                   args.repeats),
                              "copy": measure_copy(torch, args.device, args.copy_mb, args.warmup,
                                                   args.repeats)}
    sheet = datasheet(facts["name"])
    result["datasheet"] = sheet
    g, c = result["gemm"], result["copy"]
    print(f"bf16 GEMM {g['n']}^3: {g['tflops_median']:.1f} TFLOP/s median, "
          f"{g['tflops_best']:.1f} best (rel. error vs fp32 {g['rel_err_vs_fp32']:.1e})")
    print(f"device copy {c['bytes'] / 1e9:.2f} GB: {c['gbps_median']:.0f} GB/s median, "
          f"{c['gbps_best']:.0f} best (read + written)")
    if sheet and sheet["bf16_tflops"]:
        print(f"against the datasheet ({sheet['entry']}): GEMM "
              f"{g['tflops_median'] / sheet['bf16_tflops']:.1%} of {sheet['bf16_tflops']:g} "
              f"TFLOP/s, copy {c['gbps_median'] / sheet['memory_bandwidth_gbps']:.1%} of "
              f"{sheet['memory_bandwidth_gbps']:g} GB/s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
