"""Causal (or full) grouped-query flash attention, forward and backward (FlashAttention-2).

Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning" (2023).
q [B, T, Hq, D]; k, v [B, T, Hkv, D]; query head h reads kv head h // (Hq // Hkv).

Forward: a program owns BLOCK_M query rows of one (batch, head) and streams the key/value blocks
(only up to the diagonal when causal) with an online softmax in base 2, keeping the running max
m, the running sum l and the unnormalized output in float32. It writes O and, per row, the
log-sum-exp in base 2, lse2 = m + log2(l) [B, Hq, T], the only statistic the backward needs.

Backward: delta = rowsum(dO * O) [B, Hq, T] first (a small kernel); then two kernels that each
recompute P = exp2(S * log2(e) - lse2) blockwise instead of storing it:
  - dK, dV: a program owns BLOCK_N keys of one kv head and loops over the query heads of its group
    and over their query blocks (from the diagonal on when causal), accumulating
    dV += P^T dO and dK += dS^T Q * scale with dS = P * (dO V^T - delta), so the group's sum
    needs no atomics;
  - dQ: a program owns BLOCK_M query rows and loops over key blocks: dQ += dS K * scale.
Rows and keys past T are masked (any T works); D must be 16, 32, 64 or 128 (tl.dot needs >= 16
and the head dim is one block). Float32 inputs use IEEE float32 products (no TF32) so that they
match the float32 reference; 16-bit inputs use tensor-core products with float32 accumulation
(in the interpreter, whose tl.dot cannot read bfloat16, the same products formed in float32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from trainbench.kernels.triton._common import INTERPRETING

HEAD_DIMS = (16, 32, 64, 128)
_LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e))


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b accumulated in float32; UPCAST multiplies 16-bit operands as float32 (the same exact
    products a tensor core forms), for the interpreter, whose tl.dot cannot read bfloat16."""
    if UPCAST:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b, input_precision=PRECISION)
    return out


@triton.jit
def _attn_fwd(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, T, Hq, GROUP, qk_scale,
              s_qb, s_qt, s_qh, s_kb, s_kt, s_kh,
              CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // Hq).to(tl.int64)
    h = bh % Hq
    rows = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    q_offs = b * s_qb + h * s_qh + rows[:, None] * s_qt + dims[None, :]  # o shares them
    kv_off = b * s_kb + (h // GROUP) * s_kh
    q = tl.load(q_ptr + q_offs, mask=rows[:, None] < T, other=0.0)  # (BLOCK_M, D)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    if CAUSAL:
        hi = tl.minimum(T, start_m + BLOCK_M)
    else:
        hi = T
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        kv_offs = kv_off + cols[:, None] * s_kt + dims[None, :]
        k = tl.load(k_ptr + kv_offs, mask=cols[:, None] < T, other=0.0)  # (BLOCK_N, D)
        s = _dot(q, tl.trans(k), PRECISION, UPCAST) * qk_scale  # (BLOCK_M, BLOCK_N)
        valid = cols[None, :] < T
        if CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None])
        s = tl.where(valid, s, float("-inf"))
        # key 0 is visible to every row, so m_new is finite from the first block on
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + kv_offs, mask=cols[:, None] < T, other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, UPCAST)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(o_ptr + q_offs, out.to(o_ptr.dtype.element_ty), mask=rows[:, None] < T)
    tl.store(lse_ptr + bh.to(tl.int64) * T + rows, m_i + tl.log2(l_i), mask=rows < T)


@triton.jit
def _attn_bwd_delta(o_ptr, do_ptr, delta_ptr, T, Hq, s_qb, s_qt, s_qh,
                    BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    bh = tl.program_id(1)
    b = (bh // Hq).to(tl.int64)
    h = bh % Hq
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    offs = b * s_qb + h * s_qh + rows[:, None] * s_qt + dims[None, :]
    o = tl.load(o_ptr + offs, mask=rows[:, None] < T, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + offs, mask=rows[:, None] < T, other=0.0).to(tl.float32)
    tl.store(delta_ptr + bh.to(tl.int64) * T + rows, tl.sum(o * do, axis=1), mask=rows < T)


@triton.jit
def _attn_bwd_dkdv(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                   T, Hq, Hkv, GROUP, scale, qk_scale,
                   s_qb, s_qt, s_qh, s_kb, s_kt, s_kh,
                   CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    bhk = tl.program_id(1)
    b = (bhk // Hkv).to(tl.int64)
    hk = bhk % Hkv
    cols = start_n + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    kv_offs = b * s_kb + hk * s_kh + cols[:, None] * s_kt + dims[None, :]  # dk, dv share them
    k = tl.load(k_ptr + kv_offs, mask=cols[:, None] < T, other=0.0)  # (BLOCK_N, D)
    v = tl.load(v_ptr + kv_offs, mask=cols[:, None] < T, other=0.0)
    dk = tl.zeros((BLOCK_N, HEAD_DIM), tl.float32)
    dv = tl.zeros((BLOCK_N, HEAD_DIM), tl.float32)
    if CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M  # query blocks before it see none of these keys
    else:
        lo = 0
    for g in range(0, GROUP):
        h = hk * GROUP + g
        q_base = b * s_qb + h * s_qh  # do has q's strides
        stat_base = (b * Hq + h) * T
        for start_m in range(lo, T, BLOCK_M):
            rows = start_m + tl.arange(0, BLOCK_M)
            q_offs = q_base + rows[:, None] * s_qt + dims[None, :]
            q = tl.load(q_ptr + q_offs, mask=rows[:, None] < T, other=0.0)  # (BLOCK_M, D)
            do = tl.load(do_ptr + q_offs, mask=rows[:, None] < T, other=0.0)
            lse = tl.load(lse_ptr + stat_base + rows, mask=rows < T, other=0.0)
            delta = tl.load(delta_ptr + stat_base + rows, mask=rows < T, other=0.0)
            s_t = _dot(k, tl.trans(q), PRECISION, UPCAST) * qk_scale  # (BLOCK_N, BLOCK_M)
            valid = rows[None, :] < T
            if CAUSAL:
                valid = valid & (rows[None, :] >= cols[:, None])
            p_t = tl.where(valid, tl.exp2(s_t - lse[None, :]), 0.0)
            dv += _dot(p_t.to(do.dtype), do, PRECISION, UPCAST)
            dp_t = _dot(v, tl.trans(do), PRECISION, UPCAST)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += _dot(ds_t.to(q.dtype), q, PRECISION, UPCAST)
    tl.store(dk_ptr + kv_offs, (dk * scale).to(dk_ptr.dtype.element_ty), mask=cols[:, None] < T)
    tl.store(dv_ptr + kv_offs, dv.to(dv_ptr.dtype.element_ty), mask=cols[:, None] < T)


@triton.jit
def _attn_bwd_dq(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                 T, Hq, GROUP, scale, qk_scale,
                 s_qb, s_qt, s_qh, s_kb, s_kt, s_kh,
                 CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // Hq).to(tl.int64)
    h = bh % Hq
    rows = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    q_offs = b * s_qb + h * s_qh + rows[:, None] * s_qt + dims[None, :]  # do, dq share them
    kv_off = b * s_kb + (h // GROUP) * s_kh
    q = tl.load(q_ptr + q_offs, mask=rows[:, None] < T, other=0.0)
    do = tl.load(do_ptr + q_offs, mask=rows[:, None] < T, other=0.0)
    lse = tl.load(lse_ptr + bh.to(tl.int64) * T + rows, mask=rows < T, other=0.0)
    delta = tl.load(delta_ptr + bh.to(tl.int64) * T + rows, mask=rows < T, other=0.0)
    dq = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    if CAUSAL:
        hi = tl.minimum(T, start_m + BLOCK_M)
    else:
        hi = T
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        kv_offs = kv_off + cols[:, None] * s_kt + dims[None, :]
        k = tl.load(k_ptr + kv_offs, mask=cols[:, None] < T, other=0.0)
        v = tl.load(v_ptr + kv_offs, mask=cols[:, None] < T, other=0.0)
        s = _dot(q, tl.trans(k), PRECISION, UPCAST) * qk_scale  # (BLOCK_M, BLOCK_N)
        valid = cols[None, :] < T
        if CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None])
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), PRECISION, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, PRECISION, UPCAST)
    tl.store(dq_ptr + q_offs, (dq * scale).to(dq_ptr.dtype.element_ty), mask=rows[:, None] < T)


def _config(head_dim: int, dtype: torch.dtype) -> dict[str, int]:
    """Tile sizes and warps, not autotuned: 128x64 forward and 64x64 backward tiles for 16-bit
    inputs; half-size tiles for float32, so its tiles take the same shared memory."""
    shrink = 2 if dtype == torch.float32 else 1
    return {"fwd_m": 128 // shrink, "fwd_n": 64 // shrink, "bwd_m": 64 // shrink,
            "bwd_n": 64 // shrink, "num_warps": 8 if head_dim > 64 else 4}


def _dot_meta(dtype: torch.dtype) -> dict[str, object]:
    """IEEE float32 products for float32 (no TF32); 16-bit operands upcast in the interpreter."""
    return {"PRECISION": "ieee" if dtype == torch.float32 else "tf32",
            "UPCAST": INTERPRETING and dtype != torch.float32}


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward: o [B, T, Hq, D] and lse2 [B, Hq, T] (float32) for the backward."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    cfg = _config(D, q.dtype)
    o = torch.empty_like(q)
    lse = torch.empty(B, Hq, T, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(T, cfg["fwd_m"]), B * Hq)
    wrap_triton(_attn_fwd)[grid](q, k, v, o, lse, T, Hq, Hq // Hkv, scale * _LOG2E,
                                 q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
                                 k.stride(2), CAUSAL=causal, BLOCK_M=cfg["fwd_m"],
                                 BLOCK_N=cfg["fwd_n"], HEAD_DIM=D, **_dot_meta(q.dtype),
                                 num_warps=cfg["num_warps"])
    return o, lse


def backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
             lse: torch.Tensor, do: torch.Tensor, causal: bool, scale: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernels: dq, dk, dv."""
    q, k, v, o, do = q.contiguous(), k.contiguous(), v.contiguous(), o.contiguous(), do.contiguous()
    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    cfg = _config(D, q.dtype)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
    meta = dict(CAUSAL=causal, BLOCK_M=cfg["bwd_m"], BLOCK_N=cfg["bwd_n"], HEAD_DIM=D,
                **_dot_meta(q.dtype), num_warps=cfg["num_warps"])
    delta = torch.empty_like(lse)
    wrap_triton(_attn_bwd_delta)[(triton.cdiv(T, cfg["bwd_m"]), B * Hq)](
        o, do, delta, T, Hq, *strides[:3], BLOCK_M=cfg["bwd_m"], HEAD_DIM=D)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    qk_scale = scale * _LOG2E
    wrap_triton(_attn_bwd_dkdv)[(triton.cdiv(T, cfg["bwd_n"]), B * Hkv)](
        q, k, v, do, lse, delta, dk, dv, T, Hq, Hkv, Hq // Hkv, scale, qk_scale, *strides, **meta)
    wrap_triton(_attn_bwd_dq)[(triton.cdiv(T, cfg["bwd_m"]), B * Hq)](
        q, k, v, do, lse, delta, dq, T, Hq, Hq // Hkv, scale, qk_scale, *strides, **meta)
    return dq, dk, dv
