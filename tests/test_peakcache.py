"""The per-machine cache of measured CPU peaks, and that runs on the CPU take their peak from it.
Probes here are stand-ins that count their calls: nothing depends on timing."""

import json

from trainbench import hardware, peakcache, runner
from trainbench.backend import DeviceInfo

VERSIONS = {"torch": "2.13.0"}


class CountingProbe:
    """A probe that returns `rate` and counts how often it ran."""

    def __init__(self, rate: float = 1e11):
        self.rate, self.calls = rate, 0

    def __call__(self) -> hardware.PeakInfo:
        self.calls += 1
        return hardware.PeakInfo(self.rate, "float32", "test matmul", "measured", "test probe",
                                 probe={"n": 8, "repeats": 2, "min_time_s": 0.1,
                                        "rate_median": self.rate, "rate_min": self.rate,
                                        "spread": 0.02})


def test_first_call_probes_and_stores_later_calls_read(tmp_path):
    probe = CountingProbe()
    first = peakcache.cpu_peak("torch", "float32", VERSIONS, probe, tmp_path, remeasure=False)
    second = peakcache.cpu_peak("torch", "float32", VERSIONS, CountingProbe(2e11), tmp_path,
                                remeasure=False)
    assert probe.calls == 1
    assert first.flops_per_s == second.flops_per_s == 1e11
    assert first.probe["cache_hit"] is False and second.probe["cache_hit"] is True
    # the record can cite how, when, under what load and where it was measured
    for peak in (first, second):
        assert peak.probe["spread"] == 0.02 and peak.probe["repeats"] == 2
        assert peak.probe["measured_at"].endswith("+00:00")
        assert len(peak.probe["load_avg_1min_before_after"]) == 2
        assert peak.probe["usable_cpus"] >= 1
        assert peak.probe["cache_file"] == str(next(tmp_path.glob("cpu_peak_torch_float32_*.json")))


def test_entries_are_per_backend_dtype_and_machine(tmp_path, monkeypatch):
    rates = {}
    for backend, dtype, versions in [("torch", "float32", VERSIONS), ("jax", "float32", VERSIONS),
                                     ("torch", "bfloat16", VERSIONS),
                                     ("torch", "float32", {"torch": "2.14.0"})]:
        probe = CountingProbe(1e9 * (len(rates) + 1))
        rates[backend, dtype, versions["torch"]] = peakcache.cpu_peak(
            backend, dtype, versions, probe, tmp_path, remeasure=False).flops_per_s
        assert probe.calls == 1
    assert len(set(rates.values())) == 4 and len(list(tmp_path.glob("*.json"))) == 4
    # a thread setting changes the machine the peak describes
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    probe = CountingProbe()
    peakcache.cpu_peak("torch", "float32", VERSIONS, probe, tmp_path, remeasure=False)
    assert probe.calls == 1


def test_remeasure_replaces_the_entry(tmp_path, monkeypatch):
    peakcache.cpu_peak("torch", "float32", VERSIONS, CountingProbe(1e9), tmp_path, remeasure=False)
    monkeypatch.setenv(peakcache.REMEASURE_ENV, "1")
    again = peakcache.cpu_peak("torch", "float32", VERSIONS, CountingProbe(3e9), tmp_path)
    assert again.flops_per_s == 3e9 and again.probe["cache_hit"] is False
    monkeypatch.delenv(peakcache.REMEASURE_ENV)
    probe = CountingProbe(5e9)
    assert peakcache.cpu_peak("torch", "float32", VERSIONS, probe, tmp_path).flops_per_s == 3e9
    assert probe.calls == 0


def test_a_damaged_or_foreign_entry_is_measured_again(tmp_path):
    peakcache.cpu_peak("torch", "float32", VERSIONS, CountingProbe(), tmp_path, remeasure=False)
    [path] = tmp_path.glob("cpu_peak_*.json")
    path.write_text("{not json")
    probe = CountingProbe(2e9)
    assert peakcache.cpu_peak("torch", "float32", VERSIONS, probe, tmp_path,
                              remeasure=False).flops_per_s == 2e9
    entry = json.loads(path.read_text())
    entry["fingerprint"]["cpu"] = "another CPU"  # copied from elsewhere under the same name
    path.write_text(json.dumps(entry))
    probe = CountingProbe(4e9)
    assert peakcache.cpu_peak("torch", "float32", VERSIONS, probe, tmp_path,
                              remeasure=False).flops_per_s == 4e9


def test_an_unknown_peak_is_returned_but_not_cached(tmp_path):
    def unknown():
        return hardware.PeakInfo(None, "bfloat16", "", "unknown", "no probe")

    peak = peakcache.cpu_peak("reference", "bfloat16", {}, unknown, tmp_path, remeasure=False)
    assert peak.flops_per_s is None and not list(tmp_path.glob("*.json"))


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(peakcache.CACHE_ENV, str(tmp_path / "mine"))
    assert peakcache.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(peakcache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert peakcache.cache_dir() == tmp_path / "xdg" / "trainbench"


class FakeCpuBackend:
    """Just what runner.device_peak reads of a backend."""

    name = "fake"

    def __init__(self, probe):
        self.probe = probe

    @classmethod
    def versions(cls):
        return {"fake": "1.0"}

    def matmul_peak(self, dtype):
        return self.probe()


def test_runs_of_a_sweep_share_one_probe(tmp_path, monkeypatch):
    monkeypatch.setenv(peakcache.CACHE_ENV, str(tmp_path))
    probe = CountingProbe()
    cpu = DeviceInfo(name="Test CPU", kind="cpu", count=1)
    peaks = [runner.device_peak(FakeCpuBackend(probe), cpu, "float32") for _ in range(3)]
    assert probe.calls == 1 and {p.flops_per_s for p in peaks} == {1e11}


def test_accelerators_use_the_datasheet_not_a_probe(tmp_path, monkeypatch):
    monkeypatch.setenv(peakcache.CACHE_ENV, str(tmp_path))
    probe = CountingProbe()
    gpu = DeviceInfo(name="NVIDIA H100 80GB HBM3", kind="gpu", count=1)
    peak = runner.device_peak(FakeCpuBackend(probe), gpu, "bfloat16")
    assert probe.calls == 0 and peak.method == "datasheet" and not list(tmp_path.iterdir())
