"""trainbench's NumPy emulation of the NKI subset its kernels use: `nki`, with `language`, `isa`.

Used when the official `nki` package (AWS's index; it ships `nki.simulate`) is not installed.
It is held to the documented API, transcribed as data in kernels/nki/api.yaml (NKI 0.6.0 /
Neuron SDK 2.32, from the aws-neuron/aws-neuron-sdk stubs and operator tables): the same names,
parameters and defaults (an unknown keyword is Python's TypeError, as in NKI), only the
documented operators and activation functions, the documented register semantics of
`reduce_cmd`, nc_matmul's `accumulate=None` auto-accumulation, the float32 and buffer rules of
each instruction's docstring and the per-target limits (`set_target("trn2" | "trn3")`, default
trn2). Before a kernel runs, its source and the helpers it calls pass the NKI Python-subset check
(trainbench.kernels.nki.subset). A rule broken raises NkiRuleError with the rule's name.

Launch: `kernel(*arrays)` runs one program; `kernel[n](*arrays)` runs an SPMD grid of n
programs (LNC=n) in order, nl.program_id(0) telling them apart, all sharing the shared_hbm
tensors they allocate. A kernel gets NumPy inputs as shared HBM tensors, allocates its outputs
with nl.ndarray(..., buffer=nl.shared_hbm), returns them; the caller receives NumPy arrays.

Not emulated: timing, engine concurrency, SBUF capacity and allocation, the hardware's
activation-function approximations, the Vector Engine's accumulation registers.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable

import numpy as np

from trainbench.kernels.nki import subset
from trainbench.kernels.nki.emulator import isa, language
from trainbench.kernels.nki.emulator.core import (SHARED_HBM, STATE, Launch, NkiRuleError, Tensor,
                                                  set_target, target)

__all__ = ["NkiRuleError", "Tensor", "isa", "jit", "language", "set_target", "simulate",
           "target"]


class _Kernel:
    """A kernel function run by the emulator: NumPy arrays in, NumPy arrays out."""

    def __init__(self, fn: Callable[..., Any], grid: tuple[int, ...] = (1,)) -> None:
        self.fn, self.grid = fn, grid
        functools.update_wrapper(self, fn)

    def __getitem__(self, grid: int | tuple[int, ...]) -> "_Kernel":
        """This kernel on an SPMD launch grid (kernel[2] = LNC=2)."""
        grid = grid if isinstance(grid, tuple) else (grid,)
        if not grid or any(not isinstance(g, int) or g < 1 for g in grid):
            raise ValueError(f"launch grid {grid!r}: expected positive integers")
        return _Kernel(self.fn, grid)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        subset.check(self.fn)
        args = [_to_hbm(a) for a in args]
        kwargs = {k: _to_hbm(v) for k, v in kwargs.items()}
        previous, STATE.launch = STATE.launch, Launch(grid=self.grid)
        try:
            out = None
            for program in itertools.product(*(range(g) for g in self.grid)):
                STATE.launch.program, STATE.launch.allocated = program, 0
                result = self.fn(*args, **kwargs)
                out = result if out is None else out
        finally:
            STATE.launch = previous
        return tuple(map(_unwrap, out)) if isinstance(out, tuple) else _unwrap(out)


def _to_hbm(a: Any) -> Any:
    """A NumPy argument as a kernel sees it: an HBM tensor (constants pass through)."""
    return Tensor(np.asarray(a), SHARED_HBM) if isinstance(a, np.ndarray) else a


def _unwrap(t: Any) -> np.ndarray:
    if not isinstance(t, Tensor) or t.buffer is not SHARED_HBM:
        raise NkiRuleError("top-level-hbm", "a kernel returns tensors it allocated in "
                           f"nl.shared_hbm; got {t!r}")
    return t.data


def jit(fn: Callable[..., Any] | None = None, **_: Any) -> Any:
    """Mark a kernel (nki.jit); in the emulator calling it runs it on NumPy arrays."""
    if fn is None:
        return jit
    return fn if isinstance(fn, _Kernel) else _Kernel(fn)


def simulate(kernel: Callable[..., Any]) -> Callable[..., Any]:
    """A CPU-run version of `kernel` (nki.simulate): here the emulator itself."""
    return kernel if isinstance(kernel, _Kernel) else _Kernel(kernel)
