"""scripts/bench_nki.py: refuses to run without the Neuron packages and a Neuron device (saying
which are missing), and its pure helpers (bytes, FLOPs, percentiles, rates, inputs) are right."""

from __future__ import annotations

import glob
import importlib
import importlib.util
import inspect
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_nki.py"
_spec = importlib.util.spec_from_file_location("bench_nki", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_nki", bench)  # dataclasses look their module up by name
_spec.loader.exec_module(bench)

# Small ragged shapes (not multiples of 128 rows or 512 columns) for running the kernels.
TINY = dict(d_model=40, d_ff=72, n_heads=4, n_kv_heads=2, head_dim=16, tokens=130,
            vocab_chunk=600, eps=1e-5)


def _lacking(package: str) -> list[str]:
    """What this machine lacks for a step needing `package`, found without the script."""
    lacks = []
    if importlib.util.find_spec(package) is None:
        lacks.append(f"`{package}` package is not installed")
    if not glob.glob("/sys/devices/virtual/neuron_device/neuron*"):
        lacks.append("no Neuron device")
    return lacks


@pytest.mark.parametrize("step, package, extra", [
    ("compile", "nki", []),
    ("time", "nrtpy", ["--device", "trn2"]),
])
def test_refuses_without_neuron_and_names_what_is_missing(tmp_path: Path, step: str, package: str,
                                                           extra: list[str]) -> None:
    lacks = _lacking(package)
    if not lacks:
        pytest.skip(f"{package} and a Neuron device are present: the refusal path cannot run")
    work = tmp_path / "neff"
    proc = subprocess.run([sys.executable, str(SCRIPT), step, "--dir", str(work), *extra],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""  # no table, no "compiled" line: nothing ran
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"bench_nki.py {step} needs a Trainium instance")
    for lack in lacks:
        assert lack in lines[0], lines[0]
    assert not work.exists()  # it stopped before creating anything


def test_moved_bytes_match_hand_counts() -> None:
    cases = {c.name: c for c in bench.build_cases(2048, 8192, 32, 8, 64, 4096, 32768, 1e-5)}
    n, d, f, v = 4096, 2048, 8192, 32768
    # rmsnorm forward, bf16: read x (n*d*2) and w (d*2); write y (n*d*2) and float32 rstd (n*4)
    assert bench.moved_bytes(cases["rmsnorm_fwd"], "bfloat16") == 33_554_432 + 4_096 + 16_384
    assert 2 * n * d * 2 + d * 2 + n * 4 == 33_554_432 + 4_096 + 16_384
    # rmsnorm backward, fp32: read dy, x (n*d*4 each), w (d*4), rstd (n*4); write dx, dw (d*4)
    assert bench.moved_bytes(cases["rmsnorm_bwd"], "float32") == 3 * n * d * 4 + 2 * d * 4 + n * 4
    # swiglu: 3 and 5 arrays of n*f
    assert bench.moved_bytes(cases["swiglu_fwd"], "bfloat16") == 3 * n * f * 2
    assert bench.moved_bytes(cases["swiglu_bwd"], "float32") == 5 * n * f * 4
    # cross-entropy: logits once; int32 targets; float32 loss and lse per row
    assert bench.moved_bytes(cases["cross_entropy_fwd"], "bfloat16") == n * v * 2 + 3 * n * 4
    # backward: logits read and dlogits written; int32 targets, float32 lse and row_scale
    assert bench.moved_bytes(cases["cross_entropy_bwd"], "bfloat16") == 2 * n * v * 2 + 3 * n * 4


def test_attention_flops_match_hand_count() -> None:
    fwd, bwd = bench.attention_flops(1, 2048, 32, 64, causal=True)
    assert fwd == 2 * 2 * 2048 * 2048 * 64 * 32 / 2  # QK^T and PV, 2 FLOPs per MAC, half the scores
    assert fwd == 17_179_869_184
    assert bwd == 2.5 * fwd
    full, _ = bench.attention_flops(2, 100, 4, 16, causal=False)
    assert full == 4 * 2 * 4 * 100 * 100 * 16
    cases = {c.name: c for c in bench.build_cases(2048, 8192, 32, 8, 64, 2048, 32768, 1e-5)}
    assert cases["flash_attention_fwd"].flops == fwd
    assert cases["flash_attention_bwd"].flops == bwd
    assert all(c.flops is None for c in cases.values() if "attention" not in c.name)


def test_latency_summary_percentiles() -> None:
    s = bench.latency_summary([5.0, 1.0, 4.0, 2.0, 3.0])
    # sorted 1..5: p50 is the middle one; p99 sits at rank 0.99*4 = 3.96, between 4 and 5
    assert s["p50_ms"] == 3.0
    assert s["p99_ms"] == pytest.approx(4.96)
    assert (s["mean_ms"], s["min_ms"], s["max_ms"], s["iterations"]) == (3.0, 1.0, 5.0, 5)
    for bad in ([], [1.0, 0.0], [float("nan")]):
        with pytest.raises(ValueError, match="durations_ms"):
            bench.latency_summary(bad)


def test_achieved_rate_and_fraction() -> None:
    cases = {c.name: c for c in bench.build_cases(**TINY)}
    swi = cases["swiglu_fwd"]
    nbytes = 3 * 130 * 72 * 2
    r = bench.achieved(swi, "bfloat16", ms=2.0, peak_flops=None, bandwidth_bytes_s=1e9)
    assert r["unit"] == "GB/s"
    assert r["rate"] == pytest.approx(nbytes / 2e-3 / 1e9)
    assert r["fraction"] == pytest.approx(nbytes / 2e-3 / 1e9)
    att = cases["flash_attention_fwd"]
    r = bench.achieved(att, "bfloat16", ms=0.5, peak_flops=4e12, bandwidth_bytes_s=1e9)
    assert r["unit"] == "TFLOP/s"
    assert r["rate"] == pytest.approx(att.flops / 0.5e-3 / 1e12)
    assert r["fraction"] == pytest.approx(att.flops / 0.5e-3 / 4e12)
    assert bench.achieved(att, "bfloat16", 0.5, None, 1e9)["fraction"] is None


def test_per_device_limits_come_from_the_hardware_table() -> None:
    """The script divides chip figures by devices_per_chip: check on the Trainium2 entry."""
    from trainbench import hardware

    acc = hardware.lookup("trn2")
    assert acc is not None and acc.name == "Trainium2"
    assert acc.peak_flops_per_device("bfloat16") == acc.peak_tflops["bf16"] * 1e12 / 4


def test_cases_name_the_kernels_parameters() -> None:
    """NEFF inputs are matched by the kernel's parameter names: arrays first, then scalars."""
    for case in bench.build_cases(**TINY):
        kernel = getattr(importlib.import_module(case.module), case.kernel)
        params = list(inspect.signature(kernel).parameters)
        assert params == [a.name for a in case.inputs] + params[len(case.inputs):], case.name
        assert len(params) == len(case.inputs) + len(case.scalars), case.name


@pytest.mark.parametrize("act", ["float32", "bfloat16"])
def test_cases_outputs_match_what_the_kernels_return(act: str) -> None:
    """Run each kernel once (emulator or simulator, untimed) on tiny ragged shapes: its outputs
    have the shapes and dtypes the byte count assumes."""
    import ml_dtypes  # a [neuron] dependency, installed by `make setup`

    want = {"float32": np.dtype(np.float32), "int32": np.dtype(np.int32),
            "act": np.dtype(ml_dtypes.bfloat16 if act == "bfloat16" else np.float32)}
    for case in bench.build_cases(**TINY):
        kernel = getattr(importlib.import_module(case.module), case.kernel)
        out = kernel(*bench.make_inputs(case, act).values(), *case.scalars)
        out = out if isinstance(out, tuple) else (out,)
        assert [(o.shape, o.dtype) for o in out] == \
            [(a.shape, want[a.dtype]) for a in case.outputs], case.name
        assert all(np.isfinite(o.astype(np.float32)).all() for o in out), case.name


def test_make_inputs_is_seeded_and_follows_the_spec() -> None:
    case = {c.name: c for c in bench.build_cases(**TINY)}["cross_entropy_bwd"]
    first, again = bench.make_inputs(case, "float32"), bench.make_inputs(case, "float32")
    assert list(first) == ["logits", "targets", "lse", "row_scale"]
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert first["logits"].dtype == np.float32 and first["logits"].shape == (130, 600)
    assert first["targets"].dtype == np.int32
    assert first["targets"].min() >= 0 and first["targets"].max() < 600
    assert np.all(first["lse"] == np.float32(math.log(600) + 0.5))


class _FakeResult:
    def __init__(self, durations_ms: list[float]) -> None:
        self.durations_ms = durations_ms


def _fake_nrtpy(durations_ms: list[float], input_names: dict[str, list[str]]):
    """A stand-in for nrtpy's documented surface (NrtpyModel.load_from_neff, input_tensors_info,
    benchmark(...).durations_ms, NrtpyTensor.from_numpy), to test the script's plumbing."""
    import types

    calls = []

    class NrtpyModel:
        def __init__(self, neff: str) -> None:
            self.input_tensors_info = {n: None for n in input_names[Path(neff).stem]}

        @classmethod
        def load_from_neff(cls, neff: str) -> "NrtpyModel":
            return cls(neff)

        def benchmark(self, inputs, warmup_iter, benchmark_iter, mode):
            calls.append((sorted(inputs), warmup_iter, benchmark_iter, mode))
            return _FakeResult(durations_ms)

    class NrtpyTensor:
        @staticmethod
        def from_numpy(arr: np.ndarray, name: str) -> tuple[str, np.ndarray]:
            return name, arr

    return types.SimpleNamespace(NrtpyModel=NrtpyModel, NrtpyTensor=NrtpyTensor), calls


def test_time_step_records_figures_from_device_durations(tmp_path: Path, monkeypatch) -> None:
    import argparse
    import json

    shapes = {"model": "tiny", "tokens": 130, "vocab_chunk": 600, "dtype": "float32"}
    cases = bench.cases_for(argparse.Namespace(**shapes))
    names = {c.name: [a.name for a in c.inputs] for c in cases}
    names["swiglu_bwd"] = ["input0", "input1", "input2"]  # a NEFF whose names do not match
    fake, calls = _fake_nrtpy([2.0, 1.0, 3.0], names)
    monkeypatch.setitem(sys.modules, "nrtpy", fake)
    records = [{"case": c.name, "neff": str(tmp_path / f"{c.name}.neff"), "error": None}
               for c in cases]
    records[0] = {"case": cases[0].name, "neff": None, "error": "exit 1: compile failed"}
    (tmp_path / "compile.json").write_text(json.dumps(
        {"compile": {"neuron_env": {}}, "shapes": shapes, "cases": records}))
    out = tmp_path / "bench.json"
    args = argparse.Namespace(dir=str(tmp_path), device="trn2", warmup=3, iters=7, out=str(out))

    assert bench.time_all(args) == 1  # two kernels failed, the others were timed
    record = json.loads(out.read_text())
    rows = {r["case"]: r for r in record["results"]}
    assert rows["rmsnorm_fwd"]["error"] == "exit 1: compile failed"
    assert "input0" in rows["swiglu_bwd"]["error"] and "dout" in rows["swiglu_bwd"]["error"]
    assert all(call[1:] == (3, 7, "device") for call in calls)
    assert len(calls) == len(cases) - 2
    from trainbench import hardware

    trn2 = hardware.lookup("trn2")
    bandwidth = trn2.memory_bandwidth_gbps * 1e9 / trn2.devices_per_chip
    swi = rows["swiglu_fwd"]
    assert (swi["p50_ms"], swi["iterations"]) == (2.0, 3)
    assert swi["bytes"] == 3 * 130 * 176 * 4  # tiny's d_ff is 176
    assert swi["fraction"] == pytest.approx(swi["bytes"] / 2e-3 / bandwidth)
    att = rows["flash_attention_fwd"]
    assert att["fraction"] == pytest.approx(att["flops"] / 2e-3 / trn2.peak_flops_per_device("fp32"))
    assert record["per_device_bandwidth_bytes_s"] == bandwidth and record["lnc"] == 1


def test_a_placeholder_nki_is_not_taken_for_the_real_one(monkeypatch) -> None:
    """PyPI's `nki` placeholder imports but has no nki.isa / nki.jit: compile still refuses."""
    import types

    monkeypatch.setitem(sys.modules, "nki", types.ModuleType("nki"))
    lack = bench.missing("nki", "compile")
    assert lack is not None and "placeholder" in lack
