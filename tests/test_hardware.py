import math

import pytest

from trainbench import hardware
from trainbench.errors import ConfigError

# Device names as frameworks report them -> the entry each must resolve to.
# torch.cuda.get_device_name(); jax.devices()[0].device_kind; Neuron instance types and the
# JAX device_kind of a Trn2 logical NeuronCore ("NC_v3d").
REAL_NAMES = {
    "NVIDIA A100-SXM4-80GB": "A100",
    "NVIDIA A100-SXM4-40GB": "A100",
    "NVIDIA H100 80GB HBM3": "H100 SXM",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H200": "H200",
    "NVIDIA B200": "B200",
    "TPU v4": "TPU v4",
    "TPU v5 lite": "TPU v5e",
    "TPU v5e": "TPU v5e",
    "TPU v5": "TPU v5p",
    "TPU v5p": "TPU v5p",
    "TPU v6 lite": "TPU v6e",
    "TPU v6e": "TPU v6e",
    "TPU7x": "TPU7x",
    "trn1.2xlarge": "Trainium1",
    "trn1.32xlarge": "Trainium1",
    "trn1n.32xlarge": "Trainium1",
    "Trainium": "Trainium1",
    "trn2.48xlarge": "Trainium2",
    "trn2u.48xlarge": "Trainium2",
    "NC_v3d": "Trainium2",
    "Trainium2": "Trainium2",
    "trn3.48xlarge": "Trainium3",
    "Trainium3": "Trainium3",
}

# Real devices the table does not hold (different peaks): they must match nothing.
OTHER_NAMES = ["NVIDIA H100 NVL", "NVIDIA H200 NVL", "NVIDIA GB200", "NVIDIA A100 80GB PCIe",
               "NVIDIA A100-PCIE-40GB", "NVIDIA GeForce RTX 4090", "TPU v3", "TPU v4 lite",
               "Intel(R) Xeon(R) Platinum 8480+", "cpu", "inf2.xlarge", "NC_v3"]


def test_table_loads_with_a_source_and_a_peak_everywhere():
    table = hardware.accelerators()
    assert {"A100", "H100 SXM", "H100 PCIe", "H200", "B200", "TPU v4", "TPU v5e", "TPU v5p",
            "TPU v6e", "TPU7x", "Trainium1", "Trainium2", "Trainium3"} == set(table)
    for acc in table.values():
        assert acc.source.strip() and "accessed" in acc.source
        assert acc.peak_tflops and set(acc.peak_tflops) <= set(hardware.PEAK_DTYPES)
        assert all(v > 0 for v in acc.peak_tflops.values())
        assert acc.devices_per_chip >= 1 and acc.memory_gb > 0 and acc.memory_bandwidth_gbps > 0
        assert acc.aliases


@pytest.mark.parametrize("device_name, entry", REAL_NAMES.items())
def test_each_real_name_matches_exactly_one_entry(device_name, entry):
    matching = [a.name for a in hardware.accelerators().values() if a.matches(device_name)]
    assert matching == [entry]
    assert hardware.lookup(device_name).name == entry
    assert hardware.lookup(device_name.upper()).name == entry  # case-insensitive


@pytest.mark.parametrize("device_name", OTHER_NAMES)
def test_other_devices_match_nothing(device_name):
    assert hardware.lookup(device_name) is None


def test_entry_names_look_themselves_up():
    for name in hardware.accelerators():
        assert hardware.lookup(name).name == name


def test_ambiguous_match_is_an_error(monkeypatch):
    table = dict(hardware.accelerators())
    h100 = table["H100 SXM"]
    table["H100 copy"] = hardware.Accelerator(
        "H100 copy", h100.vendor, h100.unit, 1, dict(h100.peak_tflops), h100.memory_gb,
        h100.memory_bandwidth_gbps, h100.source, ("H100",))
    monkeypatch.setattr(hardware, "accelerators", lambda: table)
    with pytest.raises(RuntimeError, match="H100 SXM, H100 copy"):
        hardware.lookup("NVIDIA H100 80GB HBM3")


def test_datasheet_peak_of_a_gpu():
    peak = hardware.resolve_peak("NVIDIA H100 80GB HBM3", "bf16")
    assert peak.method == "datasheet" and peak.flops_per_s == 989.5e12
    assert peak.dtype == "bf16" and "h100" in peak.source.lower()
    # framework dtype names are accepted for the table's keys
    assert hardware.resolve_peak("NVIDIA H100 80GB HBM3", "bfloat16").flops_per_s == 989.5e12


def test_per_device_is_chip_peak_over_devices_per_chip():
    # A Trainium1 chip (190 TFLOP/s bf16) is 2 NeuronCores; Trainium2 (667) is 4 logical
    # NeuronCores by default (LNC=2); a TPU7x chip (2307) is 2 JAX devices.
    for name, chip_tflops, devices in (("Trainium1", 190, 2), ("Trainium2", 667, 4),
                                       ("Trainium3", 671, 4), ("TPU7x", 2307, 2),
                                       ("TPU v5p", 459, 1)):
        acc = hardware.accelerators()[name]
        assert acc.devices_per_chip == devices
        assert acc.peak_tflops["bf16"] == chip_tflops  # the table stores the chip
        assert acc.peak_flops_per_device("bf16") == pytest.approx(chip_tflops * 1e12 / devices)
    peak = hardware.resolve_peak("NC_v3d", "bf16")
    assert peak.flops_per_s == pytest.approx(667e12 / 4)
    assert "667" in peak.note and "4 devices per chip" in peak.note


def test_unknown_device_gets_no_peak_and_a_note():
    peak = hardware.resolve_peak("Acme Matrix 9000", "bf16")
    assert peak.flops_per_s is None and peak.method == "unknown"
    assert peak.note == ("device 'Acme Matrix 9000' is not in trainbench's hardware table; "
                         "MFU left empty")


def test_known_device_without_that_dtype_gets_no_peak():
    peak = hardware.resolve_peak("TPU v4", "fp32")  # Google states no fp32 peak
    assert peak.flops_per_s is None and peak.method == "unknown"
    assert "TPU v4" in peak.note and "fp32" in peak.note and "MFU left empty" in peak.note
    assert hardware.accelerators()["TPU v4"].peak_flops_per_device("fp64") is None


SMALL_PROBE = hardware.ProbeSettings(n=256, repeats=3, min_time_s=0.02)


def test_cpu_probe_measures_a_positive_finite_peak_and_its_spread():
    peak = hardware.measure_cpu_matmul_peak("float32", SMALL_PROBE)
    assert peak.method == "measured" and peak.dtype == "float32"
    assert math.isfinite(peak.flops_per_s) and peak.flops_per_s > 0
    assert peak.source.startswith("numpy ") and "matmul" in peak.source
    assert "256x256" in peak.note and "best of 3 repeats" in peak.note
    probe = peak.probe
    assert (probe["n"], probe["repeats"], probe["min_time_s"]) == (256, 3, 0.02)
    # the peak is the best repeat; the spread is over all repeats
    assert probe["rate_min"] <= probe["rate_median"] <= peak.flops_per_s
    assert probe["spread"] >= 0


def test_measured_peak_takes_the_best_repeat():
    calls = []
    peak = hardware.measured_peak(lambda: calls.append(1), hardware.ProbeSettings(2, 4, 1e-4),
                                  "float32", "test", "nothing")
    assert len(calls) >= 5  # a warm-up, then at least one product per repeat
    assert peak.flops_per_s > 0 and peak.probe["repeats"] == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": "bfloat16"}, "dtype='bfloat16' cannot be measured by the CPU probe"),
    ({"dtype": "int32"}, "choose one of: float64, float32, float16"),
    ({"probe": hardware.ProbeSettings(0, 1, 0.1)}, "n=0"),
    ({"probe": hardware.ProbeSettings(8, 0, 0.1)}, "repeats=0"),
    ({"probe": hardware.ProbeSettings(8, 1, 0)}, "min_time_s=0"),
])
def test_cpu_probe_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        hardware.measure_cpu_matmul_peak(**kwargs)


def test_cpu_name_is_a_nonempty_string():
    assert isinstance(hardware.cpu_name(), str) and hardware.cpu_name().strip()


def test_numpy_takes_its_own_larger_probe_by_default(monkeypatch):
    # NumPy's OpenBLAS ran at two speeds at 1024 on the project's machine, steadily at 2048
    assert hardware.NUMPY_PROBE.n == 2048 and hardware.CPU_PROBE.n == 1024
    monkeypatch.setattr(hardware, "NUMPY_PROBE", SMALL_PROBE)  # read at call time
    assert hardware.measure_cpu_matmul_peak("float32").probe["n"] == 256
