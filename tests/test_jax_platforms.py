"""With libtpu installed (the tpu extra), a run on a machine without a TPU opens only the
platforms that are here: JAX never tries the TPU, so the user sees no libtpu start-up errors."""

import os
import subprocess
import sys

import pytest

from trainbench.backends.jax import aot, platforms


@pytest.fixture
def no_tpu(monkeypatch):
    monkeypatch.setattr(platforms, "attached_tpu_chips", lambda: 0)
    monkeypatch.setattr(platforms, "GPU_PLATFORMS", {"cuda": lambda: False,
                                                     "rocm": lambda: False})
    monkeypatch.setattr(platforms.importlib.util, "find_spec", lambda name: object())


def test_without_a_tpu_only_present_platforms_are_named(no_tpu, monkeypatch):
    assert platforms.choose({}) == "cpu"
    monkeypatch.setitem(platforms.GPU_PLATFORMS, "cuda", lambda: True)
    assert platforms.choose({}) == "cuda,cpu"


def test_jax_decides_on_a_tpu_machine_without_libtpu_or_when_the_user_chose(no_tpu,
                                                                             monkeypatch):
    assert platforms.choose({"JAX_PLATFORMS": ""}) is None  # the user's choice stands
    assert platforms.choose({"JAX_PLATFORMS": "tpu"}) is None
    monkeypatch.setattr(platforms, "attached_tpu_chips", lambda: 4)
    assert platforms.choose({}) is None  # a TPU VM: JAX opens the TPU as usual
    monkeypatch.setattr(platforms, "attached_tpu_chips", lambda: 0)
    monkeypatch.setattr(platforms.importlib.util, "find_spec", lambda name: None)
    assert platforms.choose({}) is None  # no libtpu: nothing to hide


# JAX logs "Unable to initialize backend 'tpu'" at INFO when it tries a TPU it cannot open;
# libtpu itself prints its errors to stderr on loading.
_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO)
if sys.argv[1] == "trainbench":
    from trainbench import model
    from trainbench.backends.jax.backend import JaxBackend, JaxConfig
    from trainbench.config import PRECISIONS, OptimConfig
    device = JaxBackend(JaxConfig(), model.preset("tiny"), PRECISIONS["fp32"], OptimConfig(),
                        1).device()
    print(device.kind, device.count)
elif sys.argv[1] == "compile":
    from trainbench.backends.jax import aot
    devices = aot.target_devices("v5e:2x2")
    print(devices[0].platform, len(devices))
elif sys.argv[1] == "topology":
    import jax
    from jax.experimental import topologies
    jax.config.update("jax_platforms", "cpu")
    devices = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices
    print(devices[0].platform, len(devices))
else:
    import jax
    print(jax.devices()[0].platform, jax.device_count())
"""
TPU_NOISE = ("Unable to initialize backend 'tpu'", "TPU_WORKER_HOSTNAMES", "libtpu",
             "TPU accelerator type")


def _run(mode):
    pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is part of `make setup`")
    if platforms.attached_tpu_chips():
        pytest.skip("this machine has a TPU: JAX opens it, as it should")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    return subprocess.run([sys.executable, "-c", _SCRIPT, mode], env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_cpu_run_says_nothing_about_tpus():
    proc = _run("trainbench")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cpu", "1"]
    for noise in TPU_NOISE:
        assert noise not in proc.stderr, proc.stderr


def test_compiling_for_a_tpu_topology_says_nothing_about_this_host():
    # libtpu loads to build the abstract topology; told this host is no TPU worker, it does
    # not print its metadata-server failures
    proc = _run("compile")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["tpu", "4"]
    assert proc.stderr.strip() == "", proc.stderr


@pytest.mark.slow
def test_plain_topologies_with_libtpu_would_have_said_it():
    # the control: the same topology built without trainbench's environment prints them
    env = {k: v for k, v in os.environ.items() if k not in aot.QUIET_LIBTPU_ENV}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, "topology"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "TPU accelerator type" in proc.stderr or "TPU_WORKER_HOSTNAMES" in proc.stderr


@pytest.mark.slow
def test_plain_jax_with_libtpu_would_have_said_it():
    # the control: without trainbench's choice, JAX tries the TPU and the lines appear
    proc = _run("jax")
    assert proc.returncode == 0, proc.stderr
    assert "Unable to initialize backend 'tpu'" in proc.stderr
