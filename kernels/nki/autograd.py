"""PyTorch autograd wrappers of the NKI kernels, one per dispatched op, with the signatures of
trainbench.backends.torch.ops so a backend can swap them in one at a time:

    rmsnorm(x [..., d], weight [d], eps)                  RMSNorm, float32 statistics
    swiglu(gate [..., f], up [..., f])                    silu(gate) * up
    cross_entropy(logits [N, V], targets [N])             mean softmax cross-entropy
    linear_cross_entropy(x [N, d], head [d, V], targets)  x @ head in PyTorch, then cross_entropy
    flash_attention(q [B,T,Hq,D], k [B,T,Hkv,D], v, causal=True, scale=None)

On a `neuron` device the `nki.jit` kernels are called on the tensors themselves. Anywhere else
(the CPU) the kernels run on NumPy copies: in `nki.simulate` when the official package is
installed, else in trainbench's emulator; bfloat16 crosses over bit for bit via ml_dtypes.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import ml_dtypes
import numpy as np
import torch

from trainbench.kernels.nki import attention, cross_entropy as ce, rmsnorm as rms, swiglu as glu
from trainbench.kernels.nki._api import nki


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A NumPy copy of t (bfloat16 as ml_dtypes.bfloat16, same bits)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy().copy()


def to_torch(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor on `device` holding a (bfloat16 kept bit for bit)."""
    a = np.ascontiguousarray(a)
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).to(device)
    return torch.from_numpy(a).to(device)


def run(kernel: Callable[..., Any], *args: Any) -> tuple[torch.Tensor, ...]:
    """Run `kernel` on tensors and constants; its outputs as a tuple of tensors."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    device = tensors[0].device
    if device.type == "neuron":
        out = kernel(*args)
        return out if isinstance(out, tuple) else (out,)
    out = nki.simulate(kernel)(*(to_numpy(a) if isinstance(a, torch.Tensor) else a
                                 for a in args))
    out = out if isinstance(out, tuple) else (out,)
    return tuple(to_torch(o, device) for o in out)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        w2 = weight.reshape(1, -1)
        y, rstd = run(rms.rmsnorm_fwd, x2, w2, float(eps))
        ctx.save_for_backward(x2, w2, rstd)
        ctx.shape = x.shape
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, w2, rstd = ctx.saved_tensors
        dx, dw = run(rms.rmsnorm_bwd, dy.reshape(x2.shape).to(x2.dtype), x2, w2, rstd)
        return dx.reshape(ctx.shape), dw.reshape(-1).to(w2.dtype), None


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x**2) + eps) * weight over the last dim, in x's dtype."""
    return _RMSNorm.apply(x, weight, eps)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(gate.dtype, up.dtype)
        a = gate.reshape(-1, gate.shape[-1]).to(dtype)
        b = up.reshape(-1, up.shape[-1]).to(dtype)
        (out,) = run(glu.swiglu_fwd, a, b)
        ctx.save_for_backward(a, b)
        ctx.meta = (gate.shape, gate.dtype, up.dtype)
        return out.reshape(gate.shape)

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        a, b = ctx.saved_tensors
        shape, gate_dtype, up_dtype = ctx.meta
        da, db = run(glu.swiglu_bwd, dout.reshape(a.shape).to(a.dtype), a, b)
        return da.reshape(shape).to(gate_dtype), db.reshape(shape).to(up_dtype)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up."""
    return _SwiGLU.apply(gate, up)


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        tgt = targets.reshape(-1, 1).to(torch.int32)
        loss_rows, lse = run(ce.cross_entropy_fwd, logits, tgt)
        ctx.save_for_backward(logits, tgt, lse)
        return loss_rows.sum() / logits.shape[0]

    @staticmethod
    def backward(ctx, dloss: torch.Tensor):
        logits, tgt, lse = ctx.saved_tensors
        (dlogits,) = run(ce.cross_entropy_bwd, logits, tgt, lse, 1.0 / logits.shape[0])
        return dlogits * dloss.to(dlogits.dtype), None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log softmax(logits)[target]: logits [N, V], integer targets [N]."""
    if logits.shape[-1] >= 2 ** 24:
        raise ValueError(f"cross_entropy: vocab {logits.shape[-1]} >= 2**24; the kernel compares "
                         "float32 column indices with the targets")
    return _CrossEntropy.apply(logits, targets)


def linear_cross_entropy(x: torch.Tensor, head: torch.Tensor,
                         targets: torch.Tensor) -> torch.Tensor:
    """cross_entropy(x @ head) with the logits in float32, as the native op computes them; the
    LM-head matmul stays in PyTorch (not fused into the kernel)."""
    return cross_entropy((x @ head).float(), targets)


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                scale: float) -> torch.Tensor:
        k, v = k.to(q.dtype), v.to(q.dtype)
        out, lse = run(attention.flash_attention_fwd, q, k, v, scale, causal)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.meta = (causal, scale)
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale = ctx.meta
        dq, dk, dv = run(attention.flash_attention_bwd, q, k, v, out, dout.to(q.dtype), lse,
                         scale, causal)
        return dq, dk, dv, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v with grouped-query heads; [B, T, H, D] in and out."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _FlashAttention.apply(q, k, v, causal, scale)
