"""Ahead-of-time compiles of the run's train step for devices that need not be here.

`trainbench compile` (trainbench.compile) asks this module for the compiler's view of the exact
step a run executes: the same Transformer, attention choice, remat, precision, Optax optimizer,
(data, fsdp) mesh and shardings, through the same step.jit_train_step, but lowered over abstract
inputs (jax.ShapeDtypeStruct with NamedSharding; the optimizer state by jax.eval_shape), so no
weight is ever materialized and a 70B model compiles on a laptop. For a TPU topology the devices
are libtpu's abstract devices (jax.experimental.topologies), and XLA:TPU compiles for them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from trainbench.config import RunConfig
from trainbench.errors import ConfigError
from trainbench.model import param_shapes


@dataclass
class Compiled:
    """What the compiler said about one step; per device, as XLA analyses the partitioned program."""

    device_kind: str
    platform: str
    mesh: dict[str, int]
    memory: dict[str, int] | None
    """CompiledMemoryStats fields (trainbench.compile.MEMORY_FIELDS); None if refused for memory."""
    oom_message: str | None
    """XLA's RESOURCE_EXHAUSTED message when the program does not fit, else None."""
    cost: dict[str, float] = field(default_factory=dict)
    hlo_text: str = ""
    lower_s: float = 0.0
    compile_s: float = 0.0


QUIET_LIBTPU_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_ID": "0",
                    "TPU_WORKER_HOSTNAMES": "localhost", "TPU_HOST_BOUNDS": "1,1,1"}
"""libtpu's description of this host when no chip is attached: one worker, no metadata."""


class CompileFailed(Exception):
    """Lowering or compiling the step failed for another reason than memory (message: the
    compiler's, e.g. XLA's or Mosaic's)."""


def target_devices(topology: str | None) -> list[Any]:
    """libtpu's abstract devices of a TPU topology (e.g. v5e:2x2), or this machine's devices
    (None); ConfigError naming the topology when libtpu does not know it."""
    import jax

    from trainbench.backends.jax import platforms

    platforms.configure()
    if topology is None:
        return list(jax.devices())
    if platforms.attached_tpu_chips() == 0:
        # libtpu takes /tmp/libtpu_lockfile so that one process owns the chips; a compile for
        # chips that are not here owns none, and parallel compiles (test workers) must coexist
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    # this host is no TPU worker: say so, or libtpu asks the (absent) GCE metadata server and
    # prints its failures ("could not determine TPU accelerator type", "unexpected worker
    # hostname") to every user. Only while libtpu starts: the process's children (a sweep's
    # runs) must not inherit a TPU worker's description.
    added = ({} if platforms.attached_tpu_chips() else
             {k: v for k, v in QUIET_LIBTPU_ENV.items() if k not in os.environ})
    os.environ.update(added)
    try:
        return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
    except Exception as err:  # JaxRuntimeError INVALID_ARGUMENT from libtpu
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"target=tpu:{topology}: libtpu cannot build this topology: "
                          f"{reason}") from None
    finally:
        for name in added:
            os.environ.pop(name, None)


def devices_per_chip(devices: Sequence[Any]) -> int:
    """Devices one chip shows in this device list (2 for TPU7x and a v4 without megacore);
    devices without chip coordinates (CPU, GPU) count as one chip each."""
    chips = {tuple(d.coords) for d in devices if getattr(d, "coords", None) is not None}
    return len(devices) // len(chips) if chips else 1


def _abstract(tree: Any, shardings: Any) -> Any:
    import jax

    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def compile_step(cfg: RunConfig, devices: Sequence[Any], batch_size: int) -> Compiled:
    """Build the run's jitted step over abstract inputs of a global batch `batch_size` x
    cfg.train.seq_len on a mesh over `devices`, and compile it. ConfigError for a config the
    run would refuse; CompileFailed for a compiler error other than running out of memory."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding

    from trainbench.backends.jax import attention, mesh, model, step

    if cfg.precision.param_dtype != "float32":
        raise ConfigError(f"precision.param_dtype={cfg.precision.param_dtype!r}: the jax "
                          "backend keeps float32 master weights")
    c = cfg.backend
    from trainbench.backends.jax.backend import JaxBackend

    JaxBackend.check_config(c, cfg.model, cfg.train)  # what a run refuses before any work
    grid = mesh.make_mesh(c.data_parallel, c.fsdp, tensor=c.tensor_parallel, devices=devices)
    batch_shards = grid.shape["data"] * grid.shape["fsdp"]  # tensor-parallel devices share rows
    if batch_size % batch_shards:
        raise ConfigError(f"train.batch_size={batch_size} is not divisible by the "
                          f"{batch_shards} data-parallel devices of the mesh")
    first = grid.devices.flat[0]
    compute = jnp.dtype(cfg.precision.compute_dtype)
    attend = attention.select(c.attention, first.platform, compute, first.device_kind,
                              c.flash_block_size, grid)
    net = model.Transformer(cfg.model, compute, attend, c.remat, grid, c.scan_layers)
    shapes = {name: jax.ShapeDtypeStruct(shape, jnp.float32)
              for name, shape in param_shapes(cfg.model).items()}
    tx = step.make_optimizer(cfg.optim, cfg.train.warmup_steps + cfg.train.steps, shapes,
                             c.scan_layers)
    params = model.to_tree(shapes, c.scan_layers)
    param_sharding = mesh.param_shardings(grid, params)
    opt_state = jax.eval_shape(tx.init, params)
    opt_sharding = mesh.param_shardings(grid, opt_state)
    fn = step.jit_train_step(net, tx, grid, param_sharding, opt_sharding)
    tokens = jax.ShapeDtypeStruct((batch_size, cfg.train.seq_len), jnp.int32,
                                  sharding=NamedSharding(grid, mesh.BATCH))

    start = time.perf_counter()
    try:
        # Pallas's TPU lowering reads the chip from the abstract mesh in context (else from
        # the default device, the CPU here)
        with jax.sharding.use_abstract_mesh(grid.abstract_mesh):
            lowered = fn.lower(_abstract(params, param_sharding),
                               _abstract(opt_state, opt_sharding), tokens)
    except ConfigError:
        raise
    except Exception as err:  # e.g. a Pallas block shape Mosaic's tiling rules reject
        raise CompileFailed(" ".join(str(err).split()) or type(err).__name__) from None
    lower_s = time.perf_counter() - start
    out = Compiled(first.device_kind, first.platform, mesh.mesh_sizes(grid),
                   None, None, lower_s=lower_s)
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as err:  # XLA reports both memory and other failures as runtime errors
        out.compile_s = time.perf_counter() - start
        message = " ".join(str(err).split())
        if "RESOURCE_EXHAUSTED" not in message:
            raise CompileFailed(message or type(err).__name__) from None
        out.oom_message = message
        return out
    out.compile_s = time.perf_counter() - start
    stats = compiled.memory_analysis()
    if stats is not None:
        from trainbench.compile import MEMORY_FIELDS

        out.memory = {f: int(getattr(stats, f)) for f in MEMORY_FIELDS.values()}
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out.cost = {k: float(v) for k, v in (cost or {}).items()
                if k in ("flops", "bytes accessed", "transcendentals")}
    out.hlo_text = compiled.as_text()
    return out
