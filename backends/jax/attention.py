"""Causal grouped-query attention implementations, chosen by `backend.attention`.

Each takes q [B, T, Hq, D], k, v [B, T, Hkv, D] and returns [B, T, Hq, D]; query head h reads
kv head h // (Hq // Hkv), as trainbench.ops.attention_fwd does.

- xla: plain jnp einsums; XLA fuses what it can. Runs everywhere; the default.
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


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Scores and softmax in float32, products with inputs in q's dtype."""
    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    qg = q.reshape(B, T, Hkv, Hq // Hkv, D)  # (B, T, Hkv, G, D)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k,
                        preferred_element_type=jnp.float32) * (1.0 / math.sqrt(D))
    causal = jnp.tril(jnp.ones((T, T), dtype=bool))  # key s visible to query q iff s <= q
    scores = jnp.where(causal, scores, -jnp.inf)  # (B, Hkv, G, T, T)
    p = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgqs,bskd->bqkgd", p.astype(v.dtype), v)  # (B, T, Hkv, G, D)
    return out.reshape(B, T, Hq, D)


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
    """`fn` run on each device's shard of the batch (q, k, v and the output split like the
    batch, mesh.BATCH); `fn` itself on a single device or without a mesh."""
    if mesh is None or mesh.devices.size == 1:
        return fn
    from trainbench.backends.jax.mesh import BATCH

    return jax.shard_map(fn, mesh=mesh, in_specs=(BATCH, BATCH, BATCH), out_specs=BATCH,
                         check_vma=False)


IMPLEMENTATIONS = ("xla", "cudnn", "pallas", "splash")
_PALLAS_KERNELS = {"pallas": pallas_attention, "splash": splash_attention}


def select(name: str, platform: str, compute_dtype: Any, device_kind: str,
           block_size: int, mesh: Any = None) -> Callable[[jax.Array, jax.Array, jax.Array],
                                                          jax.Array]:
    """The attention function `name` for devices of `platform` (cpu | gpu | tpu) on `mesh`, or
    a ConfigError saying why it cannot run there."""
    if name == "xla":
        return xla_attention
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
