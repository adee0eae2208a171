"""Tile bookkeeping shared by the kernels: ragged tiling, SPMD sharding and a few SBUF/PSUM
idioms.

Helper functions called from an `nki.jit` kernel are inlined by the NKI compiler; they take and
return NKI tiles and use only `nl` / `nisa` from trainbench.kernels.nki._api, within the NKI
Python subset (trainbench.kernels.nki.subset). Loops whose tile shapes depend on the index use
nl.static_range, so every tile shape is a compile-time constant: tile i covers [i * size,
i * size + extent(n, size, i)).
"""

from __future__ import annotations

from trainbench.kernels.nki._api import nisa, nl

P = nl.tile_size.pmax
"""Rows per tile: the 128 SBUF partitions."""
FCHUNK = nl.tile_size.gemm_moving_fmax
"""Columns per chunk of a free dimension: 512, the widest moving operand and one PSUM bank."""
NEG_BIG = -3.0e38
"""A finite stand-in for -inf: exp(NEG_BIG - m) is 0 and NEG_BIG - NEG_BIG is 0, never NaN."""


def n_tiles(n: int, size: int) -> int:
    """Tiles of `size` over n, the last one ragged."""
    return (n + size - 1) // size


def extent(n: int, size: int, i: int) -> int:
    """Length of tile i of `size` over n."""
    return min(size, n - i * size)


def my_units(n_units: int):
    """This program's share of n_units independent work units on the SPMD grid (one program
    per physical NeuronCore of the logical core, LNC): units pid, pid + n, pid + 2n, ..."""
    return nl.static_range(nl.program_id(0), n_units, nl.num_programs(0))


def load(src, shape=None, dtype=None):
    """A new SBUF tile holding the HBM view `src` (rows <= 128), of src's shape and dtype unless
    given (an integer-indexed dimension of src keeps size 1; `shape` drops it)."""
    t = nl.ndarray(shape or src.shape, dtype or src.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=src)
    return t


def cast(src, dtype):
    """A new SBUF tile with src's values in `dtype` (from SBUF or PSUM)."""
    t = nl.ndarray(src.shape, dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=t, src=src)
    return t


def transpose(src):
    """src [p, f] (SBUF, p, f <= 128) transposed to a new SBUF tile [f, p] of the same dtype,
    through the Tensor Engine and PSUM (a transpose keeps its dtype, also in PSUM)."""
    ps = nl.ndarray((src.shape[1], src.shape[0]), src.dtype, buffer=nl.psum)
    nisa.nc_transpose(dst=ps, data=src)
    return cast(ps, src.dtype)


def broadcast_row(row_hbm, n_cols: int, dtype):
    """An SBUF float32 tile [128, n_cols] whose every partition holds the HBM row [1, n_cols]:
    ones[1, 128].T @ row on the Tensor Engine, 512 columns per matmul."""
    ones = nl.ndarray((1, P), dtype, buffer=nl.sbuf)
    nisa.memset(dst=ones, value=1.0)
    row = load(row_hbm)
    out = nl.ndarray((P, n_cols), nl.float32, buffer=nl.sbuf)
    for j in nl.static_range(n_tiles(n_cols, FCHUNK)):
        c0 = j * FCHUNK
        cols = extent(n_cols, FCHUNK, j)
        ps = nl.ndarray((P, cols), nl.float32, buffer=nl.psum)
        nisa.nc_matmul(dst=ps, stationary=ones, moving=row[0:1, c0:c0 + cols])
        nisa.tensor_copy(dst=out[0:P, c0:c0 + cols], src=ps)
    return out


def new(shape, dtype=nl.float32):
    """A new SBUF tile (float32 unless given)."""
    return nl.ndarray(shape, dtype, buffer=nl.sbuf)


def row_sum_exp(p, s, bias):
    """p = exp(s + bias) and its per-partition sum [rows, 1], in one Scalar Engine instruction:
    reduce_cmd=reset_reduce zeroes the engine's reduce registers, adds this call's sum and
    reads it out (with the default idle, reduce_res would read stale registers)."""
    total = new((s.shape[0], 1))
    nisa.activation(dst=p, op=nl.exp, data=s, bias=bias, reduce_op=nl.add, reduce_res=total,
                    reduce_cmd=nisa.reduce_cmd.reset_reduce)
    return total


def online_softmax_step(m, l_sum, s, rows: int, cols: int):
    """One column block of a streaming (online) softmax over rows of scores.

    Updates, in place, the running row max `m` and the running sum `l_sum` of exp(s - m)
    (both [rows, 1] float32) with the block `s` [rows, cols]; returns p = exp(s - m_new)
    [rows, cols] and alpha = exp(m_old - m_new) [rows, 1], which rescales anything else
    accumulated against the old max (flash attention's output accumulator).
    """
    block_max = new((rows, 1))
    nisa.tensor_reduce(dst=block_max, op=nl.maximum, data=s, axis=1, keepdims=True)
    m_new = new((rows, 1))
    nisa.tensor_tensor(dst=m_new, data1=m, data2=block_max, op=nl.maximum)
    neg_m = new((rows, 1))
    nisa.tensor_scalar(dst=neg_m, data=m_new, op0=nl.multiply, operand0=-1.0)
    p = new((rows, cols))
    block_sum = row_sum_exp(p, s, neg_m)
    alpha = new((rows, 1))
    nisa.activation(dst=alpha, op=nl.exp, data=m, bias=neg_m)
    nisa.tensor_tensor(dst=l_sum, data1=l_sum, data2=alpha, op=nl.multiply)
    nisa.tensor_tensor(dst=l_sum, data1=l_sum, data2=block_sum, op=nl.add)
    nisa.tensor_copy(dst=m, src=m_new)
    return p, alpha


def log_sum_exp(m, l_sum, rows: int):
    """lse = log(l_sum) + m [rows, 1], the end of an online softmax."""
    lse = new((rows, 1))
    nisa.activation(dst=lse, op=nl.log, data=l_sum)
    nisa.tensor_tensor(dst=lse, data1=lse, data2=m, op=nl.add)
    return lse
