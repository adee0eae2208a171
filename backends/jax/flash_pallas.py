"""Causal grouped-query flash attention in Pallas, for TPU (Dao et al. 2022, "FlashAttention").

Forward: a Pallas kernel. Each program computes one block of `block_size` queries of one head
against the key/value blocks at or before it, with an online softmax (running max m, running sum
l, float32 accumulator), so the [T, T] score matrix is never stored; it also writes the row
log-sum-exp, lse = m + log(l), for the backward pass.

Backward: plain XLA (jnp) from the saved lse, through jax.custom_vjp: P = exp(S - lse) is
rebuilt in one piece, so the backward pass holds [T, T] scores per head like xla attention does.
There is no Pallas backward kernel yet.

Off TPU the kernel runs in Pallas's TPU interpret mode, which is how it is tested on the CPU.
A sequence that is not a multiple of the block is padded with zero rows at the end: a padded key
sits after every real query, so the causal mask already hides it; padded query rows are dropped.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, block: int, scale: float) -> None:
    """One query block: q_ref (block, D); k_ref, v_ref (T_pad, D) of the matching kv head."""
    i = pl.program_id(2)  # query block index
    q = q_ref[...]
    rows = i * block + jax.lax.broadcasted_iota(jnp.int32, (block, block), 0)

    def visit(j, carry):
        m, l, acc = carry
        k = k_ref[pl.ds(j * block, block), :]  # (block, D)
        v = v_ref[pl.ds(j * block, block), :]
        s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32) * scale  # (block, block)
        cols = j * block + jax.lax.broadcasted_iota(jnp.int32, (block, block), 1)
        s = jnp.where(cols <= rows, s, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))  # finite: key 0 is visible to every query
        p = jnp.exp(s - m_new[:, None])
        correction = jnp.exp(m - m_new)
        l = l * correction + jnp.sum(p, axis=1)
        acc = acc * correction[:, None] + jnp.dot(p.astype(v.dtype), v,
                                                  preferred_element_type=jnp.float32)
        return m_new, l, acc

    start = (jnp.full((block,), -jnp.inf, jnp.float32), jnp.zeros((block,), jnp.float32),
             jnp.zeros(q.shape, jnp.float32))
    # causal: query block i needs key blocks 0..i only
    m, l, acc = jax.lax.fori_loop(0, i + 1, visit, start)
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    # lse is a row (queries along the 128 lanes) but m and l hold one query per sublane:
    # transposed by a masked sublane sum (the diagonal of lse broadcast over lanes), since
    # Mosaic would relayout a column into a row with a sublane gather that TPU v4 lacks
    lse = (m + jnp.log(l))[:, None]  # (block, 1)
    diagonal = (jax.lax.broadcasted_iota(jnp.int32, (block, block), 0)
                == jax.lax.broadcasted_iota(jnp.int32, (block, block), 1))
    lse_ref[...] = jnp.sum(jnp.where(diagonal, lse, 0.0), axis=0, keepdims=True)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _forward(q: jax.Array, k: jax.Array, v: jax.Array, block_size: int,
             interpret: Any) -> tuple[jax.Array, jax.Array]:
    """Output [B, T, Hq, D] and lse [B, Hq, T] (float32)."""
    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    group = Hq // Hkv
    block = min(block_size, _round_up(T, 8))
    T_pad = _round_up(T, block)
    pad = ((0, 0), (0, 0), (0, T_pad - T), (0, 0))
    qh, kh, vh = (jnp.pad(x.transpose(0, 2, 1, 3), pad) for x in (q, k, v))  # (B, H, T_pad, D)
    kernel = functools.partial(_fwd_kernel, block=block, scale=1.0 / math.sqrt(D))
    out, lse = pl.pallas_call(
        kernel,
        grid=(B, Hq, T_pad // block),
        in_specs=[
            pl.BlockSpec((None, None, block, D), lambda b, h, i: (b, h, i, 0)),
            pl.BlockSpec((None, None, T_pad, D), lambda b, h, i: (b, h // group, 0, 0)),
            pl.BlockSpec((None, None, T_pad, D), lambda b, h, i: (b, h // group, 0, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, block, D), lambda b, h, i: (b, h, i, 0)),
            pl.BlockSpec((None, None, 1, block), lambda b, h, i: (b, h, 0, i)),
        ],
        out_shape=[jax.ShapeDtypeStruct((B, Hq, T_pad, D), q.dtype),
                   jax.ShapeDtypeStruct((B, Hq, 1, T_pad), jnp.float32)],
        interpret=interpret,
    )(qh, kh, vh)
    return out[:, :, :T].transpose(0, 2, 1, 3), lse[:, :, 0, :T]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, block_size: int = 128,
                    interpret: Any = False) -> jax.Array:
    """Causal GQA attention: q [B, T, Hq, D], k, v [B, T, Hkv, D] -> [B, T, Hq, D].

    `interpret` is pallas_call's: False compiles for TPU; off TPU pass
    jax.experimental.pallas.tpu.InterpretParams() (the TPU interpreter) or True."""
    return _forward(q, k, v, block_size, interpret)[0]


def _flash_fwd(q, k, v, block_size, interpret):
    out, lse = _forward(q, k, v, block_size, interpret)
    return out, (q, k, v, out, lse)


def _flash_bwd(block_size, interpret, residuals, dout):
    """Softmax attention backward from the saved lse, in float32 (see the module docstring)."""
    q, k, v, out, lse = residuals
    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    G = Hq // Hkv
    f32 = jnp.float32
    qg = q.reshape(B, T, Hkv, G, D).astype(f32)
    dog = dout.reshape(B, T, Hkv, G, D).astype(f32)
    k32, v32 = k.astype(f32), v.astype(f32)
    scale = 1.0 / math.sqrt(D)
    s = jnp.einsum("bqkgd,bskd->bkgqs", qg, k32) * scale  # (B, Hkv, G, T, T)
    causal = jnp.tril(jnp.ones((T, T), dtype=bool))
    p = jnp.where(causal, jnp.exp(s - lse.reshape(B, Hkv, G, T)[..., None]), 0.0)
    dv = jnp.einsum("bkgqs,bqkgd->bskd", p, dog)  # summed over the query group
    dp = jnp.einsum("bqkgd,bskd->bkgqs", dog, v32)
    # delta_q = sum_s p_qs dp_qs = dout_q . out_q (FlashAttention-2, Dao 2023, backward pass)
    delta = jnp.einsum("bqkgd,bqkgd->bkgq", dog, out.reshape(B, T, Hkv, G, D).astype(f32))
    ds = p * (dp - delta[..., None]) * scale
    dq = jnp.einsum("bkgqs,bskd->bqkgd", ds, k32).reshape(B, T, Hq, D)
    dk = jnp.einsum("bkgqs,bqkgd->bskd", ds, qg)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


flash_attention.defvjp(_flash_fwd, _flash_bwd)
