"""The JAX/XLA backend: trainbench's model in Flax Linen, trained by one jit-compiled step.

Importing this module is cheap: JAX, Flax and Optax are imported inside the methods that need
them (the CLI imports every backend's config class at start-up). The step is compiled ahead of
time on the first batch (its compile time is kept apart), with the parameter and optimizer-state
buffers donated, so XLA updates them in place.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Mapping

import numpy as np

from trainbench import flops, hardware
from trainbench.backend import Availability, Backend, DeviceInfo
from trainbench.config import BackendConfig, TrainConfig
from trainbench.errors import ConfigError
from trainbench.model import ModelConfig, check_tensor_parallel

_PACKAGES = ("jax", "jaxlib", "flax", "optax")
_PLATFORM_KIND = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}


@dataclass
class JaxConfig(BackendConfig):
    name: str = "jax"
    attention: str = "xla"
    """xla (trainbench's blocked causal attention) | jax (jax.nn.dot_product_attention, as a
    plain JAX loop calls it) | cudnn (NVIDIA GPUs, bf16) | pallas (trainbench's TPU kernel) |
    splash (JAX's splash attention, TPU); the TPU kernels are interpreted on the CPU."""
    remat: bool = False
    """Recompute each block in the backward pass instead of storing its activations."""
    scan_layers: bool = False
    """Run the layers as one scanned module (MaxText's scan_layers): XLA compiles one block
    body instead of n_layers copies (minutes instead of hours for 70B and 405B compiles), and
    the step cannot fuse across layers. The same numbers either way (fp32 tolerance)."""
    data_parallel: int = -1
    """Size of the mesh's data axis; -1 takes every device the fsdp axis leaves."""
    fsdp: int = 1
    """Size of the mesh's fsdp axis: devices that share one copy of the weights."""
    tensor_parallel: int = 1
    """Size of the mesh's tensor axis: devices that split each matrix (heads, MLP width,
    vocabulary) and share one slice of the batch; activations sequence-split between blocks."""
    flash_block_size: int = 128
    """Query and key block of the Pallas kernel (128 fills a TPU lane)."""
    distributed: str = "auto"
    """jax.distributed.initialize: auto (multi-task SLURM, or GKE TPU hosts) | on | off; on a
    multi-host Cloud TPU VM slice, which sets neither, pass on."""


def describe_device(platform: str, device_kind: str) -> tuple[str, str, str | None]:
    """trainbench's kind (cpu | gpu | tpu), the device name for the record, and the hardware
    table entry that name maps to (None on the CPU, whose peak is measured, or if unknown)."""
    kind = _PLATFORM_KIND.get(platform, platform)
    if kind == "cpu":
        return kind, hardware.cpu_name(), None
    entry = hardware.lookup(device_kind)
    return kind, device_kind, entry.name if entry else None


def _to_numpy(tree: Any) -> Any:
    """Host copies of a (possibly sharded, possibly multi-process) array tree."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


class JaxBackend(Backend):
    name = "jax"
    config_class = JaxConfig
    precisions = ("fp32", "bf16")

    @classmethod
    def availability(cls) -> Availability:
        # find_spec only: importing JAX here would grab the accelerator in the parent process
        missing = [p for p in ("jax", "flax", "optax") if importlib.util.find_spec(p) is None]
        if missing:
            return Availability(False, "not installed: " + ", ".join(missing)
                                + " (pip install 'trainbench[jax]')")
        return Availability(True, "JAX, Flax and Optax are installed",
                            devices="the devices of JAX's default platform")

    @classmethod
    def preference(cls) -> int:
        """Above the NumPy reference: XLA compiles the step for whatever device is here."""
        return 10

    @classmethod
    def check_config(cls, backend_cfg: BackendConfig, model_cfg: ModelConfig,
                     train_cfg: TrainConfig) -> None:
        """The tensor axis against the model's heads, MLP width and vocabulary (the mesh against
        the device count is checked when JAX has started: make_mesh)."""
        check_tensor_parallel(model_cfg, backend_cfg.tensor_parallel)

    @classmethod
    def versions(cls) -> dict[str, str]:
        found = {}
        for package in _PACKAGES:
            try:
                found[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                continue
        return found

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mesh: Any = None
        """The (data, fsdp, tensor) jax.sharding.Mesh, once JAX has started (_start)."""
        self._compiled: Any = None
        """The AOT-compiled train step, after the first step."""
        self.compile_s: float | None = None

    # --- devices -----------------------------------------------------------------------------

    def _start(self) -> None:
        """Multi-host start (once), then the mesh; every JAX call comes after this."""
        if self.mesh is not None:
            return
        import jax

        from trainbench.backends.jax import mesh, platforms

        c = self.backend_cfg
        platforms.configure()
        mesh.initialize_distributed(c.distributed)
        self.mesh = mesh.make_mesh(c.data_parallel, c.fsdp, tensor=c.tensor_parallel)
        first = self.mesh.devices.flat[0]
        self.device_kind = first.device_kind
        self.platform, self.device_name, self.hardware_entry = describe_device(
            first.platform, first.device_kind)
        self.process_index = jax.process_index()

    def device(self) -> DeviceInfo:
        from trainbench.backends.jax import mesh

        self._start()
        c = self.backend_cfg
        return DeviceInfo(name=self.device_name, kind=self.platform,
                          count=int(self.mesh.devices.size),
                          extra={"device_kind": self.device_kind,
                                 "hardware_entry": self.hardware_entry,
                                 "mesh": mesh.mesh_sizes(self.mesh),
                                 "attention": c.attention, "remat": c.remat,
                                 "scan_layers": c.scan_layers})

    def is_primary(self) -> bool:
        self._start()
        return self.process_index == 0

    # --- model and steps ---------------------------------------------------------------------

    def setup(self, params: Mapping[str, np.ndarray]) -> None:
        self._start()
        import jax
        import jax.numpy as jnp
        from jax.sharding import NamedSharding, PartitionSpec

        from trainbench.backends.jax import attention, mesh, model, step

        if self.precision.param_dtype != "float32":
            raise ConfigError(f"precision.param_dtype={self.precision.param_dtype!r}: the jax "
                              "backend keeps float32 master weights")
        c = self.backend_cfg
        compute = jnp.dtype(self.precision.compute_dtype)
        attend = attention.select(c.attention, self.platform, compute, self.device_kind,
                                  c.flash_block_size, self.mesh)
        self.model = model.Transformer(self.model_cfg, compute, attend, c.remat, self.mesh,
                                       c.scan_layers)
        self.tx = step.make_optimizer(self.optim, self.total_steps, params, c.scan_layers)

        tree = model.to_tree({k: np.asarray(v, np.float32) for k, v in params.items()},
                             c.scan_layers)
        self.param_sharding = mesh.param_shardings(self.mesh, tree)
        self.params = jax.device_put(tree, self.param_sharding)
        opt_shape = jax.eval_shape(self.tx.init, self.params)
        opt_sharding = mesh.param_shardings(self.mesh, opt_shape)
        self.opt_state = jax.jit(self.tx.init, out_shardings=opt_sharding)(self.params)
        batch = NamedSharding(self.mesh, mesh.BATCH)
        scalar = NamedSharding(self.mesh, PartitionSpec())
        self._step_fn = step.jit_train_step(self.model, self.tx, self.mesh, self.param_sharding,
                                            opt_sharding)
        self._grad_fn = jax.jit(jax.value_and_grad(step.loss_fn(self.model)),
                                in_shardings=(self.param_sharding, batch),
                                out_shardings=(scalar, self.param_sharding))
        self._compiled = None
        self._updates = 0

    def _put(self, tokens: np.ndarray) -> Any:
        from trainbench.backends.jax import mesh

        return mesh.put_batch(self.mesh, np.asarray(tokens, np.int32))

    def train_step(self, step: int, tokens: np.ndarray) -> Any:
        if step != self._updates:
            raise ValueError(f"train_step(step={step}) after {self._updates} updates: the Optax "
                             "schedule counts updates, so steps must run in order from 0")
        batch = self._put(tokens)
        if self._compiled is None:
            start = time.perf_counter()
            self._compiled = self._step_fn.lower(self.params, self.opt_state, batch).compile()
            self.compile_s = time.perf_counter() - start
        self.params, self.opt_state, loss = self._compiled(self.params, self.opt_state, batch)
        self._updates += 1
        return loss

    def loss(self, handle: Any) -> float:
        return float(handle)

    def synchronize(self) -> None:
        import jax

        jax.block_until_ready((self.params, self.opt_state))

    def loss_and_grads(self, tokens: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        from trainbench.backends.jax import model

        loss, grads = self._grad_fn(self.params, self._put(tokens))
        return float(loss), model.to_canonical(self.model_cfg, _to_numpy(grads),
                                               self.backend_cfg.scan_layers)

    def export_params(self) -> dict[str, np.ndarray]:
        from trainbench.backends.jax import model

        return model.to_canonical(self.model_cfg, _to_numpy(self.params),
                                  self.backend_cfg.scan_layers)

    # --- measurements ------------------------------------------------------------------------

    def recompute_flops(self, batch: int, seq_len: int, attention: str) -> int:
        """Matmul FLOPs remat adds per step: one more forward of every block (not the LM head).
        Model FLOPs + these = hardware FLOPs, for HFU; 0 without remat."""
        if not self.backend_cfg.remat:
            return 0
        forward = flops.flops_breakdown(self.model_cfg, batch, seq_len, attention)
        return forward["attn_proj"] + forward["mlp"] + forward["attn_scores"]

    def matmul_peak(self, dtype: str) -> hardware.PeakInfo:
        """MAMF: the best FLOP/s of a jitted n x n jnp.matmul on one of this run's devices."""
        self._start()
        import jax
        import jax.numpy as jnp

        probe = hardware.CPU_PROBE if self.platform == "cpu" else hardware.ACCELERATOR_PROBE
        n = probe.n
        device = self.mesh.devices.flat[0]
        key_a, key_b = jax.random.split(jax.random.key(0))
        a = jax.device_put(jax.random.normal(key_a, (n, n), dtype), device)
        b = jax.device_put(jax.random.normal(key_b, (n, n), dtype), device)
        matmul = jax.jit(jnp.matmul)
        return hardware.measured_peak(lambda: matmul(a, b).block_until_ready(), probe, dtype,
                                      f"jax {jax.__version__} jnp.matmul",
                                      f"jitted jnp.matmul on {device.device_kind}")

    def _memory_analysis(self) -> dict[str, int] | None:
        """XLA's buffer plan of the compiled step on one device; None before the first step."""
        analysis = self._compiled.memory_analysis() if self._compiled is not None else None
        if analysis is None:
            return None
        fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                  "temp_size_in_bytes", "generated_code_size_in_bytes")
        return {f: int(getattr(analysis, f)) for f in fields}

    def record_extra(self) -> dict[str, Any]:
        """Facts known after the run: compile time, XLA's cost analysis and memory analysis of
        the compiled step (per device: XLA analyses the partitioned program of one device)."""
        cost = self._compiled.cost_analysis() if self._compiled is not None else None
        return {
            "compile_s": self.compile_s,
            "xla_cost_flops_per_device":
                float(cost["flops"]) if cost and "flops" in cost else None,
            "xla_cost_note": "XLA HloCostAnalysis of the compiled train step of one device (x "
                             "device count for the step): counts every element-wise op, the "
                             "optimizer and the masked half of causal attention, so it exceeds "
                             "the model FLOPs",
            "xla_memory_analysis": self._memory_analysis(),
        }

    def peak_memory(self) -> tuple[int | None, str]:
        stats = self.mesh.devices.flat[0].memory_stats() if self.mesh is not None else None
        if stats and "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "device allocator peak_bytes_in_use (device 0)"
        m = self._memory_analysis()
        if m is None:
            return None, "no device memory stats and no compiled step to analyse"
        planned = (m["argument_size_in_bytes"] + m["output_size_in_bytes"]
                   - m["alias_size_in_bytes"] + m["temp_size_in_bytes"])
        return planned, ("XLA memory analysis of the compiled step, per device: arguments + "
                         "outputs - donated aliases + temporaries (this platform has no "
                         "allocator stats)")
