"""The reference backend: the shared training step in NumPy (trainbench.reference + .optim).

Runs on the host CPU in float32 (precision=fp32) or float64 (precision=fp64). NumPy has no
bfloat16, so precision=bf16 is refused. Work is synchronous: a step has finished when it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from trainbench import hardware, optim, reference
from trainbench.backend import Availability, Backend, DeviceInfo
from trainbench.config import BackendConfig


@dataclass
class ReferenceConfig(BackendConfig):
    name: str = "reference"


class ReferenceBackend(Backend):
    name = "reference"
    config_class = ReferenceConfig
    precisions = ("fp32", "fp64")

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True, "NumPy runs everywhere", devices="1 x cpu")

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"numpy": np.__version__}

    def device(self) -> DeviceInfo:
        return DeviceInfo(name=hardware.cpu_name(), kind="cpu", count=1)

    def setup(self, params: Mapping[str, np.ndarray]) -> None:
        dtype = np.dtype(self.precision.param_dtype)
        self.params = {k: np.array(v, dtype=dtype) for k, v in params.items()}
        self.opt_state = optim.adamw_init(self.params)

    def train_step(self, step: int, tokens: np.ndarray) -> float:
        o = self.optim
        loss, grads = reference.loss_and_grads(self.model_cfg, self.params, tokens)
        if o.grad_clip > 0:
            grads, _ = optim.clip_by_global_norm(grads, o.grad_clip)
        lr = optim.lr_at(step, o.lr, o.warmup_steps, self.total_steps, o.min_lr_ratio)
        self.params, self.opt_state = optim.adamw_update(
            self.params, grads, self.opt_state, lr, o.b1, o.b2, o.eps, o.weight_decay)
        return loss

    def loss(self, handle: float) -> float:
        return float(handle)

    def synchronize(self) -> None:
        """NumPy is synchronous: nothing is in flight."""

    def loss_and_grads(self, tokens: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        return reference.loss_and_grads(self.model_cfg, self.params, tokens)

    def export_params(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.items()}

    def peak_memory(self) -> tuple[int | None, str]:
        return None, ("NumPy keeps no allocator statistics (the run's host RSS growth is "
                      "measured by trainbench.memory)")
