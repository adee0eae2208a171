"""Reference optimizer semantics every backend reproduces: LR schedule, global-norm clipping, AdamW.

Parameters, gradients and optimizer moments are flat mappings of canonical names to NumPy arrays
(trainbench.model); updates keep each parameter's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from trainbench.errors import ConfigError


def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int,
          min_lr_ratio: float) -> float:
    """Learning rate of 0-based `step`: linear warm-up to peak_lr, then cosine to
    peak_lr * min_lr_ratio at total_steps, held there after (Loshchilov & Hutter, SGDR, 2017)."""
    if step < 0:
        raise ConfigError(f"step={step} must be >= 0")
    if warmup_steps < 0:
        raise ConfigError(f"warmup_steps={warmup_steps} must be >= 0")
    if step < warmup_steps:
        # (step + 1) so the first step already trains, and step warmup_steps-1 reaches the peak
        return peak_lr * (step + 1) / warmup_steps
    min_lr = peak_lr * min_lr_ratio
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def global_norm(grads: Mapping[str, np.ndarray]) -> float:
    """sqrt of the sum of squares of every element of every tensor (optax.global_norm)."""
    # each tensor's sum is taken in its own dtype; the few per-tensor scalars are then added
    # as Python floats, which costs nothing and makes the result independent of their order
    return math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))


def clip_by_global_norm(grads: Mapping[str, np.ndarray],
                        max_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """Scale all gradients by max_norm / norm when their global norm is >= max_norm, exactly as
    optax.clip_by_global_norm: g if norm < max_norm else (g / norm) * max_norm. Returns the
    clipped gradients and the norm before clipping; max_norm <= 0 disables clipping."""
    norm = global_norm(grads)
    if max_norm <= 0 or norm < max_norm:
        return dict(grads), norm
    # norm and max_norm are Python floats, so the scaling runs in each gradient's dtype
    return {name: (g / norm) * max_norm for name, g in grads.items()}, norm


def decay_mask(params: Mapping[str, np.ndarray]) -> dict[str, bool]:
    """Which parameters get weight decay: matrices (ndim >= 2), not the norm gains."""
    return {name: p.ndim >= 2 for name, p in params.items()}


@dataclass
class AdamWState:
    """AdamW moments and the number of updates applied so far."""

    step: int
    """Updates applied; the next update uses bias correction for t = step + 1."""
    m: dict[str, np.ndarray]
    """First moment (EMA of gradients), per parameter."""
    v: dict[str, np.ndarray]
    """Second moment (EMA of squared gradients), per parameter."""


def adamw_init(params: Mapping[str, np.ndarray]) -> AdamWState:
    """Zero moments shaped and typed like `params`, at step 0."""
    return AdamWState(step=0,
                      m={name: np.zeros_like(p) for name, p in params.items()},
                      v={name: np.zeros_like(p) for name, p in params.items()})


def adamw_update(params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
                 state: AdamWState, lr: float, b1: float, b2: float, eps: float,
                 weight_decay: float) -> tuple[dict[str, np.ndarray], AdamWState]:
    """One AdamW step (Loshchilov & Hutter, 2019), as torch.optim.AdamW and optax.adamw:
    p - lr * (mhat / (sqrt(vhat) + eps) + wd * p), decay only where decay_mask is True.
    Returns new arrays; the inputs are not modified."""
    t = state.step + 1
    bias1, bias2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    decay = decay_mask(params)
    new_params: dict[str, np.ndarray] = {}
    m: dict[str, np.ndarray] = {}
    v: dict[str, np.ndarray] = {}
    for name, p in params.items():
        g = grads[name]
        m[name] = b1 * state.m[name] + (1.0 - b1) * g
        v[name] = b2 * state.v[name] + (1.0 - b2) * (g * g)
        update = (m[name] / bias1) / (np.sqrt(v[name] / bias2) + eps)
        if decay[name]:
            update = update + weight_decay * p
        new_params[name] = p - lr * update
    return new_params, AdamWState(step=t, m=m, v=v)
