"""Parity itself must be able to fail: a backend whose math is slightly off is caught."""

import numpy as np
import pytest

from trainbench import model, parity
from trainbench.backends.reference.backend import ReferenceBackend
from trainbench.config import PRECISIONS, OptimConfig

TINY = model.preset("tiny")


class ScaledHeadGrad(ReferenceBackend):
    """The reference with one gradient off by 1e-3 relative: a plausible kernel bug."""

    def loss_and_grads(self, tokens):
        loss, grads = super().loss_and_grads(tokens)
        grads["lm_head"] = grads["lm_head"] * (1 + 1e-3)
        return loss, grads


class ShiftedLoss(ReferenceBackend):
    def loss_and_grads(self, tokens):
        loss, grads = super().loss_and_grads(tokens)
        return loss * (1 + 1e-4), grads


def _backend(cls):
    return cls(cls.config_class(), TINY, PRECISIONS["fp32"], OptimConfig(), total_steps=3)


def test_identical_math_passes():
    rep = parity.compare(_backend(ReferenceBackend), _backend(ReferenceBackend), TINY, 2, 16, 3)
    assert rep.passed and rep.failures() == []
    assert all(v == 0 for v in rep.errors.values())


def test_a_wrong_gradient_is_caught_and_located():
    rep = parity.compare(_backend(ScaledHeadGrad), _backend(ReferenceBackend), TINY, 2, 16, 3)
    assert not rep.passed
    assert rep.errors["grads_step0"] > parity.TOLERANCES["grads_step0"]
    assert max(rep.grad_errors, key=rep.grad_errors.get) == "lm_head"
    assert rep.grad_errors["lm_head"] == pytest.approx(1e-3, rel=1e-3)


def test_a_wrong_loss_is_caught():
    rep = parity.compare(_backend(ShiftedLoss), _backend(ReferenceBackend), TINY, 2, 16, 3)
    assert not rep.passed and any(f.startswith("loss_step0") for f in rep.failures())
    assert rep.errors["loss_step0"] == pytest.approx(1e-4, rel=1e-3)
    assert np.isfinite(rep.reference["grad_norm"])
