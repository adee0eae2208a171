"""Time each NKI kernel, forward and backward, on one NeuronCore at a model preset's shapes.

    python scripts/bench_nki.py compile --dir neff/                  # NKI environment, on Trainium
    python scripts/bench_nki.py time --dir neff/ --device trn2 --out bench.json   # nrtpy environment

Why two steps. The current `nki` package (NKI 0.3+, Neuron 2.29+) exposes `nki.jit` and
`nki.simulate` only; the `nki.benchmark` decorator belonged to the legacy `neuronxcc.nki`
namespace, unsupported since Neuron 2.28. Kernel-level timing is now: run the `nki.jit` kernel on
NumPy inputs with NKI_ARTIFACTS_DIR set before `nki` is imported, which keeps the compiled NEFF,
then `nrtpy.NrtpyModel.load_from_neff(neff).benchmark(inputs, warmup_iter, benchmark_iter,
mode="device")`, whose BenchmarkResult holds each timed iteration's NeuronCore time
(`durations_ms`). AWS's nrtpy set-up page says the `nrtpy` and `nki` wheels cannot share one
Python environment, hence `compile` (one subprocess per kernel, since NKI_ARTIFACTS_DIR is read
at import) and `time`. Without the package a step needs, or without a Neuron device, a step says
what is missing and exits with status 1 before doing anything: the emulator is never timed.

Shapes come from --model (default llama32_1b): rows = --tokens, d = d_model, d_ff, attention
batch 1 x --tokens with the preset's heads; cross-entropy over a --vocab-chunk slice of the
vocabulary. Inputs are seeded and regenerated identically by both steps. The backward kernels'
saved statistics (rstd, lse) and the attention output are synthetic but finite and of the right
scale: the kernels have no data-dependent control flow, so their time does not depend on them.

Achieved rates, from the p50 of the per-iteration device times:
  - memory-bound kernels (rmsnorm, swiglu, cross-entropy): GB/s = bytes of every input read once
    and every output written once / time, as a fraction of the hardware table's HBM bandwidth
    per device (chip bandwidth / devices_per_chip);
  - attention: model TFLOP/s as a fraction of the table's dense peak per device for --dtype.
    Forward: 4 B Hq T^2 D (QK^T and PV), halved when causal; backward 2.5 times that (five
    matmuls: S recomputed, dP, dV, dK, dQ). This kernel's backward issues seven (S and dP are
    recomputed again in its dQ pass), so its hardware FLOPs are 3.5 times the forward's.
A kernel launched by `nki.jit` without an LNC suffix runs at LNC=1 on one physical NeuronCore;
on Trn2 and Trn3 a table device is an LNC=2 pair of cores, so there the fraction of one core's
share is twice the printed one (recorded as `lnc` and `note` in the JSON).
"""

from __future__ import annotations

import argparse
import glob
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NEURON_SYSFS = "/sys/devices/virtual/neuron_device/neuron*"
"""One directory per Neuron device, made by the Neuron driver (Neuron sysfs user guide)."""

VERSIONED = ("nki", "neuronx-cc", "nrtpy", "ml_dtypes", "numpy")
"""Distributions whose versions each step records."""

SEED = 0


# --- what is timed: one Case per kernel ------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One array argument of a kernel (inputs by their parameter names, which the NEFF keeps)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    """"act" (the run's --dtype), "float32" or "int32"."""
    fill: float | None = None
    """A constant value; None draws standard normals (floats) or integers in [0, high)."""
    high: int = 0


@dataclass(frozen=True)
class Case:
    name: str
    module: str
    kernel: str
    inputs: tuple[Arg, ...]
    outputs: tuple[Arg, ...]
    scalars: tuple[Any, ...] = ()
    """Trailing non-array arguments, compiled into the kernel."""
    flops: float | None = None
    """Model FLOPs when the kernel is matmul-bound; None: rated by bytes moved."""


def itemsize(dtype: str, act: str) -> int:
    """Bytes per element of an Arg dtype when activations are `act`."""
    return {"bfloat16": 2, "float32": 4, "int32": 4}[act if dtype == "act" else dtype]


def moved_bytes(case: Case, act: str) -> int:
    """Bytes an ideal kernel moves: each input read once, each output written once."""
    return sum(math.prod(a.shape) * itemsize(a.dtype, act) for a in case.inputs + case.outputs)


def attention_flops(batch: int, seq: int, n_q: int, dim: int, causal: bool) -> tuple[float, float]:
    """(forward, backward) model FLOPs: 2 matmuls of 2*T*T*D per head forward, 5 backward;
    causal halves the score matrix (the FlashAttention-2 paper's convention)."""
    fwd = 4 * batch * n_q * seq * seq * dim / (2 if causal else 1)
    return fwd, 2.5 * fwd


def build_cases(d_model: int, d_ff: int, n_heads: int, n_kv_heads: int, head_dim: int,
                tokens: int, vocab_chunk: int, eps: float) -> list[Case]:
    """The eight kernels at these shapes, forward before backward."""
    n, d, f, v = tokens, d_model, d_ff, vocab_chunk
    b, t, hq, hkv, hd = 1, tokens, n_heads, n_kv_heads, head_dim
    x, w = Arg("x", (n, d), "act"), Arg("w", (1, d), "act")
    rstd = Arg("rstd", (n, 1), "float32", fill=1.0)  # 1/rms of standard normals
    a, gate_b = Arg("a", (n, f), "act"), Arg("b", (n, f), "act")
    logits, targets = Arg("logits", (n, v), "act"), Arg("targets", (n, 1), "int32", high=v)
    # lse of standard-normal logits: log(V * E[e^z]) = log V + 1/2
    ce_lse = Arg("lse", (n, 1), "float32", fill=math.log(v) + 0.5)
    q, o = Arg("q", (b, t, hq, hd), "act"), Arg("o", (b, t, hq, hd), "act")
    k, vv = Arg("k", (b, t, hkv, hd), "act"), Arg("v", (b, t, hkv, hd), "act")
    attn_lse = Arg("lse", (b, hq, t, 1), "float32", fill=math.log(t) + 0.5)
    scale = hd ** -0.5
    fwd_flops, bwd_flops = attention_flops(b, t, hq, hd, causal=True)
    nki = "trainbench.kernels.nki."
    return [
        Case("rmsnorm_fwd", nki + "rmsnorm", "rmsnorm_fwd", (x, w),
             (Arg("y", (n, d), "act"), rstd), (eps,)),
        Case("rmsnorm_bwd", nki + "rmsnorm", "rmsnorm_bwd", (Arg("dy", (n, d), "act"), x, w, rstd),
             (Arg("dx", (n, d), "act"), Arg("dw_parts", (1, d), "float32"))),  # LNC=1: one part
        Case("swiglu_fwd", nki + "swiglu", "swiglu_fwd", (a, gate_b), (Arg("out", (n, f), "act"),)),
        Case("swiglu_bwd", nki + "swiglu", "swiglu_bwd", (Arg("dout", (n, f), "act"), a, gate_b),
             (Arg("da", (n, f), "act"), Arg("db", (n, f), "act"))),
        Case("cross_entropy_fwd", nki + "cross_entropy", "cross_entropy_fwd", (logits, targets),
             (Arg("loss", (n, 1), "float32"), Arg("lse", (n, 1), "float32"))),
        Case("cross_entropy_bwd", nki + "cross_entropy", "cross_entropy_bwd",
             (logits, targets, ce_lse, Arg("row_scale", (n, 1), "float32", fill=1.0 / n)),
             (Arg("dlogits", (n, v), "act"),)),
        Case("flash_attention_fwd", nki + "attention", "flash_attention_fwd", (q, k, vv),
             (o, Arg("lse", (b, hq, t, 1), "float32")), (scale, True), fwd_flops),
        Case("flash_attention_bwd", nki + "attention", "flash_attention_bwd",
             (q, k, vv, o, Arg("do", (b, t, hq, hd), "act"), attn_lse),
             (Arg("dq", q.shape, "act"), Arg("dk", k.shape, "act"), Arg("dv", vv.shape, "act")),
             (scale, True), bwd_flops),
    ]


def make_inputs(case: Case, act: str) -> dict[str, np.ndarray]:
    """The case's input arrays, the same in every process (seeded by case name)."""
    rng = np.random.default_rng([SEED, *case.name.encode()])
    out = {}
    for a in case.inputs:
        if a.dtype == "int32":
            arr = rng.integers(0, a.high, a.shape, dtype=np.int32)
        elif a.fill is not None:
            arr = np.full(a.shape, a.fill, np.float32)
        else:
            arr = rng.standard_normal(a.shape, np.float32)
        if a.dtype == "act" and act == "bfloat16":
            import ml_dtypes  # NumPy has no bfloat16; the Neuron packages use ml_dtypes' type

            arr = arr.astype(ml_dtypes.bfloat16)
        out[a.name] = arr
    return out


def latency_summary(durations_ms: list[float]) -> dict[str, float]:
    """p50, p99 (linear interpolation between order statistics), mean, min and max, in ms."""
    d = np.asarray(durations_ms, dtype=np.float64)
    if d.size == 0 or not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise ValueError(f"durations_ms={durations_ms!r}: need at least one positive time")
    p50, p99 = np.percentile(d, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "mean_ms": float(d.mean()),
            "min_ms": float(d.min()), "max_ms": float(d.max()), "iterations": int(d.size)}


def achieved(case: Case, act: str, ms: float, peak_flops: float | None,
             bandwidth_bytes_s: float | None) -> dict[str, Any]:
    """Rate at `ms` per call, and its fraction of the per-device limit (None if unknown)."""
    if case.flops is not None:
        per_s, limit, unit, scale = case.flops / (ms * 1e-3), peak_flops, "TFLOP/s", 1e12
    else:
        per_s, limit, unit = moved_bytes(case, act) / (ms * 1e-3), bandwidth_bytes_s, "GB/s"
        scale = 1e9
    return {"rate": per_s / scale, "unit": unit, "fraction": None if not limit else per_s / limit}


# --- environment ------------------------------------------------------------------------------------


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def environment() -> dict[str, Any]:
    return {"command": shlex.join([sys.executable, *sys.argv]), "python": platform.python_version(),
            "host": platform.node(), "versions": versions(),
            "neuron_devices": len(glob.glob(NEURON_SYSFS)),
            "neuron_env": {k: v for k, v in os.environ.items() if k.startswith(("NEURON_", "NKI_"))},
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _nki_lack() -> str | None:
    """Why the real `nki` is unusable (absent, or PyPI's placeholder), else None."""
    from trainbench.kernels.nki._api import real_nki

    found = real_nki()
    return None if isinstance(found, tuple) else found


def _installed_lack(package: str) -> str | None:
    if importlib.util.find_spec(package) is None:
        return f"the `{package}` package is not installed"
    return None


PACKAGE_CHECKS = {"nki": _nki_lack}
"""Packages with a check beyond "importable" (a placeholder `nki` must not pass)."""


def missing(package: str, step: str) -> str | None:
    """One line naming what `step` lacks here (the package, a Neuron device), or None."""
    lacks = []
    lack = PACKAGE_CHECKS.get(package, lambda: _installed_lack(package))()
    if lack:
        lacks.append(f"{lack} (AWS's pip index, pip.repos.neuron.amazonaws.com)")
    if not glob.glob(NEURON_SYSFS):
        lacks.append(f"no Neuron device ({NEURON_SYSFS} does not exist)")
    if not lacks:
        return None
    return (f"bench_nki.py {step} needs a Trainium instance: " + "; ".join(lacks)
            + ". Nothing was timed (the NKI emulator is never timed; kernel correctness on the "
            "CPU is tests/test_nki_kernels.py).")


# --- step 1: compile (NKI environment) ------------------------------------------------------------


def compile_all(args: argparse.Namespace, cases: list[Case]) -> int:
    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for case in cases:
        case_dir = root / case.name
        case_dir.mkdir(exist_ok=True)
        env = {**os.environ, "NKI_ARTIFACTS_DIR": str(case_dir)}
        proc = subprocess.run([sys.executable, __file__, "compile-one", case.name,
                               *_shape_args(args)], env=env, capture_output=True, text=True)
        neffs = sorted(glob.glob(str(case_dir / "**" / "*.neff"), recursive=True))
        ok = proc.returncode == 0 and len(neffs) == 1
        error = None if ok else (f"exit {proc.returncode}, {len(neffs)} NEFF files; "
                                 + proc.stderr[-2000:])
        records.append({"case": case.name, "neff": neffs[0] if ok else None, "error": error})
        print(f"{case.name:22s} {'compiled' if ok else 'FAILED: ' + error.splitlines()[0]}")
    shapes = {k: getattr(args, k) for k in ("model", "tokens", "vocab_chunk", "dtype")}
    manifest = {"compile": environment(), "shapes": shapes, "cases": records}
    (root / "compile.json").write_text(json.dumps(manifest, indent=2, default=str))
    print(f"wrote {root / 'compile.json'}")
    return 0 if all(r["error"] is None for r in records) else 1


def compile_one(args: argparse.Namespace, cases: list[Case]) -> int:
    """Run one kernel on the NeuronCore through nki.jit (its NEFF lands in NKI_ARTIFACTS_DIR)."""
    case = next(c for c in cases if c.name == args.case)
    kernel = getattr(importlib.import_module(case.module), case.kernel)
    kernel(*make_inputs(case, args.dtype).values(), *case.scalars)
    return 0


# --- step 2: time (nrtpy environment) --------------------------------------------------------------


def time_all(args: argparse.Namespace) -> int:
    from nrtpy import NrtpyModel, NrtpyTensor

    from trainbench import hardware

    acc = hardware.lookup(args.device)
    if acc is None:
        names = ", ".join(a.name for a in hardware.accelerators().values() if a.vendor == "AWS")
        print(f"--device={args.device!r} is not in trainbench's hardware table; AWS entries: "
              f"{names}", file=sys.stderr)
        return 2
    manifest = json.loads((Path(args.dir) / "compile.json").read_text())
    shapes = argparse.Namespace(**manifest["shapes"])
    act = shapes.dtype
    cases = {c.name: c for c in cases_for(shapes)}
    peak = acc.peak_flops_per_device(act)
    bandwidth = acc.memory_bandwidth_gbps * 1e9 / acc.devices_per_chip
    lnc = int(manifest["compile"]["neuron_env"].get("NEURON_LOGICAL_NC_CONFIG", 1))
    print(f"{acc.name}: per device {bandwidth / 1e9:g} GB/s, dense {act} "
          f"{'-' if peak is None else f'{peak / 1e12:g}'} TFLOP/s ({acc.unit}); kernels at LNC={lnc}")
    print(f"{'kernel':22s} {'p50 ms':>9s} {'p99 ms':>9s} {'rate':>10s} {'':8s} {'of peak':>7s}")
    results = []
    for rec in manifest["cases"]:
        row: dict[str, Any] = {"case": rec["case"], "error": rec["error"]}
        if rec["neff"] is not None:
            case = cases[rec["case"]]
            try:
                model = NrtpyModel.load_from_neff(rec["neff"])
                arrays = make_inputs(case, act)
                if set(model.input_tensors_info) != set(arrays):
                    raise RuntimeError(f"NEFF inputs {sorted(model.input_tensors_info)} are not the "
                                       f"kernel's array parameters {sorted(arrays)}")
                inputs = {k: NrtpyTensor.from_numpy(v, name=k) for k, v in arrays.items()}
                stats = model.benchmark(inputs=inputs, warmup_iter=args.warmup,
                                        benchmark_iter=args.iters, mode="device")
                row |= latency_summary(list(stats.durations_ms))
                row |= achieved(case, act, row["p50_ms"], peak, bandwidth)
                row |= {"bytes": moved_bytes(case, act), "flops": case.flops}
            except Exception as err:  # one kernel failing must not hide the others' figures
                row["error"] = f"{type(err).__name__}: {err}"
        results.append(row)
        if row["error"]:
            print(f"{row['case']:22s} FAILED: {row['error'].splitlines()[0]}")
        else:
            frac = "" if row["fraction"] is None else f"{100 * row['fraction']:6.1f}%"
            print(f"{row['case']:22s} {row['p50_ms']:9.4f} {row['p99_ms']:9.4f} "
                  f"{row['rate']:10.1f} {row['unit']:8s} {frac:>7s}")
    if args.out:
        record = {"compile": manifest["compile"], "time": environment(), "shapes": vars(shapes),
                  "hardware_entry": acc.name, "hardware_source": acc.source, "lnc": lnc,
                  "per_device_peak_flops": peak, "per_device_bandwidth_bytes_s": bandwidth,
                  "timing": {"api": "nrtpy.NrtpyModel.benchmark", "mode": "device",
                             "warmup_iter": args.warmup, "benchmark_iter": args.iters},
                  "flops_convention": "attention: causal half counted; backward 2.5 x forward",
                  "note": "fraction is of one table device; at LNC=1 on Trn2/Trn3 a kernel uses "
                          "half of one (one of its two physical NeuronCores)",
                  "results": results}
        Path(args.out).write_text(json.dumps(record, indent=2))
        print(f"wrote {args.out}")
    return 0 if all(r["error"] is None for r in results) else 1


# --- command line ------------------------------------------------------------------------------------


def _shape_args(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model, "--tokens", str(args.tokens), "--vocab-chunk",
            str(args.vocab_chunk), "--dtype", args.dtype]


def cases_for(args: argparse.Namespace) -> list[Case]:
    from trainbench import model

    cfg = model.preset(args.model)
    return build_cases(cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                       args.tokens, args.vocab_chunk, cfg.norm_eps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    comp = steps.add_parser("compile", help="compile and run each kernel once, keeping its NEFF")
    one = steps.add_parser("compile-one", help="(internal) one kernel, in its own process")
    one.add_argument("case")
    for p in (comp, one):
        p.add_argument("--model", default="llama32_1b", help="trainbench model preset")
        p.add_argument("--tokens", type=int, default=4096, help="rows; attention sequence length "
                       "is this too (batch 1)")
        p.add_argument("--vocab-chunk", type=int, default=32768)
        p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    comp.add_argument("--dir", required=True, help="where the NEFFs and compile.json go")
    tim = steps.add_parser("time", help="time each compiled NEFF with nrtpy")
    tim.add_argument("--dir", required=True, help="the compile step's --dir")
    tim.add_argument("--device", required=True,
                     help="hardware table name or alias of this machine, e.g. trn2")
    tim.add_argument("--warmup", type=int, default=10)
    tim.add_argument("--iters", type=int, default=100)
    tim.add_argument("--out", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()

    package = "nrtpy" if args.step == "time" else "nki"
    lack = missing(package, args.step)
    if lack:
        print(lack, file=sys.stderr)
        return 1
    if args.step == "time":
        return time_all(args)
    cases = cases_for(args)
    return compile_all(args, cases) if args.step == "compile" else compile_one(args, cases)


if __name__ == "__main__":
    sys.exit(main())
