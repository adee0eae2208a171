"""The optimizer and the compiled steps: Optax AdamW with trainbench.optim's exact semantics.

- schedule: optax pieces joined to equal trainbench.optim.lr_at at every step (warm-up
  (step + 1) / warmup_steps of the peak, then cosine to min_lr_ratio of it);
- clipping: optax.clip_by_global_norm, the formula trainbench.optim.clip_by_global_norm copies;
- weight decay masked by trainbench.optim.decay_mask itself (matrices only).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trainbench import optim
from trainbench.backends.jax import mesh as mesh_lib
from trainbench.backends.jax.model import next_token_loss, to_tree
from trainbench.config import OptimConfig


def lr_schedule(peak_lr: float, warmup_steps: int, total_steps: int,
                min_lr_ratio: float) -> optax.Schedule:
    """trainbench.optim.lr_at as an Optax schedule of the update count (0-based)."""
    cosine = optax.cosine_decay_schedule(init_value=peak_lr,
                                         decay_steps=max(1, total_steps - warmup_steps),
                                         alpha=min_lr_ratio)
    if warmup_steps == 0:
        return cosine
    # lr_at warms up as peak * (step + 1) / warmup: from peak / warmup at step 0 to the peak at
    # step warmup - 1, a line over warmup - 1 transitions (at least 1: with warmup 1, only step 0
    # reads it, and gets the start value, the peak)
    warmup = optax.linear_schedule(peak_lr / warmup_steps, peak_lr, max(1, warmup_steps - 1))
    return optax.join_schedules([warmup, cosine], boundaries=[warmup_steps])


def make_optimizer(o: OptimConfig, total_steps: int, params: Mapping[str, np.ndarray],
                   scan: bool = False) -> optax.GradientTransformation:
    """Clip (when o.grad_clip > 0), then AdamW; `params` is the canonical mapping (for the mask;
    `scan`: for the scanned model's parameter tree)."""
    mask = to_tree(optim.decay_mask(params), scan)
    adamw = optax.adamw(lr_schedule(o.lr, o.warmup_steps, total_steps, o.min_lr_ratio),
                        b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=mask)
    if o.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw)
    return adamw


def loss_fn(model: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
    """(params, tokens [B, T]) -> mean next-token loss."""
    return lambda params, tokens: next_token_loss(model.apply({"params": params}, tokens), tokens)


def train_step(model: nn.Module, tx: optax.GradientTransformation) -> Callable[..., Any]:
    """(params, opt_state, tokens) -> (params, opt_state, loss): one AdamW step, uncompiled."""
    value_and_grad = jax.value_and_grad(loss_fn(model))

    def step(params: Any, opt_state: Any, tokens: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, grads = value_and_grad(params, tokens)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def jit_train_step(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                   param_sharding: Any, opt_sharding: Any) -> Any:
    """train_step under jax.jit with the run's shardings (batch split over the mesh, loss
    replicated) and the parameter and optimizer-state buffers donated: what a run executes and
    what `trainbench compile` lowers."""
    batch = NamedSharding(mesh, mesh_lib.BATCH)
    scalar = NamedSharding(mesh, PartitionSpec())
    return jax.jit(train_step(model, tx), donate_argnums=(0, 1),
                   in_shardings=(param_sharding, opt_sharding, batch),
                   out_shardings=(param_sharding, opt_sharding, scalar))
