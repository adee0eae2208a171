"""Reference optimizer: schedule values worked out by hand, Optax-style clipping, AdamW against
torch.optim.AdamW, and the weight-decay mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainbench import optim
from trainbench.errors import ConfigError
from trainbench.model import init_params, preset

# --- learning-rate schedule -----------------------------------------------------------------------

# peak 1e-3, 10 warm-up steps, 110 total, floor 0.1 * peak = 1e-4; the cosine spans steps 10..110
SCHEDULE = dict(peak_lr=1e-3, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)


@pytest.mark.parametrize("step,expected", [
    (0, 1e-4),  # (0 + 1) / 10 of the peak
    (4, 5e-4),
    (9, 1e-3),  # the last warm-up step reaches the peak
    (10, 1e-3),  # cosine progress 0
    (35, 1e-4 + 4.5e-4 * (1 + math.sqrt(0.5))),  # progress 1/4: cos(pi/4) = sqrt(1/2)
    (60, 5.5e-4),  # progress 1/2: halfway between peak and floor
    (110, 1e-4),  # progress 1: the floor
    (500, 1e-4),  # held at the floor after total_steps
])
def test_lr_schedule_at_hand_computed_steps(step: int, expected: float) -> None:
    assert optim.lr_at(step, **SCHEDULE) == pytest.approx(expected, rel=1e-12)


def test_lr_schedule_without_warmup_starts_at_peak() -> None:
    assert optim.lr_at(0, 2e-3, 0, 100, 0.0) == pytest.approx(2e-3, rel=1e-12)
    assert optim.lr_at(50, 2e-3, 0, 100, 0.0) == pytest.approx(1e-3, rel=1e-12)
    assert optim.lr_at(100, 2e-3, 0, 100, 0.0) == pytest.approx(0.0, abs=1e-18)


def test_lr_schedule_when_warmup_fills_the_run() -> None:
    # total_steps == warmup_steps: the cosine has no length and drops to the floor at once
    assert optim.lr_at(4, 1.0, 5, 5, 0.25) == pytest.approx(1.0)
    assert optim.lr_at(6, 1.0, 5, 5, 0.25) == pytest.approx(0.25)


@pytest.mark.parametrize("step,warmup,match", [(-1, 5, "step=-1"), (0, -2, "warmup_steps=-2")])
def test_lr_schedule_rejects_negative_counts(step: int, warmup: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        optim.lr_at(step, 1e-3, warmup, 100, 0.1)


# --- global norm and clipping ---------------------------------------------------------------------

GRADS = {"a": np.array([3.0, 4.0]), "b": np.array([[12.0]])}  # global norm sqrt(9+16+144) = 13


def test_global_norm() -> None:
    assert optim.global_norm(GRADS) == pytest.approx(13.0, rel=1e-15)


def test_clip_leaves_small_gradients_unchanged() -> None:
    clipped, norm = optim.clip_by_global_norm(GRADS, 26.0)
    assert norm == pytest.approx(13.0)
    for name in GRADS:
        np.testing.assert_array_equal(clipped[name], GRADS[name])


def test_clip_scales_large_gradients_to_max_norm() -> None:
    clipped, norm = optim.clip_by_global_norm(GRADS, 6.5)
    assert norm == pytest.approx(13.0)
    np.testing.assert_allclose(clipped["a"], [1.5, 2.0], rtol=1e-15)
    np.testing.assert_allclose(clipped["b"], [[6.0]], rtol=1e-15)
    assert optim.global_norm(clipped) == pytest.approx(6.5, rel=1e-15)
    np.testing.assert_array_equal(GRADS["a"], [3.0, 4.0])  # inputs untouched


def test_clip_disabled_by_non_positive_max_norm() -> None:
    for max_norm in (0.0, -1.0):
        clipped, norm = optim.clip_by_global_norm(GRADS, max_norm)
        assert norm == pytest.approx(13.0)
        np.testing.assert_array_equal(clipped["b"], GRADS["b"])


def test_clip_keeps_float32() -> None:
    grads = {k: v.astype(np.float32) for k, v in GRADS.items()}
    clipped, _ = optim.clip_by_global_norm(grads, 1.0)
    assert {g.dtype for g in clipped.values()} == {np.dtype(np.float32)}


# --- AdamW ----------------------------------------------------------------------------------------

def test_decay_mask_decays_matrices_only() -> None:
    params = init_params(preset("tiny"), seed=0)
    mask = optim.decay_mask(params)
    assert list(mask) == list(params)
    for name, decayed in mask.items():
        assert decayed == (not name.endswith("norm")), name
    assert mask["embed"] and mask["lm_head"]


def test_adamw_matches_torch_over_five_steps() -> None:
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((4, 3)), "gain": rng.standard_normal(3),
              "embed": rng.standard_normal((5, 2))}
    # large eps, lr and weight decay, and one tensor with tiny gradients, so that eps placement,
    # bias correction and the decay mask each move the result far beyond the tolerance
    lr_by_step = [0.1, 0.05, 0.2, 0.1, 0.03]
    b1, b2, eps, wd = 0.8, 0.9, 1e-2, 0.3
    grad_scale = {"w": 1.0, "gain": 1.0, "embed": 1e-2}

    torch_params = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    mask = optim.decay_mask(params)
    torch_opt = torch.optim.AdamW(
        [{"params": [p for k, p in torch_params.items() if mask[k]], "weight_decay": wd},
         {"params": [p for k, p in torch_params.items() if not mask[k]], "weight_decay": 0.0}],
        lr=lr_by_step[0], betas=(b1, b2), eps=eps, foreach=False)

    state = optim.adamw_init(params)
    for lr in lr_by_step:
        grads = {k: grad_scale[k] * rng.standard_normal(v.shape) for k, v in params.items()}
        params, state = optim.adamw_update(params, grads, state, lr, b1, b2, eps, wd)
        for group in torch_opt.param_groups:
            group["lr"] = lr
        for k, p in torch_params.items():
            p.grad = torch.from_numpy(grads[k])
        torch_opt.step()
        # float64 on both sides, same formula in a different order: agreement to ~1e-15
        for k, p in torch_params.items():
            np.testing.assert_allclose(params[k], p.detach().numpy(), rtol=1e-10, err_msg=k)
    assert state.step == len(lr_by_step)


def test_adamw_first_step_by_hand() -> None:
    # t = 1: mhat = g and vhat = g*g, so the step is lr * (sign(g) * |g| / (|g| + eps) + wd * p)
    params = {"w": np.array([[2.0]]), "g": np.array([2.0])}
    grads = {"w": np.array([[0.5]]), "g": np.array([0.5])}
    new, state = optim.adamw_update(params, grads, optim.adamw_init(params), lr=0.1, b1=0.9,
                                    b2=0.99, eps=0.5, weight_decay=0.25)
    assert new["w"][0, 0] == pytest.approx(2.0 - 0.1 * (0.5 / 1.0 + 0.25 * 2.0), rel=1e-14)
    assert new["g"][0] == pytest.approx(2.0 - 0.1 * (0.5 / 1.0), rel=1e-14)  # not decayed
    assert state.step == 1
    assert state.m["w"][0, 0] == pytest.approx(0.1 * 0.5)
    assert state.v["w"][0, 0] == pytest.approx(0.01 * 0.25)


def test_adamw_keeps_float32_and_leaves_inputs_alone() -> None:
    params = init_params(preset("tiny"), seed=0)
    grads = {k: np.full_like(v, 0.1) for k, v in params.items()}
    before = {k: v.copy() for k, v in params.items()}
    state = optim.adamw_init(params)
    new, new_state = optim.adamw_update(params, grads, state, 1e-3, 0.9, 0.95, 1e-8, 0.1)
    for name in params:
        assert new[name].dtype == new_state.m[name].dtype == new_state.v[name].dtype == np.float32
        np.testing.assert_array_equal(params[name], before[name])
        assert not state.m[name].any()
    assert state.step == 0
