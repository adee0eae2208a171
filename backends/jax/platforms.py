"""Which platforms JAX may open, chosen before its first backend call.

With `libtpu` installed (the `tpu` extra, which `trainbench compile` uses to compile for TPU
topologies that are not here), JAX's own discovery also tries to open a TPU on machines that
have none: libtpu then prints its start-up errors ("could not determine TPU accelerator type",
"Unable to initialize backend 'tpu'") to every user. When no TPU chip is attached, trainbench
names the platforms that are present instead (jax_platforms), so a CPU or GPU run says nothing
about TPUs; on a TPU machine, or when the user set JAX_PLATFORMS, JAX decides as usual.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable, Mapping


def attached_tpu_chips() -> int:
    """TPU chips on this machine's PCI bus, as JAX itself counts them before loading libtpu."""
    from jax._src import hardware_utils

    return hardware_utils.num_available_tpu_chips_and_device_id()[0]


def _nvidia() -> bool:
    from jax._src import hardware_utils

    return hardware_utils.has_visible_nvidia_gpu()


def _amd() -> bool:
    from jax._src import hardware_utils

    return hardware_utils.num_available_amd_gpus(stop_at=1) > 0


# Accelerator platforms JAX may open besides the CPU, each with how to tell it is attached.
GPU_PLATFORMS: dict[str, Callable[[], bool]] = {"cuda": _nvidia, "rocm": _amd}


def choose(environ: Mapping[str, str] = os.environ) -> str | None:
    """The jax_platforms value for this machine, or None to leave JAX's discovery alone (the
    user set JAX_PLATFORMS, libtpu is not installed, or a TPU chip is attached)."""
    if "JAX_PLATFORMS" in environ or importlib.util.find_spec("libtpu") is None:
        return None
    if attached_tpu_chips() > 0:
        return None
    return ",".join([name for name, present in GPU_PLATFORMS.items() if present()] + ["cpu"])


def configure(environ: Mapping[str, str] = os.environ) -> None:
    """Apply `choose` to jax.config; call before the first JAX call that opens a device (later
    it has no effect, the backends being open already)."""
    import jax

    platforms = choose(environ)
    if platforms is not None:
        jax.config.update("jax_platforms", platforms)
