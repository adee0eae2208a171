"""scripts/bench_peers.py: its protocol (interleaved rounds, paired ratios, medians) on stand-in
loops that keep no time of their own, and one tiny real run of every contestant group."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "bench_peers.py"
_spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
bench_peers = importlib.util.module_from_spec(_spec)
sys.modules["bench_peers"] = bench_peers  # dataclasses look their module up by name
_spec.loader.exec_module(bench_peers)


def test_paired_ratios_are_peer_time_over_trainbench_time_per_round():
    speed = bench_peers.paired_ratios([1.0, 2.0, 4.0], [1.5, 2.0, 2.0])
    assert speed["per_round"] == [1.5, 1.0, 0.5]
    assert (speed["median"], speed["min"], speed["max"]) == (1.0, 0.5, 1.5)
    with pytest.raises(ValueError):  # rounds are paired: the two lists must match
        bench_peers.paired_ratios([1.0, 2.0], [1.0])


def test_batch_keeps_the_tokens_per_step_and_refuses_what_does_not_divide():
    assert bench_peers.batch_for(2048, 128) == 16 and bench_peers.batch_for(2048, 1024) == 2
    with pytest.raises(SystemExit, match="--seq 100 must be >= 2 and divide --tokens 2048"):
        bench_peers.batch_for(2048, 100)


@pytest.mark.parametrize("argv, message", [(["--rounds", "0"], "--rounds 0 must be positive"),
                                           (["--warmup", "-1"], "--warmup -1 must be non-negative"),
                                           (["--device", "tpu"], "invalid choice: 'tpu'")])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench_peers.parse_args(argv)
    assert message in capsys.readouterr().err


def _fake(name, log):
    def step(i, tokens):
        log.append((name, i, int(tokens[0, 0])))

    return bench_peers.Contestant(name, step, lambda: log.append((name, "sync")))


def test_rounds_interleave_the_contestants_after_a_warm_up():
    log = []
    a, b = _fake("trainbench jax", log), _fake("minimal JAX + Optax", log)
    batches = [np.full((1, 4), k) for k in range(3)]
    bench_peers.time_rounds([a, b], batches, warmup=1, rounds=2, steps=2)
    steps = [e for e in log if e[1] != "sync"]
    # warm-up of each, then rounds alternating a, b; each side walks the same batches in order
    assert [e[0][0] for e in steps] == list("tm" + "ttmm" * 2)
    assert [e[1:] for e in steps if e[0] == a.name] == [(0, 0), (1, 1), (2, 2), (3, 0), (4, 1)]
    assert len(a.round_step_s) == len(b.round_step_s) == len(a.round_cpu_s) == 2
    assert all(t >= 0 for t in a.round_step_s + b.round_step_s + a.round_cpu_s)


def test_summary_has_medians_per_contestant_and_the_known_pairs_only():
    c = {n: bench_peers.Contestant(n, None, None, s, [2 * t for t in s]) for n, s in [
        ("trainbench jax", [2.0, 1.0, 3.0]), ("minimal JAX + Optax", [2.0, 2.0, 2.0]),
        ("HF Llama eager", [1.0, 1.0, 1.0])]}
    out = bench_peers.summarize(256, 8, list(c.values()))
    assert out["contestants"]["trainbench jax"]["median_step_s"] == 2.0
    assert out["contestants"]["trainbench jax"]["tokens_per_s"] == 256 * 8 / 2.0
    [pair] = out["pairs"]  # HF's partner (trainbench torch) did not run
    assert (pair["trainbench"], pair["peer"]) == ("trainbench jax", "minimal JAX + Optax")
    assert pair["speed"]["per_round"] == [1.0, 2.0, 2 / 3]
    assert pair["cpu_speed"]["per_round"] == [1.0, 2.0, 2 / 3]
    assert out["contestants"]["trainbench jax"]["median_cpu_s"] == 4.0


@pytest.mark.slow
def test_a_tiny_real_run_writes_the_json_and_the_table(tmp_path, capsys):
    out = tmp_path / "peers.json"
    assert bench_peers.main(["--model", "tiny", "--seq", "16", "--tokens", "32", "--rounds", "2",
                             "--steps", "1", "--warmup", "1", "--only", "torch", "jax",
                             "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["cpu_count"] >= 1 and len(result["load_avg_start"]) == 3
    assert result["command"].startswith("python scripts/bench_peers.py --model tiny")
    [length] = result["lengths"]
    assert (length["seq"], length["batch"]) == (16, 2)
    assert set(length["contestants"]) == {"trainbench torch", "HF Llama eager", "minimal PyTorch",
                                          "trainbench jax", "trainbench jax attention=jax",
                                          "minimal JAX + Optax"}
    assert [(p["trainbench"], p["peer"]) for p in length["pairs"]] == [
        ("trainbench torch", "HF Llama eager"), ("trainbench torch", "minimal PyTorch"),
        ("trainbench jax", "minimal JAX + Optax"),
        ("trainbench jax attention=jax", "minimal JAX + Optax")]
    for pair in length["pairs"]:
        assert len(pair["speed"]["per_round"]) == 2 and pair["speed"]["median"] > 0
        assert len(pair["cpu_speed"]["per_round"]) == 2 and pair["cpu_speed"]["median"] > 0
    assert "speed vs peer" in capsys.readouterr().out
