"""RMSNorm, y = x / sqrt(mean(x**2) + eps) * w over the last dim (Zhang & Sennrich, 2019).

Forward: one program normalizes a tile of BLOCK_M rows at once (the whole row fits one block),
with the mean square and its reciprocal root in float32; it saves rstd [M] for the backward.
Backward: persistent programs walk the rows with a grid stride; each computes
dx = rstd * (dxhat - xhat * mean(dxhat * xhat)), dxhat = dy * w, for its rows and sums
dy * xhat into a float32 partial of dw; the partials [programs, D] are summed by torch.sum.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from trainbench.kernels.triton._common import check_runnable, next_pow2, program_slots

_TILE = 4096  # elements of one [BLOCK_M, BLOCK_D] tile: rows per program = _TILE // BLOCK_D


@triton.jit
def _rmsnorm_fwd(x_ptr, w_ptr, y_ptr, rstd_ptr, M, D, eps,
                 BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < M) & (cols[None, :] < D)
    offs = rows[:, None] * D + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_M, BLOCK_D)
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / D + eps)  # (BLOCK_M,)
    y = x * rstd[:, None] * w[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=rows < M)


@triton.jit
def _rmsnorm_bwd(dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_part_ptr, M, D,
                 BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for start in range(pid * BLOCK_M, M, tl.num_programs(0) * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < M) & (cols[None, :] < D)
        offs = rows[:, None] * D + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=rows < M, other=0.0)
        xhat = x * rstd[:, None]
        dxhat = dy * w[None, :]
        dx = rstd[:, None] * (dxhat - xhat * (tl.sum(dxhat * xhat, axis=1) / D)[:, None])
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, axis=0)
    tl.store(dw_part_ptr + pid * D + cols, dw, mask=cols < D)


def _blocks(D: int) -> tuple[int, int]:
    block_d = next_pow2(D)
    return max(1, _TILE // block_d), block_d


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()  # (M, D)
        weight = weight.contiguous()
        M, D = x2.shape
        y = torch.empty_like(x2)
        rstd = torch.empty(M, device=x.device, dtype=torch.float32)
        block_m, block_d = _blocks(D)
        _rmsnorm_fwd[(triton.cdiv(M, block_m),)](x2, weight, y, rstd, M, D, eps,
                                                 BLOCK_M=block_m, BLOCK_D=block_d)
        ctx.save_for_backward(x2, weight, rstd)
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, weight, rstd = ctx.saved_tensors
        M, D = x2.shape
        dy2 = dy.reshape(M, D).contiguous()
        dx = torch.empty_like(x2)
        block_m, block_d = _blocks(D)
        programs = min(triton.cdiv(M, block_m), program_slots(x2.device))
        dw_part = torch.empty(programs, D, device=x2.device, dtype=torch.float32)
        _rmsnorm_bwd[(programs,)](dy2, x2, weight, rstd, dx, dw_part, M, D,
                                  BLOCK_M=block_m, BLOCK_D=block_d)
        return dx.reshape(dy.shape), dw_part.sum(0).to(weight.dtype), None


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., D] / sqrt(mean(x**2, -1) + eps) * weight [D]; float32 statistics, x's dtype out."""
    check_runnable("rmsnorm", x, weight)
    if weight.ndim != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"rmsnorm: weight shape {tuple(weight.shape)} must be "
                         f"({x.shape[-1]},), the last dim of x {tuple(x.shape)}")
    return _RMSNorm.apply(x, weight, eps)
