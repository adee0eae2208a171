"""The part of `nki.language` (`nl`) that trainbench's kernels use, emulated with NumPy.

Each name follows the API page linked next to it (Neuron SDK documentation, NKI 0.6 / SDK 2.32):
https://awsdocs-neuron.readthedocs-hosted.com/en/latest/nki/api/nki.language.html

Math functions (`add`, `exp`, ...) appear in the kernels only as operator codes passed to
`nki.isa` instructions, so here they are NumPy ufuncs on float32 arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainbench.kernels.nki.emulator.core import (GEMM_MOVING_FMAX, GEMM_STATIONARY_FMAX, PMAX,
                                                  PRIVATE_HBM, PSUM, PSUM_BANK_BYTES, SBUF,
                                                  SHARED_HBM, Buffer, NkiRuleError, Tensor,
                                                  check_tile, poison)

try:  # bfloat16 as NumPy knows it; ml_dtypes is what the Neuron packages use too
    from ml_dtypes import bfloat16
except ImportError:  # pragma: no cover - jax, a dependency of trainbench[jax], brings ml_dtypes
    bfloat16 = None

# --- memory hierarchy: .../nki/api/nki.language.html#memory-hierarchy ----------------------------
sbuf: Buffer = SBUF
psum: Buffer = PSUM
private_hbm: Buffer = PRIVATE_HBM
hbm: Buffer = PRIVATE_HBM  # "HBM - alias of private_hbm"
shared_hbm: Buffer = SHARED_HBM

# --- data types: .../nki/api/nki.language.html#data-types ----------------------------------------
float32 = np.dtype(np.float32)
int32 = np.dtype(np.int32)
if bfloat16 is not None:
    bfloat16 = np.dtype(bfloat16)


class tile_size:  # noqa: N801 - the API's spelling
    """Hardware tile limits (.../nki/api/nki.language.tile_size.html)."""

    pmax = PMAX
    psum_fmax = PSUM_BANK_BYTES // 4
    gemm_stationary_fmax = GEMM_STATIONARY_FMAX
    gemm_moving_fmax = GEMM_MOVING_FMAX


# --- creation: .../nki/api/generated/nki.language.ndarray.html, .../nki.language.zeros.html ------
def ndarray(shape: tuple[int, ...], dtype: Any, buffer: Buffer | None = None,
            name: str = "") -> Tensor:
    """A new tensor in `buffer` (SBUF when None), filled with NaN so an unwritten element shows."""
    buffer = sbuf if buffer is None else buffer
    if not isinstance(buffer, Buffer):
        raise NkiRuleError("buffer-kind", f"ndarray {name!r}: buffer={buffer!r} is not one of "
                           "nl.sbuf, nl.psum, nl.hbm, nl.private_hbm, nl.shared_hbm")
    t = Tensor(poison(tuple(int(s) for s in shape), dtype), buffer, name)
    check_tile(t, f"ndarray {name!r}" if name else "ndarray")
    return t


def zeros(shape: tuple[int, ...], dtype: Any, buffer: Buffer | None = None,
          name: str = "") -> Tensor:
    """`ndarray` filled with zeros."""
    t = ndarray(shape, dtype, buffer, name)
    t.data[...] = 0
    return t


# --- iterators: .../nki/api/generated/nki.language.affine_range.html (and sequential, static) ----
def affine_range(*args: int) -> range:
    """Iterations with no loop-carried dependency; the emulator runs them in order."""
    return range(*args)


def sequential_range(*args: int) -> range:
    """Iterations that depend on each other (e.g. a running max), run in order."""
    return range(*args)


def static_range(*args: int) -> range:
    """A fully unrolled loop: the index is a Python int, so tile sizes may depend on it."""
    return range(*args)


# --- operator codes: .../nki/api/nki.language.html#math-operations ------------------------------
add = np.add
subtract = np.subtract
multiply = np.multiply
divide = np.divide
maximum = np.maximum
minimum = np.minimum


def equal(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1.0 where x == y else 0.0 (comparison operators give numbers on the engines)."""
    return (x == y).astype(np.float32)


def greater_equal(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1.0 where x >= y else 0.0."""
    return (x >= y).astype(np.float32)


exp = np.exp
log = np.log


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), computed without overflow."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def rsqrt(x: np.ndarray) -> np.ndarray:
    """1 / sqrt(x)."""
    return (1.0 / np.sqrt(x)).astype(np.float32)


def copy(x: np.ndarray) -> np.ndarray:
    """The identity activation."""
    return x


ACTIVATIONS = (exp, log, sigmoid, rsqrt, copy)
"""The activation functions the emulated nisa.activation accepts."""
ARITHMETIC = (add, subtract, multiply, divide, maximum, minimum, equal, greater_equal)
"""The operators the emulated tensor_tensor / tensor_scalar / tensor_reduce accept."""
