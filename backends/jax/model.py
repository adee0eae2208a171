"""The shared Llama model (trainbench.reference) in Flax Linen, and its canonical parameter mapping.

Linen, not NNX: a Linen model is a pure function of a parameter pytree, which is what `jax.jit`
with donated buffers, Optax and NamedSharding all take as is. Weights are never drawn by Flax:
they are loaded from trainbench.model's canonical mapping (`to_tree`) and exported back
(`to_canonical`); the zero initializers below only give `init` (used for shapes) something to run.

Mixed precision: parameters stay in their own dtype (float32 master weights); matmul inputs are
cast to `dtype` (the compute dtype). The residual stream, RMSNorm, rotary embeddings, softmax,
the SiLU gate and the logits are kept in float32. Shapes: B batch, T sequence, d d_model,
Hq/Hkv heads, D head_dim, V vocab.

Layers: unrolled (one Linen module per layer, `layers_{i}`), or with `scan=True` one module
scanned over the layer axis (`nn.scan`, as MaxText's `scan_layers`): every layer parameter is
stacked on a leading [L] axis under `layers`, and XLA compiles one block body instead of L
copies, so a 70B or 405B step compiles in minutes, not hours. The same numbers either way.

Sharding: given a `mesh`, activations are constrained by logical axes (mesh.py's LOGICAL_RULES):
the residual stream split over the sequence between blocks, each projection's output over heads
or the MLP width, the logits over the vocabulary; the attention function itself is called on
head-split q, k, v and returns head-split output. Without a mesh the model is unconstrained.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trainbench import ops
from trainbench.backends.jax.attention import xla_attention
from trainbench.backends.jax.mesh import constrain
from trainbench.model import ModelConfig, param_shapes

AttentionFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
"""Causal grouped-query attention: q [B, T, Hq, D], k, v [B, T, Hkv, D] -> [B, T, Hq, D]."""

_zeros = nn.initializers.zeros_init()

RESIDUAL = ("act_batch", "act_length", "act_embed")
"""The residual stream between blocks [B, T, d]: split over the sequence under TP."""
GATHERED = ("act_batch", None, "act_embed")
"""A norm's output [B, T, d], whole sequence, as the column-parallel projections read it."""


def _matmul(x: jax.Array, w: jax.Array, dtype: Any) -> jax.Array:
    """x @ w with both inputs in the compute dtype."""
    return jnp.matmul(x.astype(dtype), w.astype(dtype))


def rotate_half(x: jax.Array) -> jax.Array:
    """cat(-x[..., D/2:], x[..., :D/2]): the Hugging Face Llama half-split convention."""
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [B, T, H, D] by position in float32; tables [T, D]."""
    x32 = x.astype(jnp.float32)
    cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, D): broadcast over heads
    return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x**2) + eps) * scale, in float32, returned in `dtype`."""

    eps: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", _zeros, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        r = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * r * scale).astype(self.dtype)


class Attention(nn.Module):
    """q/k/v projections, rotary embeddings, causal GQA attention, output projection."""

    cfg: ModelConfig
    dtype: Any
    attention_fn: AttentionFn
    mesh: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        c = self.cfg
        B, T, d = x.shape
        wq = self.param("wq", _zeros, (d, c.q_dim), jnp.float32)
        wk = self.param("wk", _zeros, (d, c.kv_dim), jnp.float32)
        wv = self.param("wv", _zeros, (d, c.kv_dim), jnp.float32)
        wo = self.param("wo", _zeros, (c.q_dim, d), jnp.float32)
        q_axes = ("act_batch", None, "act_heads", None)
        kv_axes = ("act_batch", None, "act_kv_heads", None)
        q = _matmul(x, wq, self.dtype).reshape(B, T, c.n_heads, c.head_dim)
        k = _matmul(x, wk, self.dtype).reshape(B, T, c.n_kv_heads, c.head_dim)
        v = _matmul(x, wv, self.dtype).reshape(B, T, c.n_kv_heads, c.head_dim)
        q = constrain(apply_rope(q, cos, sin), q_axes, self.mesh)
        k = constrain(apply_rope(k, cos, sin), kv_axes, self.mesh)
        v = constrain(v, kv_axes, self.mesh)
        o = constrain(self.attention_fn(q, k, v), q_axes, self.mesh)  # (B, T, Hq, D)
        return _matmul(o.reshape(B, T, c.q_dim), wo, self.dtype)


class Mlp(nn.Module):
    """SwiGLU: w_down(silu(x @ w_gate) * (x @ w_up)), the gate in float32."""

    cfg: ModelConfig
    dtype: Any
    mesh: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d, f = self.cfg.d_model, self.cfg.d_ff
        w_gate = self.param("w_gate", _zeros, (d, f), jnp.float32)
        w_up = self.param("w_up", _zeros, (d, f), jnp.float32)
        w_down = self.param("w_down", _zeros, (f, d), jnp.float32)
        hidden = ("act_batch", None, "act_mlp")
        gate = constrain(_matmul(x, w_gate, self.dtype).astype(jnp.float32), hidden,
                         self.mesh)  # (B, T, d_ff)
        up = constrain(_matmul(x, w_up, self.dtype).astype(jnp.float32), hidden, self.mesh)
        return _matmul(jax.nn.silu(gate) * up, w_down, self.dtype)


class Block(nn.Module):
    """Pre-norm residual block: h + attn(attn_norm(h)), then h + mlp(mlp_norm(h))."""

    cfg: ModelConfig
    dtype: Any
    attention_fn: AttentionFn
    mesh: Any = None

    @nn.compact
    def __call__(self, h: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        c, mesh = self.cfg, self.mesh
        a = constrain(RMSNorm(c.norm_eps, self.dtype, name="attn_norm")(h), GATHERED, mesh)
        h = h + Attention(c, self.dtype, self.attention_fn, mesh, name="attn")(a, cos, sin)
        h = constrain(h, RESIDUAL, mesh)
        m = constrain(RMSNorm(c.norm_eps, self.dtype, name="mlp_norm")(h), GATHERED, mesh)
        return constrain(h + Mlp(c, self.dtype, mesh, name="mlp")(m), RESIDUAL, mesh)


class ScannedBlock(Block):
    """A Block with nn.scan's signature: (carry, *broadcast) -> (carry, per-layer output)."""

    @nn.compact
    def __call__(self, h: jax.Array, cos: jax.Array,  # type: ignore[override]
                 sin: jax.Array) -> tuple[jax.Array, None]:
        return super().__call__(h, cos, sin), None


class Transformer(nn.Module):
    """Tokens [B, T] -> float32 logits [B, T, V]. `remat` recomputes each block in the backward
    pass instead of keeping its activations (jax.checkpoint through nn.remat). `mesh` (a
    jax.sharding.Mesh with mesh.py's axes) turns on the activation sharding constraints. `scan`
    runs the layers as one scanned module with stacked parameters (see the module's doc)."""

    cfg: ModelConfig
    dtype: Any = jnp.float32
    attention_fn: AttentionFn = xla_attention
    remat: bool = False
    mesh: Any = None
    scan: bool = False

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        c = self.cfg
        T = tokens.shape[1]
        # the reference's tables (float64 angles rounded once), as constants of the program
        cos, sin = (jnp.asarray(t) for t in ops.rope_cos_sin(T, c.head_dim, c.rope_theta,
                                                             np.float32))
        embed = self.param("embed", _zeros, (c.vocab, c.d_model), jnp.float32)
        mesh = self.mesh
        # (B, T, d): the residual stream stays float32
        h = constrain(embed[tokens].astype(jnp.float32), RESIDUAL, mesh)
        if self.scan:
            # prevent_cse=False: the scan's loop boundary already keeps XLA from merging the
            # recomputation into the forward pass (jax.checkpoint's own advice for scans)
            body = nn.remat(ScannedBlock, prevent_cse=False) if self.remat else ScannedBlock
            layers = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                             in_axes=(nn.broadcast, nn.broadcast), length=c.n_layers)
            h, _ = layers(c, self.dtype, self.attention_fn, mesh, name=SCANNED)(h, cos, sin)
        else:
            block = nn.remat(Block) if self.remat else Block
            for i in range(c.n_layers):
                h = block(c, self.dtype, self.attention_fn, mesh, name=f"layers_{i}")(h, cos,
                                                                                     sin)
        x = constrain(RMSNorm(c.norm_eps, self.dtype, name="final_norm")(h), GATHERED, mesh)
        if c.tie_embeddings:
            head = embed.T  # (d, V)
        else:
            head = self.param("lm_head", _zeros, (c.d_model, c.vocab), jnp.float32)
        logits = jnp.matmul(x, head.astype(self.dtype), preferred_element_type=jnp.float32)
        return constrain(logits, ("act_batch", None, "act_vocab"), mesh)  # vocab-parallel


def next_token_loss(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean cross-entropy of logits[:, :-1] predicting tokens[:, 1:], in float32. The target's
    logit is picked by a one-hot product (exact: one non-zero term), which stays local to each
    device when the vocabulary is split, where a gather would collect the whole row."""
    logits = logits[:, :-1].astype(jnp.float32)  # (B, T-1, V)
    targets = tokens[:, 1:]
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.sum(logits * jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype),
                     axis=-1)
    return jnp.mean(lse - picked)


SCANNED = "layers"
"""The scanned layers' module name: its parameters carry a leading [n_layers] axis."""

# canonical name -> path in the Linen parameter tree
_LAYER_PATHS = {
    "attn_norm": ("attn_norm", "scale"),
    "wq": ("attn", "wq"), "wk": ("attn", "wk"), "wv": ("attn", "wv"), "wo": ("attn", "wo"),
    "mlp_norm": ("mlp_norm", "scale"),
    "w_gate": ("mlp", "w_gate"), "w_up": ("mlp", "w_up"), "w_down": ("mlp", "w_down"),
}


def tree_path(name: str, scan: bool = False) -> tuple[str, ...]:
    """The Linen tree path of a canonical parameter name (e.g. layers.0.wq -> layers_0/attn/wq;
    with `scan`, every layer's wq is one slice of layers/attn/wq)."""
    if name.startswith("layers."):
        _, index, leaf = name.split(".")
        return (SCANNED if scan else f"layers_{index}", *_LAYER_PATHS[leaf])
    return {"final_norm": ("final_norm", "scale")}.get(name, (name,))


def _stack(values: list[Any]) -> Any:
    """The layers' values of one parameter on a leading layer axis: arrays stacked,
    jax.ShapeDtypeStructs given the stacked shape, equal plain values (an optimizer mask's
    booleans) kept once."""
    first = values[0]
    if isinstance(first, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(values), *first.shape), first.dtype)
    if isinstance(first, (bool, int, float, str)) or first is None:
        if any(v != first for v in values):
            raise ValueError(f"per-layer values {values} differ: a scanned tree holds one")
        return first
    return np.stack([np.asarray(v) for v in values])


def to_tree(flat: Mapping[str, Any], scan: bool = False) -> dict[str, Any]:
    """Canonical flat mapping -> nested Linen parameter tree (values passed through as given;
    with `scan`, the layers' values stacked by _stack)."""
    tree: dict[str, Any] = {}
    stacked: dict[tuple[str, ...], list[Any]] = {}
    for name, value in flat.items():
        path = tree_path(name, scan)
        if scan and name.startswith("layers."):
            stacked.setdefault(path, []).append(value)
            continue
        _put(tree, path, value)
    for path, values in stacked.items():
        _put(tree, path, _stack(values))
    return tree


def _put(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    *parents, leaf = path
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def to_canonical(cfg: ModelConfig, tree: Mapping[str, Any], scan: bool = False
                 ) -> dict[str, Any]:
    """Nested Linen parameter tree -> canonical flat mapping, in canonical order (with `scan`,
    layer i's value is slice i of the stacked leaf)."""
    flat = {}
    for name in param_shapes(cfg):
        node: Any = tree
        for key in tree_path(name, scan):
            node = node[key]
        if scan and name.startswith("layers."):
            node = node[int(name.split(".")[1])]
        flat[name] = node
    return flat
