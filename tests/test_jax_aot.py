"""`trainbench compile` for TPU topologies on the CPU: libtpu's XLA:TPU compiles the run's real
step (backends/jax/aot.py) for v5e and v6e slices; the record's memory, collectives, FLOP ratio
and roofline bound; refusals before any compile. Compiles are shared across tests per module."""

import json

import pytest

from trainbench import cli
from trainbench import compile as compile_lib
from trainbench.backends.jax import aot
from trainbench.errors import ConfigError

pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is part of `make setup`")


def _plan(target, *overrides, search="none"):
    """The record `trainbench compile target=... overrides` writes (not written here)."""
    [cfg] = cli.compose_run_configs([["backend=jax", *overrides]])
    return compile_lib.plan(cfg, cli._preset_name(cfg.model), compile_lib.parse_target(target),
                            search, aot, {})


TINY = ("model=tiny", "precision=bf16", "backend.attention=pallas", "train.batch_size=8")
MESHES = {"dp": ("backend.data_parallel=4",), "fsdp": ("backend.data_parallel=1",
                                                       "backend.fsdp=4")}


@pytest.fixture(scope="module", params=[(t, m) for t in ("v5e:2x2", "v6e:2x2") for m in MESHES],
                ids=lambda p: f"{p[0]}-{p[1]}")
def tiny_plan(request):
    topology, mesh = request.param
    return topology, mesh, _plan(f"tpu:{topology}", *TINY, *MESHES[mesh])


def test_tiny_compiles_for_the_chip_with_pallas_attention(tiny_plan):
    topology, mesh, record = tiny_plan
    assert record["status"] == "compiled", record["cause"]
    c = record["compile"]
    chip = {"v5e:2x2": "TPU v5e", "v6e:2x2": "TPU v6e"}[topology]
    assert (c["target"], c["chip"], c["chips"], c["devices"]) == (f"tpu:{topology}", chip, 4, 4)
    assert c["mesh"] == ({"dp": 4, "fsdp": 1, "tp": 1} if mesh == "dp"
                         else {"dp": 1, "fsdp": 4, "tp": 1})
    assert record["device"] == {**record["device"], "name": chip, "kind": "tpu",
                                "attention": "pallas"}
    m = c["memory"]
    assert m["fits"] is True and 0 < m["per_device_bytes"] < m["hbm_bytes"]
    assert m["headroom_bytes"] == m["hbm_bytes"] - m["per_device_bytes"]
    assert m["argument_bytes"] > 0 and m["generated_code_bytes"] > 0
    # the parameters and the AdamW state are donated: XLA aliases them to the outputs
    assert m["alias_bytes"] > 0
    assert c["compile_s"] > 0 and json.dumps(record)  # the record is plain JSON


@pytest.mark.parametrize("attention", ["pallas", "splash"])
@pytest.mark.parametrize("topology, chip", [("v4:2x2x1", "TPU v4"), ("v5p:2x2x1", "TPU v5p"),
                                            ("tpu7x:2x2x1", "TPU7x")])
def test_both_tpu_kernels_compile_for_every_other_generation(topology, chip, attention):
    # v5e and v6e: tiny_plan. Mosaic's rules differ by generation: v4 has no sublane gather,
    # which the Pallas kernel's first log-sum-exp write needed (Mosaic refused it there)
    record = _plan(f"tpu:{topology}", "model=tiny", "precision=bf16",
                   f"backend.attention={attention}", "train.batch_size=8",
                   "backend.data_parallel=1", "backend.fsdp=4")
    assert record["status"] == "compiled", record["cause"]
    assert record["compile"]["chip"] == chip and record["compile"]["memory"]["fits"] is True


def test_fsdp_gathers_and_scatters_and_data_parallel_all_reduces(tiny_plan):
    _, mesh, record = tiny_plan
    comms = record["compile"]["collectives"]
    if mesh == "fsdp":
        assert comms["all-gather"]["count"] > 0 and comms["all-gather"]["bytes"] > 0
        assert comms["reduce-scatter"]["count"] > 0 and comms["reduce-scatter"]["bytes"] > 0
    else:  # whole weights on every device: only the gradients' all-reduce
        assert comms["all-reduce"]["count"] > 0
        assert comms["all-gather"]["count"] == comms["reduce-scatter"]["count"] == 0
        # it carries every gradient once: a matrix's in the compute dtype (bf16, its matmul's
        # output), a norm gain's in float32; so at least 2 bytes per parameter
        assert comms["all-reduce"]["bytes"] >= record["params"] * 2
    assert record["compile"]["collective_bytes"] == sum(c["bytes"] for c in comms.values())


def test_the_roofline_bound_is_labelled_and_below_the_peak(tiny_plan):
    _, _, record = tiny_plan
    roof = record["compile"]["roofline"]
    assert "bound, not a measurement" in roof["note"]
    assert roof["step_time_bound_s"] > 0 and 0 < roof["mfu_ceiling"] <= 1
    assert "metrics" not in record  # nothing measured


@pytest.fixture(scope="module")
def xla_plan():
    return _plan("tpu:v5e:2x2", "model=tiny", "precision=bf16", "backend.fsdp=4")


def test_xla_flops_over_model_flops_lie_in_their_band(xla_plan, tiny_plan):
    # attention=xla: XLA counts the full square of causal attention (the mask is a select)
    # and the element-wise work (norms, rope, softmax, SiLU, loss, AdamW), a few FLOPs per
    # element: in this tiny model under half of the matmul FLOPs on top. (The CPU backend's
    # own cost analysis lies in the same band, tests/test_backend_jax.py.)
    assert 1.0 <= xla_plan["compile"]["flop_ratio"] <= 1.5, xla_plan["compile"]["flop_ratio"]
    # attention=pallas: the kernel is a Mosaic custom call XLA does not count, so the ratio
    # drops by at most the attention products' share of the model FLOPs
    _, _, record = tiny_plan
    f = record["flops"]["breakdown"]
    attention_share = f["attn_scores"] / (f["training_total"] / 3)
    assert 1.0 - attention_share <= record["compile"]["flop_ratio"] <= 1.5


SCAN = ("model=tiny", "model.n_layers=4", "precision=bf16", "backend.attention=splash",
        "backend.remat=true", "backend.data_parallel=1", "backend.fsdp=4", "train.batch_size=8")


@pytest.fixture(scope="module")
def scanned_and_unrolled():
    return (_plan("tpu:v5e:2x2", *SCAN, "backend.scan_layers=true"),
            _plan("tpu:v5e:2x2", *SCAN))


def test_a_scanned_step_counts_like_the_unrolled_step(scanned_and_unrolled):
    scanned, unrolled = scanned_and_unrolled
    assert scanned["status"] == unrolled["status"] == "compiled", scanned["cause"]
    s, u = scanned["compile"], unrolled["compile"]
    assert scanned["device"]["scan_layers"] is True and unrolled["device"]["scan_layers"] is False
    # XLA counts the loop body once: the scanned program's own count is about a layer's worth
    # (plus the rest); extrapolated from 1- and 2-layer compiles it is the unrolled step's
    # FLOP count (a layer adds the same FLOPs; 1e-4 for XLA's other choices)
    assert s["xla_scanned_program_counts"]["flops"] < 0.6 * u["xla_flops"]
    assert s["xla_flops"] == pytest.approx(u["xla_flops"], rel=1e-4)
    assert "extrapolated" in s["xla_counts_note"] and "extrapolated" not in u["xla_counts_note"]
    # byte counts depend on XLA's fusions, which differ between the programs: the same order
    assert 0.5 <= s["xla_bytes_accessed"] / u["xla_bytes_accessed"] <= 2
    # collectives inside the layer loop count once per layer: FSDP gathers each layer's
    # weights in the forward and again in the recomputed forward, like the unrolled step
    for kind in ("all-gather", "reduce-scatter"):
        assert s["collectives"][kind]["count"] > 0
        assert 0.8 <= s["collectives"][kind]["bytes"] / u["collectives"][kind]["bytes"] <= 1.25
    # the stacked weights and moments are the same bytes; the loop keeps less code
    assert s["memory"]["argument_bytes"] == pytest.approx(u["memory"]["argument_bytes"],
                                                          rel=0.01)
    assert s["memory"]["generated_code_bytes"] < u["memory"]["generated_code_bytes"]
    assert s["memory"]["fits"] is True


def test_fsdp_in_bf16_gathers_the_weights_in_bf16(xla_plan):
    # the float32 master weights are cast on their shard, then gathered: bf16 on the wire,
    # half of what gathering the float32 weights would send (torchtitan's param_dtype=bf16).
    # Matrix gradients leave their bf16 matmuls in bf16 and are scattered so.
    c = xla_plan["compile"]["collectives"]
    gathered = c["all-gather"]["bytes_by_dtype"]
    assert gathered.get("bf16", 0) > 0 and gathered.get("f32", 0) == 0, gathered
    assert c["reduce-scatter"]["bytes_by_dtype"].get("bf16", 0) > 0


def test_local_target_compiles_for_this_machine():
    # the CPU: XLA's memory plan, but no HBM in the hardware table, so no verdict and no bound
    record = _plan("local", "model=tiny")
    assert record["status"] == "compiled", record["cause"]
    c = record["compile"]
    assert c["target"] == "local" and record["device"]["kind"] == "cpu"
    assert c["memory"]["per_device_bytes"] > 0 and c["memory"]["fits"] is None
    assert c["roofline"]["mfu_ceiling"] is None and c["xla_flops"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["v5e:2x2", "v6e:2x2"])
@pytest.mark.parametrize("mesh", list(MESHES))
def test_small_compiles_with_pallas_attention(topology, mesh):
    record = _plan(f"tpu:{topology}", "model=small", "precision=bf16", "train.seq_len=256",
                   "backend.attention=pallas", "train.batch_size=8", *MESHES[mesh])
    assert record["status"] == "compiled", record["cause"]
    c = record["compile"]
    assert c["memory"]["fits"] is True and c["chips"] == 4
    kinds = {k for k, v in c["collectives"].items() if v["count"]}
    if mesh == "fsdp":  # weights gathered; gradients scattered (or all-reduced, as XLA:TPU
        # chooses for some of them: see the tiny model's test for the reduce-scatters)
        assert "all-gather" in kinds and kinds & {"reduce-scatter", "all-reduce"}
    else:
        assert "all-reduce" in kinds and "all-gather" not in kinds


def test_state_larger_than_the_chip_does_not_fit():
    # a 2-layer model with a 300k vocabulary: 1.24e9 parameters, like llama32_1b, in two
    # matrices; float32 AdamW keeps weights, two moments and gradients, 16 bytes each = 19.8 GB
    # against one v5e chip's 16 GiB. XLA refuses it fast (few ops), with its message.
    record = _plan("tpu:v5e:2x2", "model=tiny", "model.vocab=300000", "model.d_model=2048",
                   "model.n_heads=16", "model.n_kv_heads=8", "model.head_dim=128",
                   "train.seq_len=64", "train.batch_size=1", "backend.data_parallel=1")
    assert record["status"] == "compiled", record["cause"]
    memory = record["compile"]["memory"]
    assert memory["fits"] is False and record["compile"]["chips"] == 1
    assert memory["oom_message"].startswith("RESOURCE_EXHAUSTED")
    assert memory["per_device_bytes"] > memory["xla_available_bytes"] > 15 * 2**30
    assert memory["headroom_bytes"] < 0
    assert record["compile"]["roofline"]["mfu_ceiling"] is None  # nothing compiled to bound


@pytest.mark.slow
@pytest.mark.timeout(1200)  # XLA searches for a plan before it gives up on memory: 2 min here
def test_llama32_1b_fp32_fits_one_v5e_chip_only_sharded():
    # float32 AdamW: weights, two moments and gradients, 16 bytes x 1.24e9 parameters = 19.8 GB
    # on one chip of 16 GiB; FSDP over the 4 chips of v5e:2x2 leaves a quarter of it per chip
    # scanned layers: the same state and verdict, one block body for XLA to plan
    one = _plan("tpu:v5e:2x2", "model=llama32_1b", "precision=fp32", "train.seq_len=128",
                "train.batch_size=1", "backend.data_parallel=1", "backend.scan_layers=true")
    assert one["status"] == "compiled", one["cause"]
    memory = one["compile"]["memory"]
    assert memory["fits"] is False and one["compile"]["chips"] == 1
    assert memory["oom_message"].startswith("RESOURCE_EXHAUSTED")
    four = _plan("tpu:v5e:2x2", "model=llama32_1b", "precision=fp32", "train.seq_len=128",
                 "train.batch_size=4", "backend.data_parallel=1", "backend.fsdp=4",
                 "backend.scan_layers=true")
    assert four["status"] == "compiled", four["cause"]
    memory = four["compile"]["memory"]
    assert memory["fits"] is True and 0 < memory["headroom_bytes"]
    assert memory["per_device_bytes"] >= 16 * one["params"] / 4  # the sharded state


def _exit_code_and_error(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compile", *argv])
    return exit_info.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("argv, message", [
    (["target=tpu:v9:2x2", "backend=jax"], "topology 'v9:2x2' is not known; use "
                                           "<generation>:<chips per axis> with a generation "
                                           "among v4, v5e, v5p, v6e, tpu7x"),
    (["target=tpu:v5e:3x3", "backend=jax"], "target=tpu:v5e:3x3: libtpu cannot build this "
                                            "topology"),
    (["target=tpu:v5e:2x2", "backend=jax", "backend.fsdp=3"],
     "backend.fsdp=3 does not divide the device count 4"),
    (["target=tpu:v5e:2x2", "backend=jax", "train.batch_size=6"],
     "train.batch_size=6 is not divisible by the 4 data-parallel devices of the mesh"),
    (["target=tpu:v5e:2x2", "backend=torch"], "backend=torch: trainbench compile builds the "
                                              "jax backend's step"),
    (["backend=jax"], "trainbench compile needs target=local or target=tpu:<topology>"),
    (["target=tpu:v5e:2x2", "model=nope"], "model=nope is not a known option"),
    (["target=tpu:v5e:2x2", "search=all"], "search='all' must be one of: none, batch"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_compile(capsys, monkeypatch, tmp_path,
                                                            argv, message):
    from trainbench.backends.jax import step

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(step, "jit_train_step", lambda *a: pytest.fail("built a bad input"))
    code, err = _exit_code_and_error(capsys, *argv)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.rglob("*.json"))


def test_a_step_the_compiler_rejects_is_recorded_as_failed_with_its_message(capsys,
                                                                            tmp_path):
    # Mosaic's tiling rules: the kernel's log-sum-exp row block (1, 16) over a 64-long
    # sequence is neither a multiple of 128 lanes nor the whole row
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compile", "target=tpu:v5e:2x2", "model=tiny", "backend=jax",
                  "backend.attention=pallas", "backend.flash_block_size=16",
                  f"results_dir={tmp_path}"])
    assert exit_info.value.code == 1
    [path] = tmp_path.glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed"
    assert record["cause"].startswith("CompileFailed: ") and "128" in record["cause"]


def _fake_compiler(monkeypatch, mesh, largest):
    """A stand-in aot.compile_step on `mesh` that runs out of memory above `largest` sequences
    (the search's own logic is tested in test_compile.py)."""
    stats = {"argument_size_in_bytes": 2**20, "output_size_in_bytes": 2**20,
             "alias_size_in_bytes": 2**20, "temp_size_in_bytes": 2**20,
             "generated_code_size_in_bytes": 2**20}

    def compile_step(cfg, devices, batch):
        if batch > largest:
            return aot.Compiled("TPU v5 lite", "tpu", mesh, None,
                                "RESOURCE_EXHAUSTED: Used 20.5G of 15.75G hbm.")
        return aot.Compiled("TPU v5 lite", "tpu", mesh, stats, None, {"flops": 1e9})

    monkeypatch.setattr(aot, "compile_step", compile_step)


def test_the_batch_search_records_every_probe(monkeypatch):
    """The search through plan(), out of memory above 3 sequences per device."""
    _fake_compiler(monkeypatch, {"dp": 4, "fsdp": 1, "tp": 1}, largest=12)
    record = _plan("tpu:v5e:2x2", "model=tiny", "backend.data_parallel=4", search="batch")
    search = record["compile"]["search"]
    assert search["best_batch_size"] == 12 and search["best_per_device_batch"] == 3
    assert record["batch_size"] == 12 == record["config"]["train"]["batch_size"]
    assert "_b12_" in record["run_id"]  # named by the batch found, not the one asked for
    assert [p["batch_size"] for p in search["probes"]] == [4, 8, 16, 12]
    assert [p["fits"] for p in search["probes"]] == [True, True, False, True]
    assert record["compile"]["memory"]["fits"] is True


@pytest.mark.parametrize("attention", ["xla", "splash"])
def test_fsdp_by_tensor_parallel_compiles_on_a_2d_mesh(attention):
    """Issue 13's tensor axis through the compile path: a 2 x 2 FSDP x TP mesh on v5e:2x2 (the
    batch splits over the 2 FSDP devices only), TP's collectives in the program; splash runs on
    each device's batch shard and half of the heads."""
    record = _plan("tpu:v5e:2x2", "model=tiny", "backend.data_parallel=1", "backend.fsdp=2",
                   "backend.tensor_parallel=2", "train.batch_size=2", "precision=bf16",
                   f"backend.attention={attention}", "train.seq_len=128")
    assert record["status"] == "compiled", record["cause"]
    c = record["compile"]
    assert c["mesh"] == {"dp": 1, "fsdp": 2, "tp": 2} and record["device"]["count"] == 4
    assert c["memory"]["fits"] is True
    comms = c["collectives"]
    # FSDP gathers weights; TP's row-parallel outputs and gradients are all-reduced
    assert comms["all-gather"]["count"] > 0 and comms["all-reduce"]["count"] > 0


def test_a_tensor_axis_the_heads_do_not_divide_is_refused_before_compiling():
    with pytest.raises(ConfigError, match="backend.tensor_parallel=3"):
        _plan("tpu:v5e:2x2", "model=tiny", "backend.data_parallel=1",
              "backend.tensor_parallel=3", "train.batch_size=2")


def test_the_batch_search_steps_by_the_data_parallel_devices_of_a_tp_mesh(monkeypatch):
    # FSDP 2 x TP 2: the batch splits over the 2 FSDP devices, so the search moves in steps of
    # 2 sequences (not 4, the device count); here 6 fit, 8 do not
    _fake_compiler(monkeypatch, {"dp": 1, "fsdp": 2, "tp": 2}, largest=6)
    record = _plan("tpu:v5e:2x2", "model=tiny", "backend.data_parallel=1", "backend.fsdp=2",
                   "backend.tensor_parallel=2", "train.batch_size=2", search="batch")
    search = record["compile"]["search"]
    assert search["best_batch_size"] == 6 and search["best_per_device_batch"] == 3
    assert all(p["batch_size"] % 2 == 0 for p in search["probes"])
    assert 6 in [p["batch_size"] for p in search["probes"]]
