"""Tile bookkeeping shared by the kernels: ragged tiling and a few SBUF/PSUM idioms.

Helper functions called from an `nki.jit` kernel are inlined by the NKI compiler; they take and
return NKI tiles and use only `nl` / `nisa` from trainbench.kernels.nki._api.
"""

from __future__ import annotations

from trainbench.kernels.nki._api import nisa, nl

P = nl.tile_size.pmax
"""Rows per tile: the 128 SBUF partitions."""
FCHUNK = nl.tile_size.gemm_moving_fmax
"""Columns per chunk of a free dimension: 512, the widest moving operand and one PSUM bank."""
NEG_BIG = -3.0e38
"""A finite stand-in for -inf: exp(NEG_BIG - m) is 0 and NEG_BIG - NEG_BIG is 0, never NaN."""


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """(start, length) of each tile of `size` over n, the last one ragged: a Python-level list,
    so loops over it unroll (nl.static_range semantics) and every tile shape is a constant."""
    return [(s, min(size, n - s)) for s in range(0, n, size)]


def load(src, dtype=None):
    """A new SBUF tile holding the HBM view `src` (rows <= 128), in src's dtype unless given."""
    t = nl.ndarray(src.shape, dtype or src.dtype, buffer=nl.sbuf)
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
    for c0, cols in spans(n_cols, FCHUNK):
        ps = nl.ndarray((P, cols), nl.float32, buffer=nl.psum)
        nisa.nc_matmul(dst=ps, stationary=ones, moving=row[0:1, c0:c0 + cols])
        nisa.tensor_copy(dst=out[0:P, c0:c0 + cols], src=ps)
    return out


def new(shape, dtype=nl.float32):
    """A new SBUF tile (float32 unless given)."""
    return nl.ndarray(shape, dtype, buffer=nl.sbuf)
