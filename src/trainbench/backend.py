"""What a backend is: the interface the shared training loop drives.

A backend trains the shared model in its framework. The loop gives it the canonical initial
weights and NumPy token batches, times its steps, and asks it to synchronize, so every backend is
measured the same way. Backend modules import their framework lazily (inside methods), so listing
backends and composing configs never needs a framework that is not installed.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np

from trainbench.config import BackendConfig, OptimConfig, PrecisionConfig, TrainConfig
from trainbench.model import ModelConfig


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run on this machine, and if not, exactly why."""

    ok: bool
    reason: str
    devices: str = ""
    """What it would run on (e.g. "1 x cpu", "8 x NVIDIA H100 80GB HBM3")."""


@dataclass(frozen=True)
class DeviceInfo:
    """The devices a run uses, as the framework names them."""

    name: str
    """Framework's device name, looked up in the hardware table (e.g. "NVIDIA H100 80GB HBM3")."""
    kind: str
    """cpu | gpu | tpu | neuron."""
    count: int
    """Devices the global batch is spread over."""
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """One framework's implementation of the shared training step."""

    name: ClassVar[str]
    config_class: ClassVar[type[BackendConfig]] = BackendConfig
    """Structured config of the backend's Hydra group entry (`backend=<name>`)."""
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "bf16")
    """Precision names (trainbench.config.PRECISIONS) this backend supports."""

    def __init__(self, backend_cfg: BackendConfig, model_cfg: ModelConfig,
                 precision: PrecisionConfig, optim: OptimConfig, total_steps: int) -> None:
        self.backend_cfg = backend_cfg
        self.model_cfg = model_cfg
        self.precision = precision
        self.optim = optim
        self.total_steps = total_steps

    @classmethod
    @abc.abstractmethod
    def availability(cls) -> Availability:
        """Cheap, never raises: can this backend run here?"""

    @classmethod
    def preference(cls) -> int:
        """Rank among available backends for `backend=auto` (higher wins)."""
        return 0

    @classmethod
    def check_config(cls, backend_cfg: BackendConfig, model_cfg: ModelConfig,
                     train_cfg: TrainConfig) -> None:
        """Raise ConfigError for a backend option this model or batch shape cannot take (e.g. a
        tensor-parallel size that does not divide the heads); called before any work, cheaply
        (no framework import)."""

    @classmethod
    def versions(cls) -> dict[str, str]:
        """Versions of the framework and kernel compilers, for the environment fingerprint."""
        return {}

    @abc.abstractmethod
    def device(self) -> DeviceInfo:
        """The devices this run uses."""

    @abc.abstractmethod
    def setup(self, params: Mapping[str, np.ndarray]) -> None:
        """Build the model and optimizer from the canonical weights (not timed as a step)."""

    @abc.abstractmethod
    def train_step(self, step: int, tokens: np.ndarray) -> Any:
        """Dispatch one optimizer step on tokens [B, T]; may return before the device finishes.

        Returns a handle that `loss()` turns into the step's loss (before the update).
        """

    @abc.abstractmethod
    def loss(self, handle: Any) -> float:
        """The loss of a dispatched step, waiting for it if needed."""

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Block until all dispatched device work has finished."""

    @abc.abstractmethod
    def loss_and_grads(self, tokens: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Loss and canonical-named gradients at the current weights, without updating them."""

    @abc.abstractmethod
    def export_params(self) -> dict[str, np.ndarray]:
        """Current weights in the canonical mapping (float32 or the param dtype)."""

    def is_primary(self) -> bool:
        """Whether this process reports the run (rank 0 of a multi-process run writes the record)."""
        return True

    def recompute_flops(self, batch: int, seq_len: int, attention: str) -> int:
        """FLOPs a step spends recomputing activations (remat), beyond the model FLOPs; they count
        in HFU, never in MFU."""
        return 0

    def record_extra(self) -> dict[str, Any]:
        """Backend facts known after the run (compile time, compiler cost analysis, ...)."""
        return {}

    def matmul_peak(self, dtype: str) -> Any:
        """The best matrix-product rate this backend's framework reaches on its device, as a
        trainbench.hardware.PeakInfo (method "measured"), for MAMFU; None if it has no probe."""
        return None

    def peak_memory(self) -> tuple[int | None, str]:
        """Peak memory in bytes and what it measures; (None, reason) when unknown."""
        return None, "not reported by this backend"
