"""Benchmark each Triton kernel against its PyTorch-native op and torch.compile of that op.

    python scripts/bench_kernels.py                                  # llama32_1b shapes, bf16
    python scripts/bench_kernels.py --model llama3_8b --batch 1 --seq 4096 --out bench.json

Needs a CUDA GPU: on any other machine it says so and exits with status 1 without running.
Shapes come from a model preset at --batch x --seq tokens. Each op runs forward only and forward
+ backward; the time is the median of triton.testing.do_bench (CUDA events around each call,
after warm-up; torch.compile's compilation happens in the warm-up). Achieved rates:
  - memory-bound ops (rmsnorm, rope, swiglu): GB/s = the bytes an ideal kernel must move (each
    input read once, each output written once; small tables and per-row statistics left out) /
    time, as a fraction of the hardware table's memory bandwidth;
  - matmul-bound ops: TFLOP/s as a fraction of the table's dense peak for --dtype.
    linear_cross_entropy counts 2NdV per matmul: 2NdV forward, 6NdV forward + backward.
    flash_attention counts 4 B Hq T^2 D forward (QK^T and PV), halved when causal (the masked
    half is not computed), and 2.5 times that for the backward (five matmuls against two).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Callable


@dataclass
class Result:
    op: str
    impl: str
    mode: str
    ms: float
    rate: float
    unit: str
    fraction: float | None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama32_1b", help="trainbench model preset")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--out", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "the kernels' correctness on the CPU is checked by tests/test_triton_kernels.py",
              file=sys.stderr)
        return 1

    from trainbench import hardware, model

    cfg = model.preset(args.model)
    dtype = getattr(torch, args.dtype)
    device_name = torch.cuda.get_device_name()
    acc = hardware.lookup(device_name)
    bandwidth = None if acc is None else acc.memory_bandwidth_gbps * 1e9
    peak = None if acc is None else acc.peak_flops_per_device(args.dtype)
    if acc is None:
        print(f"{device_name}: not in trainbench's hardware table, so no fractions of peak")
    else:
        flops = "not in the table" if peak is None else f"{peak / 1e12:g} TFLOP/s"
        print(f"{device_name} = {acc.name}: {acc.memory_bandwidth_gbps:g} GB/s, dense "
              f"{args.dtype} peak {flops} ({acc.source})")
    print(f"shapes: {args.model}, batch {args.batch} x seq {args.seq}, {args.dtype}\n")

    results: list[Result] = []
    for op in args.ops:
        for row in OPS[op](cfg, args.batch, args.seq, dtype, not args.no_compile):
            impl, mode, ms, amount, kind = row
            per_s = amount / (ms * 1e-3)
            limit, unit, scale = ((bandwidth, "GB/s", 1e9) if kind == "bytes"
                                  else (peak, "TFLOP/s", 1e12))
            r = Result(op, impl, mode, ms, per_s / scale, unit, limit and per_s / limit)
            results.append(r)
            frac = "" if r.fraction is None else f"{100 * r.fraction:6.1f}%"
            print(f"{op:22s} {impl:10s} {mode:8s} {ms:9.3f} ms {r.rate:9.1f} {r.unit:8s} {frac}")
        print()
    if args.out:
        record = {"device": device_name, "torch": torch.__version__,
                  "triton": __import__("triton").__version__, "model": args.model,
                  "batch": args.batch, "seq": args.seq, "dtype": args.dtype,
                  "hardware_entry": None if acc is None else acc.name,
                  "results": [r.__dict__ for r in results]}
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
        print(f"wrote {args.out}")
    return 0


# --- one function per op: the rows (impl, mode, ms, amount, "bytes" | "flops") -------------------

Row = tuple[str, str, float, float, str]


def _time(fn: Callable[[], object]) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _variants(native: Callable, triton_fn: Callable, compile_native: bool) -> dict[str, Callable]:
    import torch

    out = {"triton": triton_fn, "native": native}
    if compile_native:
        out["compiled"] = torch.compile(native)
    return out


def _rows(impls: dict[str, Callable], inputs: list, fwd_amount: float, bwd_amount: float,
          kind: str) -> list[Row]:
    """Time each implementation forward (no grad) and forward + backward (sum of the output)."""
    import torch

    rows = []
    for name, fn in impls.items():
        with torch.no_grad():
            rows.append((name, "fwd", _time(lambda: fn(*inputs)), fwd_amount, kind))

        def fwd_bwd() -> None:
            for t in inputs:
                if isinstance(t, torch.Tensor):
                    t.grad = None
            fn(*inputs).float().sum().backward()

        rows.append((name, "fwd+bwd", _time(fwd_bwd), fwd_amount + bwd_amount, kind))
    return rows


def _randn(*shape: int, dtype, grad: bool = True):
    import torch

    return torch.randn(shape, device="cuda", dtype=dtype, requires_grad=grad)


def bench_rmsnorm(cfg, B: int, T: int, dtype, compile_native: bool) -> list[Row]:
    from trainbench.backends.torch import native
    from trainbench.kernels import triton as tk

    x, w = _randn(B * T, cfg.d_model, dtype=dtype), _randn(cfg.d_model, dtype=dtype)
    n = x.numel() * x.element_size()
    impls = _variants(native.rmsnorm, tk.rmsnorm, compile_native)
    return _rows(impls, [x, w, cfg.norm_eps], 2 * n, 3 * n, "bytes")  # x, y; dy, x, dx


def bench_rope(cfg, B: int, T: int, dtype, compile_native: bool) -> list[Row]:
    import torch

    from trainbench.backends.torch import native
    from trainbench.kernels import triton as tk

    x = _randn(B, T, cfg.n_heads, cfg.head_dim, dtype=dtype)
    pos = torch.arange(T, device="cuda", dtype=torch.float32)[:, None]
    inv_freq = cfg.rope_theta ** (-torch.arange(0, cfg.head_dim, 2, device="cuda") / cfg.head_dim)
    angles = torch.cat([pos * inv_freq] * 2, dim=-1)  # (T, D)
    n = x.numel() * x.element_size()
    impls = _variants(native.rope, tk.rope, compile_native)
    return _rows(impls, [x, angles.cos(), angles.sin()], 2 * n, 2 * n, "bytes")


def bench_swiglu(cfg, B: int, T: int, dtype, compile_native: bool) -> list[Row]:
    from trainbench.backends.torch import native
    from trainbench.kernels import triton as tk

    gate, up = _randn(B * T, cfg.d_ff, dtype=dtype), _randn(B * T, cfg.d_ff, dtype=dtype)
    n = gate.numel() * gate.element_size()
    impls = _variants(native.swiglu, tk.swiglu, compile_native)
    return _rows(impls, [gate, up], 3 * n, 5 * n, "bytes")  # gate, up, out; dout, gate, up, 2 d


def bench_linear_cross_entropy(cfg, B: int, T: int, dtype, compile_native: bool) -> list[Row]:
    import torch

    from trainbench.backends.torch import native
    from trainbench.kernels import triton as tk

    N, d, V = B * T, cfg.d_model, cfg.vocab
    x, w = _randn(N, d, dtype=dtype), _randn(d, V, dtype=dtype)
    with torch.no_grad():
        w *= d ** -0.5
    targets = torch.randint(0, V, (N,), device="cuda")
    impls = _variants(native.cross_entropy, tk.linear_cross_entropy, compile_native)
    return _rows(impls, [x, w, targets], 2 * N * d * V, 4 * N * d * V, "flops")


def bench_flash_attention(cfg, B: int, T: int, dtype, compile_native: bool) -> list[Row]:
    from trainbench.backends.torch import native
    from trainbench.kernels import triton as tk

    Hq, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    q = _randn(B, T, Hq, D, dtype=dtype)
    k, v = _randn(B, T, Hkv, D, dtype=dtype), _randn(B, T, Hkv, D, dtype=dtype)
    fwd = 4 * B * Hq * T * T * D / 2  # causal: half the score matrix
    impls = _variants(native.attention, tk.flash_attention, compile_native)
    return _rows(impls, [q, k, v], fwd, 2.5 * fwd, "flops")


OPS: dict[str, Callable[..., list[Row]]] = {
    "rmsnorm": bench_rmsnorm, "rope": bench_rope, "swiglu": bench_swiglu,
    "linear_cross_entropy": bench_linear_cross_entropy, "flash_attention": bench_flash_attention,
}


if __name__ == "__main__":
    sys.exit(main())
