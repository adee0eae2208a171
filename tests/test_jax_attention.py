"""The XLA attention path against the reference attention (trainbench.ops), forward and backward,
across query blocks, and its shape: the masked triangle is skipped and K/V heads are never
repeated."""

import math

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from trainbench import ops
import functools

from trainbench.backends.jax.attention import (CPU_MAX_BLOCKS, CPU_QUERY_BLOCK, MAX_BLOCKS,
                                               QUERY_BLOCK, jax_attention, query_block, select,
                                               xla_attention)

from conftest import attention_inputs, check_jax_attention_fp32

# B, T, Hq, Hkv, D: one block, exactly two blocks, a ragged last block (T not a multiple of the
# block), grouped-query (4 query heads per kv head) and plain multi-head
SHAPES = [(2, 40, 4, 2, 16), (1, 2 * QUERY_BLOCK, 4, 1, 8), (1, 2 * QUERY_BLOCK + 44, 2, 2, 16)]


@pytest.mark.parametrize("smallest, max_blocks", [(QUERY_BLOCK, MAX_BLOCKS),
                                                  (CPU_QUERY_BLOCK, MAX_BLOCKS),
                                                  (CPU_QUERY_BLOCK, CPU_MAX_BLOCKS)])
@pytest.mark.parametrize("B, T, Hq, Hkv, D", SHAPES)
def test_forward_and_backward_match_the_reference_fp32(B, T, Hq, Hkv, D, smallest, max_blocks):
    # float32, another summation order than NumPy's; with the CPU's smaller blocks the shapes
    # span 1, 4 and 5 (ragged) blocks, and with its block limit 1, 4 and 3 (ragged, of 128)
    fn = functools.partial(xla_attention, smallest_block=smallest, max_blocks=max_blocks)
    check_jax_attention_fp32(jax.jit(fn), *attention_inputs(B, T, Hq, Hkv, D))


@pytest.mark.parametrize("B, T, Hq, Hkv, D", SHAPES[:1] + [(1, 64, 4, 1, 8)])
def test_jax_choice_matches_the_reference_fp32(B, T, Hq, Hkv, D):
    # backend.attention=jax: JAX's own dot_product_attention, grouped-query heads included
    assert select("jax", "cpu", jnp.float32, "cpu", 128) is jax_attention
    check_jax_attention_fp32(jax.jit(jax_attention), *attention_inputs(B, T, Hq, Hkv, D))


def test_the_cpu_takes_smaller_query_blocks_than_accelerators():
    on_cpu = select("xla", "cpu", jnp.float32, "cpu", 128)
    assert on_cpu.keywords == {"smallest_block": CPU_QUERY_BLOCK, "max_blocks": CPU_MAX_BLOCKS}
    assert on_cpu.func is xla_attention
    assert select("xla", "tpu", jnp.bfloat16, "TPU v5 lite", 128) is xla_attention
    assert select("xla", "gpu", jnp.bfloat16, "NVIDIA H100", 128) is xla_attention
    # T=256: 4 blocks of 64 (5/8 of the square) instead of 2 of 128 (3/4)
    shape = jax.ShapeDtypeStruct((1, 256, 2, 4), jnp.float32)
    assert len(_dots(on_cpu, shape, shape, shape)) == 2 * 4
    assert query_block(1024, CPU_QUERY_BLOCK) == 128  # at most MAX_BLOCKS blocks
    # the CPU's own limit: T=512 in 4 blocks of 128, T=1024 in 4 of 256
    assert query_block(512, CPU_QUERY_BLOCK, CPU_MAX_BLOCKS) == 128
    assert query_block(1024, CPU_QUERY_BLOCK, CPU_MAX_BLOCKS) == 256
    shape = jax.ShapeDtypeStruct((1, 512, 2, 4), jnp.float32)
    assert len(_dots(on_cpu, shape, shape, shape)) == 2 * CPU_MAX_BLOCKS


def _dots(fn, *args):
    """(lhs shape, rhs shape, output shape) of every dot_general in fn's jaxpr."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    return [(tuple(e.invars[0].aval.shape), tuple(e.invars[1].aval.shape),
             tuple(e.outvars[0].aval.shape))
            for e in jaxpr.eqns if e.primitive.name == "dot_general"]


def test_blocks_skip_the_masked_triangle_and_share_kv_heads():
    B, T, Hq, Hkv, D = 1, 4 * QUERY_BLOCK, 8, 2, 4
    q, k, v, _ = attention_inputs(B, T, Hq, Hkv, D)
    dots = _dots(xla_attention, q, k, v)
    blocks = T // QUERY_BLOCK
    assert len(dots) == 2 * blocks  # scores and value product per block
    score_elements = sum(math.prod(out) for _, _, out in dots[::2])
    # blocks of C queries see start + C keys: (n + 1) / 2n of the square at n blocks
    assert score_elements == B * Hq * T * T * (blocks + 1) // (2 * blocks)
    # K and V enter every product as they are, [B, S, Hkv, D]: never repeated to Hq heads
    assert all(any(len(x) == 4 and x[2:] == (Hkv, D) for x in (lhs, rhs))
               for lhs, rhs, _ in dots), dots


@pytest.mark.parametrize("T, block", [(1, QUERY_BLOCK), (QUERY_BLOCK, QUERY_BLOCK),
                                      (MAX_BLOCKS * QUERY_BLOCK, QUERY_BLOCK),
                                      (MAX_BLOCKS * QUERY_BLOCK + 1, 2 * QUERY_BLOCK),
                                      (64 * QUERY_BLOCK, 8 * QUERY_BLOCK)])
def test_long_sequences_get_larger_blocks_not_more(T, block):
    assert query_block(T) == block and math.ceil(T / block) <= MAX_BLOCKS


def test_a_long_sequence_traces_to_at_most_max_blocks():
    T = 64 * QUERY_BLOCK
    shape = jax.ShapeDtypeStruct((1, T, 2, 4), jnp.float32)
    assert len(_dots(xla_attention, shape, shape, shape)) == 2 * MAX_BLOCKS


def test_forward_bf16_is_within_bf16_rounding():
    q, k, v, _ = attention_inputs(1, QUERY_BLOCK + 40, 4, 2, 16, seed=1)
    want, _ = ops.attention_fwd(q, k, v)
    got = jax.jit(xla_attention)(*[jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)])
    # inputs, probabilities and output are each rounded to bf16 (2**-9 relative): a few 1e-3 of
    # outputs of order 1, so 3e-2 absolute bounds it with room
    np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)), want, atol=3e-2)
    assert got.dtype == jnp.bfloat16


def test_the_attention_benchmark_script_times_every_choice(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / "bench_jax_attention.py"
    spec = importlib.util.spec_from_file_location("bench_jax_attention", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "attn.json"
    assert script.main(["--seq", "64", "--tokens", "128", "--blocks", "32", "64",
                        "--rounds", "2", "--json", str(out)]) == 0
    [row] = json.loads(out.read_text())["rows"]
    assert row["batch"] == 2 and set(row["times_s"]) == {
        "trainbench block 32", "trainbench block 64", "dot_product_attention"}
    assert all(len(t) == 2 and min(t) > 0 for t in row["times_s"].values())
    assert row["fraction_of_dot_product_attention"]["dot_product_attention"] == 1.0
    assert "T=   64" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.main(["--seq", "100", "--tokens", "128"])  # 100 does not divide 128
