"""The JAX backend's optimizer: Optax reproduces trainbench.optim's schedule, clipping, AdamW
and weight-decay mask."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from trainbench import model, optim
from trainbench.backends.jax import step
from trainbench.backends.jax.model import to_canonical, to_tree
from trainbench.config import OptimConfig

TINY = model.preset("tiny")


@pytest.mark.parametrize("warmup, total", [(0, 10), (1, 10), (3, 10), (5, 5), (4, 3)])
def test_schedule_equals_lr_at(warmup, total):
    schedule = step.lr_schedule(2e-3, warmup, total, 0.1)
    for s in range(total + 3):  # past the end, where lr_at holds the minimum
        expected = optim.lr_at(s, 2e-3, warmup, total, 0.1)
        # the Optax schedule runs in float32: one rounding of a value near 1e-3
        assert float(schedule(jnp.int32(s))) == pytest.approx(expected, rel=1e-6), s


@pytest.mark.parametrize("grad_clip", [0.0, 1e-3, 1e6])
def test_optimizer_matches_the_reference_adamw(grad_clip):
    # the gradients below have a global norm of ~18: grad_clip 1e-3 clips every step, 1e6 never
    o = OptimConfig(lr=1e-2, weight_decay=0.1, grad_clip=grad_clip, warmup_steps=1)
    params = model.init_params(TINY, 0)
    rng = np.random.default_rng(1)
    tx = step.make_optimizer(o, 4, params)
    tree = to_tree(params)
    state = tx.init(tree)
    ref_params, ref_state = dict(params), optim.adamw_init(params)
    for s in range(4):
        grads = {k: (rng.standard_normal(v.shape) * 0.05).astype(np.float32)
                 for k, v in params.items()}
        updates, state = tx.update(to_tree(grads), state, tree)
        tree = jax.tree.map(lambda p, u: p + u, tree, updates)
        if grad_clip > 0:
            grads, _ = optim.clip_by_global_norm(grads, grad_clip)
        lr = optim.lr_at(s, o.lr, o.warmup_steps, 4, o.min_lr_ratio)
        ref_params, ref_state = optim.adamw_update(ref_params, grads, ref_state, lr, o.b1, o.b2,
                                                   o.eps, o.weight_decay)
    got = {k: np.asarray(v) for k, v in to_canonical(TINY, tree).items()}
    for name in params:
        # float32 AdamW: updates ~lr, rounding ~1e-7 relative to the weights
        np.testing.assert_allclose(got[name], ref_params[name], rtol=1e-5, atol=1e-7,
                                   err_msg=name)


def test_weight_decay_skips_exactly_what_decay_mask_skips():
    # zero gradients: the Adam direction is 0, so only decoupled weight decay moves a weight
    o = OptimConfig(lr=1e-1, weight_decay=0.5, grad_clip=0.0, warmup_steps=0)
    params = model.init_params(TINY, 0)
    tx = step.make_optimizer(o, 1, params)
    tree = to_tree(params)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, tree), tx.init(tree), tree)
    moved = {k: bool(np.any(np.asarray(u) != 0)) for k, u in to_canonical(TINY, updates).items()}
    assert moved == optim.decay_mask(params)
    assert not all(moved.values()) and any(moved.values())
