"""Tensor parallelism and FSDP2 mixed precision (parallel.py) on the CPU with gloo ranks.

The multi-rank cases run this file under torchrun: every rank builds the torch backend on the
tiny model, takes the loss and gradients at the initial weights, trains 3 steps and gathers the
weights; rank 0 prints them as JSON, and the test compares them with one process.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from trainbench import data, model, runner
from trainbench.backends.torch.backend import TorchBackend, TorchConfig
from trainbench.backends.torch.parallel import check_tensor_parallel
from trainbench.config import PRECISIONS, OptimConfig, RunConfig, TrainConfig, DataConfig
from trainbench.errors import ConfigError

BATCH, SEQ, STEPS = 4, 16, 3
TINY = model.preset("tiny")  # n_heads 4, n_kv_heads 2, d_ff 176, vocab 256, d_model 64


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("tp, seq, world, parallel, ops, message", [
    (4, 16, 4, "fsdp", {}, "backend.tensor_parallel=4 does not divide model.n_kv_heads=2"),
    (3, 15, 3, "fsdp", {}, "backend.tensor_parallel=3 does not divide model.n_heads=4"),
    (2, 15, 2, "fsdp", {}, "backend.tensor_parallel=2 does not divide train.seq_len=15"),
    (2, 16, 3, "fsdp", {}, "backend.tensor_parallel=2 does not divide the 3 processes"),
    (2, 16, 1, "fsdp", {}, "backend.tensor_parallel=2 does not divide the 1 processes"),
    (2, 16, 4, "ddp", {}, "backend.parallel=ddp cannot be combined with backend.tensor_parallel=2"),
    (2, 16, 2, "ddp", {"rmsnorm": "triton"}, "backend.rmsnorm=triton cannot run under"),
    (2, 16, 2, "ddp", {"cross_entropy": "triton"}, "backend.cross_entropy=triton cannot run"),
    (2, 16, 2, "ddp", {"rmsnorm": "nki"}, "backend.rmsnorm=nki cannot run under"),
    (0, 16, 1, "ddp", {}, "backend.tensor_parallel=0 must be a positive integer"),
])
def test_bad_tensor_parallel_sizes_are_refused(tp, seq, world, parallel, ops, message):
    with pytest.raises(ConfigError, match=message):
        check_tensor_parallel(tp, TINY, seq, world, parallel, ops)


def test_d_ff_and_vocab_must_divide():
    import dataclasses

    with pytest.raises(ConfigError, match="tensor_parallel=2 does not divide model.d_ff=175"):
        check_tensor_parallel(2, dataclasses.replace(TINY, d_ff=175), 16, 2, "ddp", {})
    with pytest.raises(ConfigError, match="tensor_parallel=2 does not divide model.vocab=255"):
        check_tensor_parallel(2, dataclasses.replace(TINY, vocab=255), 16, 2, "ddp", {})


def test_triton_ops_on_local_shards_are_allowed():
    check_tensor_parallel(2, TINY, 16, 2, "ddp",
                          {"rope": "triton", "swiglu": "triton", "attention": "triton"})


def test_the_runner_refuses_before_any_work(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    cfg = RunConfig(model=TINY, backend=TorchConfig(tensor_parallel=2),
                    precision=PRECISIONS["fp32"], optim=OptimConfig(), data=DataConfig(),
                    train=TrainConfig())
    with pytest.raises(ConfigError, match="tensor_parallel=2 does not divide the 1 processes"):
        runner.prepare(cfg, "tiny")


def test_the_cli_refuses_with_one_line_and_exit_code_2(cli):
    proc = cli("backend=torch", "backend.tensor_parallel=3", "model=tiny")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "trainbench: error: backend.tensor_parallel=3 does not divide model.n_heads=4"], proc.stderr


@pytest.mark.parametrize("parallel, tp, world, mesh", [
    ("ddp", 1, 1, {"dp": 1, "fsdp": 1, "tp": 1}),
    ("ddp", 1, 4, {"dp": 4, "fsdp": 1, "tp": 1}),
    ("fsdp", 1, 4, {"dp": 1, "fsdp": 4, "tp": 1}),
    ("fsdp", 2, 4, {"dp": 1, "fsdp": 2, "tp": 2}),
    ("ddp", 2, 2, {"dp": 1, "fsdp": 1, "tp": 2}),
])
def test_the_record_names_every_mesh_axis(parallel, tp, world, mesh):
    assert TorchConfig(parallel=parallel, tensor_parallel=tp).mesh(world) == mesh


# --- ranks against one process -----------------------------------------------------------------

def _run(backend: TorchBackend) -> dict:
    """Loss and gradients at the initial weights, then STEPS steps' losses and the weights."""
    source = data.SyntheticTokens(TINY.vocab, BATCH, SEQ, seed=0)
    backend.setup(model.init_params(TINY, 0))
    loss0, grads = backend.loss_and_grads(source.batch(0))
    losses = [backend.loss(backend.train_step(s, source.batch(s))) for s in range(STEPS)]
    return {"loss0": loss0, "grads": grads, "losses": losses, "params": backend.export_params()}


def _one_process(precision: str = "fp32") -> dict:
    return _run(TorchBackend(TorchConfig(), TINY, PRECISIONS[precision], OptimConfig(),
                             total_steps=STEPS))


def _torchrun(nproc: int, parallel: str, tp: int, precision: str, tmp_path,
              kernels: str = "native", compile: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"  # the ranks share the test machine's cores
    if kernels == "triton":
        env["TRITON_INTERPRET"] = "1"  # Triton on the CPU: its interpreter
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", str(nproc), __file__, parallel, str(tp),
                           precision, kernels, str(int(compile))], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(line)


def _rel(a: dict, b: dict) -> float:
    """Relative L2 error over every tensor of a canonical mapping (parity.py's measure)."""
    diff = sum(float(np.sum((np.asarray(a[k], np.float64) - b[k]) ** 2)) for k in b)
    return float(np.sqrt(diff / sum(float(np.sum(np.asarray(b[k], np.float64) ** 2)) for k in b)))


def _assert_fp32_match(run: dict, one: dict) -> None:
    # float32 with sums split across ranks (the row-parallel partial sums, the vocab-parallel
    # log-sum-exp, the gradient reductions): reordered sums only, a few ulps, the parity
    # tolerances of trainbench.parity
    assert run["loss0"] == pytest.approx(one["loss0"], rel=1e-5)
    assert _rel(run["grads"], one["grads"]) <= 1e-4
    np.testing.assert_allclose(run["losses"], one["losses"], rtol=1e-5)
    for key, value in one["params"].items():  # after 3 AdamW steps, |w| <~ 1
        np.testing.assert_allclose(run["params"][key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_tensor_parallel_2_matches_one_process(tmp_path):
    run = _torchrun(2, "ddp", 2, "fp32", tmp_path)
    assert run["mesh"] == {"dp": 1, "fsdp": 1, "tp": 2}
    assert run["count"] == 2  # MFU divides by every device of the mesh
    # each rank holds half the query heads of wq ([q_dim, d] as nn.Linear stores it) and half
    # of the vocabulary of the embedding
    assert run["local_shapes"]["layers.0.wq"] == [32, 64]
    assert run["local_shapes"]["embed"] == [128, 64]
    # a plain tensor, not the AsyncCollectiveTensor of the embedding's async reduce-scatter
    # (which a compiled first block cannot take)
    assert run["first_block_input"] == "Tensor"
    _assert_fp32_match(run, _one_process())


def test_compiled_blocks_under_tensor_parallel_2_match_one_process(tmp_path):
    # torchtitan's order: TP, then torch.compile (Inductor) per block; eager on one process
    run = _torchrun(2, "ddp", 2, "fp32", tmp_path, compile=True)
    assert run["compiled_graphs"] >= 1 and run["graph_breaks"] == 0
    _assert_fp32_match(run, _one_process())


@pytest.mark.slow
def test_compiled_blocks_under_fsdp_2_by_tensor_parallel_2_match_one_process(tmp_path):
    run = _torchrun(4, "fsdp", 2, "fp32", tmp_path, compile=True)
    assert run["mesh"] == {"dp": 1, "fsdp": 2, "tp": 2}
    assert run["compiled_graphs"] >= 1 and run["graph_breaks"] == 0
    _assert_fp32_match(run, _one_process())


@pytest.mark.slow
def test_fsdp_2_by_tensor_parallel_2_matches_one_process(tmp_path):
    run = _torchrun(4, "fsdp", 2, "fp32", tmp_path)
    assert run["mesh"] == {"dp": 1, "fsdp": 2, "tp": 2}
    assert run["count"] == 4
    # wq [64, 64]: split over tp on the heads (32 rows), then over fsdp (16 rows)
    assert run["local_shapes"]["layers.0.wq"] == [16, 64]
    _assert_fp32_match(run, _one_process())


@pytest.mark.slow
def test_torchrun_cli_records_the_mesh_and_divides_mfu_by_every_rank(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "trainbench", "backend=torch",
                           "backend.tensor_parallel=2", "experiment=cpu_smoke",
                           f"results_dir={out}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    [path] = out.glob("*.json")  # rank 0 writes the record
    record = json.loads(path.read_text())
    assert record["status"] == "ok", record.get("cause")
    assert record["device"]["mesh"] == {"dp": 1, "fsdp": 1, "tp": 2}
    assert record["device"]["count"] == 2
    m = record["metrics"]
    per_device = record["flops"]["per_step"] / m["step_time_s"]["median"] / 2
    assert m["model_tflops_per_device"] == pytest.approx(per_device / 1e12, rel=1e-9)
    assert m["mfu"] == pytest.approx(per_device / record["peak"]["flops_per_s"], rel=1e-9)


@pytest.mark.slow
def test_triton_kernels_run_on_the_local_heads(tmp_path):
    pytest.importorskip("triton")
    run = _torchrun(2, "ddp", 2, "fp32", tmp_path, kernels="triton")
    assert run["ops"] == {"rmsnorm": "native", "cross_entropy": "native", "rope": "triton",
                          "swiglu": "triton", "attention": "triton"}
    _assert_fp32_match(run, _one_process())


@pytest.mark.slow
@pytest.mark.parametrize("tp, nproc", [(1, 2), (2, 4)])
def test_fsdp_bf16_mixed_precision_tracks_fp32(tp, nproc, tmp_path):
    run = _torchrun(nproc, "fsdp", tp, "bf16", tmp_path)
    # FSDP2 gathers the weights in bf16 for the forward; the sharded masters stay float32
    assert run["forward_weight_dtype"] == "torch.bfloat16"
    assert run["master_dtypes"] == ["torch.float32"]
    one = _one_process("fp32")
    # bf16 keeps 8 significant bits (2**-9 relative rounding) in the gathered weights and the
    # matmul inputs. Measured: loss ~3e-5 relative, gradients ~6e-3 (relative L2); bounds: the
    # bf16 autocast bound of test_backend_torch for the loss (2e-3), 2e-2 for the gradients
    assert run["loss0"] == pytest.approx(one["loss0"], rel=2e-3)
    np.testing.assert_allclose(run["losses"], one["losses"], rtol=2e-3)
    assert _rel(run["grads"], one["grads"]) <= 2e-2


def _rank_main(parallel: str, tp: int, precision: str, kernels: str, compile: bool) -> None:
    import torch.distributed as dist
    from torch._dynamo.utils import counters

    on_shards = {op: kernels for op in ("rope", "swiglu", "attention")}
    backend = TorchBackend(TorchConfig(parallel=parallel, tensor_parallel=tp, compile=compile,
                                       **on_shards), TINY,
                           PRECISIONS[precision], OptimConfig(), total_steps=STEPS)
    result = _run(backend)
    names = {name.removesuffix(".weight"): p for name, p in backend.model.named_parameters()}
    local = {k: list(getattr(p, "to_local", lambda p=p: p)().shape) for k, p in names.items()}
    seen = []  # the dtype wq's weight has while its forward runs (FSDP2: the gathered copy)
    backend.model.layers[0].wq.register_forward_pre_hook(
        lambda module, args: seen.append(str(module.weight.dtype)))
    first_block_input = []  # under TP: the embedding's reduce-scattered rows, waited for
    backend.model.layers[0].register_forward_pre_hook(
        lambda module, args: first_block_input.append(type(args[0]).__name__))
    backend.loss_and_grads(data.SyntheticTokens(TINY.vocab, BATCH, SEQ, seed=0).batch(0))
    if backend.rank == 0:
        out = {key: ({k: v.tolist() for k, v in value.items()} if isinstance(value, dict)
                     else value) for key, value in result.items()}
        device = backend.device()
        out.update(mesh=device.extra["mesh"], count=device.count, local_shapes=local,
                   ops=backend.backend_cfg.op_choices(),
                   forward_weight_dtype=seen[0], first_block_input=first_block_input[0],
                   compiled_graphs=counters["stats"]["unique_graphs"],
                   graph_breaks=sum(counters["graph_break"].values()),
                   master_dtypes=sorted({str(p.dtype) for p in names.values()}))
        print(json.dumps(out))
    # Leave together and skip the interpreter's teardown: gloo's threads can still abort a rank
    # while Python tears down ("terminate called without an active exception"), after the work
    # is done and printed.
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    _rank_main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1")
