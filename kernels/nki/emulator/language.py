"""The part of `nki.language` (`nl`) that trainbench's kernels use, emulated with NumPy.

Names and signatures follow the stub nki/api/nki/language/__init__.py (NKI 0.6.0 / SDK 2.32) as
transcribed in kernels/nki/api.yaml. Math functions (`add`, `exp`, ...) appear in the kernels
only as operator codes passed to `nki.isa` instructions, so here each is an `Op`: the name the
documented operator or activation table gives it, and the NumPy function the emulator runs (None
where the docs list an operator the emulator does not implement: using it raises "not-emulated").
`nl.divide` exists in nki.language but is in neither table, so every instruction rejects it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from trainbench.kernels.nki.emulator.core import (GEMM_MOVING_FMAX, GEMM_STATIONARY_FMAX, PMAX,
                                                  PRIVATE_HBM, PSUM, PSUM_BANK_BYTES, SBUF,
                                                  SHARED_HBM, STATE, Buffer, NkiRuleError, Tensor,
                                                  check_tile, poison)
from trainbench.kernels.nki.emulator.table import table

try:  # bfloat16 as NumPy knows it; ml_dtypes is what the Neuron packages use too
    from ml_dtypes import bfloat16
except ImportError:  # pragma: no cover - jax, a dependency of trainbench[jax], brings ml_dtypes
    bfloat16 = None

# --- memory hierarchy -----------------------------------------------------------------------------
sbuf: Buffer = SBUF
psum: Buffer = PSUM
private_hbm: Buffer = PRIVATE_HBM
hbm: Buffer = PRIVATE_HBM  # "HBM - Alias of private_hbm"
shared_hbm: Buffer = SHARED_HBM

# --- data types ----------------------------------------------------------------------------------
float32 = np.dtype(np.float32)
int32 = np.dtype(np.int32)
if bfloat16 is not None:
    bfloat16 = np.dtype(bfloat16)


class tile_size:  # noqa: N801 - the API's spelling
    """Hardware tile limits (trn2 values; nc_matmul applies the target's own moving limit)."""

    pmax = PMAX
    psum_fmax = PSUM_BANK_BYTES // 4
    gemm_stationary_fmax = GEMM_STATIONARY_FMAX
    gemm_moving_fmax = GEMM_MOVING_FMAX


# --- creation ------------------------------------------------------------------------------------
def ndarray(shape: tuple[int, ...], dtype: Any, buffer: Buffer | None = None,
            name: str = "") -> Tensor:
    """A new tensor in `buffer` (SBUF when None), filled with NaN so an unwritten element shows.

    Within one SPMD launch, the k-th shared_hbm tensor of every program is the same tensor
    (shared HBM is "visible to all kernel instances in the SPMD grid")."""
    buffer = sbuf if buffer is None else buffer
    if not isinstance(buffer, Buffer):
        raise NkiRuleError("buffer-kind", f"ndarray {name!r}: buffer={buffer!r} is not one of "
                           "nl.sbuf, nl.psum, nl.hbm, nl.private_hbm, nl.shared_hbm")
    shape = tuple(int(s) for s in shape)
    if buffer is SHARED_HBM:
        return _shared(shape, np.dtype(dtype), name)
    t = Tensor(poison(shape, dtype), buffer, name)
    check_tile(t, f"ndarray {name!r}" if name else "ndarray")
    return t


def _shared(shape: tuple[int, ...], dtype: np.dtype, name: str) -> Tensor:
    launch = STATE.launch
    k = launch.allocated
    launch.allocated += 1
    if k < len(launch.shared):
        t = launch.shared[k]
        if t.shape != shape or t.dtype != dtype:
            raise NkiRuleError("shared-hbm", f"program {launch.program} allocates shared_hbm "
                               f"#{k} as {shape} {dtype}; program 0 made it {t.describe()}")
        return t
    t = Tensor(poison(shape, dtype), SHARED_HBM, name)
    launch.shared.append(t)
    return t


def zeros(shape: tuple[int, ...], dtype: Any, buffer: Buffer | None = None,
          name: str = "") -> Tensor:
    """`ndarray` filled with zeros."""
    t = ndarray(shape, dtype, buffer, name)
    t.data[...] = 0
    return t


# --- iterators -----------------------------------------------------------------------------------
def affine_range(start: int, stop: int | None = None, step: int = 1) -> range:
    """Iterations with no loop-carried dependency; the emulator runs them in order."""
    return range(start) if stop is None else range(start, stop, step)


def static_range(start: int, stop: int | None = None, step: int = 1) -> range:
    """A fully unrolled loop: the index is a Python int, so tile sizes may depend on it."""
    return range(start) if stop is None else range(start, stop, step)


# --- SPMD launch grid ----------------------------------------------------------------------------
def program_id(axis: int) -> int:
    """Index of this program along `axis` of the launch grid (kernel[grid](...))."""
    return STATE.launch.program[axis]


def num_programs(axes: int | None = None) -> int:
    """Programs along `axes` of the launch grid, or in the whole grid when None."""
    grid = STATE.launch.grid
    return int(np.prod(grid)) if axes is None else grid[axes]


# --- operator codes: the documented tables (api.yaml `operators`, `activations`) -----------------
class Op:
    """An operator code: `name` as the docs list it, `fn` its NumPy form (None: not emulated)."""

    def __init__(self, name: str, fn: Callable[..., np.ndarray] | None) -> None:
        self.name, self.fn = name, fn

    def __call__(self, *args: np.ndarray) -> np.ndarray:
        if self.fn is None:
            raise NkiRuleError("not-emulated", f"nl.{self.name} is documented but the emulator "
                               "does not implement it")
        return self.fn(*args)

    def __repr__(self) -> str:
        return f"nl.{self.name}"


def _compare(f: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    """A comparison giving 1.0 / 0.0 (comparison operators give numbers on the engines)."""
    return lambda x, y: f(x, y).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


_NUMPY: dict[str, Callable[..., np.ndarray]] = {
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "maximum": np.maximum,
    "minimum": np.minimum, "equal": _compare(np.equal), "not_equal": _compare(np.not_equal),
    "greater_equal": _compare(np.greater_equal), "greater": _compare(np.greater),
    "less_equal": _compare(np.less_equal), "less": _compare(np.less),
    "exp": np.exp, "log": np.log, "sigmoid": _sigmoid, "copy": lambda x: x,
    "rsqrt": lambda x: (1.0 / np.sqrt(x)).astype(np.float32),
    "reciprocal": lambda x: (1.0 / x).astype(np.float32), "square": np.square,
    "abs": np.abs, "tanh": np.tanh, "sqrt": np.sqrt,
}
"""The operators the emulator executes, by documented name."""

_T = table()
ALU_OPS: dict[str, Op] = {}
"""tbl-aluop, arithmetic and bitvec: name -> Op."""
REDUCTION_OPS: set[str] = set()
"""Names the table marks legal as a reduction `op`."""
ARITHMETIC: set[str] = set(_T["operators"]["arithmetic"])
for _group in ("arithmetic", "bitvec"):
    for _name, _legal in _T["operators"][_group].items():
        ALU_OPS[_name] = Op(_name, _NUMPY.get(_name))
        if _legal:
            REDUCTION_OPS.add(_name)
ACTIVATIONS: dict[str, Op] = {n: ALU_OPS.get(n) or Op(n, _NUMPY.get(n))
                              for n in _T["activations"]["names"]}
"""tbl-act-func: name -> Op (an operator in both tables is one object)."""
globals().update(ALU_OPS)
globals().update(ACTIVATIONS)

divide = Op("divide", np.divide)
"""nl.divide: a nki.language function, but in neither operator table (no divide instruction)."""


def is_alu(op: Any) -> bool:
    return isinstance(op, Op) and ALU_OPS.get(op.name) is op


def is_activation(op: Any) -> bool:
    return isinstance(op, Op) and ACTIVATIONS.get(op.name) is op
