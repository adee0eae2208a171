"""RMSNorm, y = x / sqrt(mean(x**2) + eps) * w over the last dim (Zhang & Sennrich, 2019).

Forward: one program normalizes a tile of BLOCK_M rows at once (the whole row fits one block),
with the mean square and its reciprocal root in float32; it saves rstd [M] for the backward.
Backward: persistent programs walk the rows with a grid stride; each computes
dx = rstd * (dxhat - xhat * mean(dxhat * xhat)), dxhat = dy * w, for its rows and sums
dy * xhat into a float32 partial of dw; the partials [programs, D] are summed by torch.sum.
A tile's first element offset is formed once in int64 (M * D may pass 2**31); offsets within the
tile stay int32. `eps` is cast to float32 on entry, so a float64 scalar (Inductor passes Python
floats as fp64) does not turn the tile's arithmetic into fp64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from trainbench.kernels.triton._common import (check_runnable, define_op, next_pow2,
                                                program_slots, warps_for)

_TILE = 4096  # elements of one [BLOCK_M, BLOCK_D] tile: rows per program = _TILE // BLOCK_D


@triton.jit
def _rmsnorm_fwd(x_ptr, w_ptr, y_ptr, rstd_ptr, M, D, eps,
                 BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    eps = tl.cast(eps, tl.float32)
    row0 = tl.program_id(0) * BLOCK_M
    base = tl.cast(row0, tl.int64) * D  # the tile's first element
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (row0 + rows[:, None] < M) & (cols[None, :] < D)
    offs = rows[:, None] * D + cols[None, :]  # within the tile: int32
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_M, BLOCK_D)
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / D + eps)  # (BLOCK_M,)
    y = x * rstd[:, None] * w[None, :]
    tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + row0 + rows, rstd, mask=row0 + rows < M)


@triton.jit
def _rmsnorm_bwd(dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_part_ptr, M, D,
                 BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_D,), dtype=tl.float32)
    rows = tl.arange(0, BLOCK_M)
    offs = rows[:, None] * D + cols[None, :]  # within a tile: int32
    for row0 in range(pid * BLOCK_M, M, tl.num_programs(0) * BLOCK_M):
        base = tl.cast(row0, tl.int64) * D
        mask = (row0 + rows[:, None] < M) & (cols[None, :] < D)
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row0 + rows, mask=row0 + rows < M, other=0.0)
        xhat = x * rstd[:, None]
        dxhat = dy * w[None, :]
        dx = rstd[:, None] * (dxhat - xhat * (tl.sum(dxhat * xhat, axis=1) / D)[:, None])
        tl.store(dx_ptr + base + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, axis=0)
    tl.store(dw_part_ptr + pid * D + cols, dw, mask=cols < D)


def launch_config(D: int) -> dict[str, int]:
    """BLOCK_M rows of BLOCK_D columns per program, and num_warps by the row width."""
    block_d = next_pow2(D)
    return {"BLOCK_M": max(1, _TILE // block_d), "BLOCK_D": block_d,
            "num_warps": warps_for(block_d)}


def _fwd_fake(x: torch.Tensor, weight: torch.Tensor, eps: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    rows = x.numel() // x.shape[-1]
    return x.new_empty(x.shape), x.new_empty(rows, dtype=torch.float32)


@define_op("rmsnorm_fwd", _fwd_fake)
def _fwd(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """y [..., D] and rstd [M] (float32), M = x.numel() // D."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()  # (M, D)
    M, D = x2.shape
    y = torch.empty_like(x2)
    rstd = torch.empty(M, device=x.device, dtype=torch.float32)
    cfg = launch_config(D)
    wrap_triton(_rmsnorm_fwd)[(triton.cdiv(M, cfg["BLOCK_M"]),)](
        x2, weight.contiguous(), y, rstd, M, D, eps, **cfg)
    return y.view(x.shape), rstd


def _bwd_fake(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


@define_op("rmsnorm_bwd", _bwd_fake)
def _bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """dx (x's dtype and shape) and dweight (weight's dtype)."""
    D = x.shape[-1]
    x2 = x.reshape(-1, D).contiguous()
    dy2 = dy.reshape(-1, D).contiguous()
    M = x2.shape[0]
    dx = torch.empty_like(x2)
    cfg = launch_config(D)
    programs = min(triton.cdiv(M, cfg["BLOCK_M"]), program_slots(x.device))
    dw_part = torch.empty(programs, D, device=x.device, dtype=torch.float32)
    wrap_triton(_rmsnorm_bwd)[(programs,)](dy2, x2, weight.contiguous(), rstd, dx, dw_part, M, D,
                                           **cfg)
    return dx.view(x.shape), dw_part.sum(0).to(weight.dtype)


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _backward(ctx, dy: torch.Tensor, _drstd: torch.Tensor | None):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = _bwd(dy, x, weight, rstd)
    return dx, dw, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., D] / sqrt(mean(x**2, -1) + eps) * weight [D]; float32 statistics, x's dtype out."""
    check_runnable("rmsnorm", x, weight)
    if weight.ndim != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"rmsnorm: weight shape {tuple(weight.shape)} must be "
                         f"({x.shape[-1]},), the last dim of x {tuple(x.shape)}")
    return _fwd(x, weight, eps)[0]
