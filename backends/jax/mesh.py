"""The device mesh and how arrays are laid out on it (jax.sharding), and multi-host start.

Two mesh axes: "data" (replicas, each with whole weights) and "fsdp" (devices that share the
weights of one replica, ZeRO-3 style). The batch is split over both; each weight matrix is split
over "fsdp" along its first dimension that divides evenly, and XLA inserts the all-gathers and
reduce-scatters. Norm gains (vectors) are small and stay replicated.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from trainbench.errors import ConfigError

AXES = ("data", "fsdp")
BATCH = P(AXES)
"""Batch dimension split over every device of the mesh."""


def is_multi_host(environ: Mapping[str, str]) -> bool:
    """Whether the environment is a multi-process SLURM job, or a TPU slice whose host list
    (TPU_WORKER_HOSTNAMES, set by GKE) names several hosts."""
    slurm = int(environ.get("SLURM_NTASKS", "1")) > 1
    tpu_pod = "," in environ.get("TPU_WORKER_HOSTNAMES", "")
    return slurm or tpu_pod


def initialize_distributed(mode: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Start JAX's multi-controller runtime (jax.distributed.initialize, which reads the SLURM or
    TPU-pod environment itself) when `mode` is "on", or "auto" in a multi-host environment.
    Returns whether it was started; call before any other JAX call."""
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"backend.distributed={mode!r} must be one of: auto, on, off")
    if mode == "off" or (mode == "auto" and not is_multi_host(environ)):
        return False
    if not jax.distributed.is_initialized():
        jax.distributed.initialize()
    return True


def make_mesh(data: int, fsdp: int, devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp) mesh; data=-1 takes every device fsdp leaves. Single-process runs may use
    the first data*fsdp devices; multi-process runs must use all of them. `devices` (default:
    jax.devices()) may be the abstract devices of a TPU topology, for ahead-of-time compiles."""
    devices = list(jax.devices() if devices is None else devices)
    total = len(devices)
    if fsdp < 1 or fsdp > total:
        raise ConfigError(f"backend.fsdp={fsdp} must be between 1 and the device count {total}")
    if data == -1:
        if total % fsdp:
            raise ConfigError(f"backend.fsdp={fsdp} does not divide the device count {total}")
        data = total // fsdp
    if data < 1 or data * fsdp > total:
        raise ConfigError(f"backend.data_parallel={data} x backend.fsdp={fsdp} must be between 1 "
                          f"and the device count {total} (data_parallel=-1 uses them all)")
    if jax.process_count() > 1 and data * fsdp != total:
        raise ConfigError(f"backend.data_parallel={data} x backend.fsdp={fsdp} must use all "
                          f"{total} devices of a multi-process run")
    return Mesh(np.asarray(devices[:data * fsdp]).reshape(data, fsdp), AXES)


def weight_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Split the first dimension divisible by `fsdp` over "fsdp"; vectors stay replicated."""
    if fsdp > 1 and len(shape) >= 2:
        for dim, size in enumerate(shape):
            if size % fsdp == 0:
                return P(*([None] * dim), "fsdp")
    return P()


def param_shardings(mesh: Mesh, tree: Any) -> Any:
    """NamedSharding for every leaf of a parameter (or optimizer-state) tree."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, weight_spec(np.shape(x), fsdp)), tree)


def put_batch(mesh: Mesh, tokens: np.ndarray) -> jax.Array:
    """The global batch [B, T] (the same on every process) as one array split over the batch."""
    devices = mesh.devices.size
    if tokens.shape[0] % devices:
        raise ConfigError(f"train.batch_size={tokens.shape[0]} is not divisible by the "
                          f"{devices} devices of the mesh")
    sharding = NamedSharding(mesh, BATCH)
    return jax.make_array_from_callback(tokens.shape, sharding, lambda index: tokens[index])
