"""Tensors, buffers and the rule checks shared by the emulated `nki.language` and `nki.isa`.

A `Tensor` is a NumPy array plus the memory it lives in. Indexing with integers and slices gives
a view in the same buffer, as an NKI tensor access does, so an instruction writing into a view
writes into the tensor. Every rule the emulator enforces raises `NkiRuleError` naming the rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PMAX = 128
"""Partitions of SBUF and PSUM: the largest first (partition) dimension of an on-chip tile."""
PSUM_BANK_BYTES = 2048
"""Bytes per partition of one PSUM bank: 512 float32, the largest free size of a PSUM tile."""
GEMM_STATIONARY_FMAX = 128
"""Largest free size of nc_matmul's stationary operand (the Tensor Engine's 128 PE columns)."""
GEMM_MOVING_FMAX = 512
"""Largest free size of nc_matmul's moving operand."""


class NkiRuleError(Exception):
    """A kernel broke a NeuronCore rule; `rule` is the rule's short name, the message says how."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"[{rule}] {message}")
        self.rule = rule


class Buffer:
    """A memory kind: `nl.sbuf`, `nl.psum`, `nl.hbm` / `nl.private_hbm` or `nl.shared_hbm`."""

    def __init__(self, name: str, on_chip: bool) -> None:
        self.name, self.on_chip = name, on_chip

    def __repr__(self) -> str:
        return f"nl.{self.name}"


SBUF = Buffer("sbuf", on_chip=True)
PSUM = Buffer("psum", on_chip=True)
PRIVATE_HBM = Buffer("private_hbm", on_chip=False)
SHARED_HBM = Buffer("shared_hbm", on_chip=False)


class Tensor:
    """An NKI tensor: `data` (a NumPy array or a view of one) in `buffer`."""

    def __init__(self, data: np.ndarray, buffer: Buffer, name: str = "") -> None:
        self.data, self.buffer, self.name = data, buffer, name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def __getitem__(self, index: Any) -> "Tensor":
        index = index if isinstance(index, tuple) else (index,)
        for i in index:
            if not isinstance(i, (int, np.integer, slice)) and i is not Ellipsis:
                raise NkiRuleError("static-access", f"index {i!r} of {self.describe()}: the "
                                   "emulator supports integer and slice accesses only")
            if isinstance(i, slice) and i.step not in (None, 1):
                raise NkiRuleError("static-access", f"slice step {i.step} of {self.describe()}: "
                                   "only unit steps are emulated")
        view = self.data[index]
        if self.buffer.on_chip and view.ndim < 2:
            raise NkiRuleError("tile-rank", f"{self.describe()}[{index}] has rank {view.ndim}; "
                               "an SBUF/PSUM tile keeps its partition and a free dimension "
                               "(index [a:b, c] as [a:b, c:c+1])")
        return Tensor(view, self.buffer, self.name)

    def describe(self) -> str:
        label = f" '{self.name}'" if self.name else ""
        return f"{self.buffer.name} tensor{label} {self.shape} {self.dtype}"

    def __repr__(self) -> str:
        return f"Tensor({self.describe()})"


def poison(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A new array filled with NaN (floats) or the minimum integer, so unwritten data shows."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return np.full(shape, np.iinfo(dtype).min, dtype)
    return np.full(shape, np.nan, dtype)


def check_tile(t: Tensor, what: str) -> None:
    """Shape rules of an on-chip tile: rank >= 2, partition size <= 128, PSUM bank size."""
    if not t.buffer.on_chip:
        return
    if len(t.shape) < 2:
        raise NkiRuleError("tile-rank", f"{what}: {t.describe()} has rank {len(t.shape)}; an "
                           "SBUF/PSUM tile needs a partition and at least one free dimension")
    if t.shape[0] > PMAX:
        raise NkiRuleError("partition-size", f"{what}: {t.describe()} has {t.shape[0]} "
                           f"partitions; tile_size.pmax is {PMAX}")
    if t.buffer is PSUM:
        per_partition = int(np.prod(t.shape[1:])) * t.dtype.itemsize
        if per_partition > PSUM_BANK_BYTES:
            raise NkiRuleError("psum-bank", f"{what}: {t.describe()} holds {per_partition} bytes "
                               f"per partition; a PSUM tile fits one {PSUM_BANK_BYTES}-byte bank "
                               "(psum_fmax = 512 float32)")


def on_chip(t: Any, what: str) -> Tensor:
    """A compute-engine operand: an SBUF or PSUM tile (engines cannot address HBM)."""
    if not isinstance(t, Tensor):
        raise NkiRuleError("operand-kind", f"{what}: got {type(t).__name__}, expected an NKI "
                           "tile")
    if not t.buffer.on_chip:
        raise NkiRuleError("engine-memory", f"{what}: {t.describe()} is in HBM; compute engines "
                           "read and write only SBUF and PSUM, so move it with dma_copy first")
    check_tile(t, what)
    return t


def same_shape(what: str, ref: Tensor, *others: Tensor) -> None:
    for o in others:
        if o.shape != ref.shape:
            raise NkiRuleError("shape-mismatch", f"{what}: {o.describe()} does not match "
                               f"{ref.describe()}")


def scalar_or_vector(x: Any, partitions: int, what: str) -> np.ndarray | float:
    """A float constant, or a (partitions, 1) tile broadcast along the free dimension."""
    if isinstance(x, Tensor):
        on_chip(x, what)
        if x.shape != (partitions, 1):
            raise NkiRuleError("vector-operand", f"{what}: {x.describe()} must be a scalar or a "
                               f"({partitions}, 1) per-partition vector")
        return x.data.astype(np.float32)
    if isinstance(x, (int, float, np.floating, np.integer)):
        return np.float32(x)
    raise NkiRuleError("operand-kind", f"{what}: {x!r} is neither a tile nor a constant")


def write(dst: Tensor, value: np.ndarray) -> None:
    """Store `value` into `dst`, rounding to dst's dtype (round to nearest even)."""
    dst.data[...] = value.astype(dst.dtype)
