"""Compiled plans (docs/records.md, "Compiled plans"): what the target's compiler says about a run's
step, without the hardware. Framework-free: the target grammar, the memory verdict, the
collectives of the compiled HLO text, the roofline bound, the batch search and the record.
The JAX side (backends/jax/aot.py) builds and compiles the step and hands back its analyses.

Everything here is what a compiler reports or a bound derived from it, never a measurement:
the record's status is `compiled`, and the report keeps these records out of measured MFU.
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from trainbench import hardware
from trainbench.errors import ConfigError

STATUS = "compiled"
"""Record status of a compiled plan (a measured run says ok, diverged or failed)."""

TPU_GENERATIONS = {"v4": "TPU v4", "v5e": "TPU v5e", "v5p": "TPU v5p", "v6e": "TPU v6e",
                   "tpu7x": "TPU7x"}
"""libtpu's topology prefix -> the hardware table entry of that chip."""

TOPOLOGY_EXAMPLES = ("v4:2x2x1", "v5e:2x2", "v5e:16x16", "v5p:4x4x4", "v6e:2x2", "v6e:16x16",
                     "tpu7x:2x2x1")

HBM_UNIT_BYTES = 2**30
"""Google's TPU pages print HBM as "16 GB" for v5e, yet libtpu's compiler reports 15.75 G of a
v5e chip's HBM usable for a program, more than 16e9 bytes leave: the figures are GiB."""

SEARCH_MODES = ("none", "batch")

_DIMS = re.compile(r"^\d+(x\d+){1,2}$")


@dataclass(frozen=True)
class Target:
    """Where a step is compiled for: `local` (this machine's JAX devices) or a TPU topology."""

    kind: str
    """local | tpu"""
    topology: str | None = None
    """libtpu's topology name, e.g. v5e:2x2 (tpu only)."""

    @property
    def name(self) -> str:
        return "local" if self.kind == "local" else f"tpu:{self.topology}"


def parse_target(text: str) -> Target:
    """`local` or `tpu:<generation>:<dims>` (e.g. tpu:v6e:16x16); ConfigError naming the value
    and, for an unknown generation, the known ones."""
    if text == "local":
        return Target("local")
    kind, _, topology = text.partition(":")
    if kind != "tpu" or not topology:
        raise ConfigError(f"target={text!r} must be local or tpu:<topology> (e.g. "
                          "tpu:v5e:2x2, tpu:v6e:16x16, tpu:tpu7x:2x2x1)")
    generation, _, dims = topology.partition(":")
    if generation not in TPU_GENERATIONS or not _DIMS.match(dims):
        raise ConfigError(f"target={text!r}: topology {topology!r} is not known; use "
                          f"<generation>:<chips per axis> with a generation among "
                          f"{', '.join(TPU_GENERATIONS)}, e.g. {', '.join(TOPOLOGY_EXAMPLES)}")
    return Target("tpu", topology)


def check_compiler(target: Target) -> None:
    """A TPU target needs libtpu (the `tpu` extra); ConfigError naming it when it is missing."""
    if target.kind == "tpu" and importlib.util.find_spec("libtpu") is None:
        raise ConfigError(f"target={target.name} needs the TPU compiler libtpu, which is not "
                          "installed: pip install 'trainbench[tpu]'")


# ---- memory ------------------------------------------------------------------------------------

MEMORY_FIELDS = {"argument_bytes": "argument_size_in_bytes",
                 "output_bytes": "output_size_in_bytes",
                 "temp_bytes": "temp_size_in_bytes",
                 "generated_code_bytes": "generated_code_size_in_bytes",
                 "alias_bytes": "alias_size_in_bytes"}
"""Record key -> field of XLA's CompiledMemoryStats (per device)."""

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_OOM_PATTERNS = (  # XLA:TPU's out-of-memory messages: (needed, available)
    re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM "
               r"\(([\d.]+)([KMGT]?)\)"),
    re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm"),
)


def _size(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit])


def hbm_per_device(accelerator: hardware.Accelerator, devices_per_chip: int) -> int:
    """HBM bytes one device of the target owns: the chip's table figure (GiB) over its devices."""
    return int(accelerator.memory_gb * HBM_UNIT_BYTES) // devices_per_chip


def memory_section(stats: Mapping[str, int] | None, oom_message: str | None,
                   capacity: int | None, capacity_source: str) -> dict[str, Any]:
    """Per-device memory of the compiled step against the device's HBM.

    per_device_bytes = arguments + outputs - donated aliases + temporaries + generated code.
    When the compiler refused the program for lack of memory, fits is false and the bytes it
    needed (from its message) stand in for the total."""
    out: dict[str, Any] = {key: None for key in MEMORY_FIELDS}
    total: int | None = None
    xla_available: int | None = None
    if stats is not None:
        out.update({key: int(stats[field]) for key, field in MEMORY_FIELDS.items()})
        total = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                 + out["temp_bytes"] + out["generated_code_bytes"])
    if oom_message is not None:
        for pattern in _OOM_PATTERNS:
            found = pattern.search(oom_message)
            if found:
                total = _size(*found.group(1, 2))
                xla_available = _size(*found.group(3, 4))
                break
    if oom_message is not None:
        fits: bool | None = False
    elif total is None or capacity is None:
        fits = None
    else:
        fits = total <= capacity
    out.update({
        "per_device_bytes": total,
        "hbm_bytes": capacity,
        "hbm_source": capacity_source,
        "xla_available_bytes": xla_available,
        "fits": fits,
        "headroom_bytes": None if total is None or capacity is None else capacity - total,
        "oom_message": oom_message,
    })
    return out


# ---- collectives -------------------------------------------------------------------------------

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_BYTES_PER_ELEMENT = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1,
                      "f8e5m2": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "f8e4m3b11fnuz": 1,
                      "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                      "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")
_OPERAND = re.compile(r"%([\w.\-]+)")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def _array_bytes(type_text: str) -> list[int]:
    """Bytes of every array in an HLO type (a tuple has several)."""
    sizes = []
    for dtype, dims in _ARRAY.findall(type_text):
        if dtype in _BYTES_PER_ELEMENT:
            count = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
            sizes.append(int(count * _BYTES_PER_ELEMENT[dtype]))
    return sizes


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """Count and bytes per kind of the collectives in a compiled (per-device) HLO module.

    An op counts once where it appears in the program text (asynchronous pairs as their -start
    op; a collective inside a loop body counts once, not per iteration). XLA:TPU emits a
    reduce-scatter as an all-reduce inside a computation named all-reduce-scatter: it counts as
    a reduce-scatter. Bytes are the larger of an op's operands and its result on one device
    (tuples summed; of an asynchronous -start op, its largest array): the gathered arrays of an all-gather, the arrays before they are
    scattered for a reduce-scatter, the reduced arrays of an all-reduce."""
    types: dict[str, str] = {}
    found: list[tuple[str, str, str]] = []
    computation = ""
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            computation = header.group(1)
            continue
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, type_text, opcode, rest = m.groups()
        types[name] = type_text
        kind = opcode.removesuffix("-start")
        if kind == "all-reduce" and computation.startswith("all-reduce-scatter"):
            kind = "reduce-scatter"
        if kind in COLLECTIVES:
            found.append((type_text, kind, opcode.endswith("-start"), rest.split(")", 1)[0]))
    out = {kind: {"count": 0, "bytes": 0} for kind in COLLECTIVES}
    for type_text, kind, is_async, operands in found:
        out[kind]["count"] += 1
        if is_async:  # the -start result tuple holds its input, its output and sync flags
            out[kind]["bytes"] += max(_array_bytes(type_text), default=0)
            continue
        operand_bytes = sum(sum(_array_bytes(types.get(o, "")))
                            for o in _OPERAND.findall(operands))
        out[kind]["bytes"] += max(sum(_array_bytes(type_text)), operand_bytes)
    return out


# ---- roofline ----------------------------------------------------------------------------------

def roofline(xla_flops: float | None, xla_bytes: float | None, peak_flops: float | None,
             bandwidth: float | None, model_flops_per_device: float) -> dict[str, Any]:
    """A lower bound on the step time of one device, max(FLOPs / peak, bytes / HBM bandwidth)
    (the roofline model, Williams et al. 2009), and the MFU ceiling it implies: model FLOPs per
    device / (bound x peak), at most 1. The FLOPs are the larger of XLA's count and the model's:
    XLA does not count custom calls (Pallas/splash kernels), and a device does at least the
    model's matmuls. A BOUND, never a measurement; None where the peak (e.g. no fp32 peak for
    TPUs) or a count is missing."""
    note = ("bound, not a measurement: max(max(XLA FLOPs, model FLOPs) / peak, XLA bytes "
            "accessed / HBM bandwidth) per device; communication and overlap ignored")
    if None in (xla_flops, xla_bytes, peak_flops, bandwidth):
        return {"step_time_bound_s": None, "mfu_ceiling": None, "limited_by": None,
                "note": note + "; not computed: a peak, bandwidth or XLA count is missing"}
    flops = max(xla_flops, model_flops_per_device)
    compute_s, memory_s = flops / peak_flops, xla_bytes / bandwidth
    bound = max(compute_s, memory_s)
    return {"step_time_bound_s": bound, "compute_s": compute_s, "memory_s": memory_s,
            "limited_by": "compute" if compute_s >= memory_s else "memory",
            "mfu_ceiling": model_flops_per_device / (bound * peak_flops) if bound > 0 else None,
            "note": note}


FLOP_RATIO_NOTE = ("XLA FLOPs x devices / trainbench model FLOPs. XLA also counts element-wise "
                   "ops (norms, rope, softmax, SwiGLU gate, loss), the optimizer, the masked "
                   "half of causal attention with attention=xla and recomputation with remat, so "
                   "the ratio is above 1; a Pallas/Mosaic kernel is a custom call XLA does not "
                   "count, so with attention=pallas or splash it can fall below 1")


# ---- batch search ------------------------------------------------------------------------------

@dataclass
class Probe:
    """One compile of the batch search: the global batch tried and whether it fit."""

    batch_size: int
    fits: bool | None
    per_device_bytes: int | None
    compile_s: float


def search_batch(probe: Callable[[int], Probe], step: int,
                 limit: int) -> tuple[int | None, list[Probe]]:
    """The largest global batch, a multiple of `step` (the devices of the mesh) up to `limit`,
    that fits, and every probe in the order run: doubling from `step` until a batch does not
    fit, then bisecting between the last that fit and the first that did not. None if even
    `step` does not fit."""
    tried: dict[int, Probe] = {}

    def fits(units: int) -> bool:
        if units * step not in tried:
            tried[units * step] = probe(units * step)
        return bool(tried[units * step].fits)

    good, bad, units = 0, limit // step + 1, 1
    while units < bad:
        if not fits(units):
            bad = units
            break
        good, units = units, units * 2
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return (good * step if good else None), list(tried.values())


# ---- the plan and its record -------------------------------------------------------------------

MAX_PER_DEVICE_BATCH = 1024
"""The batch search's ceiling, in sequences per device."""


def _chip_facts(device_kind: str, per_chip: int, compute_dtype: str) -> dict[str, Any]:
    """HBM, bandwidth and peak of one device of the target from the hardware table; None where
    the table lacks the chip (e.g. the CPU of a local target) or the dtype's peak."""
    from trainbench.config import PEAK_DTYPE

    acc = hardware.lookup(device_kind)
    if acc is None:
        return {"chip": device_kind, "hbm_bytes": None, "bandwidth": None, "peak": None,
                "source": f"device {device_kind!r} is not in trainbench's hardware table"}
    tflops = acc.peak_tflops.get(PEAK_DTYPE.get(compute_dtype, compute_dtype))
    return {"chip": acc.name, "hbm_bytes": hbm_per_device(acc, per_chip),
            "bandwidth": acc.memory_bandwidth_gbps * 1e9 / per_chip,
            "peak": None if tflops is None else tflops * 1e12 / per_chip, "source": acc.source}


def compile_section(target: Target, compiled: Any, devices: int, per_chip: int,
                    model_flops: int, compute_dtype: str) -> dict[str, Any]:
    """The record's `compile` section from one compile (backends/jax/aot.Compiled)."""
    facts = _chip_facts(compiled.device_kind, per_chip, compute_dtype)
    memory = memory_section(compiled.memory, compiled.oom_message, facts["hbm_bytes"],
                            f"{facts['chip']}: hardware table memory_gb (GiB) / {per_chip} "
                            f"device(s) per chip; {facts['source']}")
    xla_flops = compiled.cost.get("flops")
    xla_bytes = compiled.cost.get("bytes accessed")
    comms = collectives(compiled.hlo_text)
    return {
        "target": target.name,
        "chip": facts["chip"],
        "device_kind": compiled.device_kind,
        "devices": devices,
        "chips": devices // per_chip,
        "devices_per_chip": per_chip,
        "mesh": compiled.mesh,
        "memory": memory,
        "xla_flops": xla_flops,
        "xla_bytes_accessed": xla_bytes,
        "xla_transcendentals": compiled.cost.get("transcendentals"),
        "xla_counts_note": "XLA cost analysis of one device's partitioned program",
        "flop_ratio": None if xla_flops is None else xla_flops * devices / model_flops,
        "flop_ratio_note": FLOP_RATIO_NOTE,
        "collectives": comms,
        "collective_bytes": sum(c["bytes"] for c in comms.values()),
        "roofline": roofline(xla_flops, xla_bytes, facts["peak"], facts["bandwidth"],
                             model_flops / devices),
        "peak_flops_per_device": facts["peak"],
        "hbm_bandwidth_per_device": facts["bandwidth"],
        "lower_s": compiled.lower_s,
        "compile_s": compiled.compile_s,
    }


def run_id(cfg: Any, model_name: str, target: Target, search: str) -> str:
    """The run's id (trainbench.runner.run_id) prefixed by the target and the search."""
    from trainbench import runner

    slug = target.name.replace(":", "-")
    return f"compile_{slug}{'_search' if search == 'batch' else ''}_" + runner.run_id(
        cfg, model_name, "jax")


def plan(cfg: Any, model_name: str, target: Target, search: str, aot: Any,
         versions: Mapping[str, str]) -> dict[str, Any]:
    """Compile the run `cfg` describes for `target` (with the batch search when search=batch)
    and return its record. `aot` is backends/jax/aot. ConfigError for a bad config or target,
    before any compile; a compiler error becomes a record with status failed."""
    import dataclasses
    import datetime as dt

    from trainbench import env, flops, model, results

    if search not in SEARCH_MODES:
        raise ConfigError(f"search={search!r} must be one of: " + ", ".join(SEARCH_MODES))
    check_compiler(target)
    devices = aot.target_devices(target.topology)
    per_chip = aot.devices_per_chip(devices)
    t = cfg.train
    record: dict[str, Any] = {
        "schema": results.SCHEMA, "run_id": run_id(cfg, model_name, target, search),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "failed", "cause": None, "backend": "jax", "model": model_name,
        "precision": cfg.precision.name, "batch_size": t.batch_size, "seq_len": t.seq_len,
        "repeat": cfg.repeat, "params": model.count_params(cfg.model),
        "config": dataclasses.asdict(cfg),
        "environment": env.fingerprint(dict(versions)),
    }
    cache: dict[int, Any] = {}

    def compile_at(batch: int) -> Any:
        if batch not in cache:
            cache[batch] = aot.compile_step(cfg, devices, batch)
        return cache[batch]

    def probe(batch: int) -> Probe:
        result = compile_at(batch)
        mem = memory_section(result.memory, result.oom_message,
                             _chip_facts(result.device_kind, per_chip,
                                         cfg.precision.compute_dtype)["hbm_bytes"], "")
        return Probe(batch, mem["fits"], mem["per_device_bytes"], result.compile_s)

    try:
        compiled = compile_at(t.batch_size)  # config errors (mesh, batch) surface here first
        search_out: dict[str, Any] | None = None
        if search == "batch":
            step = int(math.prod(compiled.mesh.values()))
            best, probes = search_batch(probe, step, step * MAX_PER_DEVICE_BATCH)
            search_out = {"best_batch_size": best,
                          "best_per_device_batch": None if best is None else best // step,
                          "limit_per_device_batch": MAX_PER_DEVICE_BATCH,
                          "probes": [dataclasses.asdict(p) for p in probes]}
            if best is not None:
                record["batch_size"] = best
                record["config"]["train"]["batch_size"] = best
                compiled = compile_at(best)
    except aot.CompileFailed as err:
        record["cause"] = f"CompileFailed: {err}"
        return record
    batch = record["batch_size"]
    model_flops = flops.training_flops(cfg.model, batch, t.seq_len, t.attention_flops)
    devices_used = int(math.prod(compiled.mesh.values()))
    record.update({
        "status": STATUS,
        "device": {"name": _chip_facts(compiled.device_kind, per_chip,
                                       cfg.precision.compute_dtype)["chip"],
                   "kind": compiled.platform, "count": devices_used,
                   "device_kind": compiled.device_kind, "mesh": compiled.mesh,
                   "attention": cfg.backend.attention, "remat": cfg.backend.remat},
        "flops": {"per_step": model_flops, "attention": t.attention_flops,
                  "convention": flops.convention(t.attention_flops),
                  "breakdown": flops.flops_breakdown(cfg.model, batch, t.seq_len,
                                                     t.attention_flops)},
        "compile": compile_section(target, compiled, devices_used, per_chip, model_flops,
                                   cfg.precision.compute_dtype),
    })
    if search_out is not None:
        record["compile"]["search"] = search_out
    return record
