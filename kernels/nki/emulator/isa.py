"""The part of `nki.isa` (`nisa`) that trainbench's kernels use, emulated with NumPy.

Each instruction has the signature of its stub in nki/api/nki/isa/__init__.py (NKI 0.6.0 / SDK
2.32; transcribed in kernels/nki/api.yaml): the same parameters in the same order with the same
defaults and no catch-all, so an unknown keyword raises Python's TypeError as it does in NKI.
Engines compute in float32 and round once when writing `dst`. Each instruction checks the rules
of its docstring that a kernel could break and raises NkiRuleError naming the rule; documented
options the emulator does not execute (tiling mode, FP8 performance mode, ...) raise
"not-emulated" rather than being ignored.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Sequence

import ml_dtypes
import numpy as np

from trainbench.kernels.nki.emulator import language as nl
from trainbench.kernels.nki.emulator.core import (GEMM_STATIONARY_FMAX, PMAX, PSUM, SBUF, STATE,
                                                  NkiRuleError, Tensor, flat, free_size, on_chip,
                                                  same_layout, scalar_or_vector, target_limits,
                                                  write)
from trainbench.kernels.nki.emulator.table import table

_ENUMS = table()["enums"]
reduce_cmd = Enum("reduce_cmd", _ENUMS["reduce_cmd"]["members"])
engine = Enum("engine", _ENUMS["engine"]["members"])
dge_mode = Enum("dge_mode", _ENUMS["dge_mode"]["members"])
oob_mode = Enum("oob_mode", _ENUMS["oob_mode"]["members"])
matmul_perf_mode = Enum("matmul_perf_mode", _ENUMS["matmul_perf_mode"]["members"])
nc_version = Enum("nc_version", _ENUMS["nc_version"]["members"])
ENUMS = {"reduce_cmd": reduce_cmd, "engine": engine, "dge_mode": dge_mode, "oob_mode": oob_mode,
         "matmul_perf_mode": matmul_perf_mode, "nc_version": nc_version}


def get_nc_version() -> Enum:
    """The nc_version of the emulated target."""
    return nc_version[target_limits()["nc_version"]]


def _not_emulated(what: str, **options: Any) -> None:
    """Raise for a documented option set to a value the emulator does not execute."""
    for key, (value, covered) in options.items():
        if value not in covered:
            raise NkiRuleError("not-emulated", f"{what}: {key}={value!r} is documented but not "
                               f"emulated (emulated: {list(covered)})")


def _alu(op: Any, what: str) -> nl.Op:
    """An operator of the documented ALU table (tbl-aluop), else unsupported-op."""
    if not nl.is_alu(op):
        hint = (" (no divide instruction: use nisa.reciprocal and multiply)"
                if op is nl.divide else "")
        raise NkiRuleError("unsupported-op", f"{what}: {op!r} is not in the documented ALU "
                           f"operator table (nki.api.shared.rst, tbl-aluop){hint}")
    return op


def dma_copy(dst, src, priority=None, oob_mode=oob_mode.error, dge_mode=dge_mode.unknown,
             engine=engine.unknown, name=None) -> None:
    """dst = src on a DMA engine: HBM and SBUF, never PSUM; equal element counts; any dtypes
    (cast through float32)."""
    _not_emulated("dma_copy", priority=(priority, (None,)))
    for t, what in ((dst, "dst"), (src, "src")):
        if not isinstance(t, Tensor):
            raise NkiRuleError("operand-kind", f"dma_copy {what}: {t!r} is not an NKI tensor")
        if t.buffer is PSUM:
            raise NkiRuleError("dma-memory", f"dma_copy {what}: {t.describe()} is in PSUM; DMA "
                               "moves data between HBM and SBUF only (copy PSUM to SBUF with "
                               "tensor_copy first)")
        if t.buffer is SBUF:
            on_chip(t, f"dma_copy {what}")
    if dst.data.size != src.data.size:
        raise NkiRuleError("shape-mismatch", f"dma_copy: {src.describe()} and {dst.describe()} "
                           "hold different numbers of elements")
    value = src.data if src.dtype == dst.dtype else src.data.astype(np.float32)
    write(dst, value.reshape(-1))


def tensor_copy(dst, src, engine=engine.unknown, name=None) -> None:
    """dst = src within SBUF/PSUM, cast to dst's dtype; GpSimd cannot reach PSUM."""
    on_chip(dst, "tensor_copy dst")
    on_chip(src, "tensor_copy src")
    same_layout("tensor_copy", src, dst)
    if engine is globals()["engine"].gpsimd and PSUM in (dst.buffer, src.buffer):
        raise NkiRuleError("engine-memory", "tensor_copy on GpSimd cannot access PSUM")
    write(dst, src.data.reshape(src.shape[0], -1) if src.dtype == dst.dtype else flat(src))


def memset(dst, value, engine=engine.unknown, name=None) -> None:
    """Fill dst with a compile-time constant that dst's dtype can hold."""
    on_chip(dst, "memset dst")
    if np.issubdtype(dst.dtype, np.integer):
        info = np.iinfo(dst.dtype)
        if float(value) != int(value) or not info.min <= int(value) <= info.max:
            raise NkiRuleError("memset-value", f"memset value={value!r} is not a "
                               f"{dst.dtype} value (integers {info.min}..{info.max})")
    elif np.isfinite(value) and abs(value) > float(ml_dtypes.finfo(dst.dtype).max):
        raise NkiRuleError("memset-value", f"memset value={value!r} overflows {dst.dtype}")
    write(dst, np.full(dst.shape, value, np.float32))


def nc_matmul(dst, stationary, moving, is_stationary_onezero=False, is_moving_onezero=False,
              is_transpose=False, accumulate=None, tile_position=(), tile_size=(),
              perf_mode=matmul_perf_mode.none, name=None) -> None:
    """dst = stationary.T @ moving on the Tensor Engine.

    Contraction over the partition dimension K of both SBUF operands (<= 128); stationary
    [K, M <= 128], moving [K, N <= the target's limit], dst a PSUM tile [M, N] in a dtype the
    target allows. A float32 operand needs a float32 partner. accumulate=True adds to dst,
    False overwrites, None (default) overwrites where this PSUM location has not been written by
    nc_matmul yet and adds where it has.
    """
    _not_emulated("nc_matmul", is_transpose=(is_transpose, (False,)),
                  tile_position=(tuple(tile_position), ((),)),
                  tile_size=(tuple(tile_size), ((),)),
                  perf_mode=(perf_mode, (matmul_perf_mode.none,)))
    if accumulate not in (None, True, False):
        raise NkiRuleError("bad-value", f"nc_matmul accumulate={accumulate!r}; expected None, "
                           "True or False")
    on_chip(dst, "nc_matmul dst")
    on_chip(stationary, "nc_matmul stationary")
    on_chip(moving, "nc_matmul moving")
    if stationary.buffer is not SBUF or moving.buffer is not SBUF:
        raise NkiRuleError("matmul-memory", "nc_matmul reads stationary and moving from SBUF; got "
                           f"{stationary.describe()} and {moving.describe()}")
    if dst.buffer is not PSUM:
        raise NkiRuleError("matmul-memory", f"nc_matmul writes PSUM; dst is {dst.describe()}")
    limits = target_limits()
    if dst.dtype.name not in limits["matmul_dst_dtypes"]:
        raise NkiRuleError("psum-dtype", f"nc_matmul on {STATE.target} writes "
                           f"{limits['matmul_dst_dtypes']}; dst is {dst.describe()}")
    if (stationary.dtype == np.float32) != (moving.dtype == np.float32):
        raise NkiRuleError("matmul-fp32-pair", "nc_matmul: a float32 operand needs a float32 "
                           f"partner; got {stationary.describe()} and {moving.describe()}")
    k, m = stationary.shape[0], free_size(stationary)
    k2, n = moving.shape[0], free_size(moving)
    if k != k2:
        raise NkiRuleError("matmul-contraction", f"nc_matmul contraction (partition) sizes differ: "
                           f"stationary {stationary.shape}, moving {moving.shape}")
    if m > GEMM_STATIONARY_FMAX:
        raise NkiRuleError("matmul-stationary-size", f"nc_matmul stationary free size {m} > "
                           f"gemm_stationary_fmax {GEMM_STATIONARY_FMAX}")
    n_max = limits["matmul_moving_fmax"][dst.dtype.name]
    if n > n_max:
        raise NkiRuleError("matmul-moving-size", f"nc_matmul moving free size {n} > {n_max} on "
                           f"{STATE.target} with a {dst.dtype} dst")
    if dst.shape[0] != m or free_size(dst) != n:
        raise NkiRuleError("shape-mismatch", f"nc_matmul dst {dst.shape} must have {m} "
                           f"partitions and {n} elements per partition")
    result = (flat(stationary).T @ flat(moving)).reshape(dst.shape)
    add = dst.written if accumulate is None else np.full(dst.shape, bool(accumulate))
    write(dst, np.where(add, dst.data.astype(np.float32) + result, result))
    dst.written[...] = True


def nc_transpose(dst, data, engine=engine.unknown, name=None) -> None:
    """dst = data.T across partition and free axes: on the Tensor Engine (SBUF -> PSUM, up to
    [128, 128]); data's dtype kept."""
    _not_emulated("nc_transpose", engine=(engine, (globals()["engine"].unknown,
                                                   globals()["engine"].tensor)))
    on_chip(dst, "nc_transpose dst")
    on_chip(data, "nc_transpose data")
    if data.buffer is not SBUF or dst.buffer is not PSUM:
        raise NkiRuleError("transpose-memory", "nc_transpose on the Tensor Engine reads SBUF and "
                           f"writes PSUM; got data {data.describe()}, dst {dst.describe()}")
    p, f = data.shape[0], free_size(data)
    if f > PMAX:
        raise NkiRuleError("transpose-size", f"nc_transpose data {data.shape} has {f} > {PMAX} "
                           "elements per partition")
    if dst.shape[0] != f or free_size(dst) != p:
        raise NkiRuleError("shape-mismatch", f"nc_transpose dst {dst.shape} must be ({f}, {p})")
    if dst.dtype != data.dtype:
        raise NkiRuleError("transpose-dtype", f"nc_transpose dst {dst.describe()} must have "
                           f"data's dtype {data.dtype}")
    write(dst, data.data.reshape(p, f).T)


def tensor_tensor(dst, data1, data2, op, engine=engine.unknown, name=None) -> None:
    """dst = op(data1, data2) elementwise; not both inputs in PSUM."""
    on_chip(dst, "tensor_tensor dst")
    on_chip(data1, "tensor_tensor data1")
    on_chip(data2, "tensor_tensor data2")
    same_layout("tensor_tensor", data1, data2, dst)
    if data1.buffer is PSUM and data2.buffer is PSUM:
        raise NkiRuleError("engine-memory", "tensor_tensor: data1 and data2 cannot both be in "
                           "PSUM")
    write(dst, _alu(op, "tensor_tensor op")(flat(data1), flat(data2)))


def tensor_scalar(dst, data, op0, operand0, reverse0=False, op1=None, operand1=None,
                  reverse1=False, engine=engine.unknown, name=None) -> None:
    """dst = (data op0 operand0) op1 operand1; operands are constants or float32 (P, 1) tiles;
    op1 and operand1 are None together when unused; reverseN swaps opN's inputs."""
    on_chip(dst, "tensor_scalar dst")
    on_chip(data, "tensor_scalar data")
    same_layout("tensor_scalar", data, dst)
    if (op1 is None) != (operand1 is None):
        raise NkiRuleError("bad-value", "tensor_scalar: op1 and operand1 must both be given or "
                           "both be None")
    p = data.shape[0]
    a = scalar_or_vector(operand0, p, "tensor_scalar operand0", fp32=True)
    f0 = _alu(op0, "tensor_scalar op0")
    x = flat(data)
    y = f0(a, x) if reverse0 else f0(x, a)
    if op1 is not None:
        b = scalar_or_vector(operand1, p, "tensor_scalar operand1", fp32=True)
        f1 = _alu(op1, "tensor_scalar op1")
        y = f1(b, y) if reverse1 else f1(y, b)
    write(dst, np.asarray(y, np.float32))


def tensor_reduce(dst, op, data, axis, negate=False, keepdims=False, name=None) -> None:
    """dst = op-reduction of data over its last free axes (never the partition); dst holds the
    result's elements per partition (keepdims only shapes the result, as in NumPy)."""
    on_chip(dst, "tensor_reduce dst")
    on_chip(data, "tensor_reduce data")
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    ndim = len(data.shape)
    if 0 in axes or sorted(axes) != list(range(ndim - len(axes), ndim)):
        raise NkiRuleError("reduce-axis", f"tensor_reduce axis={axis}: the reduced axes must be "
                           f"the last free axes of the {ndim}-D tile, never axis 0 (partitions)")
    f = _alu(op, "tensor_reduce op")
    if op.name not in nl.REDUCTION_OPS:
        raise NkiRuleError("unsupported-op", f"tensor_reduce op {op!r} is not a legal reduction "
                           "op in tbl-aluop")
    if not isinstance(f.fn, np.ufunc):
        raise NkiRuleError("not-emulated", f"tensor_reduce op {op!r} is not emulated")
    y = f.fn.reduce(data.data.astype(np.float32), axis=axes, keepdims=keepdims)
    if negate:
        y = -y
    if dst.shape[0] != data.shape[0] or free_size(dst) != int(np.prod(y.shape[1:])):
        raise NkiRuleError("shape-mismatch", f"tensor_reduce dst {dst.shape} must hold "
                           f"{int(np.prod(y.shape[1:]))} elements per partition for axis={axis}")
    write(dst, y)


def _scalar_engine_reduce(what: str, y: np.ndarray, reduce_op: Any, reduce_res: Any,
                          cmd: Enum) -> None:
    """The Scalar Engine's reduce_regs under `cmd`, then read out into reduce_res if given:
    reset zeroes them, reduce adds this call's per-lane sum, reset_reduce does both, idle
    leaves them as they were (so reduce_res receives the registers, not this call's sum)."""
    if cmd not in (reduce_cmd.idle, reduce_cmd.reset, reduce_cmd.reduce, reduce_cmd.reset_reduce):
        raise NkiRuleError("bad-value", f"{what} reduce_cmd={cmd!r}; expected idle, reset, "
                           "reduce or reset_reduce")
    if reduce_op is not None and reduce_op is not nl.add:
        raise NkiRuleError("activation-reduce", f"{what} reduce_op must be nl.add; got "
                           f"{reduce_op!r}")
    p = y.shape[0]
    regs = STATE.launch.scalar_regs
    if cmd in (reduce_cmd.reset, reduce_cmd.reset_reduce):
        regs[:p] = 0.0
    if cmd in (reduce_cmd.reduce, reduce_cmd.reset_reduce):
        if reduce_op is None:
            raise NkiRuleError("activation-reduce", f"{what} reduce_cmd={cmd.name} needs "
                               "reduce_op=nl.add")
        regs[:p] += y.sum(axis=1, dtype=np.float32)
    if reduce_res is not None:
        on_chip(reduce_res, f"{what} reduce_res")
        if reduce_res.shape[0] != p or free_size(reduce_res) != 1:
            raise NkiRuleError("vector-operand", f"{what} reduce_res {reduce_res.shape} must be "
                               f"({p}, 1)")
        write(reduce_res, regs[:p].copy())


def _activate(what: str, dst: Tensor, op: Any, data: Tensor, bias: Any, scale: Any) -> np.ndarray:
    on_chip(dst, f"{what} dst")
    on_chip(data, f"{what} data")
    same_layout(what, data, dst)
    if not nl.is_activation(op):
        raise NkiRuleError("unsupported-op", f"{what} op {op!r} is not in the documented "
                           "activation table (nki.api.shared.rst, tbl-act-func)")
    p = data.shape[0]
    x = flat(data) * scalar_or_vector(scale, p, f"{what} scale", fp32=True)
    if bias is not None:  # a scalar bias needs NeuronCore-v3+: every target here
        x = x + scalar_or_vector(bias, p, f"{what} bias")
    y = np.asarray(op(x), np.float32)
    write(dst, y)
    return y


def activation(dst, op, data, bias=None, scale=1.0, reduce_op=None, reduce_res=None,
               reduce_cmd=reduce_cmd.idle, name=None) -> None:
    """dst = op(data * scale + bias) on the Scalar Engine, scale a constant or a float32 (P, 1)
    tile, bias a constant or a (P, 1) tile; then reduce_regs per `reduce_cmd` and, with
    reduce_res, their read-out (see _scalar_engine_reduce)."""
    y = _activate("activation", dst, op, data, bias, scale)
    _scalar_engine_reduce("activation", y, reduce_op, reduce_res, reduce_cmd)


def activation_reduce(dst, op, data, reduce_op, reduce_res, bias=None, scale=1.0,
                      name=None) -> None:
    """activation with reduce_cmd=reset_reduce: reduce_res = this call's per-partition sum."""
    y = _activate("activation_reduce", dst, op, data, bias, scale)
    _scalar_engine_reduce("activation_reduce", y, reduce_op, reduce_res,
                          globals()["reduce_cmd"].reset_reduce)


def reciprocal(dst, data, name=None) -> None:
    """dst = 1 / data on the Vector Engine, in float32."""
    on_chip(dst, "reciprocal dst")
    on_chip(data, "reciprocal data")
    same_layout("reciprocal", data, dst)
    write(dst, np.float32(1.0) / flat(data))


def _affine(dst: Tensor, pattern: Sequence[Sequence[int]], offset: int,
            channel_multiplier: int, what: str) -> np.ndarray:
    """offset + p * channel_multiplier + sum_d index_d * step_d, as [P, elements]."""
    sizes = [int(num) for _, num in pattern]
    if not 1 <= len(pattern) <= 4 or int(np.prod(sizes)) != free_size(dst):
        raise NkiRuleError("affine-pattern", f"{what}: pattern {pattern} (up to 4 [step, num] "
                           f"pairs) must cover the {free_size(dst)} elements per partition of "
                           f"{dst.describe()}")
    value = np.zeros(sizes, np.int64)
    for d, idx in enumerate(np.indices(sizes)):
        value += idx * int(pattern[d][0])
    p = np.arange(dst.shape[0], dtype=np.int64)[:, None]
    return offset + p * channel_multiplier + value.reshape(1, -1)


def iota(dst, pattern, offset=0, channel_multiplier=0, name=None) -> None:
    """dst[p, x] = offset + p * channel_multiplier + sum(index * step) on GpSimd, into SBUF."""
    on_chip(dst, "iota dst")
    if dst.buffer is not SBUF:
        raise NkiRuleError("engine-memory", f"iota writes SBUF; dst is {dst.describe()}")
    write(dst, _affine(dst, pattern, offset, channel_multiplier, "iota"))


def affine_select(dst, pattern, channel_multiplier, on_true_tile, on_false_value,
                  cmp_op=nl.equal, offset=0, name=None) -> None:
    """dst = on_true_tile where cmp_op(affine value, 0) else on_false_value, on GpSimd: dst and
    on_true_tile in SBUF, on_false_value a float32 constant.

    With channel_multiplier=1, step=-1, cmp_op=nl.greater_equal this keeps the causal part of a
    score tile: (query index) - (key index) >= 0.
    """
    on_chip(dst, "affine_select dst")
    on_chip(on_true_tile, "affine_select on_true_tile")
    if dst.buffer is not SBUF or on_true_tile.buffer is not SBUF:
        raise NkiRuleError("engine-memory", "affine_select reads and writes SBUF only; got "
                           f"dst {dst.describe()}, on_true_tile {on_true_tile.describe()}")
    same_layout("affine_select", on_true_tile, dst)
    if (not isinstance(on_false_value, (int, float, np.floating)) or
            (np.isfinite(on_false_value) and not np.isfinite(np.float32(on_false_value)))):
        raise NkiRuleError("fp32-operand", f"affine_select on_false_value={on_false_value!r} "
                           "must be a float32 constant")
    value = _affine(dst, pattern, offset, channel_multiplier, "affine_select")
    keep = _alu(cmp_op, "affine_select cmp_op")(value, 0).astype(bool)
    write(dst, np.where(keep, flat(on_true_tile), np.float32(on_false_value)))
