"""The Pallas flash-attention kernel, run by Pallas's TPU interpreter on the CPU, against the
reference attention (trainbench.ops), forward and backward. The interpreter fills memory the
kernel has not written with NaN, so an output element the kernel misses fails the comparison."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from trainbench import ops
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from trainbench.backends.jax.flash_pallas import flash_attention

POISONED = pltpu.InterpretParams(uninitialized_memory="nan")

# B, T, Hq, Hkv, D, block: ragged T (not a multiple of the block), one block larger than T,
# grouped-query (4 query heads per kv head) and plain multi-head
SHAPES = [(2, 40, 4, 2, 16, 16), (1, 24, 4, 1, 8, 64), (1, 32, 2, 2, 16, 8)]


def _inputs(B, T, Hq, Hkv, D, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, Hq, D)).astype(np.float32)
    k = rng.standard_normal((B, T, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((B, T, Hkv, D)).astype(np.float32)
    dout = rng.standard_normal((B, T, Hq, D)).astype(np.float32)
    return q, k, v, dout


@pytest.mark.parametrize("B, T, Hq, Hkv, D, block", SHAPES)
def test_forward_and_backward_match_the_reference_fp32(B, T, Hq, Hkv, D, block):
    q, k, v, dout = _inputs(B, T, Hq, Hkv, D)
    want, cache = ops.attention_fwd(q, k, v)
    want_grads = ops.attention_bwd(dout, cache)
    got, vjp = jax.vjp(lambda a, b, c: flash_attention(a, b, c, block, POISONED), q, k, v)
    # float32 with an online softmax: errors of a few ulp of values of order 1
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    for name, g, w in zip("qkv", vjp(jnp.asarray(dout)), want_grads):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")


def test_forward_bf16_is_within_bf16_rounding():
    q, k, v, _ = _inputs(1, 40, 4, 2, 16, seed=1)
    want, _ = ops.attention_fwd(q, k, v)
    as_bf16 = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    got = np.asarray(flash_attention(*as_bf16, 16, POISONED).astype(jnp.float32))
    # inputs, probabilities and output are each rounded to bf16 (2**-9 relative): a few 1e-3 of
    # outputs of order 1, so 3e-2 absolute bounds it with room
    np.testing.assert_allclose(got, want, atol=3e-2)
    assert np.abs(got - want).max() > 0  # it did run in bf16, not silently in float32


def test_the_interpreter_poisons_what_a_kernel_leaves_unwritten():
    # guards the tests above: were outputs zero-filled, a missed block of zeros could pass
    def writes_half(x_ref, o_ref):
        o_ref[:8, :] = x_ref[:8, :]

    out = pl.pallas_call(writes_half, out_shape=jax.ShapeDtypeStruct((16, 128), jnp.float32),
                         interpret=POISONED)(jnp.ones((16, 128), jnp.float32))
    out = np.asarray(out)
    assert np.all(out[:8] == 1) and np.all(np.isnan(out[8:]))
