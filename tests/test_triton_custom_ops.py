"""The Triton kernels as torch custom ops (trainbench::*) under torch.compile, on the CPU.

Each check runs in a fresh process (this file as a script, `python tests/test_triton_custom_ops.py
MODE`), because TRITON_INTERPRET must be decided before triton is first imported:
  - interpret (TRITON_INTERPRET=1): the whole model with every op on Triton, compiled with
    fullgraph=True (a graph break raises) by the "aot_eager" backend, gives the same loss and
    gradients as eager. In the interpreter the ops are torch.library.custom_op, opaque to the
    compiler, since interpreted kernels cannot be traced with fake tensors.
  - trace (no interpreter, no GPU): the compiled-Triton ops are torch.library.triton_op, so the
    compiler traces through them to the kernels themselves. The model is traced with
    fullgraph=True and its joint forward+backward graph must launch every kernel of every op
    directly (triton_kernel_wrapper nodes), with no trainbench op left opaque. Running that graph
    needs a GPU; the trace does not.
  - opcheck (TRITON_INTERPRET=1): torch.library.opcheck on every op (schema, fake
    implementation against the real one, autograd registration, AOT dispatch).
  - inductor (TRITON_INTERPRET=1, slow): backend.compile=true with every op on Triton trains
    like eager (Inductor's C++ backend, the custom ops called from its code).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

OPS = ("rmsnorm", "rope", "swiglu", "cross_entropy", "attention")
KERNELS = {"_rmsnorm_fwd", "_rmsnorm_bwd", "_rope", "_swiglu_fwd", "_swiglu_bwd", "_ce_rows",
           "_attn_fwd", "_attn_bwd_delta", "_attn_bwd_dkdv", "_attn_bwd_dq"}

OPCHECKED = {"rmsnorm_fwd", "rmsnorm_bwd", "rope", "swiglu_fwd", "swiglu_bwd",
             "linear_cross_entropy_fwd", "flash_attention_fwd", "flash_attention_bwd"}


def _run(mode: str, interpret: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, __file__, mode], env=env, capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_compiled_model_matches_eager_in_the_interpreter() -> None:
    result = _run("interpret", interpret=True)
    assert result["graph_breaks"] == 0
    assert set(result["custom_ops"]) >= {"rmsnorm_fwd", "rope", "swiglu_fwd",
                                         "linear_cross_entropy_fwd", "flash_attention_fwd"}
    # the same kernels on the same float32 inputs: aot_eager only reorders host-side calls
    assert result["loss_err"] <= 1e-6 * abs(result["loss"]), result
    assert result["grad_err"] <= 1e-6 * result["grad_scale"], result


def test_every_op_passes_opcheck() -> None:
    result = _run("opcheck", interpret=True)
    assert set(result) == OPCHECKED, sorted(result)
    failed = {op: checks for op, checks in result.items() if set(checks.values()) != {"SUCCESS"}}
    assert not failed, failed


def test_compiler_traces_into_every_kernel_without_a_gpu() -> None:
    result = _run("trace", interpret=False)
    assert set(result["kernels"]) == KERNELS, result["kernels"]
    assert result["opaque_ops"] == [], result["opaque_ops"]


@pytest.mark.slow
def test_backend_compile_trains_like_eager_with_triton_ops() -> None:
    result = _run("inductor", interpret=True)
    compiled, eager = result["compiled"], result["eager"]
    # float32; Inductor fuses and reorders the native parts (embedding, residuals), a few ulps
    assert all(abs(c - e) <= 1e-5 * abs(e) for c, e in zip(compiled, eager)), result


# --- the checks, run in the subprocess ------------------------------------------------------------

if __name__ == "__main__":
    import numpy as np
    import torch

    from trainbench import data, model
    from trainbench import ops as model_ops
    from trainbench.backends.torch import model as torch_model
    from trainbench.backends.torch import ops

    def tiny_model() -> tuple[torch.nn.Module, torch.Tensor]:
        cfg = model.preset("tiny")
        net = torch_model.Transformer(cfg, ops.resolve({op: "triton" for op in OPS}))
        torch_model.load_canonical(net, model.init_params(cfg, 0))
        # 15 tokens per sequence: not a multiple of any kernel block
        tokens = torch.from_numpy(data.SyntheticTokens(cfg.vocab, 2, 15, seed=0).batch(0)).long()
        return net, tokens

    def loss_and_grads(net: torch.nn.Module, tokens: torch.Tensor
                       ) -> tuple[float, list[torch.Tensor]]:
        net.zero_grad()
        loss = net(tokens)
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in net.parameters()]

    def interpret() -> dict:
        from torch._dynamo.utils import counters

        net, tokens = tiny_model()
        loss, grads = loss_and_grads(net, tokens)
        compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
        closs, cgrads = loss_and_grads(compiled, tokens)
        return {"loss": loss, "loss_err": abs(closs - loss),
                "grad_err": max(float((a - b).abs().max()) for a, b in zip(grads, cgrads)),
                "grad_scale": max(float(g.abs().max()) for g in grads),
                "graph_breaks": sum(counters["graph_break"].values()),
                "custom_ops": sorted(name for name in dir(torch.ops.trainbench)
                                     if not name.startswith("_"))}

    def trace() -> dict:
        from torch._dynamo.backends.common import aot_autograd
        from torch._functorch.partitioners import default_partition
        from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
        from triton.backends.compiler import GPUTarget

        import triton

        joint_graphs = []

        class Traced(Exception):
            """Raised instead of running the forward, which needs a GPU."""

        def partition(joint, *args, **kwargs):
            joint_graphs.append(joint)
            return default_partition(joint, *args, **kwargs)

        def forward_compiler(gm, example_inputs):
            def run(*args):
                raise Traced
            return run

        class HopperTarget:
            """The driver torch asks for the compile target when it reads which tensors a
            kernel writes (from the kernel's TTIR); there is no GPU to ask, so Hopper's."""

            def get_current_target(self) -> GPUTarget:
                return GPUTarget("cuda", 90, 32)

        triton.runtime.driver.set_active(HopperTarget())
        net, tokens = tiny_model()
        backend = aot_autograd(fw_compiler=forward_compiler, partition_fn=partition)
        try:
            torch.compile(net, fullgraph=True, backend=backend)(tokens)
        except Traced:
            pass
        (joint,) = joint_graphs
        kernels, opaque = set(), []
        for node in joint.graph.nodes:
            if node.op != "call_function":
                continue
            if "triton_kernel_wrapper" in str(node.target):
                kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
                kernels.add(kernel.fn.__name__)
            elif "trainbench" in str(node.target):
                opaque.append(str(node.target))
        return {"kernels": sorted(kernels), "opaque_ops": opaque}

    def inductor() -> dict:
        from trainbench.backends.torch.backend import TorchBackend, TorchConfig
        from trainbench.config import PRECISIONS, OptimConfig

        tiny = model.preset("tiny")
        losses = {}
        for name, compile_ in (("compiled", True), ("eager", False)):
            cfg = TorchConfig(compile=compile_, **{op: "triton" for op in OPS})
            backend = TorchBackend(cfg, tiny, PRECISIONS["fp32"], OptimConfig(), total_steps=2)
            backend.setup(model.init_params(tiny, 0))
            source = data.SyntheticTokens(tiny.vocab, 2, 15, seed=0)
            losses[name] = [backend.loss(backend.train_step(s, source.batch(s)))
                            for s in range(2)]
        return losses

    def opcheck() -> dict:
        import trainbench.kernels.triton  # noqa: F401  (registers torch.ops.trainbench.*)

        gen = torch.Generator().manual_seed(0)

        def randn(*shape: int, grad: bool = True) -> torch.Tensor:
            return torch.randn(shape, generator=gen).requires_grad_(grad)

        cos, sin = (torch.from_numpy(t) for t in model_ops.rope_cos_sin(5, 16, 1e4, np.float32))
        x, w = randn(2, 5, 24), randn(24) + 1.0
        y, rstd = torch.ops.trainbench.rmsnorm_fwd(x.detach(), w.detach(), 1e-5)
        q, k, v = randn(1, 5, 4, 16), randn(1, 5, 2, 16), randn(1, 5, 2, 16)
        o, lse = torch.ops.trainbench.flash_attention_fwd(q.detach(), k.detach(), v.detach(),
                                                           True, 0.25)
        a, b = randn(3, 7), randn(3, 7)
        targets = torch.tensor([1, -100, 6, 0, 2])
        cases = {
            "rmsnorm_fwd": (x, w, 1e-5),
            "rmsnorm_bwd": (randn(2, 5, 24, grad=False), x.detach(), w.detach(), rstd),
            "rope": (q, k, cos, sin, False),
            "swiglu_fwd": (a, b),
            "swiglu_bwd": (randn(3, 7, grad=False), a.detach(), b.detach()),
            "linear_cross_entropy_fwd": (randn(5, 8), randn(8, 11), targets, 2, -100,
                                         torch.float32, True, True),
            "flash_attention_fwd": (q, k, v, True, 0.25),
            "flash_attention_bwd": (q.detach(), k.detach(), v.detach(), o, lse,
                                    randn(1, 5, 4, 16, grad=False), True, 0.25),
        }
        return {name: {check: str(outcome) for check, outcome in
                       torch.library.opcheck(getattr(torch.ops.trainbench, name), args).items()}
                for name, args in cases.items()}

    MODES = {"interpret": interpret, "trace": trace, "opcheck": opcheck, "inductor": inductor}
    torch.manual_seed(0)
    np.random.seed(0)
    print(json.dumps(MODES[sys.argv[1]]()))
