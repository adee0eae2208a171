"""SwiGLU gate, out = silu(gate) * up (Shazeer, 2020), elementwise over flattened inputs.

Forward and backward are one-pass elementwise kernels over BLOCK elements per program, computing
in float32: d gate = dout * up * s * (1 + gate * (1 - s)) with s = sigmoid(gate), d up = dout *
silu(gate). Only gate and up are saved; the backward recomputes the sigmoid.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from trainbench.kernels.triton._common import check_runnable

_BLOCK = 1024


@triton.jit
def _swiglu_fwd(a_ptr, b_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = a * tl.sigmoid(a) * b
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(dout_ptr, a_ptr, b_ptr, da_ptr, db_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(a)
    da = dout * b * s * (1.0 + a * (1.0 - s))
    db = dout * a * s
    tl.store(da_ptr + offs, da.to(da_ptr.dtype.element_ty), mask=mask)
    tl.store(db_ptr + offs, db.to(db_ptr.dtype.element_ty), mask=mask)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        gate, up = gate.contiguous(), up.contiguous()
        out = torch.empty(gate.shape, device=gate.device,
                          dtype=torch.promote_types(gate.dtype, up.dtype))
        n = gate.numel()
        _swiglu_fwd[(triton.cdiv(n, _BLOCK),)](gate, up, out, n, BLOCK=_BLOCK)
        ctx.save_for_backward(gate, up)
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        gate, up = ctx.saved_tensors
        dgate, dup = torch.empty_like(gate), torch.empty_like(up)
        n = gate.numel()
        _swiglu_bwd[(triton.cdiv(n, _BLOCK),)](dout.contiguous(), gate, up, dgate, dup, n,
                                               BLOCK=_BLOCK)
        return dgate, dup


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for two tensors of one shape; computed in float32, stored in their dtype."""
    check_runnable("swiglu", gate, up)
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} must have "
                         "the same shape (no broadcasting)")
    return _SwiGLU.apply(gate, up)
