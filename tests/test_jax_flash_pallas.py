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

from conftest import attention_inputs, check_jax_attention_fp32

POISONED = pltpu.InterpretParams(uninitialized_memory="nan")

# B, T, Hq, Hkv, D, block: ragged T (not a multiple of the block), one block larger than T,
# grouped-query (4 query heads per kv head) and plain multi-head
SHAPES = [(2, 40, 4, 2, 16, 16), (1, 24, 4, 1, 8, 64), (1, 32, 2, 2, 16, 8)]


@pytest.mark.parametrize("B, T, Hq, Hkv, D, block", SHAPES)
def test_forward_and_backward_match_the_reference_fp32(B, T, Hq, Hkv, D, block):
    check_jax_attention_fp32(lambda a, b, c: flash_attention(a, b, c, block, POISONED),
                             *attention_inputs(B, T, Hq, Hkv, D))


def test_forward_bf16_is_within_bf16_rounding():
    q, k, v, _ = attention_inputs(1, 40, 4, 2, 16, seed=1)
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
