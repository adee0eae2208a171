"""The shared loop: timing protocol, synchronization, divergence; one real reference step."""

import numpy as np
import pytest

from trainbench import model, reference
from trainbench.backend import Availability, Backend, DeviceInfo
from trainbench.backends.reference.backend import ReferenceBackend
from trainbench.config import OptimConfig, PRECISIONS
from trainbench.data import SyntheticTokens
from trainbench.loop import run_loop


class ScriptedBackend(Backend):
    """Returns scripted losses and counts synchronize calls."""

    name = "scripted"

    def __init__(self, losses):
        self.losses, self.events = list(losses), []

    @classmethod
    def availability(cls):
        return Availability(True, "test")

    def device(self):
        return DeviceInfo("test", "cpu", 1)

    def setup(self, params):
        self.events.append("setup")

    def train_step(self, step, tokens):
        self.events.append(f"step{step}")
        return self.losses[step]

    def loss(self, handle):
        return handle

    def synchronize(self):
        self.events.append("sync")

    def loss_and_grads(self, tokens):
        raise NotImplementedError

    def export_params(self):
        return {}


def test_protocol_order_and_split():
    b = ScriptedBackend([5.0, 4.0, 3.0, 2.0, 1.0])
    r = run_loop(b, {}, lambda s: np.zeros((1, 2), np.int32), warmup_steps=2, steps=3,
                 progress=False)
    assert b.events == ["setup", "sync", "step0", "sync", "step1", "sync", "step2", "sync",
                        "step3", "sync", "step4", "sync"]
    assert r.status == "ok" and r.losses == [5.0, 4.0, 3.0, 2.0, 1.0]
    assert len(r.warmup_step_s) == 1 and len(r.step_s) == 3 and r.first_step_s > 0


def test_on_step_sees_every_step_after_its_clock_stopped():
    b = ScriptedBackend([5.0, 4.0, 3.0, 2.0])
    seen = []
    r = run_loop(b, {}, lambda s: np.zeros((1, 2), np.int32), warmup_steps=1, steps=3,
                 progress=False, on_step=lambda *args: seen.append((args, len(b.events))))
    assert [args for args, _ in seen] == list(zip(range(4), r.losses,
                                                  [r.first_step_s, *r.warmup_step_s, *r.step_s]))
    assert [events for _, events in seen] == [4, 6, 8, 10]  # called after each step's sync


def test_divergence_stops_the_run():
    b = ScriptedBackend([5.0, 4.0, float("nan"), 1.0, 1.0])
    r = run_loop(b, {}, lambda s: np.zeros((1, 2), np.int32), 1, 4, progress=False)
    assert r.status == "diverged" and "nan at step 2" in r.cause
    assert len(r.losses) == 3


def _reference(cfg, precision="fp32", steps=3):
    return ReferenceBackend(ReferenceBackend.config_class(), cfg, PRECISIONS[precision],
                            OptimConfig(), total_steps=steps)


def test_reference_backend_one_real_training_step():
    cfg = model.preset("tiny")
    params = model.init_params(cfg, 0)
    tokens = SyntheticTokens(cfg.vocab, 2, 16, 0).batch(0)
    b = _reference(cfg)
    b.setup(params)
    loss0, grads = b.loss_and_grads(tokens)
    expected, _ = reference.loss_and_grads(cfg, params, tokens)
    assert loss0 == pytest.approx(expected, rel=1e-6)
    assert loss0 == pytest.approx(np.log(cfg.vocab), rel=0.05)  # small init: near-uniform logits
    assert b.loss(b.train_step(0, tokens)) == pytest.approx(loss0, rel=1e-6)
    after = b.export_params()
    assert set(after) == set(params)
    assert all(after[k].dtype == np.float32 for k in after)
    assert any(not np.array_equal(after[k], params[k]) for k in params)


def test_reference_backend_loss_falls_over_a_short_run():
    cfg = model.preset("tiny")
    src = SyntheticTokens(cfg.vocab, 8, 32, 0)
    b = _reference(cfg, "fp64", steps=30)
    r = run_loop(b, model.init_params(cfg, 0), src.batch, 1, 29, progress=False)
    assert r.status == "ok"
    assert b.export_params()["embed"].dtype == np.float64
    assert np.mean(r.losses[-5:]) < r.losses[0] - 0.3
