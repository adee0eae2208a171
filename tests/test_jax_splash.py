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

from conftest import attention_inputs, check_jax_attention_fp32


# B, T, Hq, Hkv, D: ragged T padded to the 128 block; two query blocks with 4 heads per kv head
@pytest.mark.parametrize("B, T, Hq, Hkv, D", [(2, 100, 4, 2, 16), (1, 256, 4, 1, 32)])
def test_forward_and_backward_match_the_reference_fp32(B, T, Hq, Hkv, D):
    check_jax_attention_fp32(lambda a, b, c: splash_attention(a, b, c, 128, True),
                             *attention_inputs(B, T, Hq, Hkv, D))


def test_forward_bf16_is_within_bf16_rounding():
    q, k, v, _ = attention_inputs(1, 128, 4, 2, 16, seed=1)
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
