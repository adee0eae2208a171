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

Every loop over blocks is split in two: the blocks that need no mask at all (strictly below the
causal diagonal and wholly inside T) run without one, and only the diagonal blocks and the ragged
tail past the last full block apply the causal and `< T` masks (as the Triton tutorial's and
FlexAttention's kernels do). Each program moves its pointers once by an int64 base offset
(batch, head and first row); offsets inside a block stay 32-bit. Scalars (`scale`, `qk_scale`)
are cast to float32 inside the kernels, so a float64 argument (what Inductor passes for Python
floats) changes nothing. D must be 16, 32, 64 or 128 (tl.dot needs >= 16 and the head dim is one
block). Float32 inputs use TF32 tensor-core products when torch.get_float32_matmul_precision() is
"high" or "medium" and IEEE float32 products otherwise ("highest", the default), as torch.matmul
does; 16-bit inputs use tensor-core products with float32 accumulation (in the interpreter, whose
tl.dot cannot read bfloat16, the same products formed in float32).

Head counts (Hq, Hkv, GROUP) are not specialized on (do_not_specialize): they only index, so one
compiled kernel serves every model of a head dim. Tiles: on a GPU each kernel is autotuned
(triton.autotune, keyed on T, D, causality and precision) over the small candidate sets in
_TILES; in the interpreter the first candidate runs, so results stay deterministic. Backward tiles follow FlexAttention's Hopper defaults, 64 x 128 (query x key)
for dK/dV and 128 x 64 for dQ, where they do not spill (see _TILES); float32 tiles are smaller.
"""

from __future__ import annotations

import math
from typing import Callable

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
def _fwd_blocks(acc, l_i, m_i, q, k_ptr, v_ptr, s_kt, T, start_m, lo, hi, qk_scale,
                MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
                UPCAST: tl.constexpr):
    """Online-softmax update over key blocks [lo, hi); k_ptr, v_ptr point at key row 0 of the
    program's kv head. MASKED applies `< T` (and causal) masks; unmasked blocks must need none."""
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    blk = offs_n[:, None] * s_kt + tl.arange(0, HEAD_DIM)[None, :]  # (BLOCK_N, D), in-block
    k_blk = k_ptr + tl.cast(lo, tl.int64) * s_kt
    v_blk = v_ptr + tl.cast(lo, tl.int64) * s_kt
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if MASKED:
            k = tl.load(k_blk + blk, mask=cols[:, None] < T, other=0.0)  # (BLOCK_N, D)
            v = tl.load(v_blk + blk, mask=cols[:, None] < T, other=0.0)
        else:
            k = tl.load(k_blk + blk)
            v = tl.load(v_blk + blk)
        s = _dot(q, tl.trans(k), PRECISION, UPCAST) * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASKED:
            valid = cols[None, :] < T
            if CAUSAL:
                valid = valid & (cols[None, :] <= rows[:, None])
            s = tl.where(valid, s, float("-inf"))
        # key 0 is visible to every row and comes first, so m_new is finite from then on
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, UPCAST)
        m_i = m_new
        k_blk += BLOCK_N * s_kt
        v_blk += BLOCK_N * s_kt
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["Hq", "GROUP"])
def _attn_fwd(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, T, Hq, GROUP, qk_scale,
              s_qb, s_qt, s_qh, s_kb, s_kt, s_kh,
              CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    tl.static_assert(BLOCK_M % BLOCK_N == 0)  # the diagonal starts on a key-block boundary
    qk_scale = tl.cast(qk_scale, tl.float32)
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // Hq).to(tl.int64)
    h = bh % Hq
    q_base = b * s_qb + h * s_qh + start_m.to(tl.int64) * s_qt  # one int64 offset; o shares it
    k_base = b * s_kb + (h // GROUP).to(tl.int64) * s_kh
    offs_m = tl.arange(0, BLOCK_M)
    q_blk = offs_m[:, None] * s_qt + tl.arange(0, HEAD_DIM)[None, :]  # (BLOCK_M, D), in-block
    row_ok = (start_m + offs_m) < T
    q = tl.load(q_ptr + q_base + q_blk, mask=row_ok[:, None], other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    if CAUSAL:  # blocks left of the diagonal are whole and visible; the diagonal is masked
        full_end = start_m
        hi = tl.minimum(T, start_m + BLOCK_M)
    else:  # every whole block is visible; the ragged tail is masked
        full_end = (T // BLOCK_N) * BLOCK_N
        hi = T
    acc, l_i, m_i = _fwd_blocks(acc, l_i, m_i, q, k_ptr + k_base, v_ptr + k_base, s_kt, T,
                                start_m, 0, full_end, qk_scale, False, CAUSAL, BLOCK_M, BLOCK_N,
                                HEAD_DIM, PRECISION, UPCAST)
    acc, l_i, m_i = _fwd_blocks(acc, l_i, m_i, q, k_ptr + k_base, v_ptr + k_base, s_kt, T,
                                start_m, full_end, hi, qk_scale, True, CAUSAL, BLOCK_M, BLOCK_N,
                                HEAD_DIM, PRECISION, UPCAST)
    out = acc / l_i[:, None]
    tl.store(o_ptr + q_base + q_blk, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
    stat = lse_ptr + bh.to(tl.int64) * T + start_m
    tl.store(stat + offs_m, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit(do_not_specialize=["Hq"])
def _attn_bwd_delta(o_ptr, do_ptr, delta_ptr, T, Hq, s_qb, s_qt, s_qh,
                    BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // Hq).to(tl.int64)
    h = bh % Hq
    base = b * s_qb + h * s_qh + start_m.to(tl.int64) * s_qt
    offs_m = tl.arange(0, BLOCK_M)
    blk = offs_m[:, None] * s_qt + tl.arange(0, HEAD_DIM)[None, :]
    row_ok = (start_m + offs_m) < T
    o = tl.load(o_ptr + base + blk, mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(do_ptr + base + blk, mask=row_ok[:, None], other=0.0).to(tl.float32)
    stat = delta_ptr + bh.to(tl.int64) * T + start_m
    tl.store(stat + offs_m, tl.sum(o * do, axis=1), mask=row_ok)


@triton.jit
def _dkdv_blocks(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, s_qt, T, start_n, lo, hi,
                 qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
                 UPCAST: tl.constexpr):
    """dK, dV updates over query blocks [lo, hi) of one query head; q_ptr, do_ptr point at its
    row 0, lse_ptr, delta_ptr at its statistics. Unmasked blocks must need no mask."""
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    blk = offs_m[:, None] * s_qt + tl.arange(0, HEAD_DIM)[None, :]  # (BLOCK_M, D), in-block
    q_blk = q_ptr + tl.cast(lo, tl.int64) * s_qt
    do_blk = do_ptr + tl.cast(lo, tl.int64) * s_qt
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        if MASKED:
            q = tl.load(q_blk + blk, mask=rows[:, None] < T, other=0.0)  # (BLOCK_M, D)
            do = tl.load(do_blk + blk, mask=rows[:, None] < T, other=0.0)
            lse = tl.load(lse_ptr + rows, mask=rows < T, other=0.0)
            delta = tl.load(delta_ptr + rows, mask=rows < T, other=0.0)
        else:
            q = tl.load(q_blk + blk)
            do = tl.load(do_blk + blk)
            lse = tl.load(lse_ptr + rows)
            delta = tl.load(delta_ptr + rows)
        s_t = _dot(k, tl.trans(q), PRECISION, UPCAST) * qk_scale  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(s_t - lse[None, :])
        if MASKED:
            valid = rows[None, :] < T
            if CAUSAL:
                valid = valid & (rows[None, :] >= cols[:, None])
            p_t = tl.where(valid, p_t, 0.0)
        dv += _dot(p_t.to(do.dtype), do, PRECISION, UPCAST)
        dp_t = _dot(v, tl.trans(do), PRECISION, UPCAST)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q.dtype), q, PRECISION, UPCAST)
        q_blk += BLOCK_M * s_qt
        do_blk += BLOCK_M * s_qt
    return dk, dv


@triton.jit(do_not_specialize=["Hq", "Hkv", "GROUP"])
def _attn_bwd_dkdv(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                   T, Hq, Hkv, GROUP, scale, qk_scale,
                   s_qb, s_qt, s_qh, s_kb, s_kt, s_kh,
                   CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    tl.static_assert(BLOCK_N % BLOCK_M == 0)  # the diagonal ends on a query-block boundary
    scale = tl.cast(scale, tl.float32)
    qk_scale = tl.cast(qk_scale, tl.float32)
    start_n = tl.program_id(0) * BLOCK_N
    bhk = tl.program_id(1)
    b = (bhk // Hkv).to(tl.int64)
    hk = bhk % Hkv
    kv_base = b * s_kb + hk.to(tl.int64) * s_kh + start_n.to(tl.int64) * s_kt  # dk, dv share it
    offs_n = tl.arange(0, BLOCK_N)
    kv_blk = offs_n[:, None] * s_kt + tl.arange(0, HEAD_DIM)[None, :]  # (BLOCK_N, D), in-block
    col_ok = (start_n + offs_n) < T
    k = tl.load(k_ptr + kv_base + kv_blk, mask=col_ok[:, None], other=0.0)
    v = tl.load(v_ptr + kv_base + kv_blk, mask=col_ok[:, None], other=0.0)
    dk = tl.zeros((BLOCK_N, HEAD_DIM), tl.float32)
    dv = tl.zeros((BLOCK_N, HEAD_DIM), tl.float32)
    full_end = (T // BLOCK_M) * BLOCK_M  # query blocks before it are wholly inside T
    if CAUSAL:  # the diagonal [start_n, start_n + BLOCK_N) is masked; rows above it see nothing
        diag_end = tl.minimum(start_n + BLOCK_N, T)
        full_start = tl.minimum(start_n + BLOCK_N, full_end)
    else:
        diag_end = 0
        full_start = 0
    for g in range(0, GROUP):
        h = hk * GROUP + g
        q_head = q_ptr + b * s_qb + h.to(tl.int64) * s_qh  # do has q's strides
        do_head = do_ptr + b * s_qb + h.to(tl.int64) * s_qh
        stat = (b * Hq + h) * T
        if CAUSAL:
            dk, dv = _dkdv_blocks(dk, dv, k, v, q_head, do_head, lse_ptr + stat,
                                  delta_ptr + stat, s_qt, T, start_n, start_n, diag_end,
                                  qk_scale, True, CAUSAL, BLOCK_M, BLOCK_N, HEAD_DIM, PRECISION,
                                  UPCAST)
        dk, dv = _dkdv_blocks(dk, dv, k, v, q_head, do_head, lse_ptr + stat, delta_ptr + stat,
                              s_qt, T, start_n, full_start, full_end, qk_scale, False, CAUSAL,
                              BLOCK_M, BLOCK_N, HEAD_DIM, PRECISION, UPCAST)
        dk, dv = _dkdv_blocks(dk, dv, k, v, q_head, do_head, lse_ptr + stat, delta_ptr + stat,
                              s_qt, T, start_n, tl.maximum(full_end, diag_end), T, qk_scale,
                              True, CAUSAL, BLOCK_M, BLOCK_N, HEAD_DIM, PRECISION, UPCAST)
    tl.store(dk_ptr + kv_base + kv_blk, (dk * scale).to(dk_ptr.dtype.element_ty),
             mask=col_ok[:, None])
    tl.store(dv_ptr + kv_base + kv_blk, dv.to(dv_ptr.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _dq_blocks(dq, q, do, lse, delta, k_ptr, v_ptr, s_kt, T, start_m, lo, hi, qk_scale,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
               UPCAST: tl.constexpr):
    """dQ update over key blocks [lo, hi); as _fwd_blocks for the pointers and masks."""
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    blk = offs_n[:, None] * s_kt + tl.arange(0, HEAD_DIM)[None, :]
    k_blk = k_ptr + tl.cast(lo, tl.int64) * s_kt
    v_blk = v_ptr + tl.cast(lo, tl.int64) * s_kt
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if MASKED:
            k = tl.load(k_blk + blk, mask=cols[:, None] < T, other=0.0)
            v = tl.load(v_blk + blk, mask=cols[:, None] < T, other=0.0)
        else:
            k = tl.load(k_blk + blk)
            v = tl.load(v_blk + blk)
        s = _dot(q, tl.trans(k), PRECISION, UPCAST) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.exp2(s - lse[:, None])
        if MASKED:
            valid = cols[None, :] < T
            if CAUSAL:
                valid = valid & (cols[None, :] <= rows[:, None])
            p = tl.where(valid, p, 0.0)
        dp = _dot(do, tl.trans(v), PRECISION, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, PRECISION, UPCAST)
        k_blk += BLOCK_N * s_kt
        v_blk += BLOCK_N * s_kt
    return dq


@triton.jit(do_not_specialize=["Hq", "GROUP"])
def _attn_bwd_dq(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                 T, Hq, GROUP, scale, qk_scale,
                 s_qb, s_qt, s_qh, s_kb, s_kt, s_kh,
                 CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    tl.static_assert(BLOCK_M % BLOCK_N == 0)  # the diagonal starts on a key-block boundary
    scale = tl.cast(scale, tl.float32)
    qk_scale = tl.cast(qk_scale, tl.float32)
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // Hq).to(tl.int64)
    h = bh % Hq
    q_base = b * s_qb + h * s_qh + start_m.to(tl.int64) * s_qt  # do, dq share it
    k_base = b * s_kb + (h // GROUP).to(tl.int64) * s_kh
    offs_m = tl.arange(0, BLOCK_M)
    q_blk = offs_m[:, None] * s_qt + tl.arange(0, HEAD_DIM)[None, :]
    row_ok = (start_m + offs_m) < T
    q = tl.load(q_ptr + q_base + q_blk, mask=row_ok[:, None], other=0.0)
    do = tl.load(do_ptr + q_base + q_blk, mask=row_ok[:, None], other=0.0)
    stat = bh.to(tl.int64) * T + start_m
    lse = tl.load(lse_ptr + stat + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(delta_ptr + stat + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    if CAUSAL:
        full_end = start_m
        hi = tl.minimum(T, start_m + BLOCK_M)
    else:
        full_end = (T // BLOCK_N) * BLOCK_N
        hi = T
    dq = _dq_blocks(dq, q, do, lse, delta, k_ptr + k_base, v_ptr + k_base, s_kt, T, start_m, 0,
                    full_end, qk_scale, False, CAUSAL, BLOCK_M, BLOCK_N, HEAD_DIM, PRECISION,
                    UPCAST)
    dq = _dq_blocks(dq, q, do, lse, delta, k_ptr + k_base, v_ptr + k_base, s_kt, T, start_m,
                    full_end, hi, qk_scale, True, CAUSAL, BLOCK_M, BLOCK_N, HEAD_DIM, PRECISION,
                    UPCAST)
    tl.store(dq_ptr + q_base + q_blk, (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=row_ok[:, None])


# Autotune candidates per (kernel, element bytes of q, D > 64):
# (BLOCK_M, BLOCK_N, num_warps, num_stages); the first is the default (and the interpreter's).
# Forward 128 x 64 and the backward's 64 x 128 (dK/dV) and 128 x 64 (dQ) are FlexAttention's
# Hopper defaults (torch/_inductor/kernel/flex_attention.py); float32 halves the tiles. At
# D = 128 the dK/dV program keeps two [BLOCK_N, 128] float32 accumulators in registers, and a
# 128-key tile spills on sm_90a even with 16 warps (scripts/compile_kernels.py), so it takes 64
# keys; float32 (IEEE products, no tensor cores) takes tiles that do not spill there either.
_TILES: dict[tuple[str, int, bool], list[tuple[int, int, int, int]]] = {
    ("fwd", 2, False): [(128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3)],
    ("fwd", 2, True): [(128, 64, 8, 3), (64, 64, 8, 3)],
    ("fwd", 4, False): [(64, 64, 4, 2), (64, 32, 4, 3), (32, 32, 4, 3)],
    ("fwd", 4, True): [(32, 16, 8, 3), (32, 32, 8, 2)],
    ("dkdv", 2, False): [(64, 128, 8, 2), (32, 128, 8, 2), (64, 64, 4, 3)],
    ("dkdv", 2, True): [(32, 64, 8, 2), (64, 64, 8, 2)],
    ("dkdv", 4, False): [(32, 64, 4, 2), (32, 32, 4, 2), (16, 64, 4, 2)],
    ("dkdv", 4, True): [(16, 64, 8, 2), (16, 32, 8, 2)],
    ("dq", 2, False): [(128, 64, 8, 2), (64, 64, 4, 3), (128, 32, 4, 3)],
    ("dq", 2, True): [(128, 64, 8, 2), (64, 64, 8, 3)],
    ("dq", 4, False): [(64, 32, 4, 2), (32, 32, 4, 2), (64, 16, 4, 2)],
    ("dq", 4, True): [(32, 32, 8, 2), (64, 16, 8, 2)],
}
_KERNELS = {"fwd": _attn_fwd, "dkdv": _attn_bwd_dkdv, "dq": _attn_bwd_dq}


def candidates(kernel: str, elem_bytes: int, head_dim: int) -> list[triton.Config]:
    """The autotune candidates of one kernel ("fwd", "dkdv", "dq"); the first is the default."""
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in _TILES[kernel, elem_bytes, head_dim > 64]]


def _prune(kernel: str) -> Callable[..., list[triton.Config]]:
    """The autotuner's early_config_prune: the candidates for q's element size and the head dim."""
    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        return candidates(kernel, named_args["q_ptr"].element_size(), kwargs["HEAD_DIM"])
    return prune


_TUNED = {} if INTERPRETING else {  # the autotuner times candidates, which needs a GPU
    name: triton.autotune(candidates(name, 2, 128), key=["T", "HEAD_DIM", "CAUSAL", "PRECISION"],
                          prune_configs_by={"early_config_prune": _prune(name)})(fn)
    for name, fn in _KERNELS.items()}


def _launch(kernel: str, grid: Callable[[dict], tuple[int, int]], *args: object,
            **meta: object) -> None:
    """Launch one kernel: autotuned on a GPU; the default candidate in the interpreter."""
    if INTERPRETING:
        q = args[0]
        cfg = candidates(kernel, q.element_size(), meta["HEAD_DIM"])[0]
        wrap_triton(_KERNELS[kernel])[grid](*args, **meta, **cfg.all_kwargs())
    else:
        wrap_triton(_TUNED[kernel])[grid](*args, **meta)


def _dot_meta(dtype: torch.dtype) -> dict[str, object]:
    """Dot precision: TF32 for float32 when torch's matmul precision allows it ("high" or
    "medium"), IEEE for "highest"; 16-bit operands upcast in the interpreter."""
    tf32 = dtype != torch.float32 or torch.get_float32_matmul_precision() != "highest"
    return {"PRECISION": "tf32" if tf32 else "ieee",
            "UPCAST": INTERPRETING and dtype != torch.float32}


def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                            scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Output o [B, T, Hq, D] and the base-2 log-sum-exp lse2 [B, Hq, T] (float32) of contiguous
    q, k, v; the launch code alone (custom_ops.flash_attention checks the inputs and wraps it as a
    torch custom op)."""
    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty(B, Hq, T, device=q.device, dtype=torch.float32)
    _launch("fwd", lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * Hq),
            q, k, v, o, lse, T, Hq, Hq // Hkv, scale * _LOG2E,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            CAUSAL=causal, HEAD_DIM=D, **_dot_meta(q.dtype))
    return o, lse


def flash_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                             lse: torch.Tensor, do: torch.Tensor, causal: bool, scale: float
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv from flash_attention_forward's o and lse and a contiguous do."""
    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
    meta = dict(CAUSAL=causal, HEAD_DIM=D, **_dot_meta(q.dtype))
    delta = torch.empty_like(lse)
    block = 64  # rows per program of the small rowsum kernel
    wrap_triton(_attn_bwd_delta)[(triton.cdiv(T, block), B * Hq)](
        o, do, delta, T, Hq, *strides[:3], BLOCK_M=block, HEAD_DIM=D)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    qk_scale = scale * _LOG2E
    _launch("dkdv", lambda m: (triton.cdiv(T, m["BLOCK_N"]), B * Hkv),
            q, k, v, do, lse, delta, dk, dv, T, Hq, Hkv, Hq // Hkv, scale, qk_scale, *strides,
            **meta)
    _launch("dq", lambda m: (triton.cdiv(T, m["BLOCK_M"]), B * Hq),
            q, k, v, do, lse, delta, dq, T, Hq, Hq // Hkv, scale, qk_scale, *strides, **meta)
    return dq, dk, dv
