"""SwiGLU gate, out = silu(a) * b (Shazeer, 2020), forward and backward as NKI kernels.

Elementwise over [N, F] in tiles of 128 rows by 512 columns, the last ones ragged; float32 math
on the Scalar and Vector engines, one rounding when the output tile is written. Backward
recomputes s = sigmoid(a): da = dout * b * s * (1 + a * (1 - s)), db = dout * a * s. Row tiles
are shared out over the launch grid's programs (one per physical core of the LNC).
"""

from __future__ import annotations

from trainbench.kernels.nki._api import nisa, nki, nl
from trainbench.kernels.nki._tiles import FCHUNK, P, extent, load, my_units, n_tiles, new


def _silu(a_t):
    """(sigmoid(a), a * sigmoid(a)) as float32 tiles."""
    s = new(a_t.shape)
    nisa.activation(dst=s, op=nl.sigmoid, data=a_t)
    silu = new(a_t.shape)
    nisa.tensor_tensor(dst=silu, data1=a_t, data2=s, op=nl.multiply)
    return s, silu


@nki.jit
def swiglu_fwd(a, b):
    """silu(a) * b, [N, F] in a's dtype."""
    n_rows, n_cols = a.shape
    out = nl.ndarray((n_rows, n_cols), a.dtype, buffer=nl.shared_hbm)
    for i in my_units(n_tiles(n_rows, P)):
        r0 = i * P
        rows = extent(n_rows, P, i)
        for j in nl.static_range(n_tiles(n_cols, FCHUNK)):
            c0 = j * FCHUNK
            cols = extent(n_cols, FCHUNK, j)
            a_t = load(a[r0:r0 + rows, c0:c0 + cols])
            b_t = load(b[r0:r0 + rows, c0:c0 + cols])
            _, silu = _silu(a_t)
            o_t = new((rows, cols), a.dtype)
            nisa.tensor_tensor(dst=o_t, data1=silu, data2=b_t, op=nl.multiply)
            nisa.dma_copy(dst=out[r0:r0 + rows, c0:c0 + cols], src=o_t)
    return out


@nki.jit
def swiglu_bwd(dout, a, b):
    """(da, db), [N, F] each, in a's and b's dtypes."""
    n_rows, n_cols = a.shape
    da = nl.ndarray((n_rows, n_cols), a.dtype, buffer=nl.shared_hbm)
    db = nl.ndarray((n_rows, n_cols), b.dtype, buffer=nl.shared_hbm)
    for i in my_units(n_tiles(n_rows, P)):
        r0 = i * P
        rows = extent(n_rows, P, i)
        for j in nl.static_range(n_tiles(n_cols, FCHUNK)):
            c0 = j * FCHUNK
            cols = extent(n_cols, FCHUNK, j)
            a_t = load(a[r0:r0 + rows, c0:c0 + cols])
            b_t = load(b[r0:r0 + rows, c0:c0 + cols])
            g_t = load(dout[r0:r0 + rows, c0:c0 + cols])
            s, silu = _silu(a_t)
            t = new((rows, cols))  # 1 + a * (1 - s)
            nisa.tensor_scalar(dst=t, data=s, op0=nl.multiply, operand0=-1.0, op1=nl.add,
                               operand1=1.0)
            nisa.tensor_tensor(dst=t, data1=t, data2=a_t, op=nl.multiply)
            nisa.tensor_scalar(dst=t, data=t, op0=nl.add, operand0=1.0)
            nisa.tensor_tensor(dst=t, data1=t, data2=s, op=nl.multiply)  # d silu / da
            gb = new((rows, cols))
            nisa.tensor_tensor(dst=gb, data1=g_t, data2=b_t, op=nl.multiply)
            da_t = new((rows, cols), a.dtype)
            nisa.tensor_tensor(dst=da_t, data1=gb, data2=t, op=nl.multiply)
            db_t = new((rows, cols), b.dtype)
            nisa.tensor_tensor(dst=db_t, data1=g_t, data2=silu, op=nl.multiply)
            nisa.dma_copy(dst=da[r0:r0 + rows, c0:c0 + cols], src=da_t)
            nisa.dma_copy(dst=db[r0:r0 + rows, c0:c0 + cols], src=db_t)
    return da, db
