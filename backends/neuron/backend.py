"""The Neuron backend: the shared PyTorch model (trainbench.backends.torch) on AWS Trainium
through TorchNeuron, the native PyTorch `neuron` device (torch-neuronx, Neuron 2.33+; AWS ended
PyTorch/XLA training in Neuron 2.30), with the NKI kernels of trainbench.kernels.nki selected
op by op. Requirements and the documented way to drive it are data: torchneuron.yaml.

On Trainium, the documented path: `import torch_neuronx` (registers the device, the `neuron`
process-group backend and `nki_op`), the kernels as `nki_op` custom operators with
`register_autograd` (trainbench.kernels.nki.autograd), every kernel launched on a grid of
`backend.lnc` programs with NEURON_LOGICAL_NC_CONFIG set to the same degree so kernels and
neuronx-cc agree (NCC_EVRF066), `torch.compile(backend="neuron")` per block for
backend.compile=true, and `dist.init_process_group("neuron")` under torchrun.

On a machine without Neuron, `backend.device=cpu` (what `auto` falls back to) runs the same
model on the CPU with every NKI kernel executed through `nki.simulate` when the real `nki`
package is installed, else through trainbench's NumPy emulator (the same grid of programs):
slow, for correctness only (parity with the reference, the wiring of every kernel into the
model), never for timing.

This module imports neither torch nor the Neuron packages at import time; it registers the NKI
op choices (as "module:function" strings) in the PyTorch backend's dispatch table.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import glob
import importlib.util
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import yaml

from trainbench import hardware
from trainbench.backend import Availability, DeviceInfo
from trainbench.backends.torch import ops
from trainbench.backends.torch.backend import TorchBackend, TorchConfig
from trainbench.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch

_NKI = "trainbench.kernels.nki.autograd"
NKI_OPS = {"rmsnorm": "rmsnorm", "swiglu": "swiglu", "cross_entropy": "linear_cross_entropy",
           "attention": "flash_attention"}
"""Dispatched op -> NKI wrapper in trainbench.kernels.nki.autograd (rope has no NKI kernel)."""
for _op, _fn in NKI_OPS.items():
    ops.register(_op, "nki", f"{_NKI}:{_fn}")

DEVICES = ("auto", "neuron", "cpu")
LNC_DEGREES = (1, 2)
"""Logical NeuronCore degrees the Neuron SDK supports (NKI LNC page)."""
NEURON_SYSFS = "/sys/devices/virtual/neuron_device/neuron*"
"""One entry per Neuron device (chip) the driver has loaded."""
PRODUCT_NAME = Path("/sys/devices/virtual/dmi/id/product_name")
"""The EC2 instance type (e.g. trn2.48xlarge), which names the chip in the hardware table."""


@functools.cache
def torchneuron() -> dict[str, Any]:
    """torchneuron.yaml: TorchNeuron's documented requirements and conventions."""
    return yaml.safe_load((Path(__file__).parent / "torchneuron.yaml").read_text())


@dataclass
class NeuronConfig(TorchConfig):
    """`backend=neuron`. Op fields take a choice registered in the PyTorch backend's ops.OPS:
    nki | native (| triton, on the CPU only in Triton's interpreter)."""

    name: str = "neuron"
    device: str = "auto"
    """auto (the neuron device when TorchNeuron sees one, else the CPU with emulated NKI) |
    neuron | cpu."""
    lnc: int | None = None
    """Logical NeuronCore degree, 1 | 2: the NKI kernels' launch grid and
    NEURON_LOGICAL_NC_CONFIG. None: the chip's documented default (2 on Trn2/Trn3; in CPU mode,
    that of the emulated target, trn2)."""
    rmsnorm: str = "nki"
    """RMSNorm: nki (NKI kernel, float32 statistics) | native."""
    swiglu: str = "nki"
    """silu(gate) * up: nki | native."""
    cross_entropy: str = "nki"
    """LM head (PyTorch matmul) + cross-entropy: nki (online log-sum-exp kernel) | native."""
    attention: str = "nki"
    """Causal GQA attention: nki (flash attention kernel) | native (SDPA)."""

    devices: ClassVar[tuple[str, ...]] = DEVICES

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lnc is not None and self.lnc not in LNC_DEGREES:
            raise ConfigError(f"backend.lnc={self.lnc!r} must be one of: null (the chip's "
                              "default), " + ", ".join(map(str, LNC_DEGREES)))


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _neuron_devices() -> int:
    """Neuron devices (chips) the Neuron driver exposes, 0 without one. Read from sysfs, not by
    importing torch_neuronx: that import must wait until NEURON_LOGICAL_NC_CONFIG is set."""
    return len(glob.glob(NEURON_SYSFS))


def _nki_missing() -> str | None:
    """Why the real `nki` package is not usable here (None when it is)."""
    from trainbench.kernels.nki._api import real_nki

    found = real_nki()
    return None if isinstance(found, tuple) else found


def missing_neuron() -> list[str]:
    """What real Neuron execution lacks here, one precise phrase each (empty when it can run)."""
    req = torchneuron()
    families = req["torch_neuronx"]
    missing = []
    torch_version = _version("torch")
    if torch_version is None:
        missing.append("PyTorch is not installed (pip install 'trainbench[torch]')")
    if not _installed("torch_neuronx"):
        missing.append(
            f"torch-neuronx (TorchNeuron, Neuron SDK {req['min_neuron_sdk']}+) is not installed: "
            "from AWS's Neuron pip index, the family matching PyTorch ("
            + ", ".join(f"torch-neuronx=={v} with torch {t}" for t, v in families.items()) + ")")
    else:
        if torch_version and ".".join(torch_version.split(".")[:2]) not in families:
            missing.append(f"torch {torch_version} has no torch-neuronx family (TorchNeuron "
                           f"supports torch {', '.join(families)})")
        if _neuron_devices() == 0:
            missing.append(f"no Neuron device ({NEURON_SYSFS} matches nothing: not a Trn2/Trn3 "
                           "instance, or the Neuron driver is not loaded)")
    nki_missing = _nki_missing()
    if nki_missing:
        missing.append(nki_missing + " (NKI compiler and nki.simulate; AWS's Neuron pip index)")
    return missing


def default_lnc(device_name: str) -> int:
    """The documented default LNC degree of the chip named `device_name` (an instance type or
    chip name; trn2 when it is not a Trainium the NKI table knows, as in CPU mode)."""
    from trainbench.kernels.nki.emulator.table import table

    targets = table()["targets"]
    accel = hardware.lookup(device_name)
    for t in targets.values():
        if accel is not None and t["hardware"] == accel.name:
            return t["default_lnc"]
    return targets[table()["default_target"]]["default_lnc"]


PROCESS_GROUP = {"neuron": torchneuron()["process_group"], "cpu": "gloo"}
"""torch.distributed backend per device type: TorchNeuron's own on `neuron`, gloo on the CPU."""
COMPILE_BACKEND = {"neuron": torchneuron()["compile_backend"], "cpu": "inductor"}
"""torch.compile backend per device type."""


def compile_blocks(blocks: Any, device_type: str) -> None:
    """torch.compile each transformer block with the device's documented compile backend."""
    for block in blocks:
        block.compile(backend=COMPILE_BACKEND[device_type])


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
                                devices=f"{_neuron_devices()} x Neuron device")
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
            version = _version(package)
            if version:
                out[package] = version
        if _nki_missing():
            out["nki"] = "not used: trainbench NKI emulator"
        return out

    def _init_runtime(self) -> None:
        """Pick this rank's device; on Trainium set the LNC degree before `import
        torch_neuronx`; launch the NKI kernels on that grid; join the process group (once)."""
        if hasattr(self, "rank"):
            return
        import torch.distributed as dist

        from trainbench.kernels.nki import autograd as nki_autograd

        self._set_ranks()
        self.torch_dev = self.torch_device()
        nki_autograd.set_lnc(self.lnc)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(PROCESS_GROUP[self.torch_dev.type])
            atexit.register(dist.destroy_process_group)

    def torch_device(self) -> torch.device:
        """neuron:LOCAL_RANK on Trainium (after importing torch_neuronx with
        NEURON_LOGICAL_NC_CONFIG = the LNC degree), or the CPU (backend.device)."""
        import torch

        choice = self.backend_cfg.device
        if choice == "auto":
            choice = "neuron" if not missing_neuron() else "cpu"
        if choice == "cpu":
            self.lnc = self.backend_cfg.lnc or default_lnc("cpu")
            return torch.device("cpu")
        missing = missing_neuron()
        if missing:
            raise ConfigError("backend.device=neuron but " + "; ".join(missing))
        self.lnc = self.backend_cfg.lnc or default_lnc(self._chip())
        runtime_lnc = os.environ.setdefault("NEURON_LOGICAL_NC_CONFIG", str(self.lnc))
        if runtime_lnc != str(self.lnc):
            raise ConfigError(f"backend.lnc={self.lnc} but NEURON_LOGICAL_NC_CONFIG="
                              f"{runtime_lnc}: kernels and neuronx-cc must use one LNC degree")
        import torch_neuronx  # noqa: F401 - registers the device, nki_op and the process group

        return torch.device("neuron", int(os.environ.get("LOCAL_RANK", "0")))

    @staticmethod
    def _chip() -> str:
        return PRODUCT_NAME.read_text().strip() if PRODUCT_NAME.exists() else "neuron"

    def setup(self, params: Mapping[str, np.ndarray]) -> None:
        """The PyTorch backend's setup; on Trainium with backend.compile=true the blocks are
        compiled with torch.compile(backend="neuron") instead of Inductor."""
        self._init_runtime()
        cfg = self.backend_cfg
        own_compile = cfg.compile and self.torch_dev.type == "neuron"
        if own_compile:
            self.backend_cfg = dataclasses.replace(cfg, compile=False)
        try:
            super().setup(params)
        finally:
            self.backend_cfg = cfg
        if own_compile:  # after DDP/FSDP wrapping; Module.compile compiles in place
            compile_blocks(self.model.layers, self.torch_dev.type)

    def device(self) -> DeviceInfo:
        self._init_runtime()
        if self.torch_dev.type != "neuron":
            info = super().device()
            from trainbench.kernels.nki._api import BACKEND

            return DeviceInfo(info.name, info.kind, info.count,
                              {**info.extra, "nki": BACKEND, "lnc": self.lnc})
        return DeviceInfo(self._chip(), "neuron", self.world,
                          {"parallel": self.backend_cfg.parallel, "lnc": self.lnc,
                           "mesh": self.backend_cfg.mesh(self.world)})

    def synchronize(self) -> None:
        import torch

        if self.torch_dev.type == "neuron":
            torch.accelerator.synchronize(self.torch_dev)

    def peak_memory(self) -> tuple[int | None, str]:
        if self.torch_dev.type == "neuron":
            return None, "device memory is not read on Neuron yet (host RSS would mislead)"
        return super().peak_memory()
