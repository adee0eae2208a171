"""The NKI kernels (trainbench.kernels.nki) forward and backward against the float64 reference
math (trainbench.ops), in float32 and bfloat16, on ragged shapes.

Where the official `nki` package is installed the kernels run in `nki.simulate`; elsewhere (CI,
this repository's default) in trainbench's NumPy emulator, which also enforces the NeuronCore
tile rules. Both paths run the same kernel source through trainbench.kernels.nki._api. Shapes
are not multiples of the 128-row tile nor of the 512-column chunk, so every kernel has ragged
tiles in both directions. The emulator fills every tensor a kernel allocates with NaN, so an
output element a kernel forgets to write fails the comparison (under `nki.simulate` the
simulator's own allocation applies). bfloat16 inputs are ml_dtypes.bfloat16 arrays; the
reference runs in float64 on exactly those rounded values.

Tolerances, elementwise, with scale = max|ref| of the output:
  float32   |kernel - ref| <= 1e-5 (|ref| + scale). The kernels accumulate in float32 over at
            most a few thousand terms in another order than NumPy: a few dozen float32 ulps
            (eps 1.2e-7), far below 1e-5, while a wrong index, mask or formula is off by O(1).
  bfloat16  |kernel - ref| <= 2**-6 (|ref| + scale). bfloat16 keeps 8 significant bits (unit
            roundoff u = 2**-9); on the way to an output a kernel rounds at most three times
            to bfloat16 (P or dS before a matmul, the stored result, and for dS the
            cancellation of dP - delta is carried at that precision), i.e. a few u of the
            output's scale; 2**-6 = 8u leaves room for that and nothing for a wrong result.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from trainbench import ops
from trainbench.kernels.nki import _tiles, attention, cross_entropy, rmsnorm, swiglu
from trainbench.kernels.nki._api import nisa, nki, nl
from trainbench.kernels.nki._tiles import new

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
TOL = {"float32": 1e-5, "bfloat16": 2.0 ** -6}


def close(name: str, kernel: np.ndarray, ref: np.ndarray, dtype: str) -> None:
    kernel = np.asarray(kernel, np.float64)
    assert kernel.shape == ref.shape, f"{name}: shape {kernel.shape} != {ref.shape}"
    assert np.isfinite(kernel).all(), f"{name}: {np.sum(~np.isfinite(kernel))} unwritten/NaN"
    err = np.abs(kernel - ref)
    bound = TOL[dtype] * (np.abs(ref) + np.max(np.abs(ref)))
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), (f"{name} [{dtype}]: |kernel - ref| = {err[worst]:.3g} at "
                                  f"{worst} > {bound[worst]:.3g}")


def launch(kernel, grid: int):
    """kernel on an SPMD grid of `grid` programs (LNC), run on the CPU."""
    return nki.simulate(kernel[grid])


def inputs(rng: np.random.Generator, dtype: str, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    return [rng.standard_normal(s).astype(DTYPES[dtype]) for s in shapes]


def f64(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, grid", [((200, 130), 2), ((7, 600), 1), ((128, 64), 2)])
def test_rmsnorm(dtype: str, shape: tuple[int, int], grid: int):
    rng = np.random.default_rng(1)
    x, w, dy = inputs(rng, dtype, shape, (1, shape[1]), shape)
    y, rstd = launch(rmsnorm.rmsnorm_fwd, grid)(x, w, 1e-5)
    y_ref, cache = ops.rmsnorm_fwd(f64(x), f64(w[0]), 1e-5)
    close("y", y, y_ref, dtype)
    close("rstd", rstd, cache[1], "float32")  # statistics are float32 in both dtypes
    dx, dw_parts = launch(rmsnorm.rmsnorm_bwd, grid)(dy, x, w, rstd)
    assert dw_parts.shape == (grid, shape[1])
    dw = dw_parts.sum(axis=0, dtype=np.float32)
    dx_ref, dw_ref = ops.rmsnorm_bwd(f64(dy), cache)
    close("dx", dx, dx_ref, dtype)
    close("dw", dw, dw_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, grid", [((150, 600), 2), ((129, 513), 1), ((3, 5), 2)])
def test_swiglu(dtype: str, shape: tuple[int, int], grid: int):
    rng = np.random.default_rng(2)
    a, b, dout = inputs(rng, dtype, shape, shape, shape)
    out = launch(swiglu.swiglu_fwd, grid)(a, b)
    out_ref, cache = ops.swiglu_fwd(f64(a), f64(b))
    close("out", out, out_ref, dtype)
    da, db = launch(swiglu.swiglu_bwd, grid)(dout, a, b)
    da_ref, db_ref = ops.swiglu_bwd(f64(dout), cache)
    close("da", da, da_ref, dtype)
    close("db", db, db_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, grid", [((140, 1100), 2), ((5, 3), 1), ((300, 512), 2)])
def test_cross_entropy(dtype: str, shape: tuple[int, int], grid: int):
    rng = np.random.default_rng(3)
    n, vocab = shape
    (logits,) = inputs(rng, dtype, shape)
    logits = (logits.astype(np.float32) * 3).astype(DTYPES[dtype])  # peaked rows
    targets = rng.integers(0, vocab, n).astype(np.int32)
    targets[-1] = vocab - 1  # the last column of the last, ragged chunk
    loss_rows, lse = launch(cross_entropy.cross_entropy_fwd, grid)(logits, targets[:, None])
    loss_ref, cache = ops.cross_entropy_fwd(f64(logits), targets)
    close("loss", np.mean(loss_rows, dtype=np.float64), np.float64(loss_ref), "float32")
    z = f64(logits)
    lse_ref = np.log(np.sum(np.exp(z - z.max(1, keepdims=True)), 1, keepdims=True)) + z.max(
        1, keepdims=True)
    close("lse", lse, lse_ref, "float32")  # float32 statistics in both dtypes
    row_scale = np.full((n, 1), 3.0 / n, np.float32)  # d(3 * mean loss) / d(row loss)
    dlogits = launch(cross_entropy.cross_entropy_bwd, grid)(logits, targets[:, None], lse,
                                                            row_scale)
    (dlogits_ref,) = ops.cross_entropy_bwd(3.0, cache)
    close("dlogits", dlogits, dlogits_ref, dtype)


def attention_ref(q, k, v, do, causal: bool):
    """float64 softmax(q k^T / sqrt(D)) v with GQA, and its gradients, causal or not."""
    group = q.shape[2] // k.shape[2]
    kr, vr = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)  # head h reads h // group
    s = np.einsum("bqhd,bkhd->bhqk", q, kr) / math.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", p, vr)
    dp = np.einsum("bqhd,bkhd->bhqk", do, vr)
    ds = p * (dp - np.sum(dp * p, -1, keepdims=True)) / math.sqrt(q.shape[-1])
    dq = np.einsum("bhqk,bkhd->bqhd", ds, kr)
    sum_group = lambda g: g.reshape(*k.shape[:2], k.shape[2], group, k.shape[3]).sum(3)
    dk = sum_group(np.einsum("bhqk,bqhd->bkhd", ds, q))
    dv = sum_group(np.einsum("bhqk,bqhd->bkhd", p, do))
    return out, (dq, dk, dv)


def test_attention_ref_matches_trainbench_ops():
    rng = np.random.default_rng(4)
    q, k, v, do = (rng.standard_normal(s) for s in [(2, 9, 4, 8), (2, 9, 2, 8), (2, 9, 2, 8),
                                                     (2, 9, 4, 8)])
    out, grads = attention_ref(q, k, v, do, causal=True)
    out_ops, cache = ops.attention_fwd(q, k, v)
    np.testing.assert_allclose(out, out_ops, rtol=1e-12, atol=1e-12)
    for g, g_ops in zip(grads, ops.attention_bwd(do, cache)):
        np.testing.assert_allclose(g, g_ops, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, seq, n_q, n_kv, dim, causal, grid", [
    (2, 200, 4, 2, 40, True, 2),     # GQA, ragged second tile of 72 rows, LNC=2
    (1, 130, 2, 2, 128, True, 1),    # full-width head, a 2-row last tile
    (1, 77, 3, 1, 16, False, 2),     # one tile, all heads on one kv head, no mask, LNC=2
])
def test_flash_attention(dtype, batch, seq, n_q, n_kv, dim, causal, grid):
    rng = np.random.default_rng(5)
    q, k, v, do = inputs(rng, dtype, (batch, seq, n_q, dim), (batch, seq, n_kv, dim),
                         (batch, seq, n_kv, dim), (batch, seq, n_q, dim))
    scale = 1.0 / math.sqrt(dim)
    out, lse = launch(attention.flash_attention_fwd, grid)(q, k, v, scale, causal)
    out_ref, grads_ref = attention_ref(f64(q), f64(k), f64(v), f64(do), causal)
    close("out", out, out_ref, dtype)
    assert lse.shape == (batch, n_q, seq, 1)
    grads = launch(attention.flash_attention_bwd, grid)(q, k, v, out, do, lse, scale,
                                                        causal)
    if causal:
        _, cache = ops.attention_fwd(f64(q), f64(k), f64(v))
        grads_ref = ops.attention_bwd(f64(do), cache)
    for name, g, g_ref in zip(("dq", "dk", "dv"), grads, grads_ref):
        close(name, g, g_ref, dtype)


def test_flash_attention_asserts_its_head_limit():
    q = np.zeros((1, 4, 1, 129), np.float32)
    with pytest.raises(AssertionError, match="head_dim <= 128"):
        nki.simulate(attention.flash_attention_fwd)(q, q, q, 1.0, True)


# --- the harness catches the row-sum bug ----------------------------------------------------------

def _row_sum_exp_idle(p, s, bias):
    """The kernels' old row sum: activation's reduce_res with the default reduce_cmd (idle),
    which reads the Scalar Engine's registers as they were instead of this call's sum."""
    total = new((s.shape[0], 1))
    nisa.activation(dst=p, op=nl.exp, data=s, bias=bias, reduce_op=nl.add, reduce_res=total)
    return total


def test_the_old_idle_row_sum_fails_cross_entropy_and_attention(monkeypatch):
    monkeypatch.setattr(_tiles, "row_sum_exp", _row_sum_exp_idle)
    with pytest.raises(AssertionError, match="lse|loss"):
        test_cross_entropy("float32", (140, 1100), 1)
    with pytest.raises(AssertionError, match="out"):
        test_flash_attention("float32", 1, 130, 2, 2, 128, True, 1)
