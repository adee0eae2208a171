"""The Neuron backend (trainbench.backends.neuron) in its CPU mode, where every NKI kernel runs
through nki.simulate or trainbench's emulator: availability says what real Neuron lacks, one
training step reaches every kernel forward and backward on the LNC grid, the documented compile
and process-group backends are the ones used, and the tiny model passes parity with the
reference backend (trainbench.parity's tolerances: 1e-5 / 1e-4 / 1e-4 relative)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from trainbench import data, model, parity, registry
from trainbench.backends.neuron import backend as neuron
from trainbench.backends.neuron.backend import NeuronBackend, NeuronConfig
from trainbench.config import PRECISIONS, OptimConfig
from trainbench.errors import ConfigError
from trainbench.kernels.nki import autograd as nki_autograd

TINY = model.preset("tiny")
KERNELS = {f"{name}_{way}" for name in ("rmsnorm", "swiglu", "cross_entropy", "flash_attention")
           for way in ("fwd", "bwd")}


def _fake_install(monkeypatch, present: set[str], devices: int, torch_version: str = "2.14.0"
                  ) -> None:
    monkeypatch.setattr(neuron, "_installed", lambda module: module in present)
    monkeypatch.setattr(neuron, "_neuron_devices", lambda: devices)
    monkeypatch.setattr(neuron, "_version",
                        lambda package: torch_version if package == "torch" and "torch" in present
                        else None)
    monkeypatch.setattr(neuron, "_nki_missing",
                        lambda: None if "nki" in present else "the `nki` package is not installed")


def test_registered_as_neuron():
    assert registry.get("neuron") is NeuronBackend


def test_availability_names_each_missing_piece(monkeypatch):
    _fake_install(monkeypatch, {"torch"}, devices=0)
    avail = NeuronBackend.availability()
    assert avail.ok and avail.devices == "1 x cpu"  # the CPU mode runs
    assert "torch-neuronx" in avail.reason and "`nki` package" in avail.reason
    assert "Neuron SDK 2.33.0+" in avail.reason and "torch-neuronx==2.14.3.0.* with torch 2.14" \
        in avail.reason
    assert NeuronBackend.preference() < 0  # backend=auto never picks the emulator

    _fake_install(monkeypatch, {"torch", "torch_neuronx", "nki"}, devices=4, torch_version="2.12.1")
    reason = NeuronBackend.availability().reason
    assert "torch 2.12.1 has no torch-neuronx family" in reason

    _fake_install(monkeypatch, {"torch", "torch_neuronx", "nki"}, devices=0)
    reason = NeuronBackend.availability().reason
    assert "no Neuron device" in reason and "torch-neuronx" not in reason

    _fake_install(monkeypatch, {"torch", "torch_neuronx", "nki"}, devices=4)
    avail = NeuronBackend.availability()
    assert avail.ok and avail.devices == "4 x Neuron device" and "unavailable" not in avail.reason
    assert NeuronBackend.preference() == 30


def test_without_torch_it_is_unavailable(monkeypatch):
    _fake_install(monkeypatch, set(), devices=0)
    avail = NeuronBackend.availability()
    assert not avail.ok and "PyTorch is not installed" in avail.reason


def test_config_rejects_unknown_values():
    with pytest.raises(ConfigError, match="backend.device='cuda'"):
        NeuronConfig(device="cuda")
    with pytest.raises(ConfigError, match="backend.attention='flash'"):
        NeuronConfig(attention="flash")
    assert NeuronConfig().op_choices()["attention"] == "nki"


@pytest.mark.skipif(not neuron.missing_neuron(), reason="real Neuron is present here")
def test_neuron_device_is_refused_with_the_reason():
    backend = NeuronBackend(NeuronConfig(device="neuron"), TINY, PRECISIONS["fp32"],
                            OptimConfig(), total_steps=1)
    with pytest.raises(ConfigError, match="backend.device=neuron but"):
        backend.setup(model.init_params(TINY, seed=0))


def test_one_step_runs_every_kernel_forward_and_backward(monkeypatch):
    ran = []
    real_run = nki_autograd.run

    def counting_run(kernel, *args):
        ran.append(kernel.__name__)
        return real_run(kernel, *args)

    monkeypatch.setattr(nki_autograd, "run", counting_run)
    backend = NeuronBackend(NeuronConfig(device="cpu"), TINY, PRECISIONS["fp32"], OptimConfig(),
                            total_steps=1)
    backend.setup(model.init_params(TINY, seed=0))
    loss = backend.loss(backend.train_step(0, data.SyntheticTokens(TINY.vocab, 2, 16, 0).batch(0)))
    assert np.isfinite(loss)
    assert set(ran) == KERNELS
    assert ran.count("flash_attention_fwd") == TINY.n_layers
    assert backend.device().extra["nki"] in ("emulator", "nki")


@pytest.mark.slow
def test_parity_with_reference_fp32_cpu_mode():
    rep = parity.compare_by_name(NeuronConfig(device="cpu"), TINY, PRECISIONS["fp32"],
                                 OptimConfig(), batch_size=4, seq_len=32, steps=10)
    assert rep.passed, rep.failures()
    assert rep.candidate["loss_after_steps"] < rep.candidate["loss_step0"]  # it trained


@pytest.mark.slow
def test_bf16_autocast_trains_close_to_fp32():
    losses = {}
    for precision in ("fp32", "bf16"):
        backend = NeuronBackend(NeuronConfig(device="cpu"), TINY, PRECISIONS[precision],
                                OptimConfig(lr=3e-3), total_steps=6)
        backend.setup(model.init_params(TINY, seed=0))
        source = data.SyntheticTokens(TINY.vocab, 4, 32, seed=0)
        losses[precision] = [backend.loss(backend.train_step(s, source.batch(s)))
                             for s in range(6)]
    assert np.all(np.isfinite(losses["bf16"])) and losses["bf16"][-1] < losses["bf16"][0]
    # bfloat16 matmul inputs carry 2**-9 relative rounding; the step-0 loss (~5.5, a mean over
    # 128 tokens) moves by far less than 1%, while a broken bf16 path moves it by O(1).
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=1e-2)


def test_lnc_config_is_checked():
    assert NeuronConfig().lnc is None
    assert NeuronConfig(lnc=1).lnc == 1
    with pytest.raises(ConfigError, match="backend.lnc=3 must be one of"):
        NeuronConfig(lnc=3)


def test_default_lnc_is_the_documented_chip_default():
    assert neuron.default_lnc("trn2.48xlarge") == 2  # neuronx-cc's default on Trn2 and later
    assert neuron.default_lnc("trn3.48xlarge") == 2
    assert neuron.default_lnc("cpu") == 2  # CPU mode emulates the default target, trn2


@pytest.mark.parametrize("lnc, expected", [(None, 2), (1, 1)])
def test_cpu_mode_launches_the_kernels_on_the_lnc_grid(lnc, expected):
    backend = NeuronBackend(NeuronConfig(device="cpu", lnc=lnc), TINY, PRECISIONS["fp32"],
                            OptimConfig(), total_steps=1)
    assert backend.device().extra["lnc"] == expected
    assert nki_autograd.lnc() == expected


def test_documented_compile_and_process_group_backends(monkeypatch):
    assert neuron.COMPILE_BACKEND["neuron"] == "neuron"
    assert neuron.PROCESS_GROUP["neuron"] == "neuron"
    compiled = []

    class Block:
        def compile(self, **kwargs):
            compiled.append(kwargs)

    neuron.compile_blocks([Block(), Block()], "neuron")
    assert compiled == [{"backend": "neuron"}] * 2

    import torch.distributed as dist

    joined = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: joined.append(backend))
    monkeypatch.setattr(neuron.atexit, "register", lambda fn: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    backend = NeuronBackend(NeuronConfig(device="cpu"), TINY, PRECISIONS["fp32"], OptimConfig(),
                            total_steps=1)
    backend._init_runtime()
    assert joined == ["gloo"]  # the CPU mode; on `neuron` the table gives "neuron"


@pytest.mark.skipif(importlib.util.find_spec("torch_neuronx") is not None,
                    reason="the real torch_neuronx is installed: the stand-in cannot replace it")
def test_neuron_device_sets_the_lnc_before_importing_torch_neuronx(monkeypatch):
    """NEURON_LOGICAL_NC_CONFIG gets backend.lnc (or the chip's default) before TorchNeuron is
    imported, and a different value already set is refused (kernels and neuronx-cc must agree)."""
    import importlib.machinery
    import sys

    seen = []

    class Finder:  # a stand-in torch_neuronx that records the environment when imported
        def find_spec(self, name, path=None, target=None):
            if name != "torch_neuronx":
                return None
            return importlib.machinery.ModuleSpec(name, self)

        def create_module(self, spec):
            return None

        def exec_module(self, module):
            seen.append(os.environ.get("NEURON_LOGICAL_NC_CONFIG"))

    monkeypatch.setattr(neuron, "missing_neuron", lambda: [])
    monkeypatch.setattr(NeuronBackend, "_chip", staticmethod(lambda: "trn2.48xlarge"))
    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    monkeypatch.delenv("NEURON_LOGICAL_NC_CONFIG", raising=False)
    backend = NeuronBackend(NeuronConfig(device="neuron"), TINY, PRECISIONS["fp32"],
                            OptimConfig(), total_steps=1)
    try:
        with pytest.raises(RuntimeError, match="neuron"):  # this PyTorch has no `neuron` device
            backend.torch_device()
    finally:
        sys.modules.pop("torch_neuronx", None)  # the stand-in must not outlive the test
    assert seen == ["2"] and backend.lnc == 2  # Trn2's documented default, set before import

    monkeypatch.setenv("NEURON_LOGICAL_NC_CONFIG", "2")
    backend = NeuronBackend(NeuronConfig(device="neuron", lnc=1), TINY, PRECISIONS["fp32"],
                            OptimConfig(), total_steps=1)
    with pytest.raises(ConfigError, match="backend.lnc=1 but NEURON_LOGICAL_NC_CONFIG=2"):
        backend.torch_device()
