"""Triton kernels against the float64 reference math (trainbench.ops), forward and backward.

Triton decides when it is first imported whether its own library (tl.sum, tl.max, ...) runs in
the interpreter, so TRITON_INTERPRET=1 must be set before `import triton`; another test module in
the same pytest-xdist worker may already have imported it. Each check therefore runs in a fresh
process, `python tests/test_triton_kernels.py OP DTYPE SIZE [--device cuda]`, which sets the
variable before importing torch; the pytest process itself never imports torch or triton here.
On a GPU, `--device cuda` runs the same checks on the compiled kernels.

Every check draws fresh random inputs (the seed is printed on failure) and poisons every tensor
the kernels allocate: torch.use_deterministic_algorithms with fill_uninitialized_memory makes
torch.empty return NaN, so an element a kernel forgets to write fails the check. Each comparison
prints its error and bound (shown when a check fails). In the interpreter, float32 -> bfloat16
casts are made to round to nearest even as on the GPU (see
round_bf16_to_nearest_even_in_interpreter), and bfloat16 tl.dot operands are multiplied in
float32 by the kernel itself (attention.py's UPCAST), so what is judged is the GPU's arithmetic.

Tolerances, per dtype:
  float32   |kernel - ref| <= 1e-5 |ref| + 1e-5 max|ref| elementwise. Inputs are the same float32
            values in both; the kernels accumulate in float32 over at most a few thousand terms in
            another order than NumPy, which costs a few dozen float32 ulps (eps 1.2e-7), far
            below 1e-5, while any wrong index, mask or formula is off by O(1).
  bfloat16  judged as FlashAttention's tests judge: max|kernel - ref| <= 2 max|native - ref|
            + 2**-10 max|ref|, where `native` is the PyTorch op run on the same bfloat16 inputs
            and ref the float64 math on those inputs. 2**-10 (a quarter of a bfloat16 ulp at
            the largest value) allows for a native op that happens to round once less.
            The bfloat16 runs also check float32 inputs under torch.autocast for the two ops that
            follow autocast (linear_cross_entropy, flash_attention), against native under autocast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

OPS = ("rmsnorm", "rope", "swiglu", "linear_cross_entropy", "flash_attention")
DTYPES = ("float32", "bfloat16")


def _run_check(*args: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).parent)
    assert proc.returncode == 0, f"check {args} failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_kernel_matches_reference(op: str, dtype: str) -> None:
    _run_check(op, dtype, "small")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_kernel_matches_reference_large(op: str, dtype: str) -> None:
    _run_check(op, dtype, "large")


def test_bad_inputs_raise_clear_errors() -> None:
    _run_check("errors", "float32", "small")


# --- the checks, run in the subprocess ------------------------------------------------------------

if __name__ == "__main__":
    if "--device" not in sys.argv or sys.argv[sys.argv.index("--device") + 1] == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before torch/triton are imported, see above

    import argparse
    import math

    import numpy as np
    import torch
    import torch.nn.functional as F

    from trainbench import ops
    from trainbench.kernels import triton as tk

    FP32_RTOL = FP32_ATOL = 1e-5
    BF16_FACTOR, BF16_EPS = 2.0, 2.0 ** -10

    def f64(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float64).numpy()

    def compare(name: str, got: torch.Tensor, ref: np.ndarray,
                native: torch.Tensor | None = None) -> None:
        """Check one output or gradient of the kernel: the float32 rule without `native`, else the
        16-bit rule against `native`, the PyTorch op's result on the same 16-bit inputs."""
        assert tuple(got.shape) == ref.shape, f"{name}: shape {tuple(got.shape)} != {ref.shape}"
        g = f64(got)
        bad = ~np.isfinite(g)
        assert not bad.any(), (f"{name}: {bad.sum()} of {g.size} elements are not finite "
                               f"(unwritten outputs are NaN), first at {np.argwhere(bad)[0]}")
        err = np.abs(g - ref)
        scale = float(np.abs(ref).max())
        if native is None:
            bound = FP32_RTOL * np.abs(ref) + FP32_ATOL * scale
            worst = tuple(int(i) for i in np.unravel_index(np.argmax(err - bound), err.shape))
            print(f"{name}: max err {err.max():.3g}, "
                  f"worst err/bound {err[worst] / bound[worst]:.3f}")
            assert (err <= bound).all(), (
                f"{name} float32: |kernel - ref| = {err[worst]:.3g} at {worst} exceeds "
                f"{bound[worst]:.3g} (ref {ref[worst]:.6g}, kernel {g[worst]:.6g})")
        else:
            native_err = float(np.abs(f64(native) - ref).max())
            limit = BF16_FACTOR * native_err + BF16_EPS * scale
            print(f"{name}: max err {err.max():.3g}, native {native_err:.3g}, "
                  f"err/limit {err.max() / limit:.3f}")
            assert err.max() <= limit, (
                f"{name} {got.dtype}: max |kernel - ref| = {err.max():.4g} exceeds {BF16_FACTOR} x "
                f"native {native_err:.4g} + {BF16_EPS:.3g} x max|ref| {scale:.4g} = {limit:.4g}")

    def round_bf16_to_nearest_even_in_interpreter() -> None:
        """Make the interpreter round float32 -> bfloat16 to nearest even, as the GPU does.

        Triton 3.9's interpreter truncates that cast (InterpreterBuilder.cast_impl passes no
        rounding mode to _convert_float), while compiled code rounds to nearest even (the default
        of tl.tensor.to), so without this every bfloat16 store is up to 1 ulp off instead of 1/2.
        """
        from triton.runtime import interpreter

        import triton.language as tl

        cast_impl = interpreter.InterpreterBuilder.cast_impl

        def rounding_cast_impl(self, src, dst_type):
            if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
                bits = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16)
                return interpreter.TensorHandle(bits.view(torch.int16).numpy().view(np.uint16),
                                                dst_type.scalar)
            return cast_impl(self, src, dst_type)

        interpreter.InterpreterBuilder.cast_impl = rounding_cast_impl

    def grads(out: torch.Tensor, inputs: tuple[torch.Tensor, ...],
              dout: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(out, inputs, dout)

    class Case:
        """Random inputs of one dtype on one device, from a printed seed."""

        def __init__(self, dtype: torch.dtype, device: str, seed: int) -> None:
            self.dtype, self.device = dtype, device
            self.gen = torch.Generator().manual_seed(seed)

        def randn(self, *shape: int, std: float = 1.0, grad: bool = True) -> torch.Tensor:
            t = torch.randn(shape, generator=self.gen) * std
            return t.to(self.device, self.dtype).requires_grad_(grad)

    # --- one check per op; each runs its shapes: (small, large) ---

    def check_rmsnorm(c: Case, size: str) -> None:
        # D=48 and 1000 are not powers of two (masked columns); 37 rows of D=1000 are 10 blocks
        # of 4 rows for 4 persistent programs, so the backward's grid-stride loop runs 3 times
        shapes = {"small": [(3, 37, 48), (37, 1000)], "large": [(4, 257, 2048), (1000, 4096)]}
        for shape in shapes[size]:
            x, w = c.randn(*shape), c.randn(shape[-1], std=0.5)
            with torch.no_grad():
                w += 1.0
            eps = 1e-5
            y = tk.rmsnorm(x, w, eps)
            dy = c.randn(*shape, grad=False)
            dx, dw = grads(y, (x, w), dy)
            ref, cache = ops.rmsnorm_fwd(f64(x), f64(w), eps)
            rdx, rdw = ops.rmsnorm_bwd(f64(dy), cache)
            nat = nat_dx = nat_dw = None
            if c.dtype != torch.float32:
                nat = F.rms_norm(x, (shape[-1],), w, eps)
                nat_dx, nat_dw = grads(nat, (x, w), dy)
            assert y.dtype == dx.dtype == x.dtype and dw.dtype == w.dtype
            compare(f"rmsnorm{shape} y", y, ref, nat)
            compare(f"rmsnorm{shape} dx", dx, rdx, nat_dx)
            compare(f"rmsnorm{shape} dw", dw, rdw, nat_dw)

    def check_rope(c: Case, size: str) -> None:
        # D=12: half 6 is not a power of two; 3 and 5 heads are not powers of two either. Each
        # shape runs rope(x) alone and rope_qk(q, k) with Hq=H query and Hk key heads at once.
        shapes = {"small": [(2, 37, 4, 2, 64), (1, 5, 3, 1, 12)],
                  "large": [(2, 513, 8, 2, 128), (3, 100, 2, 5, 64)]}
        for B, T, H, Hk, D in shapes[size]:
            cos_np, sin_np = ops.rope_cos_sin(T, D, 10000.0, np.float32)
            cos, sin = (torch.from_numpy(t).to(c.device) for t in (cos_np, sin_np))
            x, k = c.randn(B, T, H, D), c.randn(B, T, Hk, D)
            dy, dk_out = c.randn(B, T, H, D, grad=False), c.randn(B, T, Hk, D, grad=False)
            yq, yk = tk.rope_qk(x, k, cos, sin)
            dxq, dxk = grads((yq, yk), (x, k), (dy, dk_out))
            y = tk.rope(x, cos, sin)
            (dx,) = grads(y, (x,), dy)
            for name, inp, out, dout, got_dx in (("rope", x, y, dy, dx),
                                                 ("rope_qk q", x, yq, dy, dxq),
                                                 ("rope_qk k", k, yk, dk_out, dxk)):
                shape = tuple(inp.shape)
                ref, cache = ops.rope_fwd(f64(inp), cos_np.astype(np.float64),
                                          sin_np.astype(np.float64))
                (rdx,) = ops.rope_bwd(f64(dout), cache)
                nat = nat_dx = None
                if c.dtype != torch.float32:  # Hugging Face's formula, tables cast to x's dtype
                    cos_n, sin_n = cos.to(c.dtype)[:, None], sin.to(c.dtype)[:, None]
                    half = shape[-1] // 2
                    nat = inp * cos_n + torch.cat((-inp[..., half:], inp[..., :half]), -1) * sin_n
                    (nat_dx,) = grads(nat, (inp,), dout)
                assert out.dtype == got_dx.dtype == inp.dtype
                compare(f"{name}{shape} y", out, ref, nat)
                compare(f"{name}{shape} dx", got_dx, rdx, nat_dx)

    def check_swiglu(c: Case, size: str) -> None:
        # 1665 elements: two blocks of 1024, the second ragged
        shapes = {"small": [(5, 333), (2, 3, 7)], "large": [(4, 512, 5632), (1001,)]}
        for shape in shapes[size]:
            a, b = c.randn(*shape, std=2.0), c.randn(*shape)
            y = tk.swiglu(a, b)
            dy = c.randn(*shape, grad=False)
            da, db = grads(y, (a, b), dy)
            ref, cache = ops.swiglu_fwd(f64(a), f64(b))
            rda, rdb = ops.swiglu_bwd(f64(dy), cache)
            nat = nat_da = nat_db = None
            if c.dtype != torch.float32:
                nat = F.silu(a) * b
                nat_da, nat_db = grads(nat, (a, b), dy)
            assert y.dtype == da.dtype == db.dtype == a.dtype
            compare(f"swiglu{shape} y", y, ref, nat)
            compare(f"swiglu{shape} dgate", da, rda, nat_da)
            compare(f"swiglu{shape} dup", db, rdb, nat_db)

    def check_linear_cross_entropy(c: Case, size: str) -> None:
        # (N, d, V, chunk_rows, tied): 45 rows in chunks of 16 (the last ragged); V=5000 spans
        # two 4096-wide blocks of the row loop; tied = weight is embed.T, a non-contiguous view.
        # Every third target of the untied shapes is ignore_index (-100).
        shapes = {"small": [(45, 32, 300, 16, False), (20, 16, 5000, None, True)],
                  "large": [(1030, 128, 8192, 256, False), (300, 64, 32000, None, True)]}
        for N, d, V, chunk, tied in shapes[size]:
            x = c.randn(N, d)
            if tied:
                embed = c.randn(V, d, std=d ** -0.5)
                w = embed.T
            else:
                w = embed = c.randn(d, V, std=d ** -0.5)
            targets = torch.randint(0, V, (N,), generator=c.gen)
            if not tied:
                targets[::3] = -100
            targets = targets.to(c.device)
            loss = tk.linear_cross_entropy(x, w, targets, chunk_rows=chunk)
            dx, dembed = grads(loss, (x, embed), torch.tensor(1.5, device=c.device))
            logits, lin_cache = ops.linear_fwd(f64(x), f64(w))
            ref, ce_cache = ops.cross_entropy_fwd(logits, targets.cpu().numpy())
            rdx, rdw = ops.linear_bwd(ops.cross_entropy_bwd(1.5, ce_cache)[0], lin_cache)
            rdembed = rdw.T if tied else rdw
            nat = nat_dx = nat_dembed = None
            if c.dtype != torch.float32:
                nat = F.cross_entropy((x @ w).float(), targets)
                nat_dx, nat_dembed = grads(nat, (x, embed), torch.tensor(1.5, device=c.device))
            assert loss.dtype == torch.float32 and dx.dtype == x.dtype and dembed.dtype == w.dtype
            name = f"linear_cross_entropy(N={N}, d={d}, V={V}, chunk={chunk}, tied={tied})"
            compare(f"{name} loss", loss, np.asarray(ref), nat)
            compare(f"{name} dx", dx, rdx, nat_dx)
            compare(f"{name} dweight", dembed, rdembed, nat_dembed)
            if not tied:
                assert not f64(dx)[::3].any(), f"{name}: ignored rows got a gradient"
            with torch.no_grad():  # the forward-only path computes no gradient
                compare(f"{name} no_grad loss",
                        tk.linear_cross_entropy(x, w, targets, chunk_rows=chunk),
                        np.asarray(ref), nat)
        if c.dtype != torch.float32:
            check_autocast(c, "linear_cross_entropy")
            check_dweight_accumulates_in_float32(c)

    def check_dweight_accumulates_in_float32(c: Case) -> None:
        """Under autocast with a float32 weight, dW is summed over the chunks in float32, so one
        row per chunk and all rows in one chunk agree to float32 rounding. A 16-bit partial per
        chunk would be rounded 64 times (2**-9 each) instead of once at the end."""
        f32 = Case(torch.float32, c.device, int(torch.randint(2**31, (1,), generator=c.gen)))
        x, w = f32.randn(64, 32), f32.randn(32, 300, std=32 ** -0.5)
        targets = torch.randint(0, 300, (64,), generator=c.gen).to(c.device)
        dws = []
        for chunk in (1, 64):
            with torch.autocast(c.device, dtype=c.dtype):
                loss = tk.linear_cross_entropy(x, w, targets, chunk_rows=chunk)
            dws.append(f64(grads(loss, (w,), torch.ones_like(loss))[0]))
        err, scale = np.abs(dws[0] - dws[1]).max(), np.abs(dws[1]).max()
        print(f"dweight, chunks of 1 vs 64 rows: max diff {err:.3g}, max|dW| {scale:.3g}")
        assert err <= 1e-5 * scale, (f"dweight depends on the chunking: {err:.3g} > 1e-5 x "
                                     f"{scale:.3g}; it is not accumulated in float32")

    def check_autocast(c: Case, op: str) -> None:
        """float32 inputs under autocast run in autocast's dtype, as the native op does, and
        their gradients come back in float32."""
        f32 = Case(torch.float32, c.device, int(torch.randint(2**31, (1,), generator=c.gen)))
        if op == "linear_cross_entropy":
            inputs = (f32.randn(21, 16), f32.randn(16, 100, std=0.25))
            targets = torch.randint(0, 100, (21,), generator=c.gen).to(c.device)
            kernel = lambda x, w: tk.linear_cross_entropy(x, w, targets, chunk_rows=8)  # noqa: E731
            native = lambda x, w: F.cross_entropy((x @ w).float(), targets)  # noqa: E731
            logits, lin_cache = ops.linear_fwd(*(f64(t.to(c.dtype)) for t in inputs))
            ref, ce_cache = ops.cross_entropy_fwd(logits, targets.cpu().numpy())
            refs = (np.asarray(ref), *ops.linear_bwd(ops.cross_entropy_bwd(1.0, ce_cache)[0],
                                                      lin_cache))
        else:
            inputs = (f32.randn(1, 40, 4, 16), f32.randn(1, 40, 2, 16), f32.randn(1, 40, 2, 16))
            kernel = tk.flash_attention
            native = lambda q, k, v: F.scaled_dot_product_attention(  # noqa: E731
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                enable_gqa=True).transpose(1, 2)
            out, cache = ops.attention_fwd(*(f64(t.to(c.dtype)) for t in inputs))
            refs = (out, *ops.attention_bwd(f64(torch.ones_like(inputs[0])), cache))
        results = []
        for fn in (kernel, native):
            with torch.autocast(c.device, dtype=c.dtype):
                out = fn(*inputs)
            results.append((out, *grads(out, inputs, torch.ones_like(out))))
        assert results[0][0].dtype == results[1][0].dtype, "output dtype differs from native"
        for i, (got, nat, ref) in enumerate(zip(results[0], results[1], refs)):
            assert got.dtype == nat.dtype, f"{op} autocast: result {i} {got.dtype} != {nat.dtype}"
            compare(f"{op} under autocast, result {i}", got, ref, nat)

    def check_flash_attention(c: Case, size: str) -> None:
        # (B, T, Hq, Hkv, D, causal, scale). Default tiles (query x key) for D <= 64, 16-bit:
        # forward 128 x 64, dK/dV 64 x 128, dQ 128 x 64; float32: 64 x 64, 32 x 64, 64 x 32
        # (D = 128 takes smaller ones: attention.py's _TILES). Each loop runs its
        # unmasked blocks (left of the diagonal, or whole blocks when not causal) apart from the
        # masked ones (the diagonal and the ragged tail): T=37..150 have a ragged last block;
        # T=256 is a multiple of every tile, so there is no tail and the masked loops see only
        # the diagonal; T=200 not causal runs whole blocks then a tail in every kernel
        shapes = {"small": [(2, 37, 4, 2, 16, True, None), (1, 150, 4, 2, 64, True, None),
                            (1, 70, 2, 1, 128, False, 0.2), (1, 130, 2, 2, 32, False, None),
                            (1, 256, 2, 1, 16, True, None), (1, 200, 2, 2, 16, False, None)],
                  "large": [(2, 300, 8, 2, 128, True, None), (1, 513, 4, 4, 64, True, None),
                            (2, 200, 6, 3, 64, False, None)]}
        check_dense_attention_matches_ops(c)
        for B, T, Hq, Hkv, D, causal, scale in shapes[size]:
            q, k, v = c.randn(B, T, Hq, D), c.randn(B, T, Hkv, D), c.randn(B, T, Hkv, D)
            o = tk.flash_attention(q, k, v, causal=causal, scale=scale)
            do = c.randn(B, T, Hq, D, grad=False)
            dq, dk, dv = grads(o, (q, k, v), do)
            ref, rdq, rdk, rdv = reference_attention(f64(q), f64(k), f64(v), f64(do), causal,
                                                     scale)
            nat, nat_grads = None, (None, None, None)
            if c.dtype != torch.float32:
                nat = F.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
                    scale=scale, enable_gqa=True).transpose(1, 2)
                nat_grads = grads(nat, (q, k, v), do)
            assert o.dtype == dq.dtype == dk.dtype == dv.dtype == q.dtype
            name = f"flash_attention(B={B}, T={T}, Hq={Hq}, Hkv={Hkv}, D={D}, causal={causal})"
            compare(f"{name} o", o, ref, nat)
            for label, got, r, n in zip(("dq", "dk", "dv"), (dq, dk, dv), (rdq, rdk, rdv),
                                        nat_grads):
                compare(f"{name} {label}", got, r, n)
        if c.dtype != torch.float32:
            check_autocast(c, "flash_attention")

    def reference_attention(q, k, v, do, causal: bool, scale: float | None):
        """Output and (dq, dk, dv) in float64. Causal: trainbench.ops.attention, whose scale is
        1/sqrt(D), on q * a with a = scale * sqrt(D) (the scores scale by a, dq by a too).
        Non-causal: ops has no such op, so `dense_attention` below."""
        a = 1.0 if scale is None else scale * math.sqrt(q.shape[-1])
        if not causal:
            return dense_attention(q, k, v, do, causal, a / math.sqrt(q.shape[-1]))
        out, cache = ops.attention_fwd(q * a, k, v)
        dq, dk, dv = ops.attention_bwd(do, cache)
        return out, dq * a, dk, dv

    def dense_attention(q, k, v, do, causal: bool, scale: float):
        """Grouped-query attention from its definition, with the full [T, T] probabilities."""
        B, T, Hq, D = q.shape
        G = Hq // k.shape[2]
        kr, vr = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)  # (B, T, Hq, D)
        s = np.einsum("bihd,bjhd->bhij", q, kr) * scale
        if causal:
            s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out = np.einsum("bhij,bjhd->bihd", p, vr)
        dp = np.einsum("bihd,bjhd->bhij", do, vr)
        ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * scale
        dq = np.einsum("bhij,bjhd->bihd", ds, kr)
        dk = np.einsum("bhij,bihd->bjhd", ds, q).reshape(B, T, -1, G, D).sum(3)  # group sums
        dv = np.einsum("bhij,bihd->bjhd", p, do).reshape(B, T, -1, G, D).sum(3)
        return out, dq, dk, dv

    def check_dense_attention_matches_ops(c: Case) -> None:
        """The test's own non-causal reference, run causal, agrees with trainbench.ops."""
        q, k, v, do = (f64(c.randn(2, 9, 4, 16)), f64(c.randn(2, 9, 2, 16)),
                       f64(c.randn(2, 9, 2, 16)), f64(c.randn(2, 9, 4, 16)))
        for mine, theirs in zip(dense_attention(q, k, v, do, True, 0.25),
                                reference_attention(q, k, v, do, True, None)):
            assert np.allclose(mine, theirs, rtol=1e-12, atol=1e-12), "dense_attention is wrong"

    def check_errors(c: Case, size: str) -> None:
        """Unsupported inputs raise ValueError naming the bad value."""
        x = c.randn(2, 5, 4, 24, grad=False)
        bad = {
            "head dim D=24 is not supported": lambda: tk.flash_attention(x, x, x),
            "Hkv=3 kv heads must divide Hq=4": lambda: tk.flash_attention(
                c.randn(1, 5, 4, 16), c.randn(1, 5, 3, 16), c.randn(1, 5, 3, 16)),
            "weight shape (23,) must be (24,)": lambda: tk.rmsnorm(x, c.randn(23), 1e-5),
            "cos shape (4, 24) must be (T, D) = (5, 24)": lambda: tk.rope(
                x, c.randn(4, 24), c.randn(5, 24)),
            "must have the same shape": lambda: tk.swiglu(x, x[..., :3]),
            "targets must be int64": lambda: tk.linear_cross_entropy(
                c.randn(3, 4), c.randn(4, 7), torch.zeros(3, dtype=torch.int32)),
        }
        for message, call in bad.items():
            try:
                call()
            except ValueError as e:
                assert message in str(e), f"expected {message!r} in the error, got: {e}"
            else:
                raise AssertionError(f"no ValueError for: {message}")

    CHECKS = {name: globals()[f"check_{name}"] for name in (*OPS, "errors")}

    parser = argparse.ArgumentParser(description="Check one Triton kernel against trainbench.ops.")
    parser.add_argument("op", choices=list(CHECKS))
    parser.add_argument("dtype", choices=list(DTYPES))
    parser.add_argument("size", choices=["small", "large"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh random seed")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    print(f"{args.op} {args.dtype} {args.size} on {args.device}, seed {seed} (--seed to repeat)")
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # torch.empty -> NaN: the poison
    assert torch.empty(3, device=args.device).isnan().all(), "torch.empty is not poisoned"
    if args.device == "cpu":
        round_bf16_to_nearest_even_in_interpreter()
    CHECKS[args.op](Case(getattr(torch, args.dtype), args.device, seed), args.size)
    print("ok")
