"""The Neuron backend: the shared PyTorch model (trainbench.backends.torch) on AWS Trainium
through TorchNeuron, the native PyTorch `neuron` device (torch-neuronx 2.13.3+; AWS ended the
PyTorch/XLA training flow in Neuron 2.32), with the NKI kernels of trainbench.kernels.nki
selected op by op.

On a machine without Neuron, `backend.device=cpu` (what `auto` falls back to) runs the same
model on the CPU with every NKI kernel executed through `nki.simulate` when the `nki` package is
installed, else through trainbench's NumPy emulator: slow, for correctness only (parity with the
reference, the wiring of every kernel into the model), never for timing.

This module imports neither torch nor the Neuron packages at import time; it registers the NKI
op choices (as "module:function" strings) in the PyTorch backend's dispatch table.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from trainbench.backend import Availability, DeviceInfo
from trainbench.backends.torch import ops
from trainbench.backends.torch.backend import TorchBackend, TorchConfig
from trainbench.errors import ConfigError

if TYPE_CHECKING:
    import torch

_NKI = "trainbench.kernels.nki.autograd"
NKI_OPS = {"rmsnorm": "rmsnorm", "swiglu": "swiglu", "cross_entropy": "linear_cross_entropy",
           "attention": "flash_attention"}
"""Dispatched op -> NKI wrapper in trainbench.kernels.nki.autograd (rope has no NKI kernel)."""
for _op, _fn in NKI_OPS.items():
    ops.register(_op, "nki", f"{_NKI}:{_fn}")

DEVICES = ("auto", "neuron", "cpu")


@dataclass
class NeuronConfig(TorchConfig):
    """`backend=neuron`. Op fields take a choice registered in the PyTorch backend's ops.OPS:
    nki | native (| triton, on the CPU only in Triton's interpreter)."""

    name: str = "neuron"
    device: str = "auto"
    """auto (the neuron device when TorchNeuron sees one, else the CPU with emulated NKI) |
    neuron | cpu."""
    rmsnorm: str = "nki"
    """RMSNorm: nki (NKI kernel, float32 statistics) | native."""
    swiglu: str = "nki"
    """silu(gate) * up: nki | native."""
    cross_entropy: str = "nki"
    """LM head (PyTorch matmul) + cross-entropy: nki (online log-sum-exp kernel) | native."""
    attention: str = "nki"
    """Causal GQA attention: nki (flash attention kernel) | native (SDPA)."""

    devices: ClassVar[tuple[str, ...]] = DEVICES


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _neuron_devices() -> int:
    """How many `neuron` devices PyTorch sees (0 without TorchNeuron or Trainium)."""
    if not (_installed("torch") and _installed("torch_neuronx")):
        return 0
    import torch

    accelerator = torch.accelerator.current_accelerator()
    if accelerator is None or accelerator.type != "neuron":
        return 0
    return torch.accelerator.device_count()


def missing_neuron() -> list[str]:
    """What real Neuron execution lacks here, one phrase each (empty when it can run)."""
    missing = []
    if not _installed("torch"):
        missing.append("PyTorch is not installed (pip install 'trainbench[torch]')")
    if not _installed("torch_neuronx"):
        missing.append("torch-neuronx (TorchNeuron, the native `neuron` torch device) is not "
                       "installed; it comes from AWS's Neuron pip index")
    elif _neuron_devices() == 0:
        missing.append("PyTorch sees no `neuron` device (no Trainium2/3 NeuronCore, or the "
                       "Neuron driver is not loaded)")
    if not _installed("nki"):
        missing.append("the `nki` package (NKI compiler and nki.simulate) is not installed")
    return missing


class NeuronBackend(TorchBackend):
    name = "neuron"
    config_class = NeuronConfig
    precisions = ("fp32", "bf16")

    @classmethod
    def availability(cls) -> Availability:
        if not _installed("torch"):
            return Availability(False, "PyTorch is not installed (pip install 'trainbench[torch]')")
        missing = missing_neuron()
        if not missing:
            return Availability(True, "TorchNeuron with NKI kernels",
                                devices=f"{_neuron_devices()} x neuron")
        return Availability(True, "CPU mode only (NKI kernels emulated, for correctness, not "
                            "speed); real Neuron is unavailable: " + "; ".join(missing),
                            devices="1 x cpu")

    @classmethod
    def preference(cls) -> int:
        """30 on Trainium; -10 in CPU mode, so `backend=auto` never picks the emulator."""
        return 30 if not missing_neuron() else -10

    @classmethod
    def versions(cls) -> dict[str, str]:
        out = super().versions()
        for package in ("torch-neuronx", "nki"):
            try:
                out[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                pass
        if "nki" not in out:
            out["nki"] = "not installed: trainbench NKI emulator"
        return out

    def torch_device(self) -> torch.device:
        """neuron:LOCAL_RANK on Trainium, or the CPU (backend.device)."""
        import os

        import torch

        choice = self.backend_cfg.device
        if choice == "auto":
            choice = "neuron" if not missing_neuron() else "cpu"
        if choice == "neuron":
            missing = missing_neuron()
            if missing:
                raise ConfigError("backend.device=neuron but " + "; ".join(missing))
            return torch.device("neuron", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")

    def device(self) -> DeviceInfo:
        self._init_runtime()
        if self.torch_dev.type != "neuron":
            info = super().device()
            from trainbench.kernels.nki._api import BACKEND

            return DeviceInfo(info.name, info.kind, info.count, {**info.extra, "nki": BACKEND})
        # The EC2 instance type (e.g. trn2.48xlarge) names the chip in the hardware table.
        product = Path("/sys/devices/virtual/dmi/id/product_name")
        name = product.read_text().strip() if product.exists() else "neuron"
        return DeviceInfo(name, "neuron", self.world, {"parallel": self.backend_cfg.parallel,
                                                       "mesh": self.backend_cfg.mesh(self.world)})

    def synchronize(self) -> None:
        import torch

        if self.torch_dev.type == "neuron":
            torch.accelerator.synchronize(self.torch_dev)

    def peak_memory(self) -> tuple[int | None, str]:
        if self.torch_dev.type == "neuron":
            return None, "device memory is not read on Neuron yet (host RSS would mislead)"
        return super().peak_memory()
