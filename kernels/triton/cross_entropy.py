"""LM head + softmax cross-entropy, mean over rows, without the full [N, V] logits or probabilities.

The rows of x [N, d] go through in chunks of C rows. For each chunk:
  1. logits_c = x_c @ W  [C, V]                          (torch.matmul: cuBLAS, not Triton)
  2. a Triton kernel, one program per row, streams the row in BLOCK_V blocks: an online
     max / sum-of-exp gives the log-sum-exp (float32), the loss of the row is lse - logit[target],
     and a second pass overwrites the logits in place with the gradient
     (softmax - onehot(target)) / n;
  3. dx_c = dlogits_c @ W^T, and dW += x_c^T @ dlogits_c accumulated in place in a float32 dW
     (torch.addmm with out=dW; no rounded per-chunk partial).
The gradient is therefore computed during the forward (as in Liger-Kernel's fused linear
cross-entropy), so only one [C, V] buffer is ever alive and the backward just scales the saved dx
and dW by the incoming gradient.

Rows whose target is `ignore_index` (default -100, as torch.nn.functional.cross_entropy) add no
loss and get zero gradient; the mean is over the n rows not ignored (NaN when every row is, as in
PyTorch). n is counted on the device and read by the kernel through a pointer, so nothing waits
on the host. Other targets must lie in [0, V).

Compute dtype: autocast's dtype when autocast is on for the device, else x's dtype; W is cast to
it.
"""

from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from trainbench.kernels.triton._common import (autocast_dtype, check_runnable, define_op,
                                                next_pow2)

_BLOCK_V = 4096  # vocabulary entries per step of the row loop (a power of two)
IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default


@triton.jit
def _ce_rows(logits_ptr, targets_ptr, loss_ptr, inv_n_ptr, V, stride_row, ignore_index,
             WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    base = logits_ptr + tl.cast(row, tl.int64) * stride_row
    target = tl.load(targets_ptr + row)
    keep = target != ignore_index
    # pass 1: online log-sum-exp over the row; m is the running max, s the sum of exp(l - m)
    m = tl.full((BLOCK_V,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_V,), tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        logit = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, logit)
        # lanes still at -inf (past V in the first block) keep s = 0: exp(-inf - -inf) is nan
        s = tl.where(m_new == float("-inf"), 0.0, s * tl.exp(m - m_new) + tl.exp(logit - m_new))
        m = m_new
    m_row = tl.max(m, axis=0)
    lse = m_row + tl.log(tl.sum(s * tl.exp(m - m_row), axis=0))
    target_logit = tl.load(base + target, mask=keep, other=0.0).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(keep, lse - target_logit, 0.0))
    if WRITE_GRAD:  # pass 2: logits -> (softmax - onehot) / n, in place; 0 on ignored rows
        scale = tl.where(keep, tl.load(inv_n_ptr), 0.0)
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            logit = tl.load(base + cols, mask=cols < V, other=0.0).to(tl.float32)
            grad = (tl.exp(logit - lse) - tl.where(cols == target, 1.0, 0.0)) * scale
            tl.store(base + cols, grad.to(logits_ptr.dtype.element_ty), mask=cols < V)


def default_chunk_rows(N: int, d: int) -> int:
    """Rows per chunk: d, so one chunk's logits [C, V] are about the size of W [d, V]."""
    return max(1, min(N, d))


def _addmm_fp32_out(dw: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """dw += a @ b in place, products accumulated in float32 by cuBLAS (out_dtype)."""
    torch.addmm(dw, a, b, out_dtype=torch.float32, out=dw)


def _addmm_upcast(dw: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """dw += a @ b in place with float32 operands: the same exact products and float32 sums
    (the CPU has no addmm with out_dtype)."""
    torch.addmm(dw, a.float(), b.float(), out=dw)


_ACCUMULATE_DW: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]] = {
    "cuda": _addmm_fp32_out}
"""float32 dW += 16-bit x^T @ dlogits, by device type; float32 operands use plain addmm."""


def _accumulate_dw(dw: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dtype == torch.float32:
        torch.addmm(dw, a, b, out=dw)
    else:
        _ACCUMULATE_DW.get(dw.device.type, _addmm_upcast)(dw, a, b)


def _fwd_fake(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int,
              ignore_index: int, dtype: torch.dtype, need_dx: bool, need_dw: bool
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx = x.new_empty(x.shape if need_dx else (0,), dtype=dtype)
    dw = x.new_empty(weight.shape if need_dw else (0,), dtype=torch.float32)
    return x.new_empty((), dtype=torch.float32), dx, dw


@define_op("linear_cross_entropy_fwd", _fwd_fake)
def _fwd(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int,
         ignore_index: int, dtype: torch.dtype, need_dx: bool, need_dw: bool
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean loss, dloss/dx (in `dtype`) and dloss/dW (float32); an empty tensor for a gradient
    not asked for. `dtype` is the compute dtype."""
    with torch.autocast(x.device.type, enabled=False):  # the compute dtype is given
        xc, wc = x.to(dtype), weight.to(dtype)
        N, V = x.shape[0], weight.shape[1]
        targets = targets.contiguous()
        losses = torch.empty(N, device=x.device, dtype=torch.float32)
        inv_n = 1.0 / (targets != ignore_index).sum(dtype=torch.float32).reshape(1)
        dx = torch.empty_like(xc) if need_dx else x.new_empty(0, dtype=dtype)
        dw = (torch.zeros(wc.shape, device=x.device, dtype=torch.float32) if need_dw
              else x.new_empty(0, dtype=torch.float32))
        block_v = min(_BLOCK_V, next_pow2(V))
        for start in range(0, N, chunk_rows):
            stop = min(start + chunk_rows, N)
            logits = xc[start:stop] @ wc  # (C, V); becomes dlogits in place
            wrap_triton(_ce_rows)[(stop - start,)](
                logits, targets[start:stop], losses[start:stop], inv_n, V, logits.stride(0),
                ignore_index, WRITE_GRAD=need_dx or need_dw, BLOCK_V=block_v)
            if need_dx:
                torch.matmul(logits, wc.T, out=dx[start:stop])
            if need_dw:
                _accumulate_dw(dw, xc[start:stop].T, logits)
        return losses.sum() * inv_n[0], dx, dw


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    x, weight = inputs[0], inputs[1]
    ctx.save_for_backward(output[1], output[2])
    ctx.dtypes = (x.dtype, weight.dtype)


def _backward(ctx, dloss: torch.Tensor, _ddx: torch.Tensor, _ddw: torch.Tensor):
    dx, dw = ctx.saved_tensors
    x_dtype, w_dtype = ctx.dtypes
    dx = (dx * dloss).to(x_dtype) if ctx.needs_input_grad[0] else None
    dw = (dw * dloss).to(w_dtype) if ctx.needs_input_grad[1] else None
    return dx, dw, None, None, None, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_rows: int | None = None, ignore_index: int = IGNORE_INDEX
                         ) -> torch.Tensor:
    """Mean cross-entropy of logits x [N, d] @ weight [d, V] against int64 targets [N], over
    the targets that are not `ignore_index`.

    `chunk_rows` rows go through at a time (default: default_chunk_rows).
    """
    check_runnable("linear_cross_entropy", x, weight, targets)
    if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[0]:
        raise ValueError(f"linear_cross_entropy: x {tuple(x.shape)} and weight "
                         f"{tuple(weight.shape)} must be [N, d] and [d, V]")
    if targets.shape != (x.shape[0],) or targets.dtype != torch.int64:
        raise ValueError(f"linear_cross_entropy: targets must be int64 of shape ({x.shape[0]},); "
                         f"got {targets.dtype} {tuple(targets.shape)}")
    N, d = x.shape
    chunk = default_chunk_rows(N, d) if chunk_rows is None else chunk_rows
    if chunk < 1:
        raise ValueError(f"linear_cross_entropy: chunk_rows={chunk_rows} must be >= 1")
    grad = torch.is_grad_enabled()
    dtype = autocast_dtype(x.device) or x.dtype
    return _fwd(x, weight, targets, chunk, ignore_index, dtype, grad and x.requires_grad,
                grad and weight.requires_grad)[0]
