"""trainbench.compile without a compiler: the target grammar, the memory verdict, collectives
read from HLO text, the roofline bound and the batch search."""

import math

import pytest

from trainbench import compile as compile_lib
from trainbench import hardware
from trainbench.errors import ConfigError


@pytest.mark.parametrize("text, kind, topology", [
    ("local", "local", None),
    ("tpu:v5e:2x2", "tpu", "v5e:2x2"),
    ("tpu:v5p:4x4x4", "tpu", "v5p:4x4x4"),
    ("tpu:tpu7x:2x2x1", "tpu", "tpu7x:2x2x1"),
])
def test_targets_parse(text, kind, topology):
    target = compile_lib.parse_target(text)
    assert (target.kind, target.topology, target.name) == (kind, topology, text)


def test_an_unknown_topology_lists_the_known_generations():
    with pytest.raises(ConfigError) as err:
        compile_lib.parse_target("tpu:v9z:2x2")
    message = str(err.value)
    assert "'v9z:2x2' is not known" in message and "\n" not in message
    for generation in ("v4", "v5e", "v5p", "v6e", "tpu7x"):
        assert generation in message
    with pytest.raises(ConfigError, match="topology 'v5e:2by2' is not known"):
        compile_lib.parse_target("tpu:v5e:2by2")
    with pytest.raises(ConfigError, match="must be local or tpu:<topology>"):
        compile_lib.parse_target("gpu:h100")


def test_a_tpu_target_without_libtpu_names_the_extra(monkeypatch):
    real = compile_lib.importlib.util.find_spec
    monkeypatch.setattr(compile_lib.importlib.util, "find_spec",
                        lambda name: None if name == "libtpu" else real(name))
    with pytest.raises(ConfigError, match=r"needs the TPU compiler libtpu.*trainbench\[tpu\]"):
        compile_lib.check_compiler(compile_lib.parse_target("tpu:v5e:2x2"))
    compile_lib.check_compiler(compile_lib.parse_target("local"))  # needs nothing


def test_every_tpu_generation_has_its_hbm_in_the_hardware_table():
    for generation, entry in compile_lib.TPU_GENERATIONS.items():
        acc = hardware.accelerators()[entry]
        assert acc.memory_gb > 0 and acc.memory_bandwidth_gbps > 0 and acc.source, generation
    v5e = hardware.accelerators()["TPU v5e"]
    assert compile_lib.hbm_per_device(v5e, 1) == 16 * 2**30
    tpu7x = hardware.accelerators()["TPU7x"]
    assert compile_lib.hbm_per_device(tpu7x, 2) == 96 * 2**30  # one of two TensorCores


STATS = {"argument_size_in_bytes": 1000, "output_size_in_bytes": 900, "alias_size_in_bytes": 800,
         "temp_size_in_bytes": 500, "generated_code_size_in_bytes": 100}


def test_memory_total_and_verdict():
    fits = compile_lib.memory_section(STATS, None, 2000, "table")
    # arguments + outputs - donated aliases + temporaries + code
    assert fits["per_device_bytes"] == 1000 + 900 - 800 + 500 + 100 == 1700
    assert fits["fits"] is True and fits["headroom_bytes"] == 300
    tight = compile_lib.memory_section(STATS, None, 1699, "table")
    assert tight["fits"] is False and tight["headroom_bytes"] == -1
    unknown = compile_lib.memory_section(STATS, None, None, "no table entry")
    assert unknown["fits"] is None and unknown["headroom_bytes"] is None


def test_an_out_of_memory_compile_does_not_fit_and_keeps_what_xla_needed():
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
               "temporaries (40.00G) exceeds available HBM (15.75G).")
    out = compile_lib.memory_section(None, message, 16 * 2**30, "table")
    assert out["fits"] is False and out["oom_message"] == message
    assert out["per_device_bytes"] == 40 * 2**30
    assert out["xla_available_bytes"] == int(15.75 * 2**30)
    other = compile_lib.memory_section(None, "RESOURCE_EXHAUSTED: Used 20.5G of 15.75G hbm.",
                                       16 * 2**30, "table")
    assert other["fits"] is False and other["per_device_bytes"] == int(20.5 * 2**30)


# A compiled module in the shape XLA:TPU prints it: an all-reduce inside an all-reduce-scatter
# computation (a reduce-scatter), an async all-gather pair, a tuple all-reduce, a permute.
HLO = """\
HloModule jit_step

%all-reduce-scatter.8 (input_0: f32[256,64], input_1: f32[64,64]) -> (f32[64,64], f32[16,64]) {
  %input_0 = f32[256,64]{1,0:T(8,128)} parameter(0)
  %input_1 = f32[64,64]{1,0:T(8,128)} parameter(1)
  %all-reduce.63 = (f32[256,64]{1,0:T(8,128)}, f32[64,64]{1,0:T(8,128)}) all-reduce(%input_0, %input_1), channel_id=1, replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %tuple = (f32[64,64]{1,0}, f32[16,64]{1,0}) tuple(%a, %b)
}

ENTRY %main.47_spmd (param: f32[64,64], param.1: bf16[16,1024]) -> f32[] {
  %param = f32[64,64]{1,0:T(8,128)} parameter(0)
  %param.1 = bf16[16,1024]{1,0:T(8,128)(2,1)} parameter(1)
  %all-gather-start = (bf16[16,1024]{1,0}, bf16[64,1024]{1,0}) all-gather-start(%param.1), dimensions={0}
  %all-gather-done = bf16[64,1024]{1,0} all-gather-done(%all-gather-start)
  %all-reduce.62 = (f32[64,32]{1,0}, f32[]{:T(128)}) all-reduce(%param, %param), to_apply=%add
  %collective-permute-start = (f32[64,64]{1,0}, f32[64,64]{1,0}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%param), source_target_pairs={{0,1}}
  ROOT %fusion = f32[]{:T(128)} fusion(%all-gather-done), kind=kLoop, calls=%fused
}
"""


def test_collectives_are_counted_by_kind_with_their_bytes():
    got = compile_lib.collectives(HLO)
    for kind in got.values():  # every byte in one dtype's share
        assert sum(kind.pop("bytes_by_dtype").values()) == kind["bytes"]
    assert got["reduce-scatter"] == {"count": 1, "bytes": (256 * 64 + 64 * 64) * 4}
    # an async all-gather's result tuple holds its shard and the gathered array
    assert got["all-gather"] == {"count": 1, "bytes": 64 * 1024 * 2}
    # a tuple all-reduce: the larger of its results and its operands, tuples summed
    assert got["all-reduce"] == {"count": 1, "bytes": 2 * 64 * 64 * 4}
    # an async permute's result tuple holds its input, output and two u32 sync flags
    assert got["collective-permute"] == {"count": 1, "bytes": 64 * 64 * 4}
    assert got["all-to-all"] == {"count": 0, "bytes": 0}


LOOP_HLO = """HloModule jit_step, entry_computation_layout={()->f32[]}

%add (x: f32[], y: f32[]) -> f32[] {
  ROOT %sum = f32[] add(%x, %y)
}

%cond (p: (s32[], f32[64,64])) -> pred[] {
  %param.1 = (s32[], f32[64,64]{1,0}) parameter(0)
  %limit = s32[]{:T(128)} constant(12)
  %i = s32[] get-tuple-element(%param.1), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %limit), direction=LT
}

%body (p: (s32[], f32[64,64])) -> (s32[], f32[64,64]) {
  %param.2 = (s32[], f32[64,64]{1,0}) parameter(0)
  %w = f32[64,64]{1,0} get-tuple-element(%param.2), index=1
  %all-gather-start = (f32[16,64]{1,0}, f32[64,64]{1,0}) all-gather-start(%w), dimensions={0}
  %all-reduce.1 = f32[64,64]{1,0} all-reduce(%w), to_apply=%add
  ROOT %t = (s32[], f32[64,64]{1,0}) tuple(%i, %all-reduce.1)
}

%body.known (p: (s32[], f32[64,64])) -> (s32[], f32[64,64]) {
  %param.3 = (s32[], f32[64,64]{1,0}) parameter(0)
  %w.3 = f32[64,64]{1,0} get-tuple-element(%param.3), index=1
  %all-reduce.2 = f32[64,64]{1,0} all-reduce(%w.3), to_apply=%add
  ROOT %t.3 = (s32[], f32[64,64]{1,0}) tuple(%i, %all-reduce.2)
}

ENTRY %main (a: f32[64,64]) -> f32[] {
  %a = f32[64,64]{1,0} parameter(0)
  %init = (s32[], f32[64,64]{1,0}) tuple(%zero, %a)
  %while.1 = (s32[], f32[64,64]{1,0}) while(%init), condition=%cond, body=%body, metadata={op_name="jit(step)/while"}
  %while.2 = (s32[], f32[64,64]{1,0}) while(%init), condition=%cond, body=%body.known, backend_config={"known_trip_count":{"n":"5"}}
  %all-reduce.3 = f32[64,64]{1,0} all-reduce(%a), to_apply=%add
  ROOT %r = f32[] constant(0)
}
"""


def test_a_collective_in_a_loop_body_counts_once_per_iteration():
    got = compile_lib.collectives(LOOP_HLO)
    # the scanned layers' loop: `i < 12` read from its condition; the second loop's trip count
    # is XLA's known_trip_count (5); one all-reduce outside any loop
    assert got["all-gather"] == {"count": 12, "bytes": 12 * 64 * 64 * 4,
                                 "bytes_by_dtype": {"f32": 12 * 64 * 64 * 4}}
    assert got["all-reduce"] == {"count": 12 + 5 + 1, "bytes": 18 * 64 * 64 * 4,
                                 "bytes_by_dtype": {"f32": 18 * 64 * 64 * 4}}


def test_the_roofline_is_a_bound_and_says_so():
    out = compile_lib.roofline(xla_flops=2e12, xla_bytes=1e9, peak_flops=1e14, bandwidth=1e12,
                               model_flops_per_device=1e12)
    assert out["compute_s"] == pytest.approx(0.02) and out["memory_s"] == pytest.approx(1e-3)
    assert out["limited_by"] == "compute" and out["step_time_bound_s"] == pytest.approx(0.02)
    # model FLOPs are half of XLA's: the ceiling is 50% of peak
    assert out["mfu_ceiling"] == pytest.approx(0.5)
    assert "bound, not a measurement" in out["note"]
    memory_bound = compile_lib.roofline(1e9, 1e12, 1e14, 1e12, 1e9)
    assert memory_bound["limited_by"] == "memory" and memory_bound["step_time_bound_s"] == 1.0
    no_peak = compile_lib.roofline(1e9, 1e9, None, 1e12, 1e9)
    assert no_peak["mfu_ceiling"] is None and "not computed" in no_peak["note"]


def test_the_roofline_counts_at_least_the_model_flops():
    """XLA does not count a Pallas/splash custom call: with XLA's count below the model's (the
    committed llama3_70b plan: ratio 0.71), the device still does the model's FLOPs, so the
    ceiling stays at most 100%."""
    out = compile_lib.roofline(xla_flops=0.7e12, xla_bytes=1e9, peak_flops=1e14,
                               bandwidth=1e12, model_flops_per_device=1e12)
    assert out["compute_s"] == pytest.approx(0.01) and out["mfu_ceiling"] == pytest.approx(1.0)


@pytest.mark.parametrize("largest", [0, 1, 3, 4, 5, 8, 100, 1000])
def test_the_batch_search_finds_the_largest_batch_that_fits(largest):
    step, limit = 4, 512  # a mesh of 4 devices, up to 128 sequences per device
    calls = []

    def probe(batch):
        calls.append(batch)
        return compile_lib.Probe(batch, batch <= largest * step, None, 0.0)

    best, probes = compile_lib.search_batch(probe, step, limit)
    expected = min(largest, limit // step) * step
    assert best == (expected or None)
    assert [p.batch_size for p in probes] == calls and len(set(calls)) == len(calls)
    assert all(b % step == 0 and b <= limit for b in calls)
    assert len(calls) <= 2 * math.log2(limit // step) + 2  # doubling, then bisection


@pytest.mark.parametrize("per_sequence, fixed, bend", [(3, 40, 0), (3, 40, 1), (7, 10, 2)])
def test_the_batch_search_follows_the_memory_line(per_sequence, fixed, bend):
    # bytes per device grow by `per_sequence` per sequence on each of 4 devices (plus a small
    # bend upward: XLA's choices are not exactly linear); the line through two fitting probes
    # predicts the largest batch, and one probe above it proves it
    step, capacity = 4, 1000

    def used(batch):
        units = batch // step
        return fixed + per_sequence * units + bend * units * units // 50

    calls = []

    def probe(batch):
        calls.append(batch)
        return compile_lib.Probe(batch, used(batch) <= capacity, used(batch), 0.0)

    best, probes = compile_lib.search_batch(probe, step, 4096, capacity)
    expected = max(u for u in range(1, 1025) if used(u * step) <= capacity) * step
    assert best == expected
    assert len(set(calls)) == len(calls)
    if bend == 0:  # exactly linear: 1, 2, the prediction, one above it
        assert len(calls) == 4, calls
    else:
        assert len(calls) <= 10, calls
