"""Every reference op: backward against central finite differences in float64, forward against
straightforward independent formulas, and float32 in -> float32 out."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest

from trainbench import ops

# Central differences in float64 with step 1e-6 have truncation error ~1e-12 and rounding error
# ~1e-10 relative to these O(1)-scaled functions, so 1e-6 relative leaves four orders of margin,
# while a wrong term in a backward is off by O(1).
FD_STEP = 1e-6
FD_RTOL = 1e-6


def check_grads(fwd: Callable[..., tuple], bwd: Callable, inputs: list[np.ndarray],
                rng: np.random.Generator, n_dirs: int = 3) -> None:
    """Check bwd against finite differences of L = sum(fwd(*inputs)[0] * R) for a random R:
    for each input, the analytic directional derivative <dL/dx, U> along random directions U
    must equal (L(x + hU) - L(x - hU)) / 2h. Random dense U touches every element at once."""
    out, cache = fwd(*inputs)
    weights = rng.standard_normal(np.shape(out))  # R: makes L a generic linear read-out
    grads = bwd(weights, cache) if np.ndim(out) else bwd(float(weights), cache)
    assert len(grads) == len(inputs)

    def loss(i: int, x: np.ndarray) -> float:
        moved = list(inputs)
        moved[i] = x
        return float(np.sum(fwd(*moved)[0] * weights))

    for i, (x, g) in enumerate(zip(inputs, grads)):
        assert g.shape == x.shape and g.dtype == x.dtype, f"input {i}"
        for _ in range(n_dirs):
            u = rng.standard_normal(x.shape)
            numeric = (loss(i, x + FD_STEP * u) - loss(i, x - FD_STEP * u)) / (2 * FD_STEP)
            analytic = float(np.sum(g * u))
            # a directional derivative can be small by chance; the floor is 1e-9 of the
            # Cauchy-Schwarz bound |g||u|, far below what any wrong term would give
            floor = 1e-9 * np.linalg.norm(g) * np.linalg.norm(u)
            assert abs(analytic - numeric) <= FD_RTOL * abs(numeric) + floor, \
                f"input {i}: analytic {analytic!r} vs finite differences {numeric!r}"


# Each case: rng, dtype -> (fwd of the differentiable inputs only, bwd, inputs). Shapes are
# small, T = 7 is not a power of two, head_dim is 8.
B, T, D = 2, 7, 8


def _embedding(rng: np.random.Generator, dtype: type) -> tuple:
    tokens = rng.integers(0, 5, (B, T))  # vocab 5 < B*T: tokens repeat, so scatter-add matters
    return (lambda table: ops.embedding_fwd(table, tokens), ops.embedding_bwd,
            [rng.standard_normal((5, 16)).astype(dtype)])


def _rmsnorm(rng: np.random.Generator, dtype: type) -> tuple:
    return (lambda x, g: ops.rmsnorm_fwd(x, g, 1e-5), ops.rmsnorm_bwd,
            [rng.standard_normal((B, T, 16)).astype(dtype),
             (1.0 + 0.3 * rng.standard_normal(16)).astype(dtype)])


def _rope(rng: np.random.Generator, dtype: type) -> tuple:
    cos, sin = ops.rope_cos_sin(T, D, 10000.0, dtype)
    return (lambda x: ops.rope_fwd(x, cos, sin), ops.rope_bwd,
            [rng.standard_normal((B, T, 3, D)).astype(dtype)])


def _attention(n_heads: int, n_kv_heads: int) -> Callable:
    def case(rng: np.random.Generator, dtype: type) -> tuple:
        return (ops.attention_fwd, ops.attention_bwd,
                [rng.standard_normal((B, T, h, D)).astype(dtype)
                 for h in (n_heads, n_kv_heads, n_kv_heads)])
    return case


def _swiglu(rng: np.random.Generator, dtype: type) -> tuple:
    return (ops.swiglu_fwd, ops.swiglu_bwd,
            [(2.0 * rng.standard_normal((B, T, 12))).astype(dtype),
             rng.standard_normal((B, T, 12)).astype(dtype)])


def _linear(rng: np.random.Generator, dtype: type) -> tuple:
    return (ops.linear_fwd, ops.linear_bwd,
            [rng.standard_normal((B, T, 16)).astype(dtype),
             rng.standard_normal((16, 12)).astype(dtype)])


def _cross_entropy(rng: np.random.Generator, dtype: type) -> tuple:
    targets = rng.integers(0, 11, 9)
    return (lambda logits: ops.cross_entropy_fwd(logits, targets), ops.cross_entropy_bwd,
            [(3.0 * rng.standard_normal((9, 11))).astype(dtype)])


def _cross_entropy_ignore(rng: np.random.Generator, dtype: type) -> tuple:
    targets = rng.integers(0, 11, 9)
    targets[[1, 4, 5]] = -100  # ignored rows: no loss, no gradient, not in the mean
    return (lambda logits: ops.cross_entropy_fwd(logits, targets), ops.cross_entropy_bwd,
            [(3.0 * rng.standard_normal((9, 11))).astype(dtype)])


CASES = {
    "embedding": _embedding,
    "rmsnorm": _rmsnorm,
    "rope": _rope,
    "attention_mha": _attention(4, 4),
    "attention_gqa_4q_2kv": _attention(4, 2),
    "attention_mqa_4q_1kv": _attention(4, 1),
    "swiglu": _swiglu,
    "linear": _linear,
    "cross_entropy": _cross_entropy,
    "cross_entropy_ignore_index": _cross_entropy_ignore,
}


@pytest.mark.parametrize("name", CASES)
def test_backward_matches_finite_differences(name: str) -> None:
    rng = np.random.default_rng(0)
    fwd, bwd, inputs = CASES[name](rng, np.float64)
    check_grads(fwd, bwd, inputs, rng)


@pytest.mark.parametrize("name", CASES)
def test_float32_stays_float32(name: str) -> None:
    rng = np.random.default_rng(1)
    fwd, bwd, inputs = CASES[name](rng, np.float32)
    out, cache = fwd(*inputs)
    if np.ndim(out):
        assert out.dtype == np.float32
        grads = bwd(np.ones_like(out), cache)
    else:
        grads = bwd(1.0, cache)
    assert [g.dtype for g in grads] == [np.float32] * len(inputs)
    # and float32 agrees with float64 on the same values, to float32 precision
    out64 = fwd(*[x.astype(np.float64) for x in inputs])[0]
    np.testing.assert_allclose(out, out64, rtol=1e-4, atol=1e-5)


def test_check_grads_catches_a_wrong_backward() -> None:
    rng = np.random.default_rng(0)
    fwd, _, inputs = _swiglu(rng, np.float64)

    def wrong_bwd(dout: np.ndarray, cache: tuple) -> tuple[np.ndarray, np.ndarray]:
        a, b, s, silu = cache
        return dout * b * s, dout * silu  # drops the a*s*(1-s) term of silu's derivative

    with pytest.raises(AssertionError):
        check_grads(fwd, wrong_bwd, inputs, rng)


def test_embedding_forward_picks_rows() -> None:
    table = np.arange(15.0).reshape(5, 3)
    out, _ = ops.embedding_fwd(table, np.array([[4, 0, 4]]))
    np.testing.assert_array_equal(out, [[table[4], table[0], table[4]]])


def test_embedding_backward_adds_repeated_tokens() -> None:
    _, cache = ops.embedding_fwd(np.zeros((5, 2)), np.array([[4, 0, 4]]))
    (dtable,) = ops.embedding_bwd(np.ones((1, 3, 2)), cache)
    np.testing.assert_array_equal(dtable[:, 0], [1, 0, 0, 0, 2])


def test_rmsnorm_output_has_unit_rms() -> None:
    x = np.random.default_rng(0).standard_normal((3, 4, 32)) * 5.0
    y, _ = ops.rmsnorm_fwd(x, np.ones(32), 0.0)
    np.testing.assert_allclose(np.sqrt(np.mean(y**2, axis=-1)), 1.0, rtol=1e-12)
    np.testing.assert_allclose(y[..., 0] * np.sqrt(np.mean(x**2, axis=-1)), x[..., 0], rtol=1e-12)


def test_rope_tables_follow_the_half_split_formula() -> None:
    theta, seq, dim = 500.0, 5, 6
    cos, sin = ops.rope_cos_sin(seq, dim, theta, np.float64)
    assert cos.shape == sin.shape == (seq, dim)
    for t in range(seq):
        for i in range(dim // 2):
            angle = t * theta ** (-2 * i / dim)
            for col in (i, i + dim // 2):  # feature i is paired with feature i + dim/2
                assert cos[t, col] == pytest.approx(math.cos(angle), rel=1e-14, abs=1e-15)
                assert sin[t, col] == pytest.approx(math.sin(angle), rel=1e-14, abs=1e-15)


def test_rope_rotates_each_half_split_pair() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, T, 2, D))
    cos, sin = ops.rope_cos_sin(T, D, 10000.0, np.float64)
    out, _ = ops.rope_fwd(x, cos, sin)
    half = D // 2
    for t in range(T):
        for i in range(half):
            c, s = cos[t, i], sin[t, i]
            a, b = x[0, t, :, i], x[0, t, :, i + half]
            np.testing.assert_allclose(out[0, t, :, i], a * c - b * s, rtol=1e-13)
            np.testing.assert_allclose(out[0, t, :, i + half], b * c + a * s, rtol=1e-13)


def test_rope_scores_depend_only_on_relative_position() -> None:
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal(D), rng.standard_normal(D)
    cos, sin = ops.rope_cos_sin(12, D, 10000.0, np.float64)
    qs = ops.rope_fwd(np.broadcast_to(q, (1, 12, 1, D)), cos, sin)[0][0, :, 0]
    ks = ops.rope_fwd(np.broadcast_to(k, (1, 12, 1, D)), cos, sin)[0][0, :, 0]
    for offset in (0, 3):
        scores = [qs[t + offset] @ ks[t] for t in range(12 - offset)]
        np.testing.assert_allclose(scores, scores[0], rtol=1e-12)


def _attention_loop(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Causal GQA attention one query at a time, with query head h reading kv head h // G."""
    batch, seq, n_heads, dim = q.shape
    group = n_heads // k.shape[2]
    out = np.zeros_like(q)
    for b in range(batch):
        for h in range(n_heads):
            kv = h // group
            for i in range(seq):
                scores = k[b, : i + 1, kv] @ q[b, i, h] / math.sqrt(dim)
                weights = np.exp(scores - scores.max())
                out[b, i, h] = (weights / weights.sum()) @ v[b, : i + 1, kv]
    return out


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_attention_forward_matches_a_loop(n_heads: int, n_kv_heads: int) -> None:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, T, n_heads, D))
    k, v = (rng.standard_normal((B, T, n_kv_heads, D)) for _ in range(2))
    out, _ = ops.attention_fwd(q, k, v)
    np.testing.assert_allclose(out, _attention_loop(q, k, v), rtol=1e-12, atol=1e-14)


def test_attention_is_stable_for_large_scores() -> None:
    rng = np.random.default_rng(0)
    q = 1e3 * rng.standard_normal((1, T, 2, D))
    k, v = rng.standard_normal((1, T, 1, D)), rng.standard_normal((1, T, 1, D))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out, _ = ops.attention_fwd(q, k, v)
    np.testing.assert_allclose(out, _attention_loop(q, k, v), rtol=1e-10, atol=1e-12)


def test_swiglu_forward_and_large_gates() -> None:
    a = np.array([-1000.0, -3.0, 0.0, 2.0, 1000.0])
    b = np.array([2.0, 1.0, 5.0, -1.0, 0.5])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out, _ = ops.swiglu_fwd(a, b)
    small = a[1:4]
    expected_small = small / (1.0 + np.exp(-small)) * b[1:4]
    np.testing.assert_allclose(out[1:4], expected_small, rtol=1e-14)
    np.testing.assert_allclose(out[[0, 4]], [0.0, 500.0], atol=1e-300)


def test_cross_entropy_forward_matches_direct_formula() -> None:
    rng = np.random.default_rng(0)
    logits, targets = rng.standard_normal((6, 10)), rng.integers(0, 10, 6)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    loss, _ = ops.cross_entropy_fwd(logits, targets)
    assert loss == pytest.approx(-np.mean(np.log(probs[np.arange(6), targets])), rel=1e-13)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        shifted, _ = ops.cross_entropy_fwd(logits + 1e4, targets)  # exp(1e4) would overflow
    assert shifted == pytest.approx(loss, rel=1e-9)


def test_cross_entropy_ignores_rows_as_torch_does() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 10))
    targets = np.array([-100, 2, 5, -100, 0, 9])
    kept = np.array([1, 2, 4, 5])
    loss, cache = ops.cross_entropy_fwd(logits, targets)
    alone, alone_cache = ops.cross_entropy_fwd(logits[kept], targets[kept])
    assert loss == pytest.approx(alone, rel=1e-13)  # the mean is over the rows kept
    (dlogits,) = ops.cross_entropy_bwd(1.0, cache)
    assert not dlogits[[0, 3]].any()
    np.testing.assert_allclose(dlogits[kept], ops.cross_entropy_bwd(1.0, alone_cache)[0],
                               rtol=1e-13)
    other, _ = ops.cross_entropy_fwd(logits, np.where(targets < 0, 7, targets), ignore_index=7)
    assert other == pytest.approx(alone, rel=1e-13)
