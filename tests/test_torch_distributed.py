"""DDP and FSDP2 on the CPU: two gloo ranks under torchrun give the single-process results.

The loss cases launch `torchrun --standalone --nproc_per_node 2 -m trainbench ...`, the command
a user runs, and compare the record rank 0 writes with the same run in this process. Both use
the global batch; each rank trains on its half, and gradients are averaged over the ranks. The
FSDP parity case runs this file under torchrun: every rank gathers its sharded gradients and
weights, and rank 0 prints the parity report against the reference backend.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from trainbench import data, model
from trainbench.backends.torch.backend import TorchBackend, TorchConfig
from trainbench.config import PRECISIONS, OptimConfig
from trainbench.loop import run_loop

# the cpu_smoke experiment: tiny model, batch 4, seq 32, 1 warm-up + 3 timed steps, seed 0
BATCH, SEQ, STEPS = 4, 32, 4


def _torchrun(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"  # two ranks share the test machine's cores
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _single_process_losses() -> list[float]:
    tiny = model.preset("tiny")
    backend = TorchBackend(TorchConfig(), tiny, PRECISIONS["fp32"], OptimConfig(),
                           total_steps=STEPS)
    source = data.SyntheticTokens(tiny.vocab, BATCH, SEQ, seed=0)
    return run_loop(backend, model.init_params(tiny, 0), source.batch, 1, STEPS - 1).losses


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_ranks_match_one_process(parallel, tmp_path):
    out = tmp_path / "out"
    _torchrun("-m", "trainbench", "backend=torch", f"backend.parallel={parallel}",
              "experiment=cpu_smoke", f"results_dir={out}", cwd=tmp_path)
    records = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert len(records) == 1, "only rank 0 writes the record"
    [record] = records
    assert record["status"] == "ok", record.get("cause")
    assert record["device"]["count"] == 2 and record["device"]["parallel"] == parallel
    losses = record["loss"]["per_step"]
    assert len(losses) == STEPS
    # float32: each rank averages its half and the halves are averaged, another summation order
    # than one mean over the batch (a few ulps, ~1e-7 relative), carried through 3 updates.
    np.testing.assert_allclose(losses, _single_process_losses(), rtol=1e-5)


def _fsdp_parity() -> dict:
    from trainbench import parity, registry

    tiny = model.preset("tiny")
    backend = TorchBackend(TorchConfig(parallel="fsdp"), tiny, PRECISIONS["fp32"], OptimConfig(),
                           total_steps=3)
    ref_cls = registry.get("reference")
    ref = ref_cls(ref_cls.config_class(), tiny, PRECISIONS["fp32"], OptimConfig(), total_steps=3)
    rep = parity.compare(backend, ref, tiny, batch_size=4, seq_len=16, steps=3)
    weights = backend.export_params()  # every rank gathers its shards
    return {"rank": backend.rank, "errors": rep.errors, "tolerances": rep.tolerances,
            "exported": sorted(weights) == sorted(model.param_shapes(tiny))}


def test_fsdp_gradients_and_weights_match_the_reference(tmp_path):
    proc = _torchrun(__file__, cwd=tmp_path)
    [result] = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert result["rank"] == 0 and result["exported"]
    for key, tol in result["tolerances"].items():  # the fp32 parity tolerances
        assert result["errors"][key] <= tol, (key, result["errors"])


if __name__ == "__main__":
    import torch.distributed as dist

    report = _fsdp_parity()
    if report["rank"] == 0:
        print(json.dumps(report))
    # Leave together and skip the interpreter's teardown: a rank can otherwise abort in gloo's
    # threads at teardown ("terminate called without an active exception") after its work.
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)
