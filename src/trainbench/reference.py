"""The whole model composed from the reference ops: logits, and loss with hand-written gradients.

The architecture is the Llama decoder of docs/design.md ("The model"); parameters are the canonical
mapping of trainbench.model, every matrix (in_features, out_features). Everything is computed in
the parameters' dtype. Shapes: B batch, T sequence, d d_model, Hq/Hkv heads, D head_dim, V vocab.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from trainbench import ops
from trainbench.errors import ConfigError
from trainbench.model import ModelConfig, check_params, param_shapes

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check_inputs(cfg: ModelConfig, params: Mapping[str, np.ndarray],
                  tokens: np.ndarray) -> None:
    check_params(cfg, params)
    dtype = params["embed"].dtype
    if dtype not in _FLOAT_DTYPES:
        raise ConfigError(f"parameter embed has dtype {dtype}, expected float32 or float64")
    for name, value in params.items():
        if value.dtype != dtype:
            raise ConfigError(f"parameter {name} has dtype {value.dtype}, expected {dtype} "
                              "like embed (all parameters share one dtype)")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ConfigError(f"tokens have dtype {tokens.dtype}, expected an integer dtype")
    if tokens.ndim != 2 or tokens.size == 0:
        raise ConfigError(f"tokens have shape {tokens.shape}, expected a non-empty [batch, seq]")
    if tokens.shape[1] > cfg.max_seq_len:
        raise ConfigError(f"tokens have sequence length {tokens.shape[1]}, expected at most "
                          f"model.max_seq_len={cfg.max_seq_len}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= cfg.vocab:
        bad = low if low < 0 else high
        raise ConfigError(f"token id {bad} is out of range, expected 0 <= id < "
                          f"model.vocab={cfg.vocab}")


def _forward(cfg: ModelConfig, params: Mapping[str, np.ndarray],
             tokens: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Logits [B, T, V] and every op's cache, keyed like the parameters they belong to."""
    B, T = tokens.shape
    Hq, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    cos, sin = ops.rope_cos_sin(T, D, cfg.rope_theta, params["embed"].dtype)  # (T, D)
    caches: dict[str, Any] = {}
    h, caches["embed"] = ops.embedding_fwd(params["embed"], tokens)  # (B, T, d)
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        a, caches[p + "attn_norm"] = ops.rmsnorm_fwd(h, params[p + "attn_norm"], cfg.norm_eps)
        q, caches[p + "wq"] = ops.linear_fwd(a, params[p + "wq"])  # (B, T, Hq*D)
        k, caches[p + "wk"] = ops.linear_fwd(a, params[p + "wk"])  # (B, T, Hkv*D)
        v, caches[p + "wv"] = ops.linear_fwd(a, params[p + "wv"])  # (B, T, Hkv*D)
        q, caches[p + "rope_q"] = ops.rope_fwd(q.reshape(B, T, Hq, D), cos, sin)
        k, caches[p + "rope_k"] = ops.rope_fwd(k.reshape(B, T, Hkv, D), cos, sin)
        o, caches[p + "attention"] = ops.attention_fwd(q, k, v.reshape(B, T, Hkv, D))
        o, caches[p + "wo"] = ops.linear_fwd(o.reshape(B, T, Hq * D), params[p + "wo"])
        h = h + o
        m, caches[p + "mlp_norm"] = ops.rmsnorm_fwd(h, params[p + "mlp_norm"], cfg.norm_eps)
        gate, caches[p + "w_gate"] = ops.linear_fwd(m, params[p + "w_gate"])  # (B, T, d_ff)
        up, caches[p + "w_up"] = ops.linear_fwd(m, params[p + "w_up"])  # (B, T, d_ff)
        f, caches[p + "swiglu"] = ops.swiglu_fwd(gate, up)
        f, caches[p + "w_down"] = ops.linear_fwd(f, params[p + "w_down"])  # (B, T, d)
        h = h + f
    x, caches["final_norm"] = ops.rmsnorm_fwd(h, params["final_norm"], cfg.norm_eps)
    head = params["embed"].T if cfg.tie_embeddings else params["lm_head"]  # (d, V)
    logits, caches["lm_head"] = ops.linear_fwd(x, head)  # (B, T, V)
    return logits, caches


def _backward(cfg: ModelConfig, dlogits: np.ndarray,
              caches: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Gradients of every parameter from dlogits [B, T, V], walking _forward in reverse."""
    B, T, _ = dlogits.shape
    Hq, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    grads: dict[str, np.ndarray] = {}
    dx, dhead = ops.linear_bwd(dlogits, caches["lm_head"])  # dhead (d, V)
    if not cfg.tie_embeddings:
        grads["lm_head"] = dhead
    dh, grads["final_norm"] = ops.rmsnorm_bwd(dx, caches["final_norm"])  # (B, T, d)
    for i in reversed(range(cfg.n_layers)):
        p = f"layers.{i}."
        # MLP branch: h = h + w_down(swiglu(w_gate(m), w_up(m))), m = mlp_norm(h)
        df, grads[p + "w_down"] = ops.linear_bwd(dh, caches[p + "w_down"])
        dgate, dup = ops.swiglu_bwd(df, caches[p + "swiglu"])
        dm, grads[p + "w_gate"] = ops.linear_bwd(dgate, caches[p + "w_gate"])
        dm_up, grads[p + "w_up"] = ops.linear_bwd(dup, caches[p + "w_up"])
        dm_h, grads[p + "mlp_norm"] = ops.rmsnorm_bwd(dm + dm_up, caches[p + "mlp_norm"])
        dh = dh + dm_h
        # attention branch: h = h + wo(attention(rope(wq(a)), rope(wk(a)), wv(a))), a = attn_norm(h)
        do, grads[p + "wo"] = ops.linear_bwd(dh, caches[p + "wo"])
        dq, dk, dv = ops.attention_bwd(do.reshape(B, T, Hq, D), caches[p + "attention"])
        (dq,) = ops.rope_bwd(dq, caches[p + "rope_q"])
        (dk,) = ops.rope_bwd(dk, caches[p + "rope_k"])
        da, grads[p + "wq"] = ops.linear_bwd(dq.reshape(B, T, Hq * D), caches[p + "wq"])
        da_k, grads[p + "wk"] = ops.linear_bwd(dk.reshape(B, T, Hkv * D), caches[p + "wk"])
        da_v, grads[p + "wv"] = ops.linear_bwd(dv.reshape(B, T, Hkv * D), caches[p + "wv"])
        da_h, grads[p + "attn_norm"] = ops.rmsnorm_bwd(da + da_k + da_v, caches[p + "attn_norm"])
        dh = dh + da_h
    (grads["embed"],) = ops.embedding_bwd(dh, caches["embed"])
    if cfg.tie_embeddings:
        grads["embed"] += dhead.T  # the head's share, since logits = x @ embed.T
    return {name: grads[name] for name in param_shapes(cfg)}  # canonical order


def logits(cfg: ModelConfig, params: Mapping[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """Logits [B, T, vocab] of integer tokens [B, T]; raises ConfigError on invalid input."""
    tokens = np.asarray(tokens)
    _check_inputs(cfg, params, tokens)
    return _forward(cfg, params, tokens)[0]


def loss_and_grads(cfg: ModelConfig, params: Mapping[str, np.ndarray],
                   tokens: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean next-token cross-entropy of tokens [B, T] (logits[:, :-1] predict tokens[:, 1:]) and
    its gradient for every parameter, keyed and shaped like `params`."""
    tokens = np.asarray(tokens)
    _check_inputs(cfg, params, tokens)
    if tokens.shape[1] < 2:
        raise ConfigError(f"tokens have sequence length {tokens.shape[1]}, expected at least 2 "
                          "for a next-token loss")
    out, caches = _forward(cfg, params, tokens)
    B, T, V = out.shape
    loss, ce_cache = ops.cross_entropy_fwd(out[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1))
    (dpred,) = ops.cross_entropy_bwd(1.0, ce_cache)
    dlogits = np.zeros_like(out)
    dlogits[:, :-1] = dpred.reshape(B, T - 1, V)  # the last position predicts nothing
    return loss, _backward(cfg, dlogits, caches)
