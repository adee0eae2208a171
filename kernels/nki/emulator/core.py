"""Tensors, buffers, launch state and the rule checks shared by the emulated `nki.language` and
`nki.isa`.

A `Tensor` is a NumPy array plus the memory it lives in. Indexing with integers and slices gives
a view in the same buffer, as an NKI tensor access does (an integer index keeps its dimension
with size 1, as in NKI), so an instruction writing into a view writes into the tensor. PSUM
tensors also carry a `written` mask for nc_matmul's auto-accumulation. Every rule the emulator
enforces raises `NkiRuleError` naming the rule.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from trainbench.kernels.nki.emulator.table import table

PMAX = 128
"""Partitions of SBUF and PSUM: the largest first (partition) dimension of an on-chip tile."""
PSUM_BANK_BYTES = 2048
"""Bytes per partition of one PSUM bank: 512 float32 (psum_fmax). A PSUM tile spans at most
the target's `psum_tile_bytes` (api.yaml): one bank on trn2, all eight on trn3."""
GEMM_STATIONARY_FMAX = 128
"""Largest free size of nc_matmul's stationary operand (the Tensor Engine's 128 PE columns)."""
GEMM_MOVING_FMAX = 512
"""gemm_moving_fmax: the trn2 limit of nc_matmul's moving free size (trn3: see api.yaml)."""


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


# --- launch state: target, SPMD program, engine registers ---------------------------------------

@dataclass
class Launch:
    """What one kernel launch shares across its instructions (and, for shared HBM, programs)."""

    grid: tuple[int, ...] = (1,)
    program: tuple[int, ...] = (0,)
    shared: list[Any] = field(default_factory=list)
    """shared_hbm tensors in allocation order: every program of the grid sees the same ones."""
    allocated: int = 0
    scalar_regs: np.ndarray = field(default_factory=lambda: np.full(PMAX, np.nan, np.float32))
    """The Scalar Engine's reduce_regs, one float32 per lane; NaN = state not yet defined."""


class _State:
    target: str = table()["default_target"]
    launch: Launch = Launch()


STATE = _State()


def target_limits() -> dict[str, Any]:
    """The api.yaml `targets` entry of the current target."""
    return table()["targets"][STATE.target]


def set_target(name: str) -> None:
    """Emulate the NeuronCore of `name` (trn2 | trn3, api.yaml `targets`)."""
    targets = table()["targets"]
    if name not in targets:
        raise ValueError(f"NKI emulator target={name!r}; expected one of {sorted(targets)}")
    STATE.target = name


@contextlib.contextmanager
def target(name: str) -> Iterator[None]:
    """Emulate `name` inside the block, then go back to the previous target."""
    previous = STATE.target
    set_target(name)
    try:
        yield
    finally:
        STATE.target = previous


class Tensor:
    """An NKI tensor: `data` (a NumPy array or a view of one) in `buffer`."""

    def __init__(self, data: np.ndarray, buffer: Buffer, name: str = "",
                 written: np.ndarray | None = None) -> None:
        self.data, self.buffer, self.name = data, buffer, name
        if written is None and buffer is PSUM:
            written = np.zeros(data.shape, bool)
        self.written = written

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def __getitem__(self, index: Any) -> "Tensor":
        index = index if isinstance(index, tuple) else (index,)
        view_index = []
        for i, size in zip(index, self.shape + (0,) * len(index)):
            if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer, slice)):
                raise NkiRuleError("static-access", f"index {i!r} of {self.describe()}: the "
                                   "emulator supports integer and slice accesses only")
            if isinstance(i, slice):
                if i.step not in (None, 1):
                    raise NkiRuleError("static-access", f"slice step {i.step} of "
                                       f"{self.describe()}: only unit steps are emulated")
                view_index.append(i)
            else:  # NKI keeps an integer-indexed dimension, with size 1
                if not 0 <= i < size:
                    raise NkiRuleError("static-access", f"index {i} out of range for a "
                                       f"dimension of size {size} of {self.describe()}")
                view_index.append(slice(int(i), int(i) + 1))
        view = tuple(view_index)
        written = None if self.written is None else self.written[view]
        return Tensor(self.data[view], self.buffer, self.name, written)

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


def free_size(t: Tensor) -> int:
    """Elements per partition."""
    return int(np.prod(t.shape[1:]))


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
        per_partition = free_size(t) * t.dtype.itemsize
        limit = target_limits()["psum_tile_bytes"]
        if per_partition > limit:
            raise NkiRuleError("psum-bank", f"{what}: {t.describe()} holds {per_partition} bytes "
                               f"per partition; a PSUM tile on {STATE.target} spans at most "
                               f"{limit} bytes ({limit // PSUM_BANK_BYTES} bank(s) of "
                               f"{PSUM_BANK_BYTES})")


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


def same_layout(what: str, ref: Tensor, *others: Tensor) -> None:
    """The docs' shape rule for elementwise instructions: the same partition size and the same
    number of elements per partition (free shapes may differ)."""
    for o in others:
        if o.shape[0] != ref.shape[0] or free_size(o) != free_size(ref):
            raise NkiRuleError("shape-mismatch", f"{what}: {o.describe()} and {ref.describe()} "
                               "differ in partitions or in elements per partition")


def flat(t: Tensor) -> np.ndarray:
    """t's values as float32 [partitions, elements per partition] (engines compute in float32)."""
    return t.data.astype(np.float32).reshape(t.shape[0], -1)


def scalar_or_vector(x: Any, partitions: int, what: str,
                     fp32: bool = False) -> np.ndarray | np.float32:
    """A constant, or a (partitions, 1) tile broadcast along the free dimension; `fp32`: the
    docs require a float32 tile."""
    if isinstance(x, Tensor):
        on_chip(x, what)
        if x.shape[0] != partitions or free_size(x) != 1:
            raise NkiRuleError("vector-operand", f"{what}: {x.describe()} must be a scalar or a "
                               f"({partitions}, 1) per-partition vector")
        if fp32 and x.dtype != np.float32:
            raise NkiRuleError("fp32-operand", f"{what}: {x.describe()} must be float32")
        return x.data.astype(np.float32).reshape(partitions, 1)
    if isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool):
        return np.float32(x)
    raise NkiRuleError("operand-kind", f"{what}: {x!r} is neither a tile nor a constant")


def write(dst: Tensor, value: np.ndarray) -> None:
    """Store `value` (dst's shape, or [partitions, elements]) into dst, rounding to dst's dtype
    (round to nearest even)."""
    dst.data[...] = np.asarray(value).reshape(dst.shape).astype(dst.dtype)
