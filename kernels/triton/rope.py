"""Rotary position embedding in Hugging Face Llama's half-split ("rotate_half") layout.

y = x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1), x1 and x2 the two halves
of the head dim, and tables cos, sin [T, D]. Written per half:
    y1 = x1 * cos1 - x2 * sin1,        y2 = x2 * cos2 + x1 * sin2.
The backward is the transpose rotation dx = dy * cos - rotate_half(dy * sin):
    dx1 = dy1 * cos1 + dy2 * sin2,     dx2 = dy2 * cos2 - dy1 * sin1,
i.e. the forward with (sin1, sin2) replaced by (-sin2, -sin1), so one kernel does both. A program
rotates BLOCK_R rows of x viewed as [B*T*H, D]; row r sits at position (r // H) % T. Computed in
float32; the tables are constants and get no gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from trainbench.kernels.triton._common import check_runnable, next_pow2

_TILE = 4096  # elements of one [BLOCK_R, BLOCK_HALF] tile


@triton.jit
def _rope(x_ptr, cos_ptr, sin_ptr, y_ptr, R, T, H, D,
          BACKWARD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_HALF: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_HALF)
    half = D // 2
    mask = (rows[:, None] < R) & (cols[None, :] < half)
    pos = (rows // H) % T
    x_offs = rows[:, None] * D + cols[None, :]  # first half; the second is + half
    t_offs = pos[:, None] * D + cols[None, :]
    x1 = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + x_offs + half, mask=mask, other=0.0).to(tl.float32)
    cos1 = tl.load(cos_ptr + t_offs, mask=mask, other=0.0).to(tl.float32)
    cos2 = tl.load(cos_ptr + t_offs + half, mask=mask, other=0.0).to(tl.float32)
    sin1 = tl.load(sin_ptr + t_offs, mask=mask, other=0.0).to(tl.float32)
    sin2 = tl.load(sin_ptr + t_offs + half, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:  # the transpose rotation
        s1 = -sin2
        s2 = -sin1
    else:
        s1 = sin1
        s2 = sin2
    y1 = x1 * cos1 - x2 * s1
    y2 = x2 * cos2 + x1 * s2
    tl.store(y_ptr + x_offs, y1.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + x_offs + half, y2.to(y_ptr.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool) -> torch.Tensor:
    B, T, H, D = x.shape
    x = x.contiguous()
    y = torch.empty_like(x)
    R = B * T * H
    block_half = next_pow2(D // 2)
    block_r = max(1, _TILE // block_half)
    _rope[(triton.cdiv(R, block_r),)](x, cos, sin, y, R, T, H, D, BACKWARD=backward,
                                      BLOCK_R=block_r, BLOCK_HALF=block_half)
    return y


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        cos, sin = cos.contiguous(), sin.contiguous()
        ctx.save_for_backward(cos, sin)
        return _launch(x, cos, sin, backward=False)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return _launch(dy, cos, sin, backward=True), None, None


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, D] by position with tables cos, sin [T, D] (HF rotate_half layout)."""
    check_runnable("rope", x, cos, sin)
    if x.ndim != 4 or x.shape[-1] % 2:
        raise ValueError(f"rope: x must be [B, T, H, D] with D even; got {tuple(x.shape)}")
    T, D = x.shape[1], x.shape[3]
    for name, table in (("cos", cos), ("sin", sin)):
        if tuple(table.shape) != (T, D):
            raise ValueError(f"rope: {name} shape {tuple(table.shape)} must be (T, D) = {(T, D)}")
    return _Rope.apply(x, cos, sin)
