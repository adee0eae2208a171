"""RMSNorm forward and backward as NKI kernels: rows on the 128 partitions, features on the free
dimension, statistics in float32.

Forward, per tile of rows: rstd = rsqrt(mean(x*x) + eps), y = (x * rstd) * w, with the weight
row broadcast to all partitions once by a ones-vector matmul. Backward, with xhat = x * rstd:
dx = rstd * (dy*w - xhat * mean(dy*w*xhat)), and dw = sum over rows of dy*xhat, the
cross-partition sum done on the Tensor Engine (ones[rows, 1].T @ (dy*xhat)) and accumulated in
an SBUF float32 row. Row tiles are shared out over the launch grid's programs; each program
writes its partial dw row to dw_parts [programs, D], which the caller sums.
x [N, D] and dy [N, D] in float32 or bfloat16; w [1, D]; rstd [N, 1] float32.
"""

from __future__ import annotations

from trainbench.kernels.nki._api import nisa, nki, nl
from trainbench.kernels.nki._tiles import (FCHUNK, P, broadcast_row, extent, load, my_units, new,
                                           n_tiles)


def _rstd(x_t, n_cols: int, eps: float):
    """rsqrt(mean(x_t**2, free axis) + eps), a float32 (rows, 1) tile."""
    rows = x_t.shape[0]
    sq = new((rows, n_cols))
    nisa.tensor_tensor(dst=sq, data1=x_t, data2=x_t, op=nl.multiply)
    ss = new((rows, 1))
    nisa.tensor_reduce(dst=ss, op=nl.add, data=sq, axis=1, keepdims=True)
    ms = new((rows, 1))
    nisa.tensor_scalar(dst=ms, data=ss, op0=nl.multiply, operand0=1.0 / n_cols, op1=nl.add,
                       operand1=eps)
    rstd = new((rows, 1))
    nisa.activation(dst=rstd, op=nl.rsqrt, data=ms)
    return rstd


@nki.jit
def rmsnorm_fwd(x, w, eps: float):
    """y [N, D] in x's dtype and rstd [N, 1] float32 (saved for the backward)."""
    n_rows, n_cols = x.shape
    y = nl.ndarray((n_rows, n_cols), x.dtype, buffer=nl.shared_hbm)
    rstd_out = nl.ndarray((n_rows, 1), nl.float32, buffer=nl.shared_hbm)
    w_b = broadcast_row(w, n_cols, w.dtype)  # (128, D) float32
    for i in my_units(n_tiles(n_rows, P)):
        r0 = i * P
        rows = extent(n_rows, P, i)
        x_t = load(x[r0:r0 + rows, 0:n_cols])
        rstd = _rstd(x_t, n_cols, eps)
        xhat = new((rows, n_cols))
        nisa.tensor_scalar(dst=xhat, data=x_t, op0=nl.multiply, operand0=rstd)
        y_t = new((rows, n_cols), x.dtype)
        nisa.tensor_tensor(dst=y_t, data1=xhat, data2=w_b[0:rows, 0:n_cols], op=nl.multiply)
        nisa.dma_copy(dst=y[r0:r0 + rows, 0:n_cols], src=y_t)
        nisa.dma_copy(dst=rstd_out[r0:r0 + rows, 0:1], src=rstd)
    return y, rstd_out


@nki.jit
def rmsnorm_bwd(dy, x, w, rstd):
    """dx [N, D] in x's dtype and dw_parts [programs, D] float32 (dw = their sum)."""
    n_rows, n_cols = x.shape
    dx = nl.ndarray((n_rows, n_cols), x.dtype, buffer=nl.shared_hbm)
    dw_parts = nl.ndarray((nl.num_programs(0), n_cols), nl.float32, buffer=nl.shared_hbm)
    w_b = broadcast_row(w, n_cols, w.dtype)
    dw_acc = nl.zeros((1, n_cols), nl.float32, buffer=nl.sbuf)
    ones = new((P, 1))
    nisa.memset(dst=ones, value=1.0)
    for i in my_units(n_tiles(n_rows, P)):
        r0 = i * P
        rows = extent(n_rows, P, i)
        x_t = load(x[r0:r0 + rows, 0:n_cols])
        dy_t = load(dy[r0:r0 + rows, 0:n_cols])
        r_t = load(rstd[r0:r0 + rows, 0:1])
        xhat = new((rows, n_cols))
        nisa.tensor_scalar(dst=xhat, data=x_t, op0=nl.multiply, operand0=r_t)
        dxhat = new((rows, n_cols))
        nisa.tensor_tensor(dst=dxhat, data1=dy_t, data2=w_b[0:rows, 0:n_cols], op=nl.multiply)
        prod = new((rows, n_cols))
        nisa.tensor_tensor(dst=prod, data1=dxhat, data2=xhat, op=nl.multiply)
        dot = new((rows, 1))
        nisa.tensor_reduce(dst=dot, op=nl.add, data=prod, axis=1, keepdims=True)
        proj = new((rows, n_cols))  # xhat * mean(dxhat * xhat)
        nisa.tensor_scalar(dst=proj, data=xhat, op0=nl.multiply, operand0=dot, op1=nl.multiply,
                           operand1=1.0 / n_cols)
        diff = new((rows, n_cols))
        nisa.tensor_tensor(dst=diff, data1=dxhat, data2=proj, op=nl.subtract)
        dx_t = new((rows, n_cols), x.dtype)
        nisa.tensor_scalar(dst=dx_t, data=diff, op0=nl.multiply, operand0=r_t)
        nisa.dma_copy(dst=dx[r0:r0 + rows, 0:n_cols], src=dx_t)
        g = new((rows, n_cols))  # dy * xhat, summed over rows into dw
        nisa.tensor_tensor(dst=g, data1=dy_t, data2=xhat, op=nl.multiply)
        for j in nl.static_range(n_tiles(n_cols, FCHUNK)):
            c0 = j * FCHUNK
            cols = extent(n_cols, FCHUNK, j)
            ps = nl.ndarray((1, cols), nl.float32, buffer=nl.psum)
            nisa.nc_matmul(dst=ps, stationary=ones[0:rows, 0:1], moving=g[0:rows, c0:c0 + cols])
            nisa.tensor_tensor(dst=dw_acc[0:1, c0:c0 + cols], data1=dw_acc[0:1, c0:c0 + cols],
                               data2=ps, op=nl.add)
    pid = nl.program_id(0)
    nisa.dma_copy(dst=dw_parts[pid:pid + 1, 0:n_cols], src=dw_acc)
    return dx, dw_parts
