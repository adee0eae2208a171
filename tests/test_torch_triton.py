"""Parity of the PyTorch backend with every Triton kernel on, in Triton's interpreter (CPU).

TRITON_INTERPRET=1 must be set before triton is first imported, and another test module in the
same pytest-xdist worker may already have imported it, so the check runs in a fresh process
(this file run as a script), which also reports which functions the model called.
"""

import json
import os
import subprocess
import sys



TRITON_OPS = ("rmsnorm", "rope", "swiglu", "cross_entropy", "attention")


def _parity_all_triton() -> dict:
    from trainbench import model, parity, registry
    from trainbench.backends.torch.backend import TorchBackend, TorchConfig
    from trainbench.config import PRECISIONS, OptimConfig

    tiny = model.preset("tiny")
    cfg = TorchConfig(**{op: "triton" for op in TRITON_OPS})
    backend = TorchBackend(cfg, tiny, PRECISIONS["fp32"], OptimConfig(), total_steps=10)
    ref_cls = registry.get("reference")
    ref = ref_cls(ref_cls.config_class(), tiny, PRECISIONS["fp32"], OptimConfig(), total_steps=10)
    # ragged: 15 tokens per sequence is not a multiple of any kernel block
    rep = parity.compare(backend, ref, tiny, batch_size=2, seq_len=15, steps=10)
    return {"errors": rep.errors, "tolerances": rep.tolerances,
            "modules": {op: fn.__module__ for op, fn in backend.model.ops.items()}}


def test_parity_with_every_triton_kernel_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-6000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for op in TRITON_OPS:  # every op ran a Triton kernel, not the native fallback
        assert result["modules"][op].startswith("trainbench.kernels.triton"), result["modules"]
    # the tolerances (trainbench.parity.TOLERANCES), as for native ops
    for key, tol in result["tolerances"].items():
        assert result["errors"][key] <= tol, (key, result["errors"])


if __name__ == "__main__":
    print(json.dumps(_parity_all_triton()))
