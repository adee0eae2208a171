"""The part of `nki.isa` (`nisa`) that trainbench's kernels use, emulated with NumPy.

Each instruction follows its API page (NKI 0.6 / Neuron SDK 2.32), under
https://awsdocs-neuron.readthedocs-hosted.com/en/latest/nki/api/generated/nki.isa.<name>.html
with the destination `dst` first, as every NKI ISA call takes it. Engines compute in float32
(the Vector, Scalar and GpSimd engines cast their inputs to float32; the Tensor Engine
accumulates in float32) and round once when writing `dst`. Each instruction checks the rules of
its page that the kernels could break and raises NkiRuleError naming the rule.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from trainbench.kernels.nki.emulator import language as nl
from trainbench.kernels.nki.emulator.core import (GEMM_MOVING_FMAX, GEMM_STATIONARY_FMAX, PMAX,
                                                  PSUM, SBUF, NkiRuleError, Tensor, on_chip,
                                                  same_shape, scalar_or_vector, write)


def _f32(t: Tensor) -> np.ndarray:
    return t.data.astype(np.float32)


def dma_copy(dst: Tensor, src: Tensor, **_: Any) -> None:
    """dst = src on a DMA engine (nki.isa.dma_copy): between HBM and SBUF, never PSUM."""
    for t, what in ((dst, "dst"), (src, "src")):
        if not isinstance(t, Tensor):
            raise NkiRuleError("operand-kind", f"dma_copy {what}: {t!r} is not an NKI tensor")
        if t.buffer is PSUM:
            raise NkiRuleError("dma-memory", f"dma_copy {what}: {t.describe()} is in PSUM; DMA "
                               "moves data between HBM and SBUF only (copy PSUM to SBUF with "
                               "tensor_copy first)")
    if dst.buffer is SBUF:
        on_chip(dst, "dma_copy dst")
    if src.buffer is SBUF:
        on_chip(src, "dma_copy src")
    same_shape("dma_copy", dst, src)
    write(dst, src.data)


def nc_matmul(dst: Tensor, stationary: Tensor, moving: Tensor, is_stationary_onezero: bool = False,
              is_moving_onezero: bool = False, is_transpose: bool = False,
              accumulate: bool | None = None, **_: Any) -> None:
    """dst = stationary.T @ moving on the Tensor Engine (nki.isa.nc_matmul).

    The contraction runs over the partition dimension K of both operands (<= 128); stationary
    is [K, M <= 128], moving [K, N <= 512], dst a float32 PSUM tile [M, N]. `accumulate=True`
    adds to dst; otherwise dst is overwritten. The kernels accumulate in SBUF instead, so they
    never depend on PSUM's accumulation flags.
    """
    on_chip(dst, "nc_matmul dst")
    on_chip(stationary, "nc_matmul stationary")
    on_chip(moving, "nc_matmul moving")
    if stationary.buffer is not SBUF or moving.buffer is not SBUF:
        raise NkiRuleError("matmul-memory", "nc_matmul reads stationary and moving from SBUF; got "
                           f"{stationary.describe()} and {moving.describe()}")
    if dst.buffer is not PSUM:
        raise NkiRuleError("matmul-memory", f"nc_matmul writes PSUM; dst is {dst.describe()}")
    if dst.dtype != np.float32:
        raise NkiRuleError("psum-dtype", f"nc_matmul accumulates in float32; dst is "
                           f"{dst.describe()}")
    (k, m), (k2, n) = stationary.shape, moving.shape
    if k != k2:
        raise NkiRuleError("matmul-contraction", f"nc_matmul contraction (partition) sizes differ: "
                           f"stationary {stationary.shape}, moving {moving.shape}")
    if m > GEMM_STATIONARY_FMAX:
        raise NkiRuleError("matmul-stationary-size", f"nc_matmul stationary free size {m} > "
                           f"gemm_stationary_fmax {GEMM_STATIONARY_FMAX}")
    if n > GEMM_MOVING_FMAX:
        raise NkiRuleError("matmul-moving-size", f"nc_matmul moving free size {n} > "
                           f"gemm_moving_fmax {GEMM_MOVING_FMAX}")
    if dst.shape != (m, n):
        raise NkiRuleError("shape-mismatch", f"nc_matmul dst {dst.shape} must be (stationary "
                           f"free, moving free) = {(m, n)}")
    result = _f32(stationary).T @ _f32(moving)
    write(dst, dst.data + result if accumulate else result)


def nc_transpose(dst: Tensor, data: Tensor, **_: Any) -> None:
    """dst = data.T across partition and free axes on the Tensor Engine (nki.isa.nc_transpose).

    The Tensor Engine form: data is an SBUF tile of at most [128, 128]; dst is a PSUM tile of
    the transposed shape and of data's dtype (a transpose moves bits, it does not accumulate).
    """
    on_chip(dst, "nc_transpose dst")
    on_chip(data, "nc_transpose data")
    if data.buffer is not SBUF or dst.buffer is not PSUM:
        raise NkiRuleError("transpose-memory", "nc_transpose on the Tensor Engine reads SBUF and "
                           f"writes PSUM; got data {data.describe()}, dst {dst.describe()}")
    if len(data.shape) != 2 or data.shape[1] > PMAX:
        raise NkiRuleError("transpose-size", f"nc_transpose data {data.shape} must be 2-D with "
                           f"at most {PMAX} columns")
    if dst.shape != data.shape[::-1]:
        raise NkiRuleError("shape-mismatch", f"nc_transpose dst {dst.shape} must be "
                           f"{data.shape[::-1]}")
    if dst.dtype != data.dtype:
        raise NkiRuleError("transpose-dtype", f"nc_transpose dst {dst.describe()} must have "
                           f"data's dtype {data.dtype}")
    write(dst, data.data.T)


def activation(dst: Tensor, op: Callable, data: Tensor, bias: Tensor | float | None = None,
               scale: Tensor | float = 1.0, reduce_op: Callable | None = None,
               reduce_res: Tensor | None = None, **_: Any) -> None:
    """dst = op(data * scale + bias) on the Scalar Engine (nki.isa.activation).

    scale and bias are constants or (P, 1) per-partition vectors; with reduce_op=nl.add the
    per-partition sum of the result is written to reduce_res (P, 1).
    """
    on_chip(dst, "activation dst")
    on_chip(data, "activation data")
    same_shape("activation", data, dst)
    if not any(op is a for a in nl.ACTIVATIONS):
        raise NkiRuleError("unsupported-op", f"activation op {op!r} is not one the emulator "
                           "covers (exp, log, sigmoid, rsqrt, copy)")
    p = data.shape[0]
    x = _f32(data) * scalar_or_vector(scale, p, "activation scale")
    if bias is not None:
        x = x + scalar_or_vector(bias, p, "activation bias")
    y = op(x).astype(np.float32)
    if reduce_op is not None:
        if reduce_op is not nl.add or reduce_res is None:
            raise NkiRuleError("activation-reduce", "activation reduces with reduce_op=nl.add "
                               "into a reduce_res tile only")
        on_chip(reduce_res, "activation reduce_res")
        if reduce_res.shape != (p, 1):
            raise NkiRuleError("vector-operand", f"activation reduce_res {reduce_res.shape} "
                               f"must be ({p}, 1)")
        write(reduce_res, y.reshape(p, -1).sum(axis=1, keepdims=True))
    write(dst, y)


def _arith(op: Callable, what: str) -> Callable:
    if not any(op is a for a in nl.ARITHMETIC):
        raise NkiRuleError("unsupported-op", f"{what}: operator {op!r} is not one the emulator "
                           "covers")
    return op


def tensor_tensor(dst: Tensor, data1: Tensor, data2: Tensor, op: Callable, **_: Any) -> None:
    """dst = op(data1, data2) elementwise on the Vector Engine (nki.isa.tensor_tensor)."""
    on_chip(dst, "tensor_tensor dst")
    on_chip(data1, "tensor_tensor data1")
    on_chip(data2, "tensor_tensor data2")
    same_shape("tensor_tensor", dst, data1, data2)
    if data1.buffer is PSUM and data2.buffer is PSUM:
        raise NkiRuleError("engine-memory", "tensor_tensor: data1 and data2 cannot both be in "
                           "PSUM")
    write(dst, _arith(op, "tensor_tensor")(_f32(data1), _f32(data2)))


def tensor_scalar(dst: Tensor, data: Tensor, op0: Callable, operand0: Tensor | float,
                  reverse0: bool = False, op1: Callable | None = None,
                  operand1: Tensor | float | None = None, reverse1: bool = False,
                  **_: Any) -> None:
    """dst = (data op0 operand0) op1 operand1 (nki.isa.tensor_scalar).

    Operands are constants or (P, 1) vectors broadcast along the free dimension; reverseN swaps
    the inputs of opN.
    """
    on_chip(dst, "tensor_scalar dst")
    on_chip(data, "tensor_scalar data")
    same_shape("tensor_scalar", dst, data)
    p = data.shape[0]
    a = scalar_or_vector(operand0, p, "tensor_scalar operand0")
    f0 = _arith(op0, "tensor_scalar op0")
    x = _f32(data)
    y = f0(a, x) if reverse0 else f0(x, a)
    if op1 is not None:
        b = scalar_or_vector(operand1, p, "tensor_scalar operand1")
        f1 = _arith(op1, "tensor_scalar op1")
        y = f1(b, y) if reverse1 else f1(y, b)
    write(dst, np.asarray(y, np.float32))


def tensor_reduce(dst: Tensor, op: Callable, data: Tensor, axis: int | Sequence[int],
                  negate: bool = False, keepdims: bool = False, **_: Any) -> None:
    """dst = op-reduction of data over free axes (nki.isa.tensor_reduce); never the partition."""
    on_chip(dst, "tensor_reduce dst")
    on_chip(data, "tensor_reduce data")
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    ndim = len(data.shape)
    if 0 in axes or sorted(axes) != list(range(ndim - len(axes), ndim)):
        raise NkiRuleError("reduce-axis", f"tensor_reduce axis={axis}: the reduced axes must be "
                           f"the last free axes of the {ndim}-D tile, never axis 0 (partitions)")
    ufunc = {id(nl.add): np.add, id(nl.maximum): np.maximum, id(nl.minimum): np.minimum,
             id(nl.multiply): np.multiply}.get(id(op))
    if ufunc is None:
        raise NkiRuleError("unsupported-op", f"tensor_reduce op {op!r} is not one the emulator "
                           "covers (add, maximum, minimum, multiply)")
    y = ufunc.reduce(_f32(data), axis=axes, keepdims=keepdims)
    if negate:
        y = -y
    if dst.shape != y.shape:
        raise NkiRuleError("shape-mismatch", f"tensor_reduce dst {dst.shape} must be {y.shape}"
                           f" (keepdims={keepdims})")
    write(dst, y)


def tensor_copy(dst: Tensor, src: Tensor, **_: Any) -> None:
    """dst = src within SBUF/PSUM, with a cast to dst's dtype (nki.isa.tensor_copy)."""
    on_chip(dst, "tensor_copy dst")
    on_chip(src, "tensor_copy src")
    same_shape("tensor_copy", dst, src)
    write(dst, src.data.astype(np.float32) if src.dtype != dst.dtype else src.data)


def memset(dst: Tensor, value: float, **_: Any) -> None:
    """Fill dst with a constant (nki.isa.memset)."""
    on_chip(dst, "memset dst")
    write(dst, np.full(dst.shape, value, np.float32))


def _affine(shape: tuple[int, ...], pattern: Sequence[Sequence[int]], offset: int,
            channel_multiplier: int, what: str) -> np.ndarray:
    """offset + p * channel_multiplier + sum_d index_d * step_d over a (P, F) tile."""
    if len(shape) != 2 or len(pattern) != 1 or pattern[0][1] != shape[1]:
        raise NkiRuleError("affine-pattern", f"{what}: the emulator covers one free dimension, "
                           f"pattern [[step, {shape[-1]}]] on a 2-D tile; got {pattern} for "
                           f"{shape}")
    step = pattern[0][0]
    p = np.arange(shape[0], dtype=np.int64)[:, None]
    f = np.arange(shape[1], dtype=np.int64)[None, :]
    return offset + p * channel_multiplier + f * step


def iota(dst: Tensor, pattern: Sequence[Sequence[int]], offset: int, channel_multiplier: int = 0,
         **_: Any) -> None:
    """dst[p, x] = offset + p * channel_multiplier + x * step on GpSimd (nki.isa.iota)."""
    on_chip(dst, "iota dst")
    if dst.buffer is not SBUF:
        raise NkiRuleError("engine-memory", f"iota writes SBUF; dst is {dst.describe()}")
    write(dst, _affine(dst.shape, pattern, offset, channel_multiplier, "iota"))


def affine_select(dst: Tensor, pattern: Sequence[Sequence[int]], offset: int,
                  channel_multiplier: int, on_true_tile: Tensor, on_false_value: float,
                  cmp_op: Callable = nl.equal, **_: Any) -> None:
    """dst = on_true_tile where cmp_op(affine value, 0) else on_false_value (nki.isa.affine_select).

    With channel_multiplier=1, step=-1, cmp_op=nl.greater_equal this keeps the causal part of a
    score tile: (query index) - (key index) >= 0.
    """
    on_chip(dst, "affine_select dst")
    on_chip(on_true_tile, "affine_select on_true_tile")
    same_shape("affine_select", dst, on_true_tile)
    value = _affine(dst.shape, pattern, offset, channel_multiplier, "affine_select")
    keep = cmp_op(value, 0).astype(bool)
    write(dst, np.where(keep, _f32(on_true_tile), np.float32(on_false_value)))
