"""The PyTorch-native implementation of every dispatched op (signatures in ops.py).

Reductions that set the scale of a result (RMSNorm's mean square, the log-sum-exp of the loss)
run in float32 whatever the input dtype, as in Hugging Face's LlamaRMSNorm and under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x**2) + eps) * weight over the last dim, computed in float32."""
    xf = x.float()
    xhat = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xhat * weight.float()).to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x*cos + rotate_half(x)*sin; x [B, T, H, D], tables [T, D] (cast to x's dtype, as HF does)."""
    cos = cos.to(x.dtype)[:, None, :]  # (T, 1, D): broadcast over heads
    sin = sin.to(x.dtype)[:, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """rope of the queries and of the keys."""
    return rope(q, cos, sin), rope(k, cos, sin)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def cross_entropy(x: torch.Tensor, head: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy of logits x @ head ([N, d] @ [d, V]) against targets [N]."""
    logits = x @ head  # (N, V), in the autocast dtype
    return F.cross_entropy(logits.float(), targets)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal grouped-query attention through SDPA; [B, T, H, D] in and out."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=True, enable_gqa=True)  # (B, Hq, T, D)
    return out.transpose(1, 2)
