"""Benchmark trainbench's Triton kernels against their peers on one CUDA GPU, forward and backward.

    python scripts/bench_kernels.py --model llama32_1b --batch 4 --seq 2048 --dtype bfloat16 --out F
    python scripts/bench_kernels.py --model llama3_8b --batch 1 --seq 8192 --ops flash_attention

Needs a CUDA GPU: on any other machine it says so and exits with status 1 before any work.

Inputs are what the model passes at --model, --batch x --seq, under --dtype (bfloat16: float32
weights under torch.autocast, as the torch backend's bf16 precision runs):
  rmsnorm               x [B*T, d] and weight float32 whatever --dtype (the residual stream and
                        the parameters stay float32; autocast leaves the custom op alone)
  rope                  q [B, T, Hq, D] and k [B, T, Hkv, D] in the compute dtype (one layer's
                        rotations: both), cos/sin [T, D] float32
  swiglu                gate, up [B*T, d_ff] in the compute dtype
  linear_cross_entropy  x [B*T, d] float32 and the head weight as the model has it: the
                        transposed view [d, V] of a float32 [V, d] parameter, under autocast
  flash_attention       q [B, T, Hq, D], k, v [B, T, Hkv, D] in the compute dtype, causal
Peers beside trainbench's Triton kernel ("triton"): the PyTorch-native op ("native"),
torch.compile of it ("compiled"), Liger-Kernel's kernel ("liger", when liger_kernel imports);
for attention FlexAttention ("flex", compiled), SDPA pinned to each backend ("sdpa_flash",
"sdpa_cudnn", "sdpa_efficient") and the flash-attn package ("flash_attn", when it imports).
A peer that cannot run these inputs is recorded as skipped with its error.

Protocol, per op and implementation:
  1. correctness gate: output and input gradients against the native op run in float32 on the
     same inputs (float64 for float32 inputs); max |err| <= tol * max |ref| with tol 2e-2 for 16-bit
     compute, 1e-3 for float32 (TF32 allowed). A failing implementation is not timed.
  2. forward: the call with autograd recording (as in training); backward: one forward kept, then
     out.backward(dy, retain_graph=True) with a precomputed dy, gradients set to None between
     calls (grad_to_none), nothing else in the timed region. Memory-bound ops are timed with
     triton.testing.do_bench_cudagraph (one CUDA graph of many calls, so launch overhead is not
     timed; an op whose backward cannot be captured falls back), the rest with do_bench (CUDA
     events); p20 / p50 / p80 of all samples are recorded, and which timer made them.
  3. peak memory: torch.cuda.max_memory_allocated over one forward + backward, above what was
     allocated before it.
Rates: memory-bound ops in GB/s (the bytes an ideal kernel moves: each input read once, each
output written once), matmul-bound ops in TFLOP/s (linear_cross_entropy: 2NdV forward, 4NdV
backward; attention: 4 B Hq T^2 D forward halved by the causal mask, 2.5x that backward), at the
p50 time, each as a fraction of a measured ceiling (a bf16 cuBLAS GEMM, a device-to-device copy)
and of the datasheet peak (trainbench's hardware table) when the device is in it.
--out writes one JSON object: the environment, the ceilings, and "rows", one flat object per
(op, impl, mode), ready for pandas.DataFrame(record["rows"]).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any, Callable

DEVICE = "cuda"
QUANTILES = (0.2, 0.5, 0.8)
MEMORY_BOUND = ("rmsnorm", "rope", "swiglu")
TOLERANCE = {"16-bit": 2e-2, "float32": 1e-3}  # max |err| / max |ref|, see the docstring
RECORD_KIND = "trainbench.kernel_bench"
SCHEMA_VERSION = 1


# --- the pure parts (tested on the CPU) -----------------------------------------------------------

@dataclass
class Ceilings:
    """Measured ceilings and the datasheet figures they stand beside (None: unknown)."""
    gemm_flops: float  # bf16 cuBLAS GEMM, FLOP/s
    copy_bytes: float  # device-to-device copy, bytes/s (read + write)
    datasheet_flops: float | None  # dense peak for the benchmark's dtype
    datasheet_bytes: float | None  # memory bandwidth


@dataclass
class Row:
    """One (op, implementation, mode) of a benchmark: a JSON row of --out."""
    op: str
    impl: str
    mode: str  # "fwd" | "bwd"
    status: str  # "ok" | "incorrect" (failed the gate, not timed) | "skipped" | "failed"
    note: str = ""
    p20_ms: float | None = None
    p50_ms: float | None = None
    p80_ms: float | None = None
    timer: str = ""  # "cudagraph" | "events"
    samples: int | None = None  # timing samples behind the quantiles
    amount: float | None = None  # bytes or FLOPs of one call
    unit: str = ""  # "GB/s" | "TFLOP/s"
    rate: float | None = None  # at p50, in `unit`
    frac_measured: float | None = None  # of the measured ceiling
    frac_datasheet: float | None = None  # of the datasheet figure
    peak_mem_bytes: int | None = None  # fwd + bwd, above the inputs
    max_err: float | None = None  # the gate's max |err| / max |ref| (worst output or gradient)


def quantile_times(samples_ms: list[float]) -> tuple[float, float, float]:
    """p20, p50, p80 of timing samples (linear interpolation, as torch.quantile)."""
    if not samples_ms:
        raise ValueError("no timing samples")
    s = sorted(samples_ms)

    def q(p: float) -> float:
        pos = p * (len(s) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return q(QUANTILES[0]), q(QUANTILES[1]), q(QUANTILES[2])


def rate_and_fractions(amount: float, ms: float, memory_bound: bool, ceilings: Ceilings
                       ) -> tuple[float, str, float, float | None]:
    """(rate in GB/s or TFLOP/s, unit, fraction of the measured ceiling, fraction of the
    datasheet figure or None) for `amount` bytes (memory-bound) or FLOPs done in `ms`."""
    if ms <= 0:
        raise ValueError(f"time {ms} ms must be positive")
    per_s = amount / (ms * 1e-3)
    measured, sheet = ((ceilings.copy_bytes, ceilings.datasheet_bytes) if memory_bound
                       else (ceilings.gemm_flops, ceilings.datasheet_flops))
    unit, scale = ("GB/s", 1e9) if memory_bound else ("TFLOP/s", 1e12)
    return per_s / scale, unit, per_s / measured, None if sheet is None else per_s / sheet


def amounts(op: str, cfg: Any, B: int, T: int, compute_bytes: int) -> tuple[float, float]:
    """(forward, backward) bytes (memory-bound ops) or FLOPs of one call at these shapes.

    Bytes count each input read once and each output written once at the dtypes the model
    passes (rmsnorm: float32 residual in and out; small tables and per-row statistics are left
    out). FLOPs count matmuls only (2 per multiply-add)."""
    N, d, D = B * T, cfg.d_model, cfg.head_dim
    table: dict[str, Callable[[], tuple[float, float]]] = {
        "rmsnorm": lambda: (2 * N * d * 4, 3 * N * d * 4),  # x, y; dy, x, dx
        "rope": lambda: (2 * N * (cfg.n_heads + cfg.n_kv_heads) * D * compute_bytes,) * 2,
        "swiglu": lambda: (3 * N * cfg.d_ff * compute_bytes,  # gate, up, out
                           5 * N * cfg.d_ff * compute_bytes),  # dout, gate, up, dgate, dup
        "linear_cross_entropy": lambda: (2 * N * d * cfg.vocab, 4 * N * d * cfg.vocab),
        "flash_attention": lambda: (2 * B * cfg.n_heads * T * T * D,  # 4 B H T^2 D / 2: causal
                                    2.5 * 2 * B * cfg.n_heads * T * T * D),
    }
    if op not in table:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(table)}")
    return table[op]()


def relative_error(got: Any, ref: Any) -> float:
    """max |got - ref| / max |ref| over two tensors (float64)."""
    g, r = got.detach().double(), ref.detach().double()
    scale = r.abs().max().item()
    return (g - r).abs().max().item() / (scale if scale > 0 else 1.0)


def make_record(env: dict[str, Any], ceilings: Ceilings, rows: list[Row]) -> dict[str, Any]:
    """The --out JSON: environment, ceilings and one flat row per (op, impl, mode)."""
    return {"kind": RECORD_KIND, "schema": SCHEMA_VERSION, **env,
            "ceilings": asdict(ceilings), "rows": [asdict(r) for r in rows]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama32_1b", help="trainbench model preset")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile and FlexAttention peers (no compile time)")
    parser.add_argument("--out", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    from trainbench import model

    if args.model not in model.preset_names():
        parser.error(f"--model {args.model!r} is not a preset; expected one of "
                     f"{', '.join(model.preset_names())}")
    for name in ("batch", "seq"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)} must be >= 1")
    return args


# --- the GPU parts --------------------------------------------------------------------------------

def _randn(*shape: int, dtype: Any, std: float = 1.0) -> Any:
    import torch

    return (torch.randn(shape, device=DEVICE, dtype=torch.float32) * std).to(dtype) \
        .requires_grad_(True)


@dataclass
class Case:
    """One op's inputs: tensors (some needing grad), extra arguments, the dtype the op computes
    in (sets the gate's tolerance and the bytes per element) and the autocast dtype."""
    tensors: list[Any]
    compute: Any
    extra: tuple = ()
    autocast: Any = None

    def grads_of(self) -> list[Any]:
        return [t for t in self.tensors if t.requires_grad]

    def restore(self, saved: list[Any]) -> None:
        """Put the inputs' values back (a peer may rotate its input in place: Liger's RoPE)."""
        import torch

        with torch.no_grad():
            for t, v in zip(self.tensors, saved):
                t.copy_(v)


def _cases(op: str, cfg: Any, B: int, T: int, dtype: Any) -> Case:
    import numpy as np
    import torch

    from trainbench import ops as reference_ops

    N, D, f32 = B * T, cfg.head_dim, torch.float32
    if op == "rmsnorm":
        return Case([_randn(N, cfg.d_model, dtype=f32), _randn(cfg.d_model, dtype=f32)], f32,
                    (cfg.norm_eps,))
    if op == "rope":
        cos, sin = (torch.from_numpy(t).to(DEVICE) for t in
                    reference_ops.rope_cos_sin(T, D, cfg.rope_theta, np.float32))
        return Case([_randn(B, T, cfg.n_heads, D, dtype=dtype),
                     _randn(B, T, cfg.n_kv_heads, D, dtype=dtype)], dtype, (cos, sin))
    if op == "swiglu":
        return Case([_randn(N, cfg.d_ff, dtype=dtype), _randn(N, cfg.d_ff, dtype=dtype)], dtype)
    if op == "linear_cross_entropy":
        x = _randn(N, cfg.d_model, dtype=f32)
        w_vd = _randn(cfg.vocab, cfg.d_model, dtype=f32, std=cfg.d_model ** -0.5)
        targets = torch.randint(0, cfg.vocab, (N,), device=DEVICE)
        return Case([x, w_vd], dtype, (targets,), None if dtype == f32 else dtype)
    return Case([_randn(B, T, cfg.n_heads, D, dtype=dtype),
                 _randn(B, T, cfg.n_kv_heads, D, dtype=dtype),
                 _randn(B, T, cfg.n_kv_heads, D, dtype=dtype)], dtype)


def _impls(op: str, compile_peers: bool) -> dict[str, Callable[..., Any]]:
    """Implementations of `op` with one calling convention: f(*case.tensors, *case.extra)
    returns one tensor, or a tuple (rope: q and k)."""
    import torch

    from trainbench.backends.torch import native
    from trainbench.kernels import triton as tk

    def ce(fn: Callable) -> Callable:  # the model passes the head as a [d, V] view
        return lambda x, w_vd, targets: fn(x, w_vd.t(), targets)

    table: dict[str, dict[str, Callable]] = {
        "rmsnorm": {"triton": tk.rmsnorm, "native": native.rmsnorm},
        "rope": {"triton": tk.rope_qk, "native": native.rope_qk},
        "swiglu": {"triton": tk.swiglu, "native": native.swiglu},
        "linear_cross_entropy": {"triton": ce(tk.linear_cross_entropy),
                                 "native": ce(native.cross_entropy)},
        "flash_attention": {"triton": tk.flash_attention, "native": native.attention},
    }
    impls = dict(table[op])
    if compile_peers:
        impls["compiled"] = torch.compile(impls["native"])
    impls.update(_liger(op))
    if op == "flash_attention":
        impls.update(_attention_peers(compile_peers))
    return impls


def _liger(op: str) -> dict[str, Callable]:
    try:
        from liger_kernel.transformers import functional as lf
    except ImportError:
        return {}

    def rope(q, k, cos, sin):  # Liger takes q, k as [B, H, T, D] views, rotated in place
        q, k = lf.liger_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2)

    return {"rmsnorm": {"liger": lambda x, w, eps: lf.liger_rms_norm(x, w, eps, in_place=False)},
            "rope": {"liger": rope},
            "swiglu": {"liger": lf.liger_swiglu},
            "linear_cross_entropy": {"liger": lambda x, w_vd, targets:
                                     lf.liger_fused_linear_cross_entropy(x, w_vd, targets)},
            }.get(op, {})


def _attention_peers(compile_peers: bool) -> dict[str, Callable]:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def bhtd(fn: Callable) -> Callable:  # [B, T, H, D] in and out around a [B, H, T, D] op
        return lambda q, k, v: fn(q.transpose(1, 2), k.transpose(1, 2),
                                  v.transpose(1, 2)).transpose(1, 2)

    def sdpa(backend: Any) -> Callable:
        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return bhtd(run)

    peers = {"sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION),
             "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
             "sdpa_efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION)}
    if compile_peers:
        import functools

        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        flex = torch.compile(flex_attention)

        @functools.cache
        def causal_mask(T: int) -> Any:  # built once per length, outside the timed calls
            return create_block_mask(lambda b, h, i, j: i >= j, None, None, T, T, device=DEVICE)

        peers["flex"] = bhtd(lambda q, k, v: flex(q, k, v, block_mask=causal_mask(q.shape[2]),
                                                  enable_gqa=True))
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return peers
    peers["flash_attn"] = lambda q, k, v: flash_attn_func(q, k, v, causal=True)  # [B, T, H, D]
    return peers


def _call(fn: Callable, case: Case) -> Any:
    import torch

    with torch.autocast(DEVICE, dtype=case.autocast, enabled=case.autocast is not None):
        return fn(*case.tensors, *case.extra)


def _outputs(fn: Callable, case: Case) -> tuple[Any, ...]:
    out = _call(fn, case)
    return out if isinstance(out, tuple) else (out,)


def _gate(fn: Callable, case: Case, ref: tuple[Any, ...], dys: tuple[Any, ...]) -> float:
    """The worst relative error of fn's outputs and input gradients against `ref`."""
    import torch

    outs = _outputs(fn, case)
    grads = torch.autograd.grad(outs, case.grads_of(), dys)
    return max(relative_error(g, r) for g, r in zip((*outs, *grads), ref, strict=True))


def _reference(native: Callable, case: Case, dys: tuple[Any, ...]) -> tuple[Any, ...]:
    """The native op in float32 (float64 for float32 inputs), no autocast, on the same values."""
    import torch

    hi = torch.float64 if all(t.dtype == torch.float32 for t in case.tensors) else torch.float32
    up = [t.detach().to(hi).requires_grad_(t.requires_grad) for t in case.tensors]
    extra = tuple(e.to(hi) if torch.is_tensor(e) and e.is_floating_point() else e
                  for e in case.extra)
    outs = native(*up, *extra)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = torch.autograd.grad(outs, [t for t in up if t.requires_grad],
                                tuple(d.to(hi) for d in dys))
    return (*outs, *grads)


def _time(fn: Callable[[], Any], cudagraph: bool, grad_to_none: list[Any]
          ) -> tuple[list[float], str]:
    """All timing samples (ms) of fn and the timer used; CUDA graphs where capture works."""
    import triton.testing

    if cudagraph:
        try:
            return triton.testing.do_bench_cudagraph(fn, rep=100, grad_to_none=grad_to_none,
                                                     return_mode="all"), "cudagraph"
        except Exception:  # noqa: BLE001 -- an op that cannot be captured is timed with events
            pass
    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none,
                                   return_mode="all"), "events"


def _peak_memory(fn: Callable[[], tuple[Any, ...]], dys: tuple[Any, ...]) -> int:
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.autograd.backward(fn(), dys)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _measure(fn: Callable, case: Case, dys: tuple[Any, ...], memory_bound: bool
             ) -> tuple[int, dict[str, tuple[list[float], str]]]:
    """Peak memory of one forward + backward, and the timing samples of each."""
    import torch

    peak = _peak_memory(lambda: _outputs(fn, case), dys)
    outs = _outputs(fn, case)  # the forward the timed backward runs through, again and again
    grads = case.grads_of()
    fwd = _time(lambda: _call(fn, case), memory_bound, grads)
    bwd = _time(lambda: torch.autograd.backward(outs, dys, retain_graph=True), memory_bound,
                grads)
    return peak, {"fwd": fwd, "bwd": bwd}


def bench_op(op: str, cfg: Any, B: int, T: int, dtype: Any, ceilings: Ceilings,
             compile_peers: bool) -> list[Row]:
    import torch

    case = _cases(op, cfg, B, T, dtype)
    saved = [t.detach().clone() for t in case.tensors]
    impls = _impls(op, compile_peers)
    with torch.no_grad():
        dys = tuple(torch.randn_like(o) for o in _outputs(impls["native"], case))
    ref = _reference(impls["native"], case, dys)
    tol = TOLERANCE["float32" if case.compute == torch.float32 else "16-bit"]
    fwd_amount, bwd_amount = amounts(op, cfg, B, T, torch.finfo(case.compute).bits // 8)
    memory_bound = op in MEMORY_BOUND
    rows = []
    for name, fn in impls.items():
        case.restore(saved)
        fresh = tuple(d.clone() for d in dys)  # Liger's backward overwrites dy in place
        try:
            err = _gate(fn, case, ref, fresh)
        except Exception as e:  # noqa: BLE001 -- a peer that cannot run these inputs
            rows += [Row(op, name, mode, "skipped", _why(e)) for mode in ("fwd", "bwd")]
            continue
        if not err <= tol:
            rows += [Row(op, name, mode, "incorrect", f"max err {err:.3g} > {tol:g}",
                         max_err=err) for mode in ("fwd", "bwd")]
            continue
        try:
            peak, timings = _measure(fn, case, tuple(d.clone() for d in dys), memory_bound)
        except Exception as e:  # noqa: BLE001 -- recorded; the other implementations go on
            rows += [Row(op, name, mode, "failed", _why(e), max_err=err)
                     for mode in ("fwd", "bwd")]
            continue
        for mode, amount in (("fwd", fwd_amount), ("bwd", bwd_amount)):
            samples, timer = timings[mode]
            p20, p50, p80 = quantile_times(samples)
            rate, unit, frac_m, frac_d = rate_and_fractions(amount, p50, memory_bound, ceilings)
            rows.append(Row(op, name, mode, "ok", "", p20, p50, p80, timer, len(samples), amount,
                            unit, rate, frac_m, frac_d, peak, err))
    return rows


def _why(e: Exception) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def measure_ceilings(dtype_name: str, device_name: str) -> Ceilings:
    """A bf16 GEMM (8192^3, cuBLAS) and a 1 GiB device-to-device copy, p50 of do_bench."""
    import torch
    import triton.testing

    from trainbench import hardware

    n = 8192
    a, b = (torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    gemm_ms = triton.testing.do_bench(lambda: a @ b, warmup=25, rep=200, return_mode="median")
    del a, b
    src = torch.empty(2 ** 30, device=DEVICE, dtype=torch.uint8)
    dst = torch.empty_like(src)
    copy_ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200,
                                      return_mode="median")
    del src, dst
    acc = hardware.lookup(device_name)
    return Ceilings(gemm_flops=2 * n ** 3 / (gemm_ms * 1e-3),
                    copy_bytes=2 * 2 ** 30 / (copy_ms * 1e-3),
                    datasheet_flops=None if acc is None else acc.peak_flops_per_device(dtype_name),
                    datasheet_bytes=None if acc is None else acc.memory_bandwidth_gbps * 1e9)


def _print(rows: list[Row], ceilings: Ceilings) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(x: float | None) -> str:
        return "" if x is None else f"{100 * x:.1f}%"

    sheet = ("" if ceilings.datasheet_flops is None else
             f" (datasheet {ceilings.datasheet_flops / 1e12:g})")
    bw = ("" if ceilings.datasheet_bytes is None else
          f" (datasheet {ceilings.datasheet_bytes / 1e9:g})")
    console = Console(width=200)
    console.print(f"measured ceilings: bf16 GEMM {ceilings.gemm_flops / 1e12:.1f} TFLOP/s{sheet}, "
                  f"D2D copy {ceilings.copy_bytes / 1e9:.0f} GB/s{bw}")
    table = Table(title="kernel benchmark (p50 rates; fractions of measured / datasheet)")
    for c in ("op", "impl", "mode", "p20 ms", "p50 ms", "p80 ms", "rate", "of measured",
              "of datasheet", "peak mem", "timer", "status"):
        table.add_column(c)
    for r in rows:
        ok = r.status == "ok"
        table.add_row(r.op, r.impl, r.mode,
                      *(f"{t:.4f}" if ok else "" for t in (r.p20_ms, r.p50_ms, r.p80_ms)),
                      f"{r.rate:.1f} {r.unit}" if ok else "", pct(r.frac_measured),
                      pct(r.frac_datasheet),
                      "" if r.peak_mem_bytes is None else f"{r.peak_mem_bytes / 2 ** 20:.0f} MiB",
                      r.timer, r.status if ok else f"{r.status}: {r.note}")
    console.print(table)


OPS = ("rmsnorm", "rope", "swiglu", "linear_cross_entropy", "flash_attention")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "the kernels' correctness on the CPU is checked by tests/test_triton_kernels.py",
              file=sys.stderr)
        return 1

    import triton

    from trainbench import model

    cfg = model.preset(args.model)
    dtype = getattr(torch, args.dtype)
    device_name = torch.cuda.get_device_name()
    ceilings = measure_ceilings(args.dtype, device_name)
    rows: list[Row] = []
    for op in args.ops:
        rows += bench_op(op, cfg, args.batch, args.seq, dtype, ceilings, not args.no_compile)
    _print(rows, ceilings)
    if args.out:
        env = {"device": device_name, "torch": torch.__version__, "triton": triton.__version__,
               "cuda": torch.version.cuda, "model": args.model, "batch": args.batch,
               "seq": args.seq, "dtype": args.dtype,
               "float32_matmul_precision": torch.get_float32_matmul_precision()}
        with open(args.out, "w") as f:
            json.dump(make_record(env, ceilings, rows), f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
