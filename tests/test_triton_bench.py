"""scripts/bench_kernels.py: refuses to run without a CUDA GPU; its pure parts checked on the CPU.

What the CPU checks: the refusal (exit 1, before any work) with the exact flags the GPU campaign
passes, argument errors (exit 2), the percentile, rate and fraction arithmetic, the amounts
(bytes, FLOPs) per op, the JSON record's schema as pandas reads it, and the per-op protocol
itself (inputs, peers, correctness gate, forward and backward callables) run on the CPU in
Triton's interpreter with the timer and the memory probe replaced by stubs, in a fresh process
(`python tests/test_triton_bench.py OP DTYPE`, as tests/test_triton_kernels.py does). On a GPU the
script itself runs on the tiny preset and its record is checked. Timing is never asserted.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_kernels.py"
CAMPAIGN_FLAGS = ["--model", "llama32_1b", "--batch", "4", "--seq", "2048", "--dtype",
                  "bfloat16"]


@functools.cache
def _module():
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=1800)


def test_needs_a_gpu_or_runs_on_one(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _run("--model", "tiny", "--batch", "1", "--seq", "64", "--no-compile",
                "--out", str(out))
    if "needs a CUDA GPU" in proc.stderr:  # a machine without CUDA: stop before any work
        assert proc.returncode == 1, proc.stderr
        assert proc.stdout == "" and not out.exists(), proc.stdout
        return
    assert proc.returncode == 0, proc.stderr  # a GPU: every op has its triton and native rows
    rows = pd.DataFrame(json.loads(out.read_text())["rows"])
    for op in ("rmsnorm", "rope", "swiglu", "linear_cross_entropy", "flash_attention"):
        ok = rows[(rows.op == op) & (rows.status == "ok")]
        assert {"triton", "native"} <= set(ok.impl), rows[rows.op == op]
        assert set(ok["mode"]) == {"fwd", "bwd"}


def test_campaign_flags_are_refused_cleanly_without_a_gpu(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: test_needs_a_gpu_or_runs_on_one runs the script")
    out = tmp_path / "bench.json"
    proc = _run(*CAMPAIGN_FLAGS, "--out", str(out))
    assert proc.returncode == 1
    assert "needs a CUDA GPU" in proc.stderr and not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--model", "gpt5"], "--model 'gpt5' is not a preset"),
    (["--batch", "0"], "--batch 0 must be >= 1"),
    (["--seq", "-3"], "--seq -3 must be >= 1"),
    (["--dtype", "int8"], "invalid choice: 'int8'"),
])
def test_bad_arguments_exit_2_naming_the_value(args: list[str], message: str,
                                                capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        _module().parse_args(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_campaign_flags_parse() -> None:
    args = _module().parse_args([*CAMPAIGN_FLAGS, "--out", "F"])
    assert (args.model, args.batch, args.seq, args.dtype, args.out) == (
        "llama32_1b", 4, 2048, "bfloat16", "F")
    assert args.ops == list(_module().OPS)


def test_quantile_times_interpolate_like_torch_quantile() -> None:
    mod = _module()
    assert mod.quantile_times([5.0, 1.0, 3.0, 2.0, 4.0]) == pytest.approx((1.8, 3.0, 4.2))
    assert mod.quantile_times([2.5]) == (2.5, 2.5, 2.5)
    with pytest.raises(ValueError, match="no timing samples"):
        mod.quantile_times([])


def test_rates_are_fractions_of_the_measured_ceiling_and_of_the_datasheet() -> None:
    mod = _module()
    ceilings = mod.Ceilings(gemm_flops=800e12, copy_bytes=2.5e12, datasheet_flops=None,
                            datasheet_bytes=3.35e12)
    rate, unit, measured, sheet = mod.rate_and_fractions(2e9, 1.0, True, ceilings)
    assert (unit, rate) == ("GB/s", pytest.approx(2000.0))  # 2 GB in 1 ms
    assert measured == pytest.approx(0.8) and sheet == pytest.approx(2e12 / 3.35e12)
    rate, unit, measured, sheet = mod.rate_and_fractions(4e12, 10.0, False, ceilings)
    assert (unit, rate) == ("TFLOP/s", pytest.approx(400.0))
    assert measured == pytest.approx(0.5) and sheet is None  # no datasheet figure: no fraction
    with pytest.raises(ValueError, match="must be positive"):
        mod.rate_and_fractions(1.0, 0.0, True, ceilings)


def test_amounts_per_op() -> None:
    from trainbench import model

    mod, cfg = _module(), model.preset("tiny")  # d 64, d_ff 176, 4 heads of 16, vocab 256
    B, T, N = 2, 32, 64
    assert mod.amounts("rmsnorm", cfg, B, T, 2) == (2 * N * 64 * 4, 3 * N * 64 * 4)
    assert mod.amounts("rope", cfg, B, T, 2) == (2 * N * (4 + 2) * 16 * 2,) * 2  # q and k
    assert mod.amounts("swiglu", cfg, B, T, 4) == (3 * N * 176 * 4, 5 * N * 176 * 4)
    assert mod.amounts("linear_cross_entropy", cfg, B, T, 2) == (2 * N * 64 * 256,
                                                                 4 * N * 64 * 256)
    fwd = 4 * B * 4 * T * T * 16 / 2  # QK^T and PV, half of the scores (causal)
    assert mod.amounts("flash_attention", cfg, B, T, 2) == (fwd, 2.5 * fwd)
    with pytest.raises(ValueError, match="unknown op 'gelu'"):
        mod.amounts("gelu", cfg, B, T, 2)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("op", ["rmsnorm", "rope", "swiglu", "linear_cross_entropy",
                                "flash_attention"])
def test_protocol_gates_and_runs_every_op_on_the_cpu(op: str, dtype: str) -> None:
    env = {k: v for k, v in os.environ.items()}
    env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, __file__, op, dtype], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]


def test_record_schema_reads_as_one_row_per_op_impl_mode() -> None:
    mod = _module()
    ceilings = mod.Ceilings(1e15, 3e12, 989.5e12, 3.35e12)
    rows = [mod.Row("rmsnorm", "triton", "fwd", "ok", "", 0.1, 0.11, 0.12, "cudagraph", 100,
                    1e9, "GB/s", 9090.9, 0.9, 0.8, 1 << 20, 1e-6),
            mod.Row("rmsnorm", "liger", "fwd", "skipped", "ImportError: no liger")]
    record = json.loads(json.dumps(mod.make_record({"device": "H100", "model": "tiny"},
                                                   ceilings, rows)))
    assert record["kind"] == mod.RECORD_KIND and record["schema"] == mod.SCHEMA_VERSION
    assert record["device"] == "H100" and record["ceilings"]["copy_bytes"] == 3e12
    df = pd.DataFrame(record["rows"])
    assert list(df.impl) == ["triton", "liger"]
    for column in ("op", "impl", "mode", "status", "p20_ms", "p50_ms", "p80_ms", "timer", "rate",
                   "unit", "frac_measured", "frac_datasheet", "peak_mem_bytes", "max_err"):
        assert column in df.columns, column


# --- the protocol on the CPU, run in the subprocess -----------------------------------------------

if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "1"  # before torch/triton are imported

    import torch

    from trainbench import model

    bench = _module()
    bench.DEVICE = "cpu"
    timed: list[str] = []

    def stub_time(fn, cudagraph: bool, grad_to_none: list) -> tuple[list[float], str]:
        fn()
        fn()  # what is timed must be callable again and again (retain_graph)
        timed.append("cudagraph" if cudagraph else "events")
        return [1.0, 2.0, 3.0, 4.0, 5.0], "stub"

    bench._time = stub_time
    bench._peak_memory = lambda fn, dys: torch.autograd.backward(fn(), dys) or 0
    real_impls = bench._impls

    def with_a_wrong_peer(op: str, compile_peers: bool) -> dict:
        impls = real_impls(op, compile_peers)
        native = impls["native"]

        def wrong(*args):  # 10% off: the gate must refuse to time it
            out = native(*args)
            return tuple(1.1 * o for o in out) if isinstance(out, tuple) else 1.1 * out
        return {**impls, "wrong": wrong}

    bench._impls = with_a_wrong_peer
    op, dtype = sys.argv[1], getattr(torch, sys.argv[2])
    ceilings = bench.Ceilings(1e12, 1e11, None, None)
    rows = bench.bench_op(op, model.preset("tiny"), 2, 40, dtype, ceilings, compile_peers=False)
    for r in rows:
        print(r.op, r.impl, r.mode, r.status, r.max_err, r.note[:200])
    status = {(r.impl, r.mode): r.status for r in rows}
    for impl in ("triton", "native"):
        assert status[impl, "fwd"] == status[impl, "bwd"] == "ok", (impl, status)
    assert status["wrong", "fwd"] == "incorrect", status
    ok = [r for r in rows if r.status == "ok"]
    assert all(r.p50_ms == 3.0 and r.samples == 5 and r.rate > 0 for r in ok)
    assert set(timed) == {"cudagraph" if op in bench.MEMORY_BOUND else "events"}
    print("ok")
