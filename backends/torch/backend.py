"""The PyTorch backend: the shared model trained with torch.optim.AdamW, on CUDA or the CPU.

Each op runs PyTorch-native code or a Triton kernel, chosen per op by config (ops.py). Under
`torchrun` (WORLD_SIZE > 1) every data-parallel rank takes its contiguous slice of the global
batch and the model is wrapped in DDP or FSDP2 (`fully_shard`); with `tensor_parallel=N`, each
group of N consecutive ranks shares one slice and splits the model's matrices (parallel.py). The
loss reported is the global mean. This module imports PyTorch only inside methods: the CLI
imports every backend's config at start-up.

Reusing this backend (the Neuron backend does): subclass TorchBackend, override `torch_device`
(and `device`) to put the model on another torch.device, and register extra op choices with
`trainbench.backends.torch.ops.register(op, choice, impl)` before the config is built.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np

from trainbench import hardware, optim
from trainbench.backend import Availability, Backend, DeviceInfo
from trainbench.backends.torch import ops
from trainbench.config import BackendConfig, TrainConfig
from trainbench.errors import ConfigError
from trainbench.model import ModelConfig

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
PARALLEL = ("ddp", "fsdp")


@dataclass
class TorchConfig(BackendConfig):
    """`backend=torch`. Op fields take a choice registered in ops.OPS: native | triton."""

    name: str = "torch"
    device: str = "auto"
    """auto (CUDA when available, else the CPU) | cpu | cuda."""
    compile: bool = False
    """torch.compile each transformer block (torchtitan's per-block compile)."""
    parallel: str = "ddp"
    """Multi-process data parallelism under torchrun: ddp | fsdp (FSDP2 fully_shard; with
    precision=bf16, parameters gathered in bf16 and gradients reduced in float32)."""
    tensor_parallel: int = 1
    """Ranks that split each matrix (Megatron-style TP with sequence parallelism); the mesh is
    (processes / tensor_parallel) x tensor_parallel, the data axis FSDP when it is > 1."""
    rmsnorm: str = "native"
    """RMSNorm: native (PyTorch ops, float32 statistics) | triton."""
    rope: str = "native"
    """Rotary embedding: native | triton."""
    swiglu: str = "native"
    """silu(gate) * up: native | triton."""
    cross_entropy: str = "native"
    """LM head + cross-entropy: native (full logits) | triton (fused with the head matmul,
    chunked over rows: no [N, V] buffer is kept)."""
    attention: str = "native"
    """Causal GQA attention: native (scaled_dot_product_attention) | triton (flash attention)."""

    devices: ClassVar[tuple[str, ...]] = DEVICES
    """The `device` values this backend accepts (a subclass for another device widens it)."""

    def __post_init__(self) -> None:
        if self.device not in self.devices:
            raise ConfigError(f"backend.device={self.device!r} must be one of: "
                              + ", ".join(self.devices))
        if self.parallel not in PARALLEL:
            raise ConfigError(f"backend.parallel={self.parallel!r} must be one of: "
                              + ", ".join(PARALLEL))
        for op in ops.OPS:
            ops.check_choice(op, getattr(self, op))

    def op_choices(self) -> dict[str, str]:
        return {op: getattr(self, op) for op in ops.OPS}

    def mesh(self, world: int) -> dict[str, int]:
        """Sizes of the mesh axes over `world` ranks, as every record names them."""
        tp = self.tensor_parallel
        dp = world // tp
        if self.parallel == "fsdp":
            return {"dp": 1, "fsdp": dp, "tp": tp}
        return {"dp": dp, "fsdp": 1, "tp": tp}


def _world(environ: Mapping[str, str] = os.environ) -> int:
    """Processes of this launch (torchrun sets WORLD_SIZE)."""
    return int(environ.get("WORLD_SIZE", "1"))


def _torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


class TorchBackend(Backend):
    name = "torch"
    config_class = TorchConfig
    precisions = ("fp32", "bf16")

    @classmethod
    def availability(cls) -> Availability:
        if not _torch_installed():
            return Availability(False, "PyTorch is not installed (pip install 'trainbench[torch]')")
        import torch

        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            return Availability(True, f"PyTorch {torch.__version__} with CUDA",
                                devices=f"{count} x {torch.cuda.get_device_name(0)}")
        return Availability(True, f"PyTorch {torch.__version__} on the CPU (no CUDA device)",
                            devices="1 x cpu")

    @classmethod
    def preference(cls) -> int:
        """20 with CUDA (the fastest path on an NVIDIA GPU); 5 on the CPU, above reference (0)."""
        import torch

        return 20 if torch.cuda.is_available() else 5

    @classmethod
    def check_config(cls, backend_cfg: BackendConfig, model_cfg: ModelConfig,
                     train_cfg: TrainConfig) -> None:
        """Tensor parallelism against the model, the sequence and the torchrun process count."""
        from trainbench.backends.torch import parallel

        parallel.check_tensor_parallel(backend_cfg.tensor_parallel, model_cfg, train_cfg.seq_len,
                                       _world(), backend_cfg.parallel, backend_cfg.op_choices())

    @classmethod
    def versions(cls) -> dict[str, str]:
        if not _torch_installed():
            return {}
        import torch

        out = {"torch": torch.__version__}
        if importlib.util.find_spec("triton") is not None:
            from importlib import metadata

            out["triton"] = metadata.version("triton")
        if torch.version.cuda:
            out["cuda"] = torch.version.cuda
        return out

    # --- process group and device --------------------------------------------------------------

    def _init_runtime(self) -> None:
        """Join the process group (once) and pick this rank's device."""
        if hasattr(self, "rank"):
            return
        import torch
        import torch.distributed as dist

        self._set_ranks()
        self.torch_dev = self.torch_device()
        on_cuda = self.torch_dev.type == "cuda"
        if on_cuda:
            torch.cuda.set_device(self.torch_dev)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if on_cuda else "gloo",
                                    device_id=self.torch_dev if on_cuda else None)
            atexit.register(_leave_process_group)

    def _set_ranks(self) -> None:
        """This process's place in the launch (torchrun's variables) and in the (dp_shard, tp)
        mesh, tp innermost."""
        self.world = _world()
        self.rank = int(os.environ.get("RANK", "0"))
        self.tp = self.backend_cfg.tensor_parallel
        self.dp_rank = self.rank // self.tp

    def torch_device(self) -> torch.device:
        """This rank's torch.device: cuda:LOCAL_RANK, or the CPU (backend.device)."""
        import torch

        choice = self.backend_cfg.device
        if choice == "auto":
            choice = "cuda" if torch.cuda.is_available() else "cpu"
        if choice == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError("backend.device=cuda but PyTorch sees no CUDA device")
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")

    def device(self) -> DeviceInfo:
        import torch

        self._init_runtime()
        extra: dict[str, Any] = {"parallel": self.backend_cfg.parallel} if self.world > 1 else {}
        extra["mesh"] = self.backend_cfg.mesh(self.world)
        if self.torch_dev.type == "cuda":
            return DeviceInfo(torch.cuda.get_device_name(self.torch_dev), "gpu", self.world, extra)
        return DeviceInfo(hardware.cpu_name(), "cpu", self.world, extra)

    # --- build ---------------------------------------------------------------------------------

    def _check_triton(self, choices: Mapping[str, str]) -> None:
        triton_ops = [op for op, choice in choices.items() if choice == "triton"]
        if (triton_ops and self.torch_dev.type == "cpu"
                and os.environ.get("TRITON_INTERPRET") != "1"):
            raise ConfigError(f"backend.{triton_ops[0]}=triton on the CPU needs TRITON_INTERPRET=1 "
                              "set before Triton is imported (Triton compiles only for GPUs)")

    def setup(self, params: Mapping[str, np.ndarray]) -> None:
        import torch

        from trainbench.backends.torch import model as model_lib
        from trainbench.backends.torch import parallel

        self._init_runtime()
        cfg = self.backend_cfg
        choices = cfg.op_choices()
        self._check_triton(choices)
        with torch.device(self.torch_dev):  # parameters are allocated on the device
            model = model_lib.Transformer(self.model_cfg, ops.resolve(choices))
        self.model = model.to(self.torch_dev)  # and so are the rotary tables (from NumPy)
        model_lib.load_canonical(self.model, params)
        self.autocast_dtype = (torch.bfloat16 if self.precision.compute_dtype == "bfloat16"
                               else None)
        # torchtitan's order: tensor parallelism, then compile each block, then wrap for data
        # parallelism (FSDP2 shards the TP-sharded DTensors further over the data axis)
        self.mesh = None
        if self.tp > 1:
            self.mesh = parallel.make_mesh(self.torch_dev.type, self.world, self.tp)
            parallel.apply_tp(self.model, self.mesh["tp"])
        if cfg.compile:
            for block in self.model.layers:
                block.compile()
        self.train_model = self._wrap(self.model)
        o = self.optim
        named = dict(self.model.named_parameters())  # after wrapping: FSDP swaps in DTensors
        decay = optim.decay_mask(named)
        groups = [{"params": [p for n, p in named.items() if decay[n]],
                   "weight_decay": o.weight_decay},
                  {"params": [p for n, p in named.items() if not decay[n]], "weight_decay": 0.0}]
        on_cuda = self.torch_dev.type == "cuda"
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=o.lr,
                                           betas=(o.b1, o.b2), eps=o.eps,
                                           fused=on_cuda, foreach=not on_cuda)

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP or FSDP2 around the model over the data axis when it has several ranks (the TP
        group's ranks already share the batch slice); the model itself if not."""
        if self.world == self.tp:
            return model
        if self.backend_cfg.parallel == "ddp":  # check_config allows it only without TP
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.torch_dev.index] if self.torch_dev.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=ids)
        from torch.distributed.device_mesh import init_device_mesh

        from trainbench.backends.torch import parallel

        dp_mesh = (self.mesh["dp_shard"] if self.mesh is not None
                   else init_device_mesh(self.torch_dev.type, (self.world,)))
        parallel.apply_fsdp(model, dp_mesh, self.autocast_dtype)
        return model

    # --- steps ---------------------------------------------------------------------------------

    def _local_tokens(self, tokens: np.ndarray) -> torch.Tensor:
        """This rank's contiguous slice of the global batch, as int64 on the device."""
        import torch

        B, dp = tokens.shape[0], self.world // self.tp
        if B % dp:
            raise ConfigError(f"train.batch_size={B} is not divisible by the {dp} data-parallel "
                              "ranks")
        per_rank = B // dp
        local = np.asarray(tokens[self.dp_rank * per_rank:(self.dp_rank + 1) * per_rank],
                           dtype=np.int64)
        return torch.from_numpy(local).to(self.torch_dev, non_blocking=True)

    def _forward_backward(self, tokens: np.ndarray) -> torch.Tensor:
        """Loss of this rank's slice (detached) after its backward; gradients are then those of
        the global mean, since DDP and FSDP average them over ranks."""
        import torch

        local = self._local_tokens(tokens)
        self.optimizer.zero_grad(set_to_none=True)
        # vocab-parallel cross-entropy on the vocab-split logits, forward and backward
        with self._loss_parallel():
            with torch.autocast(self.torch_dev.type, dtype=self.autocast_dtype,
                                enabled=self.autocast_dtype is not None):
                loss = self.train_model(local)
            loss.backward()
        loss = loss.detach()
        # a replicated DTensor under TP: every rank of the TP group holds the whole loss
        return loss.to_local() if hasattr(loss, "to_local") else loss

    def _loss_parallel(self) -> contextlib.AbstractContextManager:
        if self.tp == 1:
            return contextlib.nullcontext()
        from torch.distributed.tensor.parallel import loss_parallel

        return loss_parallel()

    def _global_mean(self, loss: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        # ranks hold equal slices (the ranks of a TP group the same one), so the mean of means
        # is the global mean
        if self.world > 1:
            dist.all_reduce(loss)  # SUM: gloo has no AVG
            loss = loss / self.world
        return loss

    def train_step(self, step: int, tokens: np.ndarray) -> torch.Tensor:
        o = self.optim
        lr = optim.lr_at(step, o.lr, o.warmup_steps, self.total_steps, o.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self._forward_backward(tokens)
        if o.grad_clip > 0:
            clip_by_global_norm_(list(self.model.parameters()), o.grad_clip)
        self.optimizer.step()
        return self._global_mean(loss)

    def loss(self, handle: torch.Tensor) -> float:
        return float(handle.item())

    def synchronize(self) -> None:
        import torch

        if self.torch_dev.type == "cuda":
            torch.cuda.synchronize(self.torch_dev)

    def loss_and_grads(self, tokens: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        from trainbench.backends.torch import model as model_lib

        loss = self._global_mean(self._forward_backward(tokens))
        grads = model_lib.export_canonical(self.model, grads=True)
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.item()), grads

    def export_params(self) -> dict[str, np.ndarray]:
        from trainbench.backends.torch import model as model_lib

        return model_lib.export_canonical(self.model)

    def is_primary(self) -> bool:
        return getattr(self, "rank", 0) == 0

    def matmul_peak(self, dtype: str) -> hardware.PeakInfo:
        """MAMF: the best FLOP/s of n x n torch.matmul on this rank's device in `dtype`."""
        import torch

        self._init_runtime()
        on_cuda = self.torch_dev.type == "cuda"
        probe = hardware.ACCELERATOR_PROBE if on_cuda else hardware.CPU_PROBE
        n = probe.n
        torch_dtype = getattr(torch, dtype)
        a = torch.randn(n, n, device=self.torch_dev).to(torch_dtype)
        b = torch.randn(n, n, device=self.torch_dev).to(torch_dtype)
        out = torch.empty_like(a)

        def product() -> None:
            torch.matmul(a, b, out=out)
            self.synchronize()

        return hardware.measured_peak(product, probe, dtype, f"torch {torch.__version__} matmul",
                                      f"torch.matmul on {self.torch_dev.type}")

    def peak_memory(self) -> tuple[int | None, str]:
        import torch

        if self.torch_dev.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.torch_dev),
                    "torch.cuda.max_memory_allocated on rank 0's GPU (tensors only, not the "
                    "allocator's cache)")
        return None, ("torch keeps no allocator statistics on the CPU (the run's host RSS "
                      "growth is measured by trainbench.memory)")


def clip_by_global_norm_(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale gradients in place by max_norm / norm when their global norm is >= max_norm, Optax's
    formula (trainbench.optim.clip_by_global_norm) without clip_grad_norm_'s +1e-6; no host sync.
    Returns the norm before clipping. FSDP-sharded gradients give the norm over all shards."""
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if hasattr(norm, "full_tensor"):  # DTensor from sharded gradients: sum the shards' squares
        norm = norm.full_tensor()
    scale = torch.clamp(max_norm / norm, max=1.0)  # exactly 1 (no change) when norm < max_norm
    torch._foreach_mul_(grads, scale)
    return norm


def _leave_process_group() -> None:
    """At exit: wait for every rank, then destroy the process group. Destroying it while another
    rank is still writing its last messages can abort a gloo rank in its threads after the work
    is done ("terminate called without an active exception")."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    try:
        dist.barrier()
    except Exception:  # a rank that died: torchrun reports it; nothing is left to wait for
        pass
    dist.destroy_process_group()
