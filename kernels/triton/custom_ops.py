"""Flash attention (attention.py's kernels) as the torch custom ops trainbench::flash_attention_*.

The forward op returns o and the per-row log-sum-exp that the backward op needs; autograd saves
q, k, v, o and lse. The other kernels define their ops next to their launchers (rmsnorm.py,
rope.py, swiglu.py, cross_entropy.py), all through _common.define_op.
"""

from __future__ import annotations

import math

import torch

from trainbench.kernels.triton import attention
from trainbench.kernels.triton._common import autocast_dtype, check_runnable, define_op


def _fwd_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, Hq, _ = q.shape
    return q.new_empty(q.shape), q.new_empty(B, Hq, T, dtype=torch.float32)


@define_op("flash_attention_fwd", _fwd_fake)
def _fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
         ) -> tuple[torch.Tensor, torch.Tensor]:
    return attention.flash_attention_forward(q.contiguous(), k.contiguous(), v.contiguous(),
                                             causal, scale)


def _bwd_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
              lse: torch.Tensor, do: torch.Tensor, causal: bool, scale: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@define_op("flash_attention_bwd", _bwd_fake)
def _bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
         do: torch.Tensor, causal: bool, scale: float
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention.flash_attention_backward(q.contiguous(), k.contiguous(), v.contiguous(),
                                              o.contiguous(), lse, do.contiguous(), causal, scale)


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    q, k, v, causal, scale = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.causal, ctx.scale = causal, scale


def _backward(ctx, do: torch.Tensor, _dlse: torch.Tensor):
    dq, dk, dv = _bwd(*ctx.saved_tensors, do, ctx.causal, ctx.scale)
    return dq, dk, dv, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v with grouped-query heads; [B, T, H, D] in and out.

    `scale` defaults to 1/sqrt(D). Under autocast the inputs are cast to autocast's dtype, as
    scaled_dot_product_attention's are.
    """
    check_runnable("flash_attention", q, k, v)
    if (q.ndim != 4 or k.ndim != 4 or k.shape != v.shape
            or (q.shape[0], q.shape[1], q.shape[3]) != (k.shape[0], k.shape[1], k.shape[3])):
        raise ValueError(f"flash_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v "
                         f"{tuple(v.shape)} must be [B, T, Hq, D], [B, T, Hkv, D], [B, T, Hkv, D]")
    Hq, Hkv, D = q.shape[2], k.shape[2], q.shape[3]
    if Hq % Hkv:
        raise ValueError(f"flash_attention: Hkv={Hkv} kv heads must divide Hq={Hq} query heads")
    if D not in attention.HEAD_DIMS:
        raise ValueError(f"flash_attention: head dim D={D} is not supported; supported: "
                         + ", ".join(map(str, attention.HEAD_DIMS)))
    dtype = autocast_dtype(q.device)
    if dtype is not None:
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"flash_attention: q, k, v dtypes {q.dtype}, {k.dtype}, {v.dtype} "
                         "must be equal")
    return _fwd(q, k, v, causal, 1.0 / math.sqrt(D) if scale is None else scale)[0]
