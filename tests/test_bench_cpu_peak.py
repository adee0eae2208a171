"""scripts/bench_cpu_peak.py: the run-to-run spread it reports, and a short real run."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("bench_cpu_peak",
                                               ROOT / "scripts" / "bench_cpu_peak.py")
bench_cpu_peak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_cpu_peak)


def test_run_to_run_spread_is_range_over_median():
    assert bench_cpu_peak.run_to_run([90.0, 100.0, 110.0]) == {"median": 100.0, "spread": 0.2}


def test_one_round_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench_cpu_peak.main(["--rounds", "1"])
    assert "--rounds 1 must be at least 2" in capsys.readouterr().err


def test_a_short_run_records_every_round(tmp_path, monkeypatch):
    small = bench_cpu_peak.hardware.ProbeSettings(n=64, repeats=2, min_time_s=0.01)
    monkeypatch.setattr(bench_cpu_peak, "OLD_PROBE", small)
    monkeypatch.setattr(bench_cpu_peak.hardware, "NUMPY_PROBE",
                        bench_cpu_peak.hardware.ProbeSettings(n=96, repeats=2, min_time_s=0.01))
    out = tmp_path / "peak.json"
    assert bench_cpu_peak.main(["--frameworks", "numpy", "--rounds", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["rounds_flops_per_s"]["numpy"]) == {"old", "trainbench"}
    assert all(len(v) == 2 and min(v) > 0 for v in result["rounds_flops_per_s"]["numpy"].values())
    assert result["summary"]["numpy"]["trainbench"]["spread"] >= 0
    assert result["cpu_count"] >= 1 and len(result["load_avg_start"]) == 3
    # numpy's own probe (its products are larger), beside the old one
    assert result["probes"]["numpy"]["trainbench"]["n"] == 96
    assert result["probes"]["numpy"]["old"]["n"] == 64


def test_a_trace_records_consecutive_windows_per_round(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_cpu_peak, "TRACE_WINDOW_S", 0.01)
    monkeypatch.setattr(bench_cpu_peak.hardware, "NUMPY_PROBE",
                        bench_cpu_peak.hardware.ProbeSettings(n=64, repeats=2, min_time_s=0.01))
    out = tmp_path / "trace.json"
    assert bench_cpu_peak.main(["--frameworks", "numpy", "--trace", "0.5", "--rounds", "2",
                                "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rounds = result["traces_flops_per_s"]["numpy"]
    assert len(rounds) == 2 and all(len(r) == 50 and min(r) > 0 for r in rounds)
    assert result["windows"]["numpy"] == {"n": 64, "repeats": 50, "min_time_s": 0.01}
    assert "spread within the process" in capsys.readouterr().out


def test_a_too_short_trace_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench_cpu_peak.main(["--trace", "0.1"])
    assert "--trace 0.1 must be at least 0.5 seconds" in capsys.readouterr().err
