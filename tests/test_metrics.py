import pytest

from trainbench import metrics


def test_step_stats():
    s = metrics.step_stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 100.0 and s["n"] == 5
    # numpy's linear percentile: p10 at index 0.4, p90 at index 3.6
    assert s["p10"] == pytest.approx(1.4)
    assert s["p90"] == pytest.approx(4.0 + 0.6 * 96.0)
    assert s["spread"] == pytest.approx((s["p90"] - s["p10"]) / 3.0)


def test_throughput_and_mfu():
    # 2 devices, 0.5 s per step, 4096 tokens, 1e12 FLOPs per step, peak 2e12 FLOP/s per device:
    # 1e12 / 0.5 / 2 = 1e12 FLOP/s per device -> MFU 0.5
    t = metrics.throughput(0.5, 4096, 10**12, 2, 2e12)
    assert t["tokens_per_s"] == 8192 and t["tokens_per_s_per_device"] == 4096
    assert t["model_tflops_per_device"] == pytest.approx(1.0)
    assert t["mfu"] == pytest.approx(0.5)
    assert metrics.throughput(0.5, 4096, 10**12, 2, None)["mfu"] is None
