"""Checks and launch helpers shared by the kernels."""

from __future__ import annotations

import bisect
import functools
from typing import Callable

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

INTERPRETING = isinstance(tl.standard.sum, InterpretedFunction)
"""Whether Triton's own library was set up for the interpreter when `triton` was imported."""


def check_runnable(name: str, *tensors: torch.Tensor) -> None:
    """Raise a clear error when the kernel cannot run on the tensors' device."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"{name}: inputs are on several devices {sorted(map(str, devices))}; "
                         "move them to one")
    device = devices.pop()
    # a torch.compile trace launches nothing: compiling for a GPU works on any host
    if device.type == "cpu" and not INTERPRETING and not torch.compiler.is_compiling():
        raise RuntimeError(f"{name}: tensors are on the CPU but Triton's interpreter is off; "
                           "set TRITON_INTERPRET=1 before triton is first imported, or use CUDA")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: device {device} is not supported; Triton runs on cuda "
                         "(or on the cpu in the interpreter)")


# Warps by the width of the block a program reduces over, Liger-Kernel's rule
# (liger_kernel/ops/utils.py, calculate_settings): 4 below 2048 elements, then 8, 16, 32.
_WARP_STEPS = (2048, 8192, 32768)
_WARPS = (4, 8, 16, 32)


def warps_for(block: int) -> int:
    """num_warps for a program whose row block holds `block` elements (a power of two)."""
    return _WARPS[bisect.bisect_right(_WARP_STEPS, block)]


def define_op(name: str, fake: Callable[..., object]) -> Callable[[Callable], Callable]:
    """Decorator: make `fn`, which launches Triton kernels through torch.library.wrap_triton,
    the torch custom op "trainbench::<name>" with the shape-only implementation `fake`.

    Compiled Triton uses torch.library.triton_op, so torch.compile sees the kernels themselves
    (Inductor launches them from its own code). The interpreter's kernels cannot be traced with
    fake tensors, so there the op is a torch.library.custom_op that torch.compile keeps opaque.
    Both trace with `fake`: outputs of fn's shapes, dtypes and (contiguous) strides, no data.
    """
    define = torch.library.custom_op if INTERPRETING else torch.library.triton_op

    def wrap(fn: Callable) -> Callable:
        op = define(f"trainbench::{name}", fn, mutates_args=())
        op.register_fake(fake)
        return op

    return wrap


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype active for `device`'s type, or None when autocast is off."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


@functools.cache
def program_slots(device: torch.device) -> int:
    """How many persistent programs fill the device: 4 per SM on a GPU, 4 in the interpreter."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(n)
