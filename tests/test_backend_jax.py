"""The JAX backend end to end: parity with the reference, remat, bf16, refusals, CLI runs."""

import numpy as np
import pytest

from trainbench import data, flops, hardware, model, parity, results
from trainbench.backends.jax.backend import JaxBackend, JaxConfig
from trainbench.config import PRECISIONS, OptimConfig
from trainbench.errors import ConfigError

from conftest import train_tiny

TINY = model.preset("tiny")


def _train(precision="fp32", steps=4, batch=8, seq=32, optim=None, **backend_fields):
    """A tiny-model backend trained `steps` steps; returns it and its losses."""
    backend = JaxBackend(JaxConfig(**backend_fields), TINY, PRECISIONS[precision],
                         optim or OptimConfig(), total_steps=steps)
    return backend, train_tiny(backend, steps, batch, seq)


def test_parity_with_reference_fp32():
    rep = parity.compare_by_name(JaxConfig(), TINY, PRECISIONS["fp32"], OptimConfig(),
                                 batch_size=4, seq_len=32, steps=10)
    # tolerances are trainbench.parity.TOLERANCES, the issue's: 1e-5 / 1e-4 / 1e-4 relative
    assert rep.passed, rep.failures()
    assert rep.candidate["loss_after_steps"] < rep.candidate["loss_step0"]  # it trained


def test_remat_gives_the_same_losses_and_counts_its_recomputation():
    plain, plain_losses = _train()
    remat, remat_losses = _train(remat=True)
    # same float32 ops recomputed, not reordered; 1e-6 relative allows XLA to fuse differently
    np.testing.assert_allclose(remat_losses, plain_losses, rtol=1e-6)
    assert plain.recompute_flops(8, 32, "causal") == 0
    forward = flops.flops_breakdown(TINY, 8, 32, "full")
    extra = remat.recompute_flops(8, 32, "full")
    assert extra == forward["attn_proj"] + forward["mlp"] + forward["attn_scores"]
    # XLA's own count of the compiled step sees the recomputed forward: its increase matches
    # trainbench's recompute count within 25% (XLA also recomputes the norms, rope, softmax)
    added = (remat.record_extra()["xla_cost_flops_per_device"]
             - plain.record_extra()["xla_cost_flops_per_device"])
    assert 0.75 * extra <= added <= 1.25 * extra, (added, extra)


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_layers_train_like_unrolled_ones(remat):
    plain, plain_losses = _train(remat=remat)
    scanned, scanned_losses = _train(remat=remat, scan_layers=True)
    # the same float32 ops inside a loop: only XLA's fusion may differ, so 1e-6 relative
    np.testing.assert_allclose(scanned_losses, plain_losses, rtol=1e-6)
    got, want = scanned.export_params(), plain.export_params()
    assert list(got) == list(want)  # canonical names and order, unstacked
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)
    tokens = np.random.default_rng(1).integers(0, TINY.vocab, (8, 32)).astype(np.int32)
    loss, grads = scanned.loss_and_grads(tokens)
    plain_loss, plain_grads = plain.loss_and_grads(tokens)
    np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
    assert list(grads) == list(plain_grads)
    for name in plain_grads:
        np.testing.assert_allclose(grads[name], plain_grads[name], rtol=1e-4, atol=1e-7,
                                   err_msg=name)
    assert scanned.device().extra["scan_layers"] is True


def test_bf16_trains_and_tracks_fp32():
    # a higher learning rate than the default so the loss falls clearly within 8 steps
    optim = OptimConfig(lr=3e-3)
    bf16, bf16_losses = _train("bf16", steps=8, optim=optim)
    _, fp32_losses = _train("fp32", steps=8, optim=optim)
    assert np.all(np.isfinite(bf16_losses))
    assert bf16_losses[-1] < bf16_losses[0] - 0.2, bf16_losses
    # bf16 rounds matmul inputs to 8 significant bits (2**-9 relative); the loss averages
    # B*(T-1) = 248 tokens, so its error is far smaller than one rounding. 1e-3 over the first
    # 8 steps leaves room for the divergence the updates accumulate.
    np.testing.assert_allclose(bf16_losses, fp32_losses, rtol=1e-3)
    # master weights and AdamW moments stay float32 (the step count is an integer)
    import jax

    assert all(p.dtype == np.float32 for p in bf16.export_params().values())
    moments = [x for x in jax.tree.leaves(bf16.opt_state) if x.ndim > 0]
    assert len(moments) == 2 * len(model.param_shapes(TINY))
    assert {x.dtype for x in moments} == {np.dtype(np.float32)}


def _dot_input_dtypes(jaxpr):
    """Input dtypes of every dot_general in a jaxpr, nested jaxprs (pjit, remat) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                found.extend(_dot_input_dtypes(inner))
    return found


@pytest.mark.parametrize("precision, dtype", [("bf16", "bfloat16"), ("fp32", "float32")])
def test_matmuls_take_the_compute_dtype(precision, dtype):
    import jax
    import jax.numpy as jnp

    from trainbench.backends.jax import model as jax_model

    net = jax_model.Transformer(TINY, jnp.dtype(PRECISIONS[precision].compute_dtype))
    tree = jax_model.to_tree(model.init_params(TINY, 0))
    tokens = jnp.zeros((2, 8), jnp.int32)
    closed = jax.make_jaxpr(lambda p: net.apply({"params": p}, tokens))(tree)
    dots = _dot_input_dtypes(closed.jaxpr)
    # q, k, v, o, gate, up, down per layer, the LM head, and the two attention products
    assert len(dots) == 9 * TINY.n_layers + 1, dots
    assert set(dots) == {(dtype, dtype)}


def test_cost_analysis_is_recorded_and_near_the_model_flop_count():
    backend, _ = _train(steps=1)
    extra = backend.record_extra()
    assert extra["compile_s"] > 0 and extra["xla_memory_analysis"]["temp_size_in_bytes"] > 0
    ratio = extra["xla_cost_flops_per_device"] / flops.training_flops(TINY, 8, 32, "full")
    # At seq 32 attention is one query block, whose full square XLA computes (the mask is an
    # element-wise select), so it counts at least trainbench's "full" convention; on top it
    # counts element-wise ops (norms, softmax, SiLU, AdamW), a few FLOPs per element, which in
    # this tiny model add well under half of the matmul FLOPs.
    assert 1.0 <= ratio <= 1.5, ratio
    memory, kind = backend.peak_memory()
    assert memory > 0 and kind


def test_steps_must_run_in_order():
    backend, _ = _train(steps=1)
    with pytest.raises(ValueError, match=r"train_step\(step=5\) after 1 updates"):
        backend.train_step(5, data.SyntheticTokens(TINY.vocab, 8, 32, 0).batch(5))


@pytest.mark.parametrize("fields, message", [
    ({"attention": "cudnn"}, "attention=cudnn needs an NVIDIA GPU; this run is on cpu"),
    ({"attention": "flash"},
     "attention='flash' is not known; choose one of: xla, jax, cudnn, pallas"),
    ({"attention": "pallas", "flash_block_size": 12}, "flash_block_size=12 must be a positive"),
    ({"data_parallel": 3}, "data_parallel=3 x backend.fsdp=1 must be between 1 and"),
    ({"fsdp": 2}, "fsdp=2 must be between 1 and the device count 1"),
    ({"distributed": "maybe"}, "distributed='maybe' must be one of: auto, on, off"),
])
def test_bad_options_are_refused_with_their_value(fields, message):
    backend = JaxBackend(JaxConfig(**fields), TINY, PRECISIONS["fp32"], OptimConfig(), 1)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        backend.setup(model.init_params(TINY, 0))


def test_pallas_attention_trains_like_xla_attention():
    _, xla_losses = _train(steps=2, batch=2, seq=24)
    _, pallas_losses = _train(steps=2, batch=2, seq=24, attention="pallas", flash_block_size=16)
    # same math, softmax accumulated blockwise (online) instead of in one piece: float32 rounding
    np.testing.assert_allclose(pallas_losses, xla_losses, rtol=1e-5)


def test_cli_run_writes_a_valid_record(cli, tmp_path):
    proc = cli("backend=jax", "experiment=cpu_smoke", "results_dir=out")
    assert proc.returncode == 0, proc.stderr
    records, skipped = results.load_records([tmp_path / "out"])
    assert not skipped
    [record] = records
    assert record["status"] == "ok", record.get("cause")
    assert record["backend"] == "jax" and record["precision"] == "fp32"
    assert record["device"]["kind"] == "cpu" and record["device"]["count"] == 1
    assert record["device"]["mesh"] == {"dp": 1, "fsdp": 1, "tp": 1}
    assert record["environment"]["versions"]["jax"]
    assert all(np.isfinite(record["loss"]["per_step"]))
    # MFU here is against jnp.matmul's measured rate; small matmuls may beat it, so only > 0
    assert record["metrics"]["tokens_per_s"] > 0 and record["metrics"]["mfu"] > 0
    assert "jnp.matmul" in record["peak"]["source"]
    assert record["memory"]["peak_bytes"] > 0 and record["memory"]["measure"] == "host_rss_growth"
    # XLA's buffer plan is kept beside it, under its own name
    assert record["memory"]["framework"]["bytes"] > 0
    assert "XLA memory analysis" in record["memory"]["framework"]["kind"]


def test_cli_parity_passes(cli):
    proc = cli("parity", "backend=jax", "--steps", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout


@pytest.mark.parametrize("platform, device_kind, kind", [
    ("gpu", "NVIDIA H100 80GB HBM3", "gpu"),
    ("cuda", "NVIDIA A100-SXM4-80GB", "gpu"),
    ("tpu", "TPU v5 lite", "tpu"),
    ("tpu", "TPU v4", "tpu"),
])
def test_jax_device_kinds_map_onto_the_hardware_table(platform, device_kind, kind):
    from trainbench import hardware
    from trainbench.backends.jax.backend import describe_device

    got_kind, name, entry = describe_device(platform, device_kind)
    assert (got_kind, name) == (kind, device_kind)
    assert entry is not None and entry == hardware.lookup(device_kind).name


def test_cpu_is_named_by_its_model_and_measured():
    from trainbench import hardware
    from trainbench.backends.jax.backend import describe_device

    assert describe_device("cpu", "cpu") == ("cpu", hardware.cpu_name(), None)


def test_auto_ranks_jax_above_the_reference():
    from trainbench.backends.reference.backend import ReferenceBackend

    assert JaxBackend.availability().ok
    assert JaxBackend.preference() > ReferenceBackend.preference()


def test_matmul_probe_measures_a_positive_rate(monkeypatch):
    small = hardware.ProbeSettings(n=128, repeats=2, min_time_s=0.01)
    monkeypatch.setattr(hardware, "CPU_PROBE", small)  # the real one takes seconds
    backend = JaxBackend(JaxConfig(), model.preset("tiny"), PRECISIONS["fp32"], OptimConfig(), 1)
    peak = backend.matmul_peak("float32")
    assert peak.method == "measured" and peak.flops_per_s > 0 and "jnp.matmul" in peak.source
    assert peak.probe["n"] == 128 and peak.probe["repeats"] == 2
