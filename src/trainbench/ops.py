"""Reference math: the forward and hand-written backward of every op of the model, in NumPy.

Each op is a pair ``<op>_fwd(...) -> (out, cache)`` and ``<op>_bwd(dout, cache) -> grads``, where
``grads`` is a tuple in the order of the op's differentiable inputs. Ops compute in the dtype of
their inputs (float32 or float64). This is the ground truth every backend and kernel is checked
against (docs/design.md, "Correctness"); tests/test_ops.py checks each backward against finite
differences. Shapes: B batch, T sequence, H heads, D head_dim, V vocab.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Cache = tuple[Any, ...]


# --- embedding -----------------------------------------------------------------------------------

def embedding_fwd(table: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, Cache]:
    """Rows of `table` [V, d] picked by integer `tokens` [...] -> [..., d]."""
    return table[tokens], (tokens, table.shape, table.dtype)


def embedding_bwd(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray]:
    tokens, shape, dtype = cache
    dtable = np.zeros(shape, dtype)
    np.add.at(dtable, tokens, dout)  # unbuffered scatter-add: a token repeated adds up
    return (dtable,)


# --- RMSNorm -------------------------------------------------------------------------------------

def rmsnorm_fwd(x: np.ndarray, g: np.ndarray, eps: float) -> tuple[np.ndarray, Cache]:
    """y = x / sqrt(mean(x**2, -1) + eps) * g over the last dim (Zhang & Sennrich, 2019)."""
    r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = x * r
    return xhat * g, (xhat, r, g)


def rmsnorm_bwd(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray]:
    xhat, r, g = cache
    dg = np.sum((dout * xhat).reshape(-1, g.shape[0]), axis=0)
    dxhat = dout * g
    # d(x*r)/dx = r*(I - xhat xhat^T / n), since dr/dx = -r**3 x / n
    dx = r * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))
    return dx, dg


# --- rotary position embedding -------------------------------------------------------------------

def rope_cos_sin(seq_len: int, head_dim: int, theta: float,
                 dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rotary tables cos, sin, each [seq_len, head_dim], in Hugging Face Llama's half-split layout.

    Computed in float64 and rounded once to `dtype`: the angles reach seq_len radians, where
    float32 spacing (~1e-5 at 128) would put the rounding error of the angle into the table.
    """
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (D/2,)
    angles = np.arange(seq_len, dtype=np.float64)[:, None] * inv_freq  # (T, D/2)
    angles = np.concatenate([angles, angles], axis=-1)  # (T, D): feature i pairs with i + D/2
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rotate_half(x: np.ndarray) -> np.ndarray:
    """cat(-x[..., D/2:], x[..., :D/2]), as in Hugging Face's modeling_llama.rotate_half."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope_fwd(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> tuple[np.ndarray, Cache]:
    """Rotate x [B, T, H, D] by position: x*cos + rotate_half(x)*sin, tables [T, D]."""
    cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, D): broadcast over heads
    return x * cos + rotate_half(x) * sin, (cos, sin)


def rope_bwd(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray]:
    cos, sin = cache
    # rotate_half is the linear map R with R^T = -R, so the transpose rotation is
    # dx = dout*cos + R^T (dout*sin) = dout*cos - rotate_half(dout*sin).
    return (dout * cos - rotate_half(dout * sin),)


# --- causal grouped-query attention --------------------------------------------------------------

def attention_fwd(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, Cache]:
    """Causal softmax(q k^T / sqrt(D)) v with grouped-query heads.

    q [B, T, Hq, D]; k, v [B, T, Hkv, D]; query head h reads kv head h // (Hq // Hkv), as
    Hugging Face's repeat_kv does. Returns [B, T, Hq, D].
    """
    B, T, Hq, D = q.shape
    Hkv = k.shape[2]
    G = Hq // Hkv  # query heads per kv head
    qg = q.reshape(B, T, Hkv, G, D).transpose(0, 2, 3, 1, 4)  # (B, Hkv, G, T, D)
    kg = k.transpose(0, 2, 1, 3)[:, :, None]  # (B, Hkv, 1, T, D): shared by the group
    vg = v.transpose(0, 2, 1, 3)[:, :, None]  # (B, Hkv, 1, T, D)
    scale = 1.0 / math.sqrt(D)  # a Python float, so float32 inputs stay float32
    scores = (qg @ kg.swapaxes(-1, -2)) * scale  # (B, Hkv, G, T, T)
    causal = np.tril(np.ones((T, T), dtype=bool))  # key j visible to query i iff j <= i
    scores = np.where(causal, scores, -np.inf)
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))  # the diagonal keeps the max finite
    p /= p.sum(axis=-1, keepdims=True)
    out = (p @ vg).transpose(0, 3, 1, 2, 4).reshape(B, T, Hq, D)
    return out, (qg, kg, vg, p, scale)


def attention_bwd(dout: np.ndarray,
                  cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    qg, kg, vg, p, scale = cache
    B, Hkv, G, T, D = qg.shape
    do = dout.reshape(B, T, Hkv, G, D).transpose(0, 2, 3, 1, 4)  # (B, Hkv, G, T, D)
    dv = np.sum(p.swapaxes(-1, -2) @ do, axis=2)  # (B, Hkv, T, D): the group's sum
    dp = do @ vg.swapaxes(-1, -2)  # (B, Hkv, G, T, T)
    # softmax backward; masked entries have p = 0, so their gradient is 0
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True)) * scale
    dq = (ds @ kg).transpose(0, 3, 1, 2, 4).reshape(B, T, Hkv * G, D)
    dk = np.sum(ds.swapaxes(-1, -2) @ qg, axis=2)  # (B, Hkv, T, D)
    return dq, dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3)


# --- SwiGLU --------------------------------------------------------------------------------------

def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def swiglu_fwd(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Cache]:
    """silu(a) * b, the gate of the SwiGLU MLP (Shazeer, 2020); a = x@w_gate, b = x@w_up."""
    s = _sigmoid(a)
    silu = a * s
    return silu * b, (a, b, s, silu)


def swiglu_bwd(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray]:
    a, b, s, silu = cache
    dsilu = s * (1.0 + a * (1.0 - s))  # d(a*sigmoid(a))/da
    return dout * b * dsilu, dout * silu


# --- linear --------------------------------------------------------------------------------------

def linear_fwd(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, Cache]:
    """y = x @ W over the last dim: x [..., in], W [in, out] -> [..., out]."""
    return x @ w, (x, w)


def linear_bwd(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray]:
    x, w = cache
    dx = dout @ w.T
    dw = x.reshape(-1, x.shape[-1]).T @ dout.reshape(-1, dout.shape[-1])  # sum over all rows
    return dx, dw


# --- softmax cross-entropy -----------------------------------------------------------------------

def cross_entropy_fwd(logits: np.ndarray, targets: np.ndarray,
                      ignore_index: int = -100) -> tuple[float, Cache]:
    """Mean of -log softmax(logits)[target] over the rows whose target is not `ignore_index`:
    logits [N, V], integer targets [N] (torch.nn.functional.cross_entropy's convention)."""
    N = logits.shape[0]
    keep = targets != ignore_index  # (N,)
    picked = np.where(keep, targets, 0)  # any valid column for ignored rows; masked below
    z = logits - logits.max(axis=-1, keepdims=True)  # stable log-sum-exp: exp(z) <= 1
    lse = np.log(np.sum(np.exp(z), axis=-1, keepdims=True))  # (N, 1)
    logp = z - lse  # (N, V)
    n = int(keep.sum())
    loss = -np.sum(np.where(keep, logp[np.arange(N), picked], 0.0)) / n
    return float(loss), (np.exp(logp), picked, keep, n)


def cross_entropy_bwd(dloss: float, cache: Cache) -> tuple[np.ndarray]:
    probs, picked, keep, n = cache
    N = probs.shape[0]
    dlogits = probs.copy()
    dlogits[np.arange(N), picked] -= 1.0  # softmax - onehot
    dlogits *= np.where(keep, dloss / n, 0.0)[:, None].astype(probs.dtype)  # ignored rows: 0
    return (dlogits,)
