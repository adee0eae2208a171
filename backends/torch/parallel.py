"""Tensor parallelism (Megatron-style, with sequence parallelism) and FSDP2 for the torch model.

Applied in torchtitan's order by the backend: `apply_tp`, then torch.compile per block, then
`apply_fsdp`. The 2-D mesh is ("dp_shard", "tp"), tp innermost, so a TP group is a run of
consecutive ranks (one node, where the bandwidth is). Under TP:

- the residual stream between blocks is split over the sequence (Shard(1), a local
  [B, T/tp, d] tensor); the norms run on that split (SequenceParallel, gains replicated);
- each norm's output is all-gathered over the sequence once, then wq/wk/wv and w_gate/w_up are
  column-parallel (each rank holds n_heads/tp query heads, n_kv_heads/tp kv heads, d_ff/tp of the
  MLP: local tensors, so rope, swiglu and attention see only their shard) and wo/w_down are
  row-parallel, their partial sums reduce-scattered back onto the sequence split;
- the embedding and the LM head are split over the vocabulary, and the loss is computed on the
  vocabulary-split logits by `loss_parallel` (no rank holds all [N, V] logits).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainbench.errors import ConfigError
from trainbench.model import ModelConfig
from trainbench.model import check_tensor_parallel as check_tensor_parallel_dims

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.distributed.device_mesh import DeviceMesh

MESH_DIMS = ("dp_shard", "tp")

TP_OPS = {"rmsnorm": False, "cross_entropy": False, "rope": True, "swiglu": True,
          "attention": True}
"""Whether a kernel (any choice but native: Triton, NKI) of the op can run under TP: rope,
swiglu and attention receive local shards (plain tensors); the sequence-parallel norms and the
vocab-parallel loss receive DTensors, which a kernel cannot take."""


def check_tensor_parallel(tp: int, cfg: ModelConfig, seq_len: int, world: int, parallel: str,
                          ops: dict[str, str]) -> None:
    """Raise ConfigError, naming the numbers, for a TP size the model, batch shape, process count
    or op choices cannot take."""
    check_tensor_parallel_dims(cfg, tp)
    if tp == 1:
        return
    if seq_len % tp:
        raise ConfigError(f"backend.tensor_parallel={tp} does not divide train.seq_len={seq_len} "
                          "(sequence parallelism splits the sequence between blocks)")
    if world % tp:
        raise ConfigError(f"backend.tensor_parallel={tp} does not divide the {world} processes "
                          f"of this launch: the mesh dp_shard x tp must multiply to {world} "
                          f"(torchrun --nproc_per_node, a multiple of {tp})")
    if world > tp and parallel != "fsdp":
        raise ConfigError(f"backend.parallel={parallel} cannot be combined with "
                          f"backend.tensor_parallel={tp} over {world} processes: the data axis "
                          "of a 2-D mesh is FSDP (backend.parallel=fsdp)")
    for op, choice in ops.items():
        if choice != "native" and not TP_OPS.get(op, False):
            raise ConfigError(f"backend.{op}={choice} cannot run under backend.tensor_parallel="
                              f"{tp}: the {op} kernel would receive a sharded DTensor; use "
                              f"backend.{op}=native")


def make_mesh(device_type: str, world: int, tp: int) -> DeviceMesh:
    """The ("dp_shard", "tp") mesh over all `world` ranks."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (world // tp, tp), mesh_dim_names=MESH_DIMS)


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Shard `model` (trainbench.backends.torch.model.Transformer) in place over `tp_mesh`."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleOutput,
                                                   RowwiseParallel, SequenceParallel)

    def norm_then_gather(name: str) -> dict[str, object]:
        # the norm on the sequence split, then its output all-gathered once for the projections
        # that read it (a module may take several styles: their hooks run in this order)
        return {name: [SequenceParallel(),
                       PrepareModuleOutput(output_layouts=Shard(1),
                                           desired_output_layouts=Replicate(),
                                           use_local_output=False)]}

    # the token lookup: vocab-split table, partial rows reduce-scattered onto the sequence split
    plan = {"embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))}
    if model.lm_head is not None:  # never called as a module (head_weight()): this only splits
        plan["lm_head"] = ColwiseParallel()  # its [V, d] weight over the vocabulary, Shard(0)
    plan.update(norm_then_gather("final_norm"))
    _parallelize(model, tp_mesh, plan)
    # That reduce-scatter is asynchronous: its output is an AsyncCollectiveTensor, a tensor
    # subclass. A torch.compile'd first block cannot take one: its backward hands the
    # embedding's redistribute a plain gradient where a DTensor belongs (torch 2.13: "'Tensor'
    # object has no attribute '_local_tensor'"). A copy waits for it and passes a plain tensor;
    # registered after the plan's own hooks, so it runs after them, on their output.
    model.embed.register_forward_hook(_wait_for_collective)
    for block in model.layers:
        layer_plan: dict[str, object] = {
            "wq": ColwiseParallel(), "wk": ColwiseParallel(), "wv": ColwiseParallel(),
            "wo": RowwiseParallel(output_layouts=Shard(1)),
            "w_gate": ColwiseParallel(), "w_up": ColwiseParallel(),
            "w_down": RowwiseParallel(output_layouts=Shard(1)),
        }
        layer_plan.update(norm_then_gather("attn_norm"))
        layer_plan.update(norm_then_gather("mlp_norm"))
        _parallelize(block, tp_mesh, layer_plan)


def _wait_for_collective(module: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
    """A forward hook: the module's output as a plain tensor (a copy, which waits for a pending
    collective), where it is a tensor subclass such as AsyncCollectiveTensor."""
    import torch

    return out if type(out) is torch.Tensor else out.clone()


def _parallelize(module: nn.Module, mesh: DeviceMesh, plan: dict[str, object]) -> None:
    """parallelize_module with a plan whose values may be lists of styles, applied in order."""
    from torch.distributed.tensor.parallel import parallelize_module

    for name, styles in plan.items():
        for style in styles if isinstance(styles, list) else [styles]:
            parallelize_module(module, mesh, {name: style})


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, param_dtype: torch.dtype | None) -> None:
    """FSDP2 over `dp_mesh`: one all-gather per block, freed after its forward; the embedding,
    final norm and LM head as the root group. With `param_dtype` (bf16), parameters are gathered
    and computed in it and gradients reduce-scattered in float32 (torchtitan's policy)."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, mesh=dp_mesh, mp_policy=policy)
    fully_shard(model, mesh=dp_mesh, mp_policy=policy)
