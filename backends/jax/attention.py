"""Causal grouped-query attention implementations, chosen by `backend.attention`.

Each takes q [B, T, Hq, D], k, v [B, T, Hkv, D] and returns [B, T, Hq, D]; query head h reads
kv head h // (Hq // Hkv), as trainbench.ops.attention_fwd does.

- xla: jnp einsums over query blocks that skip most of the masked triangle; XLA fuses the
  rest. Runs everywhere; the default.
- jax: jax.nn.dot_product_attention(is_causal=True) with JAX's own choice of implementation
  (on the CPU and TPU its XLA path: the whole [T, T] score square, masked); what a plain JAX
  loop calls, so a run with it differs from one only in the harness (scripts/bench_peers.py).
- cudnn: jax.nn.dot_product_attention(implementation="cudnn"), cuDNN's fused flash attention;
  NVIDIA GPUs only, in bfloat16 or float16 (cuDNN has no float32 flash kernel).
- pallas: trainbench's Pallas flash-attention kernel (flash_pallas.py), written for TPU; on the
  CPU it runs in Pallas's TPU interpret mode (slow; for tests), on GPUs it is refused.
- splash: JAX's splash attention (splash.py), the production TPU kernels MaxText uses; the same
  TPU-only rules as pallas.

XLA cannot partition a Mosaic (Pallas TPU) kernel over a mesh: on a mesh of several devices the
Pallas choices run per device on its shard of the batch (`per_shard`, a shard_map).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from trainbench.errors import ConfigError


QUERY_BLOCK = 128
"""Smallest query block of xla_attention on accelerators (a TPU lane, a multiple of every GPU
tile)."""

CPU_QUERY_BLOCK = 64
"""Smallest query block on the CPU. On a 2-core CPU (model=small heads, fp32, forward +
backward, 2048 tokens, against jax.nn.dot_product_attention(is_causal=True); medians of 7 rounds
of scripts/bench_jax_attention.py, benchmarks/cpu/jax_attention_blocks_quiet.json) blocks of 64
took 0.58x of its time at T=128, 0.71x at 256, 0.60x at 512 and 0.47x at 1024, where blocks of
128 took 0.96x, 0.92x, 0.64x and 0.45x; blocks of 32 were no faster."""

CPU_MAX_BLOCKS = 4
"""Most query blocks on the CPU. In whole training steps (model=small, fp32, 2048 tokens, 2
cores) 4 blocks of 128 at T=512 took 3-4.5% less time than 8 of 64 (two runs of 6-8 interleaved
rounds), while at T=256 (4 blocks of 64 either way, or 2 of 128) and T=1024 (4 of 256 against 8
of 128) the step times were level: each block is a few more XLA:CPU ops, not just FLOPs."""

MAX_BLOCKS = 8
"""Most query blocks: beyond 8 smallest blocks, blocks grow instead, so the number of
products (and compile time) stays bounded at long sequences; 8 blocks do 9/16 of the square."""


def query_block(T: int, smallest: int = QUERY_BLOCK, max_blocks: int = MAX_BLOCKS) -> int:
    """Queries per block at sequence length T: `smallest`, or a multiple of it that keeps the
    block count at most `max_blocks`."""
    return smallest * math.ceil(math.ceil(T / smallest) / max_blocks)


def _causal_block(qg: jax.Array, k: jax.Array, v: jax.Array, start: int,
                  scale: float) -> jax.Array:
    """Attention of the C queries at positions start.. over the S = start + C keys before them.

    qg [B, C, Hkv, G, D], k, v [B, S, Hkv, D] -> [B, C, Hkv, G, D]. The causal mask is an iota
    comparison that XLA fuses into the select: no [C, S] array is built.
    """
    C, S = qg.shape[1], k.shape[1]
    scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k,
                        preferred_element_type=jnp.float32) * scale  # (B, Hkv, G, C, S)
    query_pos = jax.lax.broadcasted_iota(jnp.int32, (C, S), 0) + start
    key_pos = jax.lax.broadcasted_iota(jnp.int32, (C, S), 1)
    scores = jnp.where(key_pos <= query_pos, scores, -jnp.inf)
    p = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bkgqs,bskd->bqkgd", p.astype(v.dtype), v)


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                  smallest_block: int = QUERY_BLOCK, max_blocks: int = MAX_BLOCKS) -> jax.Array:
    """Scores and softmax in float32, products with inputs in q's dtype.

    Queries go in blocks (query_block(T, smallest_block, max_blocks)), each against only the
    keys up to its last position, so the masked upper triangle is mostly never computed: with n
    blocks the score and value products shrink to (n + 1) / 2n of the full square. Each row's
    softmax still sees every key it may see, so the result is the unblocked one. K/V heads are
    shared by their query group through the einsum, never repeated.
    """
    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    qg = q.reshape(B, T, Hkv, Hq // Hkv, D)  # (B, T, Hkv, G, D)
    scale = 1.0 / math.sqrt(D)
    C = query_block(T, smallest_block, max_blocks)
    blocks = [_causal_block(qg[:, start:start + C], k[:, :start + C], v[:, :start + C], start,
                            scale)
              for start in range(0, T, C)]
    return jnp.concatenate(blocks, axis=1).reshape(B, T, Hq, D)


def jax_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """jax.nn.dot_product_attention, causal, implementation left to JAX; GQA is native."""
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """cuDNN fused attention; GQA is native (kv heads broadcast over their query group)."""
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")


def pallas_attention(block_size: int, on_tpu: bool) -> Callable[..., jax.Array]:
    """The Pallas kernel compiled for TPU, or elsewhere run by Pallas's TPU interpreter (which
    fills unwritten memory with NaN, so a block the kernel fails to write shows)."""
    from jax.experimental.pallas import tpu as pltpu

    from trainbench.backends.jax import flash_pallas

    interpret = False if on_tpu else pltpu.InterpretParams(uninitialized_memory="nan")
    return functools.partial(flash_pallas.flash_attention, block_size=block_size,
                             interpret=interpret)


def splash_attention(block_size: int, on_tpu: bool) -> Callable[..., jax.Array]:
    from trainbench.backends.jax import splash

    return splash.make(block_size, on_tpu)


def per_shard(fn: Callable[..., jax.Array], mesh: Any) -> Callable[..., jax.Array]:
    """`fn` run on each device's shard: the batch split like the batch (over data and fsdp) and,
    on a mesh with a tensor axis, the heads split over it (each device runs its n_heads/tp query
    heads against its n_kv_heads/tp kv heads: whole GQA groups, as check_tensor_parallel
    ensures), so no device gathers or recomputes another's heads. `fn` itself on a single device
    or without a mesh."""
    if mesh is None or mesh.devices.size == 1:
        return fn
    from jax.sharding import PartitionSpec as P

    from trainbench.backends.jax.mesh import BATCH

    spec = P(BATCH[0], None, "tensor", None) if mesh.shape.get("tensor", 1) > 1 else BATCH
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                         check_vma=False)


IMPLEMENTATIONS = ("xla", "jax", "cudnn", "pallas", "splash")
_PALLAS_KERNELS = {"pallas": pallas_attention, "splash": splash_attention}


def select(name: str, platform: str, compute_dtype: Any, device_kind: str,
           block_size: int, mesh: Any = None) -> Callable[[jax.Array, jax.Array, jax.Array],
                                                          jax.Array]:
    """The attention function `name` for devices of `platform` (cpu | gpu | tpu) on `mesh`, or
    a ConfigError saying why it cannot run there."""
    if name == "xla":
        if platform == "cpu":
            return functools.partial(xla_attention, smallest_block=CPU_QUERY_BLOCK,
                                     max_blocks=CPU_MAX_BLOCKS)
        return xla_attention
    if name == "jax":
        return jax_attention
    if name == "cudnn":
        if platform != "gpu" or "nvidia" not in device_kind.lower():
            raise ConfigError(f"backend.attention=cudnn needs an NVIDIA GPU; this run is on "
                              f"{platform} ({device_kind}); use backend.attention=xla")
        if jnp.dtype(compute_dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
            raise ConfigError(f"backend.attention=cudnn runs in bfloat16 or float16, not "
                              f"{jnp.dtype(compute_dtype).name}; use precision=bf16 or "
                              "backend.attention=xla")
        return cudnn_attention
    if name in _PALLAS_KERNELS:
        if platform == "gpu":
            raise ConfigError(f"backend.attention={name} is a TPU kernel; on GPUs use "
                              "backend.attention=cudnn (NVIDIA) or xla")
        if block_size < 8 or block_size % 8:
            raise ConfigError(f"backend.flash_block_size={block_size} must be a positive "
                              "multiple of 8 (TPU sublane tiling)")
        if name == "splash" and block_size % 128:
            raise ConfigError(f"backend.flash_block_size={block_size} must be a multiple of 128 "
                              "for backend.attention=splash (its kv compute block fills the "
                              "128 TPU lanes)")
        return per_shard(_PALLAS_KERNELS[name](block_size, on_tpu=platform == "tpu"), mesh)
    raise ConfigError(f"backend.attention={name!r} is not known; choose one of: "
                      + ", ".join(IMPLEMENTATIONS))
