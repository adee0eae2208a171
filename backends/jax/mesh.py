"""The device mesh, how arrays are laid out on it (jax.sharding), and multi-host start.

Three mesh axes: "data" (replicas, each with whole weights), "fsdp" (devices that share the
weights of one replica, ZeRO-3 style) and "tensor" (devices that split each matrix, Megatron
style). The batch is split over data and fsdp; the tensor axis shares it.

Layouts are named, as in MaxText, by logical axes: every parameter dimension and every
activation the model constrains has a logical name (PARAM_AXES, and the names model.py passes
to `constrain`), and LOGICAL_RULES maps each name to mesh axes (flax.linen's
logical_to_mesh_axes resolves them). Column-parallel matrices split their output (heads, mlp)
over "tensor", row-parallel ones their input, the embedding and LM head the vocabulary; every
matrix splits its d_model dimension over "fsdp". Between blocks the residual stream is split over
the sequence on "tensor" (sequence parallelism), so XLA all-gathers it before the projections
and reduce-scatters the row-parallel outputs. A mesh axis that does not divide a dimension is
dropped from it (a matrix whose d_model does not divide fsdp takes fsdp on another dimension).
Norm gains are small and stay replicated.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from trainbench.errors import ConfigError

AXES = ("data", "fsdp", "tensor")
BATCH = P(("data", "fsdp"))
"""Batch dimension split over the data-parallel devices (the tensor axis shares each slice)."""

LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("heads", "tensor"),      # n_heads * head_dim: whole query heads per device
    ("kv_heads", "tensor"),   # n_kv_heads * head_dim
    ("mlp", "tensor"),        # d_ff
    ("embed", "fsdp"),        # d_model
    ("norm", None),
    ("layers", None),         # the stacked layer axis of scanned layers: every device has all
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", "tensor"),  # the residual stream between blocks: sequence parallelism
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)
"""Logical axis -> mesh axes (MaxText's logical_axis_rules)."""

PARAM_AXES: dict[str, tuple[str, ...]] = {
    "embed": ("vocab", "embed"),
    "wq": ("embed", "heads"), "wk": ("embed", "kv_heads"), "wv": ("embed", "kv_heads"),
    "wo": ("heads", "embed"),
    "w_gate": ("embed", "mlp"), "w_up": ("embed", "mlp"), "w_down": ("mlp", "embed"),
    "lm_head": ("embed", "vocab"),
    "scale": ("norm",),
}
"""Logical axes of each parameter, by its leaf name in the Linen tree (model.py)."""


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


def make_mesh(data: int, fsdp: int, *, tensor: int = 1,
              devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: jax.devices(); abstract devices
    build a mesh for ahead-of-time compilation); data=-1 takes every device fsdp x tensor leave.
    Single-process runs may use the first data*fsdp*tensor devices; multi-process runs must use
    all of them."""
    devices = list(jax.devices() if devices is None else devices)
    total = len(devices)
    if tensor < 1 or tensor > total:
        raise ConfigError(f"backend.tensor_parallel={tensor} must be between 1 and the device "
                          f"count {total}")
    if fsdp < 1 or fsdp * tensor > total:
        raise ConfigError(f"backend.fsdp={fsdp} must be between 1 and the device count {total}"
                          + (f" / backend.tensor_parallel={tensor}" if tensor > 1 else ""))
    if data == -1:
        if total % (fsdp * tensor):
            raise ConfigError(f"backend.fsdp={fsdp}"
                              + (f" x backend.tensor_parallel={tensor}" if tensor > 1 else "")
                              + f" does not divide the device count {total}")
        data = total // (fsdp * tensor)
    used = data * fsdp * tensor
    if data < 1 or used > total:
        raise ConfigError(f"backend.data_parallel={data} x backend.fsdp={fsdp}"
                          + (f" x backend.tensor_parallel={tensor}" if tensor > 1 else "")
                          + f" must be between 1 and the device count {total} "
                            "(data_parallel=-1 uses them all)")
    if jax.process_count() > 1 and used != total:
        raise ConfigError(f"backend.data_parallel={data} x backend.fsdp={fsdp} x "
                          f"backend.tensor_parallel={tensor} = {used} must use all {total} "
                          "devices of a multi-process run")
    return Mesh(np.asarray(devices[:used]).reshape(data, fsdp, tensor), AXES)


def mesh_sizes(mesh: Mesh) -> dict[str, int]:
    """The mesh as every record names it: dp, fsdp and tp sizes."""
    return {"dp": mesh.shape["data"], "fsdp": mesh.shape["fsdp"], "tp": mesh.shape["tensor"]}


def _axes(entry: Any) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def logical_spec(shape: Sequence[int], logical: Sequence[str | None],
                 axis_sizes: Mapping[str, int]) -> P:
    """The PartitionSpec of an array of `shape` whose dimensions have the `logical` names, on a
    mesh of `axis_sizes`: LOGICAL_RULES' mesh axes, less those of size 1 and those that do not
    divide their dimension; "fsdp" dropped that way moves to the first other unsplit dimension
    it divides."""
    if len(shape) != len(logical):
        raise ValueError(f"shape {tuple(shape)} has {len(shape)} dims, logical axes {logical} "
                         f"{len(logical)}")
    resolved = nn.logical_to_mesh_axes(tuple(logical), LOGICAL_RULES)
    entries = []
    for size, entry in zip(shape, resolved):
        axes = tuple(a for a in _axes(entry) if axis_sizes.get(a, 1) > 1)
        entries.append(axes if size % math.prod(axis_sizes[a] for a in axes) == 0 else ())
    fsdp = axis_sizes.get("fsdp", 1)
    wants_fsdp = any("fsdp" in _axes(e) for e in resolved)
    if wants_fsdp and fsdp > 1 and not any("fsdp" in e for e in entries):
        for dim, size in enumerate(shape):
            if not entries[dim] and size % fsdp == 0:
                entries[dim] = ("fsdp",)
                break
    while entries and not entries[-1]:
        entries.pop()
    return P(*(None if not e else e[0] if len(e) == 1 else e for e in entries))


def _leaf_name(path: tuple[Any, ...]) -> str | None:
    last = path[-1] if path else None
    return getattr(last, "key", None)


def param_shardings(mesh: Mesh, tree: Any) -> Any:
    """NamedSharding for every leaf of a parameter (or optimizer-state) tree, by the leaf's name
    in PARAM_AXES (a leaf under the scanned `layers` module has a leading "layers" axis);
    leaves it does not name (step counts) are replicated."""
    from trainbench.backends.jax.model import SCANNED

    def sharding(path: tuple[Any, ...], leaf: Any) -> NamedSharding:
        logical = PARAM_AXES.get(_leaf_name(path))
        shape = np.shape(leaf)
        if logical is not None and any(getattr(k, "key", None) == SCANNED for k in path):
            logical = ("layers", *logical)
        if logical is None or len(logical) != len(shape):
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, logical_spec(shape, logical, mesh.shape))

    return jax.tree_util.tree_map_with_path(sharding, tree)


def constrain(x: jax.Array, logical: Sequence[str | None], mesh: Mesh | None) -> jax.Array:
    """x laid out by its logical axes on `mesh` (a sharding constraint); x itself without a
    mesh or on a one-device mesh, where there is nothing to lay out (XLA:CPU still copies at a
    constraint: 3.5% of a model=small step at seq 256 on 2 cores)."""
    if mesh is None or mesh.devices.size == 1:
        return x
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, logical_spec(x.shape, logical, mesh.shape)))


def put_batch(mesh: Mesh, tokens: np.ndarray) -> jax.Array:
    """The global batch [B, T] (the same on every process) as one array split over the batch."""
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if tokens.shape[0] % ways:
        raise ConfigError(f"train.batch_size={tokens.shape[0]} is not divisible by the "
                          f"{ways} data-parallel devices of the mesh")
    sharding = NamedSharding(mesh, BATCH)
    return jax.make_array_from_callback(tokens.shape, sharding, lambda index: tokens[index])
