"""SwiGLU gate, out = silu(gate) * up (Shazeer, 2020), elementwise over flattened inputs.

Forward and backward are one-pass elementwise kernels over BLOCK elements per program, computing
in float32: d gate = dout * up * s * (1 + gate * (1 - s)) with s = sigmoid(gate), d up = dout *
silu(gate). Only gate and up are saved; the backward recomputes the sigmoid. A program's first
element is offset in int64 (tokens x d_ff passes 2**31 at about 150k tokens of Llama 3 8B); the
offsets within its block stay int32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from trainbench.kernels.triton._common import check_runnable, define_op

_BLOCK = 1024


@triton.jit
def _block(n, BLOCK: tl.constexpr):
    """This program's int64 first element, its int32 offsets and their mask."""
    base = tl.cast(tl.program_id(0), tl.int64) * BLOCK
    offs = tl.arange(0, BLOCK)
    return base, offs, offs < tl.cast(tl.minimum(n - base, BLOCK), tl.int32)


@triton.jit
def _swiglu_fwd(a_ptr, b_ptr, out_ptr, n, BLOCK: tl.constexpr):
    base, offs, mask = _block(n, BLOCK)
    a = tl.load(a_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    out = a * tl.sigmoid(a) * b
    tl.store(out_ptr + base + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(dout_ptr, a_ptr, b_ptr, da_ptr, db_ptr, n, BLOCK: tl.constexpr):
    base, offs, mask = _block(n, BLOCK)
    dout = tl.load(dout_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(a)
    da = dout * b * s * (1.0 + a * (1.0 - s))
    db = dout * a * s
    tl.store(da_ptr + base + offs, da.to(da_ptr.dtype.element_ty), mask=mask)
    tl.store(db_ptr + base + offs, db.to(db_ptr.dtype.element_ty), mask=mask)


def _fwd_fake(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return gate.new_empty(gate.shape, dtype=torch.promote_types(gate.dtype, up.dtype))


@define_op("swiglu_fwd", _fwd_fake)
def _fwd(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty(gate.shape, device=gate.device,
                      dtype=torch.promote_types(gate.dtype, up.dtype))
    n = gate.numel()
    wrap_triton(_swiglu_fwd)[(triton.cdiv(n, _BLOCK),)](gate, up, out, n, BLOCK=_BLOCK)
    return out


def _bwd_fake(dout: torch.Tensor, gate: torch.Tensor, up: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


@define_op("swiglu_bwd", _bwd_fake)
def _bwd(dout: torch.Tensor, gate: torch.Tensor, up: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor]:
    gate, up = gate.contiguous(), up.contiguous()
    dgate, dup = torch.empty_like(gate), torch.empty_like(up)
    n = gate.numel()
    wrap_triton(_swiglu_bwd)[(triton.cdiv(n, _BLOCK),)](dout.contiguous(), gate, up, dgate, dup,
                                                        n, BLOCK=_BLOCK)
    return dgate, dup


def _setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, dout: torch.Tensor):
    return _bwd(dout, *ctx.saved_tensors)


_fwd.register_autograd(_backward, setup_context=_setup_context)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for two tensors of one shape; computed in float32, stored in their dtype."""
    check_runnable("swiglu", gate, up)
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} must have "
                         "the same shape (no broadcasting)")
    return _fwd(gate, up)
