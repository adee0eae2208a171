"""Rotary position embedding in Hugging Face Llama's half-split ("rotate_half") layout.

y = x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1), x1 and x2 the two halves
of the head dim, and tables cos, sin [T, D]. Hugging Face's tables repeat one half-table
(cos = cat(c, c), sin = cat(s, s): trainbench.ops.rope_cos_sin builds them so), so per half
    y1 = x1 * c - x2 * s,        y2 = x2 * c + x1 * s,
and the backward is the transpose rotation, the same formula with s -> -s. The kernel reads only
the first half of each table row and relies on that repetition.

One launch rotates q [B, T, Hq, D] and k [B, T, Hk, D] together (as Liger-Kernel's RoPE does): a
program owns one token, loads its half-table row c, s [D/2] once and rotates all Hq query and Hk
key heads of that token. The token's first element is offset in int64; offsets within the token
stay int32. Computed in float32; the tables are constants and get no gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from trainbench.kernels.triton._common import check_runnable, define_op, next_pow2, warps_for


@triton.jit
def _rotate(x_ptr, y_ptr, token, H, D, c, s, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Rotate the H heads [H, D] of one token by the half-table row c, s [BLOCK_HALF]."""
    base = tl.cast(token, tl.int64) * H * D
    heads = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_HALF)
    half = D // 2
    mask = (heads[:, None] < H) & (cols[None, :] < half)
    offs = heads[:, None] * D + cols[None, :]  # first half; the second is + half
    x1 = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_H, BLOCK_HALF)
    x2 = tl.load(x_ptr + base + offs + half, mask=mask, other=0.0).to(tl.float32)
    y1 = x1 * c[None, :] - x2 * s[None, :]
    y2 = x2 * c[None, :] + x1 * s[None, :]
    tl.store(y_ptr + base + offs, y1.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + base + offs + half, y2.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope(q_ptr, k_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, T, Hq, Hk, D,
          BACKWARD: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
          BLOCK_HALF: tl.constexpr):
    token = tl.program_id(0)  # b * T + t
    cols = tl.arange(0, BLOCK_HALF)
    t_offs = (token % T) * D + cols  # the table row's first half
    c = tl.load(cos_ptr + t_offs, mask=cols < D // 2, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + t_offs, mask=cols < D // 2, other=0.0).to(tl.float32)
    if BACKWARD:  # the transpose rotation
        s = -s
    _rotate(q_ptr, qo_ptr, token, Hq, D, c, s, BLOCK_HQ, BLOCK_HALF)
    _rotate(k_ptr, ko_ptr, token, Hk, D, c, s, BLOCK_HK, BLOCK_HALF)


def launch_config(Hq: int, Hk: int, D: int) -> dict[str, int]:
    """Head and half-dim blocks, and num_warps by the width of a token's query row."""
    block_half = next_pow2(D // 2)
    block_hq, block_hk = next_pow2(Hq), next_pow2(max(Hk, 1))
    return {"BLOCK_HQ": block_hq, "BLOCK_HK": block_hk, "BLOCK_HALF": block_half,
            "num_warps": warps_for(2 * block_hq * block_half)}


def _fake(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
          backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape)


@define_op("rope", _fake)
def _rope_op(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated (or, backward, inversely rotated) q and k."""
    B, T, Hq, D = q.shape
    q, k = q.contiguous(), k.contiguous()
    qo, ko = torch.empty_like(q), torch.empty_like(k)
    wrap_triton(_rope)[(B * T,)](q, k, cos.contiguous(), sin.contiguous(), qo, ko, T, Hq,
                                 k.shape[2], D, BACKWARD=backward,
                                 **launch_config(Hq, k.shape[2], D))
    return qo, ko


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    _, _, cos, sin, backward = inputs
    ctx.save_for_backward(cos, sin)
    ctx.backward = backward


def _backward(ctx, dqo: torch.Tensor, dko: torch.Tensor):
    cos, sin = ctx.saved_tensors
    dq, dk = _rope_op(dqo, dko, cos, sin, not ctx.backward)
    return dq, dk, None, None, None


_rope_op.register_autograd(_backward, setup_context=_setup_context)


def _check(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    check_runnable("rope", q, k, cos, sin)
    for name, x in (("q", q), ("k", k)):
        if x.ndim != 4 or x.shape[-1] % 2:
            raise ValueError(f"rope: {name} must be [B, T, H, D] with D even; "
                             f"got {tuple(x.shape)}")
    B, T, _, D = q.shape
    if (k.shape[0], k.shape[1], k.shape[3]) != (B, T, D):
        raise ValueError(f"rope: k {tuple(k.shape)} must be [B, T, Hk, D] like q {tuple(q.shape)}")
    for name, table in (("cos", cos), ("sin", sin)):
        if tuple(table.shape) != (T, D):
            raise ValueError(f"rope: {name} shape {tuple(table.shape)} must be (T, D) = {(T, D)}")


def rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [B, T, Hq, D] and k [B, T, Hk, D] by position in one launch (HF tables [T, D])."""
    _check(q, k, cos, sin)
    return _rope_op(q, k, cos, sin, False)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, D] by position with tables cos, sin [T, D] (HF rotate_half layout)."""
    if x.ndim != 4 or x.shape[-1] % 2:
        raise ValueError(f"rope: x must be [B, T, H, D] with D even; got {tuple(x.shape)}")
    none = x.new_empty(x.shape[0], x.shape[1], 0, x.shape[3])  # no key heads
    return rope_qk(x, none, cos, sin)[0]
