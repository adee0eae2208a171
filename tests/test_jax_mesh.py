"""The JAX backend's device mesh: weight layout, multi-host detection, and data-parallel and
FSDP training on 4 virtual CPU devices equal to one device."""

import json
import os
import subprocess
import sys

import pytest

from jax.sharding import PartitionSpec as P

from trainbench.backends.jax import mesh
from trainbench.errors import ConfigError


@pytest.mark.parametrize("shape, fsdp, spec", [
    ((256, 64), 4, P("fsdp")),           # rows divide: split the first dimension
    ((6, 64), 4, P(None, "fsdp")),       # rows do not: the next dimension that does
    ((6, 7), 4, P()),                    # none divides: replicated
    ((64,), 4, P()),                     # norm gains stay whole
    ((256, 64), 1, P()),                 # no fsdp axis
])
def test_weight_spec(shape, fsdp, spec):
    assert mesh.weight_spec(shape, fsdp) == spec


@pytest.mark.parametrize("environ, multi", [
    ({}, False),
    ({"SLURM_NTASKS": "1"}, False),
    ({"SLURM_NTASKS": "8"}, True),
    ({"TPU_WORKER_HOSTNAMES": "t1"}, False),
    ({"TPU_WORKER_HOSTNAMES": "t1,t2"}, True),
])
def test_multi_host_detection(environ, multi):
    assert mesh.is_multi_host(environ) is multi


def test_distributed_start_is_skipped_on_one_host():
    assert mesh.initialize_distributed("auto", {}) is False
    assert mesh.initialize_distributed("off", {"SLURM_NTASKS": "8"}) is False
    with pytest.raises(ConfigError, match="backend.distributed='yes' must be one of"):
        mesh.initialize_distributed("yes", {})


# Runs in a fresh interpreter: XLA_FLAGS must be set before JAX starts, and the pytest worker
# may already have started it with one CPU device.
_SCRIPT = """
import json, sys
import numpy as np
from trainbench import data, model
from trainbench.backends.jax.backend import JaxBackend, JaxConfig
from trainbench.config import PRECISIONS, OptimConfig
from trainbench.errors import ConfigError

cfg = model.preset("tiny")
params = model.init_params(cfg, 0)
source = data.SyntheticTokens(cfg.vocab, 8, 32, 0)
out = {}
for dp, fsdp in [(1, 1), (4, 1), (1, 4), (2, 2)]:
    b = JaxBackend(JaxConfig(data_parallel=dp, fsdp=fsdp), cfg, PRECISIONS["fp32"],
                   OptimConfig(), total_steps=3)
    b.setup(params)
    losses = [b.loss(b.train_step(s, source.batch(s))) for s in range(3)]
    wq = b.params["layers_0"]["attn"]["wq"]
    out[f"{dp}x{fsdp}"] = {
        "losses": losses, "devices": b.device().count,
        "wq_shard_rows": wq.addressable_shards[0].data.shape[0],
        "xla_flops": b.record_extra()["xla_cost_flops_per_device"],
        "params": {k: v.tolist() for k, v in b.export_params().items()},
    }
try:
    b.train_step(3, np.zeros((6, 32), np.int64))
except ConfigError as err:
    out["refused"] = str(err)
json.dump(out, sys.stdout)
"""


def test_data_parallel_and_fsdp_equal_one_device():
    import numpy as np

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(proc.stdout)
    assert runs.pop("refused") == ("train.batch_size=6 is not divisible by the 4 devices of "
                                   "the mesh")
    one = runs.pop("1x1")
    assert one["devices"] == 1 and one["wq_shard_rows"] == 64
    for name, run in runs.items():
        assert run["devices"] == 4, name
        # FSDP really splits the weights: wq [64, 64] has 64 / fsdp rows per device
        fsdp = int(name.split("x")[1])
        assert run["wq_shard_rows"] == 64 // fsdp, name
        # XLA's cost analysis is of one device's program: 4 of them do the one-device step's
        # work, within 10% (the all-reduce and the sharded optimizer add element-wise FLOPs)
        assert run["xla_flops"] * 4 == pytest.approx(one["xla_flops"], rel=0.1), name
        # float32 sums reduced in another order across devices: a few ulp of losses ~5.5
        np.testing.assert_allclose(run["losses"], one["losses"], rtol=1e-5, err_msg=name)
        for key, value in run["params"].items():
            # after 3 AdamW steps the weights (|w| <= ~1) agree to float32 rounding
            np.testing.assert_allclose(value, one["params"][key], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} {key}")


_PROCESS_SCRIPT = """
import json
from trainbench import data, model
from trainbench.backends.jax.backend import JaxBackend, JaxConfig
from trainbench.config import PRECISIONS, OptimConfig

cfg = model.preset("tiny")
b = JaxBackend(JaxConfig(), cfg, PRECISIONS["fp32"], OptimConfig(), total_steps=3)
count = b.device().count
b.setup(model.init_params(cfg, 0))
source = data.SyntheticTokens(cfg.vocab, 8, 32, 0)
losses = [b.loss(b.train_step(s, source.batch(s))) for s in range(3)]
wq = b.export_params()["layers.0.wq"]
print(json.dumps({"primary": b.is_primary(), "count": count, "losses": losses,
                  "wq": wq.tolist()}))
"""


@pytest.mark.slow
def test_two_slurm_tasks_start_jax_distributed_and_match_one_device(tmp_path):
    """Two processes with a SLURM task environment: the backend calls jax.distributed.initialize,
    which finds the coordinator through SLURM's variables; the pair trains like one device."""
    import numpy as np

    from trainbench import data, model
    from trainbench.backends.jax.backend import JaxBackend, JaxConfig
    from trainbench.config import PRECISIONS, OptimConfig

    job_id = str(10000 + os.getpid() % 50000)  # JAX derives the coordinator port from it
    procs = []
    for rank in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", SLURM_JOB_ID=job_id, SLURM_NTASKS="2",
                   SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NNODES="1",
                   SLURM_STEP_NODELIST="localhost", SLURM_JOB_NODELIST="localhost")
        env.pop("XLA_FLAGS", None)
        # files, not pipes: a task blocked on a full pipe would stall the other at shutdown
        with open(tmp_path / f"out{rank}", "w") as out, open(tmp_path / f"err{rank}", "w") as err:
            procs.append(subprocess.Popen([sys.executable, "-c", _PROCESS_SCRIPT], env=env,
                                          stdout=out, stderr=err))
    for rank, p in enumerate(procs):
        assert p.wait(timeout=300) == 0, (tmp_path / f"err{rank}").read_text()
    runs = [json.loads((tmp_path / f"out{rank}").read_text().strip().splitlines()[-1])
            for rank in range(2)]
    assert [r["primary"] for r in runs] == [True, False]
    assert all(r["count"] == 2 for r in runs)

    cfg = model.preset("tiny")
    one = JaxBackend(JaxConfig(), cfg, PRECISIONS["fp32"], OptimConfig(), total_steps=3)
    one.setup(model.init_params(cfg, 0))
    source = data.SyntheticTokens(cfg.vocab, 8, 32, 0)
    losses = [one.loss(one.train_step(s, source.batch(s))) for s in range(3)]
    for run in runs:
        # float32, gradients all-reduced across the two processes: reordered sums only
        np.testing.assert_allclose(run["losses"], losses, rtol=1e-5)
        np.testing.assert_allclose(run["wq"], one.export_params()["layers.0.wq"],
                                   rtol=1e-5, atol=1e-6)


_KERNEL_SCRIPT = """
import json, sys
from trainbench import data, model
from trainbench.backends.jax.backend import JaxBackend, JaxConfig
from trainbench.config import PRECISIONS, OptimConfig

cfg = model.preset("tiny")
params = model.init_params(cfg, 0)
source = data.SyntheticTokens(cfg.vocab, 4, 24, 0)
out = {}
for name, fields in [("xla-1", {"data_parallel": 1}), ("pallas-4", {"attention": "pallas",
                     "flash_block_size": 8, "data_parallel": 2, "fsdp": 2})]:
    b = JaxBackend(JaxConfig(**fields), cfg, PRECISIONS["fp32"], OptimConfig(), total_steps=2)
    b.setup(params)
    out[name] = [b.loss(b.train_step(s, source.batch(s))) for s in range(2)]
json.dump(out, sys.stdout)
"""


@pytest.mark.slow
def test_pallas_attention_runs_per_device_shard_on_a_mesh():
    """A Mosaic kernel cannot be partitioned by XLA: on a (2, 2) mesh the Pallas kernel runs on
    each device's batch shard (attention.per_shard) and trains like one device."""
    import numpy as np

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _KERNEL_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(proc.stdout)
    # blockwise (online) softmax and cross-device sums: float32 rounding of losses ~5.5
    np.testing.assert_allclose(runs["pallas-4"], runs["xla-1"], rtol=1e-5)
