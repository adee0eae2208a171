"""JAX's splash attention (jax.experimental.pallas.ops.tpu.splash_attention): the production TPU
attention MaxText uses, with Pallas forward, dQ and dK/dV kernels that skip the blocks a causal
mask hides. trainbench's own Pallas kernel (flash_pallas.py) stays the custom one.

Splash works on one sequence, [heads, T, head_dim], with grouped-query attention native (query
head h reads kv head h // (Hq // Hkv)), and does not scale the scores: q is scaled by
1/sqrt(head_dim) first, as MaxText does. A sequence that is not a multiple of the block is
padded with zero rows at the end, which the causal mask hides from every real query. Splash's
blocks are multiples of 128 (its kv compute block must fill the 128 lanes of a vector register).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@functools.lru_cache(maxsize=32)
def _kernel(heads: int, seq: int, block: int, interpret: Any) -> Any:
    """The splash kernel of a causal [seq, seq] mask over `heads` query heads, forward and
    backward blocks all `block` (its mask tables are built once per shape, in NumPy)."""
    mask = sm.MultiHeadMask([sm.CausalMask((seq, seq)) for _ in range(heads)])
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                          block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                          block_q_dq=block, block_kv_dq=block)
    return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, block_size: int = 128,
                     interpret: Any = False) -> jax.Array:
    """Causal GQA attention: q [B, T, Hq, D], k, v [B, T, Hkv, D] -> [B, T, Hq, D].
    `interpret`: False compiles for TPU; True runs Pallas's interpreter (off TPU)."""
    B, T, Hq, D = q.shape
    T_pad = _round_up(T, block_size)
    pad = ((0, 0), (0, 0), (0, T_pad - T), (0, 0))
    q = q * jnp.asarray(1.0 / math.sqrt(D), q.dtype)
    qh, kh, vh = (jnp.pad(x.transpose(0, 2, 1, 3), pad) for x in (q, k, v))  # (B, H, T_pad, D)
    out = jax.vmap(_kernel(Hq, T_pad, block_size, interpret))(qh, kh, vh)  # (B, Hq, T_pad, D)
    return out[:, :, :T].transpose(0, 2, 1, 3)


def make(block_size: int, on_tpu: bool) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """splash_attention compiled by Mosaic on TPU, else run by Pallas's generic interpreter
    (interpret=True: the TPU interpreter, InterpretParams, fails on splash's kernels in
    jax 0.10.2 with a safe_zip length mismatch)."""
    return functools.partial(splash_attention, block_size=block_size, interpret=not on_tpu)
