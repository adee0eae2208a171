"""The PyTorch backend end to end: one real step, parity with the reference, bf16, refusals, CLI."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from trainbench import data, hardware, model, optim, parity, reference, registry
from trainbench.backends.torch.backend import TorchBackend, TorchConfig
from trainbench.config import PRECISIONS, OptimConfig
from trainbench.errors import ConfigError

from conftest import train_tiny

TINY = model.preset("tiny")


def _train(precision="fp32", steps=4, batch=8, seq=32, optim_cfg=None, **backend_fields):
    """A tiny-model backend trained `steps` steps; returns it and its losses."""
    backend = TorchBackend(TorchConfig(**backend_fields), TINY, PRECISIONS[precision],
                           optim_cfg or OptimConfig(), total_steps=steps)
    return backend, train_tiny(backend, steps, batch, seq)


def test_one_training_step_matches_the_reference_update():
    params = model.init_params(TINY, seed=0)
    tokens = data.SyntheticTokens(TINY.vocab, 4, 32, seed=0).batch(0)
    # weight decay 1 so that decaying the wrong tensors changes a step by >= 1% (w ~ 0.02)
    o = OptimConfig(weight_decay=1.0)
    backend = TorchBackend(TorchConfig(), TINY, PRECISIONS["fp32"], o, total_steps=5)
    backend.setup(params)
    loss = backend.loss(backend.train_step(0, tokens))

    ref_loss, grads = reference.loss_and_grads(TINY, params, tokens)
    grads, norm = optim.clip_by_global_norm(grads, o.grad_clip)
    assert norm > o.grad_clip  # so the clipping path is exercised
    lr = optim.lr_at(0, o.lr, o.warmup_steps, 5, o.min_lr_ratio)
    expected, _ = optim.adamw_update(params, grads, optim.adamw_init(params), lr, o.b1, o.b2,
                                     o.eps, o.weight_decay)
    got = backend.export_params()
    assert list(got) == list(expected)  # canonical names in canonical order
    # float32: the loss sums 124 terms in another order than NumPy (a few ulps).
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    # Adam's first step is g / (|g| + eps): gradient elements near eps = 1e-8 turn float32
    # rounding into visible update differences, about 1e-4 of a tensor's step norm. 1e-3 is
    # ten times that; a wrong decay mask (>= 1e-2 here), learning rate or clip is far above it.
    for name in expected:
        step = np.linalg.norm(expected[name] - params[name])
        assert step > 0, f"{name} was not updated"
        assert np.linalg.norm(got[name] - expected[name]) <= 1e-3 * step, name


def test_parity_with_reference_fp32_native_ops():
    rep = parity.compare_by_name(TorchConfig(), TINY, PRECISIONS["fp32"], OptimConfig(),
                                 batch_size=4, seq_len=32, steps=10)
    # tolerances are trainbench.parity.TOLERANCES, the issue's: 1e-5 / 1e-4 / 1e-4 relative
    assert rep.passed, rep.failures()
    assert rep.candidate["loss_after_steps"] < rep.candidate["loss_step0"]  # it trained


def test_parity_with_tied_embeddings():
    tied = model.ModelConfig(**{**model.as_dict(TINY), "tie_embeddings": True})
    rep = parity.compare_by_name(TorchConfig(), tied, PRECISIONS["fp32"], OptimConfig(),
                                 batch_size=2, seq_len=16, steps=3)
    assert rep.passed, rep.failures()
    assert "lm_head" not in rep.grad_errors


def test_bf16_autocast_trains_and_tracks_fp32():
    optim_cfg = OptimConfig(lr=3e-3)  # so the loss falls clearly within 8 steps
    bf16, bf16_losses = _train("bf16", steps=8, optim_cfg=optim_cfg)
    _, fp32_losses = _train("fp32", steps=8, optim_cfg=optim_cfg)
    assert np.all(np.isfinite(bf16_losses))
    assert bf16_losses[-1] < bf16_losses[0] - 0.2, bf16_losses
    # bf16 rounds matmul inputs to 8 significant bits (2**-9 relative); the loss averages
    # B*(T-1) = 248 tokens, so its error is far smaller than one rounding. 2e-3 over 8 steps
    # leaves room for the divergence the updates accumulate; a loss computed in the wrong
    # dtype or a broken cast is off by far more.
    np.testing.assert_allclose(bf16_losses, fp32_losses, rtol=2e-3)
    # master weights and AdamW moments stay float32
    assert {p.dtype for p in bf16.model.parameters()} == {torch.float32}
    moments = [v for state in bf16.optimizer.state.values() for k, v in state.items()
               if k in ("exp_avg", "exp_avg_sq")]
    assert len(moments) == 2 * len(model.param_shapes(TINY))
    assert {m.dtype for m in moments} == {torch.float32}


def test_bf16_runs_the_projections_in_bfloat16():
    backend, _ = _train("bf16", steps=1, batch=2, seq=8)
    seen = []
    wq = backend.model.layers[0].wq
    hook = wq.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    backend.train_step(1, data.SyntheticTokens(TINY.vocab, 2, 8, seed=0).batch(1))
    hook.remove()
    assert seen == [torch.bfloat16]


def test_bad_op_choice_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"backend.attention='flash'.*native, triton"):
        TorchConfig(attention="flash")
    with pytest.raises(ConfigError, match=r"backend.parallel='tp'.*ddp, fsdp"):
        TorchConfig(parallel="tp")


def test_triton_on_cpu_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    backend = TorchBackend(TorchConfig(device="cpu", swiglu="triton"), TINY, PRECISIONS["fp32"],
                           OptimConfig(), total_steps=1)
    with pytest.raises(ConfigError, match="swiglu=triton on the CPU needs TRITON_INTERPRET=1"):
        backend.setup(model.init_params(TINY, seed=0))


def test_registered_and_ranked_for_auto():
    assert registry.get("torch") is TorchBackend
    assert TorchBackend.availability().ok
    ref = registry.get("reference")
    assert TorchBackend.preference() > ref.preference()
    versions = TorchBackend.versions()
    assert versions["torch"] == torch.__version__
    assert ("triton" in versions) == (importlib.util.find_spec("triton") is not None)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matmul_probe_measures_the_device(dtype, monkeypatch):
    small = hardware.ProbeSettings(n=128, repeats=2, min_time_s=0.01)
    monkeypatch.setattr(hardware, "CPU_PROBE", small)  # the real one takes seconds
    backend = TorchBackend(TorchConfig(), TINY, PRECISIONS["fp32"], OptimConfig(), total_steps=1)
    peak = backend.matmul_peak(dtype)
    assert peak.method == "measured" and peak.dtype == dtype
    assert np.isfinite(peak.flops_per_s) and peak.flops_per_s > 0
    assert peak.probe["n"] == 128 and peak.probe["repeats"] == 2


def test_cli_run_writes_a_valid_record(cli, tmp_path):
    proc = cli("backend=torch", "experiment=cpu_smoke", f"results_dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr
    [path] = (tmp_path / "out").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok"
    assert record["backend"] == "torch"
    assert record["device"]["kind"] == "cpu" and record["device"]["count"] == 1
    assert record["environment"]["versions"]["torch"] == torch.__version__
    losses = record["loss"]["per_step"]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert record["metrics"]["tokens_per_s"] > 0
    assert record["mamf"]["method"] == "measured" and "torch" in record["mamf"]["source"]
    assert record["memory"]["peak_bytes"] > 0 and record["memory"]["measure"] == "host_rss_growth"


def test_cli_refuses_a_bad_op_choice_in_one_line(cli, tmp_path):
    proc = cli("backend=torch", "backend.rope=fast", f"results_dir={tmp_path / 'out'}")
    assert proc.returncode == 2
    assert "backend.rope='fast' is not an implementation of rope" in proc.stderr
    assert not (tmp_path / "out").exists()
