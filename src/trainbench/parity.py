"""Parity: does a backend compute what the reference computes? (docs/design.md, "Correctness")

From the same initial weights and batches, in the same precision, compare a backend with the
NumPy reference backend: the loss at step 0, the gradients at step 0, and the loss after
`steps` AdamW steps. Differences are relative: |a - b| / |b| for losses and
||g - g_ref|| / ||g_ref|| over all parameters for gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainbench import data, model, registry
from trainbench.backend import Backend
from trainbench.config import BackendConfig, OptimConfig, PrecisionConfig
from trainbench.model import ModelConfig

# Relative tolerances in float32 (issue 3, "Parity"): what a correct fp32 implementation
# reaches with a different order of summation; a wrong mask, scale or rotary convention is off by
# orders of magnitude more.
TOLERANCES = {"loss_step0": 1e-5, "grads_step0": 1e-4, "loss_after_steps": 1e-4}


@dataclass
class ParityReport:
    backend: str
    steps: int
    reference: dict[str, float]
    candidate: dict[str, float]
    errors: dict[str, float]
    """Relative error per quantity (keys of TOLERANCES)."""
    grad_errors: dict[str, float] = field(default_factory=dict)
    """Relative gradient error per parameter, to find the op that differs."""
    tolerances: dict[str, float] = field(default_factory=lambda: dict(TOLERANCES))

    @property
    def passed(self) -> bool:
        return all(self.errors[k] <= self.tolerances[k] for k in self.tolerances)

    def failures(self) -> list[str]:
        return [f"{k}: {self.errors[k]:.2e} > {self.tolerances[k]:.0e}"
                for k in self.tolerances if not self.errors[k] <= self.tolerances[k]]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def _measure(backend: Backend, params: dict[str, np.ndarray], batch_at: Any,
             steps: int) -> tuple[float, dict[str, np.ndarray], float]:
    backend.setup(params)
    loss0, grads0 = backend.loss_and_grads(batch_at(0))
    grads0 = {k: np.asarray(v, dtype=np.float64) for k, v in grads0.items()}
    for step in range(steps):
        backend.loss(backend.train_step(step, batch_at(step)))
    backend.synchronize()
    loss_after, _ = backend.loss_and_grads(batch_at(steps))
    return float(loss0), grads0, float(loss_after)


def compare(backend: Backend, reference: Backend, model_cfg: ModelConfig, batch_size: int,
            seq_len: int, steps: int = 10, seed: int = 0) -> ParityReport:
    """Run `backend` and `reference` side by side from the same weights and batches."""
    params = model.init_params(model_cfg, seed)
    source = data.SyntheticTokens(model_cfg.vocab, batch_size, seq_len, seed)
    ref_loss0, ref_grads, ref_after = _measure(reference, params, source.batch, steps)
    loss0, grads, after = _measure(backend, params, source.batch, steps)
    missing = set(ref_grads) ^ set(grads)
    if missing:
        raise ValueError(f"backend {backend.name} returned gradients for different parameters: "
                         f"{sorted(missing)}")
    diff = np.sqrt(sum(float(np.sum((grads[k] - ref_grads[k]) ** 2)) for k in ref_grads))
    norm = np.sqrt(sum(float(np.sum(ref_grads[k] ** 2)) for k in ref_grads))
    per_param = {k: float(np.linalg.norm(grads[k] - ref_grads[k])
                          / max(np.linalg.norm(ref_grads[k]), 1e-30)) for k in ref_grads}
    return ParityReport(
        backend=backend.name, steps=steps,
        reference={"loss_step0": ref_loss0, "loss_after_steps": ref_after, "grad_norm": norm},
        candidate={"loss_step0": loss0, "loss_after_steps": after},
        errors={"loss_step0": _rel(loss0, ref_loss0), "grads_step0": diff / max(norm, 1e-30),
                "loss_after_steps": _rel(after, ref_after)},
        grad_errors=per_param)


def compare_by_name(backend_cfg: BackendConfig, model_cfg: ModelConfig,
                    precision: PrecisionConfig, optim: OptimConfig, batch_size: int,
                    seq_len: int, steps: int = 10, seed: int = 0) -> ParityReport:
    """Parity of the registered backend `backend_cfg.name` against the reference backend."""
    cls = registry.get(backend_cfg.name)
    ref_cls = registry.get("reference")
    backend = cls(backend_cfg, model_cfg, precision, optim, total_steps=steps)
    reference = ref_cls(ref_cls.config_class(), model_cfg, precision, optim, total_steps=steps)
    return compare(backend, reference, model_cfg, batch_size, seq_len, steps, seed)
