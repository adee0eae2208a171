"""trainbench's NumPy emulation of the NKI subset its kernels use: `nki`, with `language`, `isa`.

Used when the official `nki` package (AWS's index; it ships `nki.simulate`) is not installed.
Same module-level names and call signatures as the real API for what the kernels call; every
instruction executes with NumPy semantics and enforces the NeuronCore rules of its API page
(partition size <= 128, buffer kinds, Tensor Engine operand and PSUM limits, float32 PSUM
accumulation, DMA only between HBM and SBUF), raising NkiRuleError with the rule's name.

Coverage, exactly what the kernels call, each following its page under
https://awsdocs-neuron.readthedocs-hosted.com/en/latest/nki/api/ (NKI 0.6, Neuron SDK 2.32):

  nki.jit, nki.simulate              generated/nki.jit.html, generated/nki.simulate.html
  nl.ndarray, nl.zeros               generated/nki.language.ndarray.html, ...zeros.html
  nl.sbuf, nl.psum, nl.hbm,          nki.language.html#memory-hierarchy
    nl.private_hbm, nl.shared_hbm
  nl.affine_range, nl.sequential_range, nl.static_range     generated/nki.language.<name>.html
  nl.tile_size (pmax, psum_fmax, gemm_stationary_fmax, gemm_moving_fmax)
                                     nki.language.tile_size.html
  nl.float32, nl.bfloat16, nl.int32  nki.language.html#data-types
  operator codes nl.add, subtract, multiply, divide, maximum, minimum, equal, greater_equal,
    exp, log, sigmoid, rsqrt, copy   nki.language.html#math-operations
  nisa.dma_copy                      generated/nki.isa.dma_copy.html
  nisa.nc_matmul                     generated/nki.isa.nc_matmul.html
  nisa.nc_transpose                  generated/nki.isa.nc_transpose.html
  nisa.activation                    generated/nki.isa.activation.html
  nisa.tensor_tensor                 generated/nki.isa.tensor_tensor.html
  nisa.tensor_scalar                 generated/nki.isa.tensor_scalar.html
  nisa.tensor_reduce                 generated/nki.isa.tensor_reduce.html
  nisa.tensor_copy                   generated/nki.isa.tensor_copy.html
  nisa.memset                        generated/nki.isa.memset.html
  nisa.iota                          generated/nki.isa.iota.html
  nisa.affine_select                 generated/nki.isa.affine_select.html

Rules (the name NkiRuleError carries): partition-size, tile-rank, psum-bank, buffer-kind,
static-access, operand-kind, engine-memory, dma-memory, matmul-memory, psum-dtype,
matmul-contraction, matmul-stationary-size, matmul-moving-size, transpose-memory,
transpose-size, transpose-dtype, vector-operand, reduce-axis, activation-reduce,
affine-pattern, unsupported-op, shape-mismatch, top-level-hbm. Not emulated: timing, engine
concurrency, SBUF capacity and allocation, the hardware's activation-function approximations.

A kernel gets its NumPy inputs as HBM tensors, allocates its outputs with
nl.ndarray(..., buffer=nl.shared_hbm) and returns them; the caller receives NumPy arrays.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from trainbench.kernels.nki.emulator import isa, language
from trainbench.kernels.nki.emulator.core import SHARED_HBM, NkiRuleError, Tensor

__all__ = ["NkiRuleError", "Tensor", "isa", "jit", "language", "simulate"]


class _Kernel:
    """A kernel function run by the emulator: NumPy arrays in, NumPy arrays out."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.fn(*map(_to_hbm, args), **{k: _to_hbm(v) for k, v in kwargs.items()})
        return tuple(map(_unwrap, out)) if isinstance(out, tuple) else _unwrap(out)


def _to_hbm(a: Any) -> Any:
    """A NumPy argument as a kernel sees it: an HBM tensor (constants pass through)."""
    return Tensor(np.asarray(a), SHARED_HBM) if isinstance(a, np.ndarray) else a


def _unwrap(t: Any) -> np.ndarray:
    if not isinstance(t, Tensor) or t.buffer.on_chip:
        raise NkiRuleError("top-level-hbm", f"a kernel returns HBM tensors; got {t!r}")
    return t.data


def jit(fn: Callable[..., Any] | None = None, **_: Any) -> Any:
    """Mark a kernel (nki.jit); in the emulator calling it runs it on NumPy arrays."""
    if fn is None:
        return jit
    return fn if isinstance(fn, _Kernel) else _Kernel(fn)


def simulate(kernel: Callable[..., Any]) -> Callable[..., Any]:
    """A CPU-run version of `kernel` (nki.simulate): here the emulator itself."""
    return kernel if isinstance(kernel, _Kernel) else _Kernel(kernel)
