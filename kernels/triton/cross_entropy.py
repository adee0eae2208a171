"""LM head + softmax cross-entropy, mean over rows, without the full [N, V] logits or probabilities.

The rows of x [N, d] go through in chunks of C rows. For each chunk:
  1. logits_c = x_c @ W  [C, V]                          (torch.matmul: cuBLAS, not Triton)
  2. a Triton kernel, one program per row, streams the row in BLOCK_V blocks: an online
     max / sum-of-exp gives the log-sum-exp (float32), the loss of the row is lse - logit[target],
     and a second pass overwrites the logits in place with the gradient
     (softmax - onehot(target)) / N;
  3. dx_c = dlogits_c @ W^T and dW += x_c^T @ dlogits_c  (torch.matmul, dW accumulated in float32).
The gradient is therefore computed during the forward (as in Liger-Kernel's fused linear
cross-entropy), so only one [C, V] buffer is ever alive and the backward just scales the saved dx
and dW by the incoming gradient. The mean loss is torch.sum of the per-row losses / N.

Compute dtype: autocast's dtype when autocast is on for the device, else x's dtype; W is cast to
it. Targets must lie in [0, V); there is no ignore index.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from trainbench.kernels.triton._common import autocast_dtype, check_runnable, next_pow2

_BLOCK_V = 4096  # vocabulary entries per step of the row loop (a power of two)


@triton.jit
def _ce_rows(logits_ptr, targets_ptr, loss_ptr, V, stride_row, inv_n,
             WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    base = logits_ptr + row.to(tl.int64) * stride_row
    target = tl.load(targets_ptr + row)
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
    target_logit = tl.load(base + target).to(tl.float32)
    tl.store(loss_ptr + row, lse - target_logit)
    if WRITE_GRAD:  # pass 2: logits -> (softmax - onehot) / N, in place
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            logit = tl.load(base + cols, mask=cols < V, other=0.0).to(tl.float32)
            grad = (tl.exp(logit - lse) - tl.where(cols == target, 1.0, 0.0)) * inv_n
            tl.store(base + cols, grad.to(logits_ptr.dtype.element_ty), mask=cols < V)


def default_chunk_rows(N: int, d: int) -> int:
    """Rows per chunk: d, so one chunk's logits [C, V] are about the size of W [d, V]."""
    return max(1, min(N, d))


def _loss_and_grads(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int,
                    need_dx: bool, need_dw: bool
                    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Mean loss, and dloss/dx (compute dtype) and dloss/dW (float32) when asked for."""
    dtype = autocast_dtype(x.device) or x.dtype
    with torch.autocast(x.device.type, enabled=False):  # the compute dtype is chosen above
        xc, wc = x.to(dtype), weight.to(dtype)
        N, V = x.shape[0], weight.shape[1]
        targets = targets.contiguous()
        losses = torch.empty(N, device=x.device, dtype=torch.float32)
        dx = torch.empty_like(xc) if need_dx else None
        dw = torch.zeros(wc.shape, device=x.device, dtype=torch.float32) if need_dw else None
        block_v = min(_BLOCK_V, next_pow2(V))
        for start in range(0, N, chunk_rows):
            stop = min(start + chunk_rows, N)
            logits = xc[start:stop] @ wc  # (C, V); becomes dlogits in place
            _ce_rows[(stop - start,)](logits, targets[start:stop], losses[start:stop], V,
                                      logits.stride(0), 1.0 / N, WRITE_GRAD=need_dx or need_dw,
                                      BLOCK_V=block_v)
            if need_dx:
                torch.matmul(logits, wc.T, out=dx[start:stop])
            if need_dw:
                dw += (xc[start:stop].T @ logits).float()
    return losses.sum() / N, dx, dw


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk_rows: int) -> torch.Tensor:
        loss, dx, dw = _loss_and_grads(x, weight, targets, chunk_rows,
                                       ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        ctx.save_for_backward(dx, dw)
        ctx.dtypes = (x.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, dloss: torch.Tensor):
        dx, dw = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        dx = None if dx is None else (dx * dloss).to(x_dtype)
        dw = None if dw is None else (dw * dloss).to(w_dtype)
        return dx, dw, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_rows: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of logits x [N, d] @ weight [d, V] against int64 targets [N].

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
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return _loss_and_grads(x, weight, targets, chunk, need_dx=False, need_dw=False)[0]
    return _LinearCrossEntropy.apply(x, weight, targets, chunk)
