"""Shared helpers for the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import absl.logging
import pytest

# absl.logging (imported by flax and optax) keeps the sys.stderr of its import time (pytest's
# capture) and closes it when an in-process Hydra run in the same worker reconfigures logging,
# which breaks every later test in that worker. Point it at the real stderr, which nobody closes.
absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__

ROOT = Path(__file__).resolve().parents[1]


def attention_inputs(B: int, T: int, Hq: int, Hkv: int, D: int, seed: int = 0):
    """float32 q [B, T, Hq, D], k, v [B, T, Hkv, D] and an output gradient, for attention tests."""
    import numpy as np

    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, Hq, D)).astype(np.float32)
    k = rng.standard_normal((B, T, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((B, T, Hkv, D)).astype(np.float32)
    dout = rng.standard_normal((B, T, Hq, D)).astype(np.float32)
    return q, k, v, dout


def check_jax_attention_fp32(attend, q, k, v, dout) -> None:
    """`attend(q, k, v)` (a JAX attention function) and its gradients equal the reference
    attention's in float32: a few ulp of values of order 1, as an online softmax rounds."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from trainbench import ops

    want, cache = ops.attention_fwd(q, k, v)
    want_grads = ops.attention_bwd(dout, cache)
    got, vjp = jax.vjp(attend, q, k, v)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    for name, g, w in zip("qkv", vjp(jnp.asarray(dout)), want_grads):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m trainbench ARGS` in a subprocess, as a user would run `trainbench`."""
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)  # users see Hydra's short errors, so the tests do too
    return subprocess.run([sys.executable, "-m", "trainbench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def train_tiny(backend, steps: int, batch: int = 8, seq: int = 32):
    """Set `backend` up on the tiny model's seed-0 weights, train `steps` steps on seed-0
    synthetic batches, and return the losses (numpy array)."""
    import numpy as np

    from trainbench import data, model

    tiny = model.preset("tiny")
    backend.setup(model.init_params(tiny, seed=0))
    source = data.SyntheticTokens(tiny.vocab, batch, seq, seed=0)
    losses = [backend.loss(backend.train_step(s, source.batch(s))) for s in range(steps)]
    backend.synchronize()
    return np.array(losses)


def read_json_files(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


@pytest.fixture
def cli(tmp_path: Path):
    """run_cli bound to a fresh working folder."""
    return lambda *args, **kw: run_cli(*args, cwd=tmp_path, **kw)


@pytest.fixture(autouse=True, scope="session")
def _private_peak_cache(tmp_path_factory):
    """Runs in the tests (CLI subprocesses included) keep their measured CPU peaks in a folder of
    this session, never in the user's cache: no test reads a figure measured before it."""
    from trainbench import peakcache

    old = os.environ.get(peakcache.CACHE_ENV)
    os.environ[peakcache.CACHE_ENV] = str(tmp_path_factory.mktemp("peak_cache"))
    yield
    if old is None:
        os.environ.pop(peakcache.CACHE_ENV)
    else:
        os.environ[peakcache.CACHE_ENV] = old
