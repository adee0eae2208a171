"""JAX's splash attention (backends/jax/splash.py), run by Pallas's interpreter on the CPU,
against the reference attention (trainbench.ops), forward and backward: grouped-query heads, a
sequence padded up to the block, and bfloat16."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from trainbench import ops
from trainbench.backends.jax import attention
from trainbench.backends.jax.splash import splash_attention
from trainbench.errors import ConfigError

def _inputs(B, T, Hq, Hkv, D, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(B, T, Hq, D), (B, T, Hkv, D), (B, T, Hkv, D), (B, T, Hq, D)]
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


# B, T, Hq, Hkv, D: ragged T padded to the 128 block; two query blocks with 4 heads per kv head
@pytest.mark.parametrize("B, T, Hq, Hkv, D", [(2, 100, 4, 2, 16), (1, 256, 4, 1, 32)])
def test_forward_and_backward_match_the_reference_fp32(B, T, Hq, Hkv, D):
    q, k, v, dout = _inputs(B, T, Hq, Hkv, D)
    want, cache = ops.attention_fwd(q, k, v)
    want_grads = ops.attention_bwd(dout, cache)
    got, vjp = jax.vjp(lambda a, b, c: splash_attention(a, b, c, 128, True), q, k, v)
    # float32 with an online softmax: a few ulp of values of order 1
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    for name, g, w in zip("qkv", vjp(jnp.asarray(dout)), want_grads):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")


def test_forward_bf16_is_within_bf16_rounding():
    q, k, v, _ = _inputs(1, 128, 4, 2, 16, seed=1)
    want, _ = ops.attention_fwd(q, k, v)
    got = splash_attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), 128, True)
    got = np.asarray(got.astype(jnp.float32))
    # inputs, scaled q, probabilities and output each rounded to bf16 (2**-9 relative)
    np.testing.assert_allclose(got, want, atol=3e-2)
    assert np.abs(got - want).max() > 0  # it did run in bf16


def test_splash_needs_blocks_of_128_lanes():
    with pytest.raises(ConfigError, match="flash_block_size=64 must be a multiple of 128"):
        attention.select("splash", "cpu", jnp.float32, "cpu", 64)
    with pytest.raises(ConfigError, match="is a TPU kernel"):
        attention.select("splash", "gpu", jnp.bfloat16, "NVIDIA H100 80GB HBM3", 128)
