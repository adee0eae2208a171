"""Peak memory means one thing per device kind: the host RSS growth of the run on the CPU, the
framework's peak device allocation elsewhere, with the framework's own figure kept beside it."""

import numpy as np
import pytest

from trainbench import memory

MIB = 2**20


@pytest.mark.parametrize("kind, measure", [("cpu", "host_rss_growth"),
                                           ("gpu", "device_peak_allocation"),
                                           ("tpu", "device_peak_allocation"),
                                           ("neuron", "device_peak_allocation")])
def test_each_device_kind_has_one_measure(kind, measure):
    assert memory.measure_for(kind) == measure
    assert measure in memory.LABELS


@pytest.mark.parametrize("resettable", [True, False])
def test_rss_growth_sees_memory_touched_after_the_start(monkeypatch, resettable):
    if not resettable:
        monkeypatch.setattr(memory, "_reset_peak_rss", lambda: False)
    watch = memory.RssGrowth()
    if watch.start is None:
        pytest.skip("no /proc/self/status on this OS")
    block = np.ones(256 * MIB // 8)  # 256 MiB, every page written
    grown, how = watch.result()
    del block
    assert grown >= 240 * MIB, grown
    assert "RSS" in how and ("upper bound" in how) == (not watch.reset)


def test_the_record_takes_the_figure_of_the_device_kind_and_keeps_the_framework_s():
    host, framework = (100, "host RSS growth"), (70, "XLA buffer plan")
    cpu = memory.record("cpu", host, framework)
    assert cpu == {"peak_bytes": 100, "kind": "host RSS growth", "measure": "host_rss_growth",
                   "framework": {"bytes": 70, "kind": "XLA buffer plan"}}
    gpu = memory.record("gpu", host, framework)
    assert (gpu["peak_bytes"], gpu["measure"]) == (70, "device_peak_allocation")
    assert gpu["framework"] == {"bytes": 70, "kind": "XLA buffer plan"}
