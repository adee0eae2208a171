"""The Flax model: its parameter tree is the canonical mapping, and its logits are the
reference's."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from trainbench import data, model, reference
from trainbench.backends.jax import model as jax_model


@pytest.mark.parametrize("tied", [False, True])
def test_flax_parameter_tree_is_the_canonical_mapping(tied):
    cfg = model.ModelConfig(n_layers=3, tie_embeddings=tied)
    net = jax_model.Transformer(cfg)
    shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    flat = jax_model.to_canonical(cfg, jax.tree.map(lambda s: tuple(s.shape), shapes,
                                                    is_leaf=lambda s: hasattr(s, "shape")))
    assert flat == model.param_shapes(cfg)
    # and nothing else is in the tree
    assert len(jax.tree.leaves(shapes)) == len(model.param_shapes(cfg))


def test_to_tree_and_back_is_the_identity():
    params = model.init_params(model.preset("tiny"), 3)
    back = jax_model.to_canonical(model.preset("tiny"), jax_model.to_tree(params))
    assert list(back) == list(params)
    assert all(back[k] is params[k] for k in params)


@pytest.mark.parametrize("tied", [False, True])
def test_logits_match_the_reference_fp32(tied):
    cfg = model.ModelConfig(tie_embeddings=tied, n_heads=4, n_kv_heads=1)
    params = model.init_params(cfg, 0)
    tokens = data.SyntheticTokens(cfg.vocab, 2, 24, 0).batch(0)
    net = jax_model.Transformer(cfg)
    got = np.asarray(net.apply({"params": jax_model.to_tree(params)}, jnp.asarray(tokens)))
    want = reference.logits(cfg, params, tokens)
    # float32, different summation order: ~1e-6 of the logits' scale (~0.1-1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
