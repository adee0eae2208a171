"""The JAX backend's device mesh: logical-axis layout, multi-host detection, and data-parallel,
FSDP and tensor-parallel training on 2 or 4 virtual CPU devices equal to one device."""

import json
import os
import subprocess
import sys

import pytest

from jax.sharding import PartitionSpec as P

from trainbench.backends.jax import mesh
from trainbench.errors import ConfigError


@pytest.mark.parametrize("shape, logical, sizes, spec", [
    ((256, 64), ("embed", "heads"), {"fsdp": 4}, P("fsdp")),      # d_model split over fsdp
    ((6, 64), ("embed", "heads"), {"fsdp": 4}, P(None, "fsdp")),  # d_model does not divide:
    ((6, 7), ("embed", "heads"), {"fsdp": 4}, P()),               # the next dim that does, or none
    ((64,), ("norm",), {"fsdp": 4, "tensor": 2}, P()),            # norm gains stay whole
    ((256, 64), ("embed", "heads"), {"fsdp": 1}, P()),            # no fsdp axis
    ((64, 128), ("embed", "heads"), {"tensor": 2}, P(None, "tensor")),    # column-parallel
    ((128, 64), ("heads", "embed"), {"fsdp": 2, "tensor": 2}, P("tensor", "fsdp")),  # row-par.
    ((256, 64), ("vocab", "embed"), {"tensor": 4}, P("tensor")),  # vocab-parallel embedding
    ((8, 32, 64), ("act_batch", "act_length", "act_embed"), {"data": 2, "fsdp": 2, "tensor": 2},
     P(("data", "fsdp"), "tensor")),                              # sequence-parallel residual
    ((8, 32, 64), ("act_batch", "act_length", "act_embed"), {"data": 2, "fsdp": 1},
     P("data")),
])
def test_logical_spec(shape, logical, sizes, spec):
    assert mesh.logical_spec(shape, logical, sizes) == spec


def test_every_parameter_has_logical_axes():
    from trainbench import model
    from trainbench.backends.jax.model import tree_path

    shapes = model.param_shapes(model.preset("tiny"))
    for name, shape in shapes.items():
        assert len(mesh.PARAM_AXES[tree_path(name)[-1]]) == len(shape), name


def test_mesh_sizes_are_checked_against_the_devices():
    import jax

    devices = jax.devices()[:1]
    one = mesh.make_mesh(-1, 1, tensor=1, devices=devices)
    assert mesh.mesh_sizes(one) == {"dp": 1, "fsdp": 1, "tp": 1}
    with pytest.raises(ConfigError, match="backend.tensor_parallel=2 must be between 1 and the "
                                          "device count 1"):
        mesh.make_mesh(-1, 1, tensor=2, devices=devices)


def test_tensor_parallel_that_does_not_divide_the_model_is_refused_before_work():
    from trainbench import model, runner
    from trainbench.backends.jax.backend import JaxConfig
    from trainbench.config import PRECISIONS, DataConfig, OptimConfig, RunConfig, TrainConfig

    cfg = RunConfig(model=model.preset("tiny"), backend=JaxConfig(tensor_parallel=4),
                    precision=PRECISIONS["fp32"], optim=OptimConfig(), data=DataConfig(),
                    train=TrainConfig())
    with pytest.raises(ConfigError, match="backend.tensor_parallel=4 does not divide "
                                          "model.n_kv_heads=2"):
        runner.prepare(cfg, "tiny")


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


def _on_four_cpu_devices(script: str, timeout: int) -> dict:
    """The JSON `script` prints, run in a fresh interpreter on 4 virtual CPU devices."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_data_parallel_and_fsdp_equal_one_device():
    import numpy as np

    runs = _on_four_cpu_devices(_SCRIPT, timeout=300)
    assert runs.pop("refused") == ("train.batch_size=6 is not divisible by the 4 data-parallel "
                                   "devices of the mesh")
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
            # after 3 AdamW steps the weights agree to a small part of one step's change: Adam
            # normalizes every update to about lr = 1e-3, so where a gradient is near zero the
            # reduction order's rounding moves the update by up to ~0.1% of it (seen: 1.4e-6)
            np.testing.assert_allclose(value, one["params"][key], rtol=1e-5, atol=5e-6,
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


# Tensor parallelism: one device against the tensor axis, in a fresh interpreter with N virtual
# devices. Each run gives the loss and gradients at the initial weights (and, with steps, the
# losses of that many steps and the weights after them), the local shape of wq, and which
# collectives the compiled gradient program contains.
_TP_SCRIPT = """
import json, sys
from trainbench import data, model
from trainbench.backends.jax.backend import JaxBackend, JaxConfig
from trainbench.config import PRECISIONS, OptimConfig

meshes, steps = json.loads(sys.argv[1]), int(sys.argv[2])
cfg = model.preset("tiny")
params = model.init_params(cfg, 0)
source = data.SyntheticTokens(cfg.vocab, 8, 32, 0)
out = {}
for dp, fsdp, tp, precision in meshes:
    b = JaxBackend(JaxConfig(data_parallel=dp, fsdp=fsdp, tensor_parallel=tp), cfg,
                   PRECISIONS[precision], OptimConfig(), total_steps=max(steps, 1))
    b.setup(params)
    batch = source.batch(0)
    loss0, grads = b.loss_and_grads(batch)
    hlo = b._grad_fn.lower(b.params, b._put(batch)).compile().as_text()
    losses = [b.loss(b.train_step(s, source.batch(s))) for s in range(steps)]
    out[f"{dp}x{fsdp}x{tp} {precision}"] = {
        "mesh": b.device().extra["mesh"], "count": b.device().count,
        "loss0": loss0, "losses": losses,
        "grads": {k: v.tolist() for k, v in grads.items()},
        "params": {k: v.tolist() for k, v in b.export_params().items()} if steps else {},
        "wq_local": list(b.params["layers_0"]["attn"]["wq"].addressable_shards[0].data.shape),
        "collectives": {c: hlo.count(c + "(") + hlo.count(c + "-start(")
                        for c in ("all-gather", "all-reduce", "reduce-scatter")},
    }
json.dump(out, sys.stdout)
"""


def _tp_runs(devices: int, meshes: list, steps: int) -> dict:
    import numpy as np

    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _TP_SCRIPT, json.dumps(meshes), str(steps)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    runs = json.loads(proc.stdout)
    for run in runs.values():
        for key in ("grads", "params"):
            run[key] = {k: np.asarray(v) for k, v in run[key].items()}
    return runs


def _rel(a: dict, b: dict) -> float:
    """Relative L2 error over every tensor of a canonical mapping (trainbench.parity's)."""
    import numpy as np

    diff = sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in b)
    return float(np.sqrt(diff / sum(float(np.sum(b[k].astype(np.float64) ** 2)) for k in b)))


def test_tensor_parallel_2_gives_one_device_gradients_with_megatron_collectives():
    runs = _tp_runs(2, [[1, 1, 1, "fp32"], [1, 1, 2, "fp32"]], steps=0)
    one, tp = runs["1x1x1 fp32"], runs["1x1x2 fp32"]
    assert tp["mesh"] == {"dp": 1, "fsdp": 1, "tp": 2}
    assert tp["count"] == 2  # MFU divides by every device of the mesh
    assert one["wq_local"] == [64, 64] and tp["wq_local"] == [64, 32]  # half the query heads
    # float32, sums split across the two devices (row-parallel partial sums, the vocab-split
    # log-sum-exp): reordered sums only, the parity tolerances of trainbench.parity
    assert tp["loss0"] == pytest.approx(one["loss0"], rel=1e-5)
    assert _rel(tp["grads"], one["grads"]) <= 1e-4
    # one device communicates nothing; TP all-gathers the sequence-split activations before the
    # column-parallel projections and sums the row-parallel partial outputs (the CPU backend
    # lowers the reduce-scatter as an all-reduce), forward and backward of every block
    assert sum(one["collectives"].values()) == 0, one["collectives"]
    layers = 2
    assert tp["collectives"]["all-gather"] >= 2 * layers, tp["collectives"]
    assert (tp["collectives"]["all-reduce"] + tp["collectives"]["reduce-scatter"]
            >= 2 * layers), tp["collectives"]


@pytest.mark.slow
def test_fsdp_by_tensor_parallel_trains_like_one_device_and_bf16_tracks_fp32():
    import numpy as np

    runs = _tp_runs(4, [[1, 1, 1, "fp32"], [1, 1, 2, "fp32"], [1, 2, 2, "fp32"],
                        [2, 1, 2, "fp32"], [1, 2, 2, "bf16"]], steps=3)
    one = runs.pop("1x1x1 fp32")
    bf16 = runs.pop("1x2x2 bf16")
    assert runs["1x2x2 fp32"]["mesh"] == {"dp": 1, "fsdp": 2, "tp": 2}
    assert runs["1x2x2 fp32"]["count"] == 4
    assert runs["1x2x2 fp32"]["wq_local"] == [32, 32]  # d_model over fsdp, heads over tensor
    for name, run in runs.items():
        assert run["loss0"] == pytest.approx(one["loss0"], rel=1e-5), name
        assert _rel(run["grads"], one["grads"]) <= 1e-4, name
        np.testing.assert_allclose(run["losses"], one["losses"], rtol=1e-5, err_msg=name)
        for key, value in run["params"].items():
            # AdamW divides each gradient element by its own scale, so an element whose
            # gradient is near zero carries its reordering error into an update of up to lr
            # (1e-3): measured ~1e-5 after 3 steps
            np.testing.assert_allclose(value, one["params"][key], rtol=1e-4, atol=5e-5,
                                       err_msg=f"{name} {key}")
    # bf16 matmul inputs (8 significant bits) on the 2 x 2 mesh, against the fp32 device: the
    # loss within test_backend_jax's bf16 bound, gradients within a few percent
    np.testing.assert_allclose(bf16["losses"], one["losses"], rtol=2e-3)
    assert _rel(bf16["grads"], one["grads"]) <= 2e-2


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
                     "flash_block_size": 8, "data_parallel": 2, "fsdp": 2}),
                     ("pallas-tp", {"attention": "pallas", "flash_block_size": 8,
                                    "data_parallel": 1, "fsdp": 2, "tensor_parallel": 2})]:
    b = JaxBackend(JaxConfig(**fields), cfg, PRECISIONS["fp32"], OptimConfig(), total_steps=2)
    b.setup(params)
    out[name] = [b.loss(b.train_step(s, source.batch(s))) for s in range(2)]
json.dump(out, sys.stdout)
"""


@pytest.mark.slow
def test_pallas_attention_runs_per_device_shard_on_a_mesh():
    """A Mosaic kernel cannot be partitioned by XLA: on a (2, 2) mesh the Pallas kernel runs on
    each device's batch shard (attention.per_shard) and trains like one device; on FSDP 2 x TP 2
    on its batch shard and its half of the heads."""
    import numpy as np

    runs = _on_four_cpu_devices(_KERNEL_SCRIPT, timeout=600)
    # blockwise (online) softmax and cross-device sums: float32 rounding of losses ~5.5
    np.testing.assert_allclose(runs["pallas-4"], runs["xla-1"], rtol=1e-5)
    np.testing.assert_allclose(runs["pallas-tp"], runs["xla-1"], rtol=1e-5)


def test_tpu_kernels_split_the_heads_over_the_tensor_axis():
    import jax

    from trainbench.backends.jax import attention

    pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is part of `make setup`")
    from trainbench.backends.jax import aot

    grid = mesh.make_mesh(1, 2, tensor=2, devices=aot.target_devices("v5e:2x2"))
    seen = []

    def kernel(q, k, v):
        seen.append((q.shape, k.shape))
        return q

    shape = jax.ShapeDtypeStruct((4, 16, 8, 4), "float32")
    kv = jax.ShapeDtypeStruct((4, 16, 2, 4), "float32")
    with jax.sharding.use_abstract_mesh(grid.abstract_mesh):
        jax.eval_shape(attention.per_shard(kernel, grid), shape, kv, kv)
    # each device: its half of the batch (fsdp 2) and half of the query and kv heads (tp 2)
    assert seen == [((2, 16, 4, 4), (2, 16, 1, 4))]


def test_a_one_device_mesh_adds_no_sharding_constraint():
    import jax
    import jax.numpy as jnp

    x = jnp.ones((4, 8, 16))

    def traced(grid):
        return str(jax.make_jaxpr(lambda x: mesh.constrain(x, ("act_batch", None, None),
                                                           grid))(x))

    assert "sharding_constraint" not in traced(mesh.make_mesh(1, 1, devices=jax.devices()[:1]))
    # the control: over several devices (a TPU topology's abstract devices; traced, not run)
    pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is part of `make setup`")
    from trainbench.backends.jax import aot

    assert "sharding_constraint" in traced(mesh.make_mesh(4, 1,
                                                          devices=aot.target_devices("v5e:2x2")))
