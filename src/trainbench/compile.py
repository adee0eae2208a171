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
from typing import Any, Callable, Mapping, Sequence

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


_CALLEE = re.compile(r"\b(calls|to_apply|body|condition|branch_computations|"
                     r"called_computations)=(\{[^}]*\}|%?[\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_LOOP_LIMIT = re.compile(r"compare\(.*direction=LT")
_CONSTANT = re.compile(r"\bconstant\((\d+)\)")


def _trip_count(condition: list[str]) -> int | None:
    """Iterations of a while loop from its condition computation's lines: `i < N` with N a
    constant, as jax.lax.scan lowers (a counter from 0). None if the condition is not of that
    form."""
    constants = [int(c) for line in condition for c in _CONSTANT.findall(line)]
    root = next((line for line in condition if line.lstrip().startswith("ROOT")), "")
    if _LOOP_LIMIT.search(root) and len(constants) == 1:
        return constants[0]
    return None


def _executions(computations: dict[str, list[str]], entry: str) -> dict[str, int]:
    """How many times each computation runs per execution of `entry`: a while loop's body runs
    its trip count (backend_config known_trip_count, else read from the condition) times per
    run of its caller, every other called computation once per call."""
    edges: dict[str, list[tuple[str, int]]] = {name: [] for name in computations}
    for name, lines in computations.items():
        for line in lines:
            callees = {key: [c.strip().lstrip("%") for c in value.strip("{}").split(",")
                             if c.strip()]
                       for key, value in _CALLEE.findall(line)}
            trips = 1
            if " while(" in line and callees.get("body"):
                known = _TRIP_COUNT.search(line)
                cond = callees.get("condition", [""])[0]
                trips = (int(known.group(1)) if known
                         else _trip_count(computations.get(cond, [])) or 1)
            for key, names in callees.items():
                for callee in names:
                    if callee in computations:
                        edges[name].append((callee, trips if key == "body" else 1))
    runs: dict[str, int] = {}

    def visit(name: str, times: int) -> None:
        runs[name] = runs.get(name, 0) + times
        for callee, factor in edges.get(name, []):
            visit(callee, times * factor)

    visit(entry, 1)
    return runs


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """Count and bytes per kind of the collectives one step executes, from a compiled
    (per-device) HLO module.

    An op counts once per execution: once where it appears in straight-line code, its loop's
    trip count of times inside a while body (scanned layers; the trip count is XLA's
    known_trip_count, else the constant of the loop condition `i < N`). Asynchronous pairs
    count as their -start op. XLA:TPU emits a reduce-scatter as an all-reduce inside a
    computation named all-reduce-scatter: it counts as a reduce-scatter. Bytes are the larger
    of an op's operands and its result on one device (tuples summed; of an asynchronous -start
    op, its largest array): the gathered arrays of an all-gather, the arrays before they are
    scattered for a reduce-scatter, the reduced arrays of an all-reduce; `bytes_by_dtype` splits
    them by element type (of an op's first array; a weight gathered in bf16 after its cast is
    half the traffic of one gathered in f32)."""
    types: dict[str, str] = {}
    found: list[tuple[str, str, bool, str, str]] = []
    computations: dict[str, list[str]] = {}
    computation, entry = "", ""
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            computation = header.group(1)
            computations[computation] = []
            if line.startswith("ENTRY"):
                entry = computation
            continue
        computations.setdefault(computation, []).append(line)
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, type_text, opcode, rest = m.groups()
        types[name] = type_text
        kind = opcode.removesuffix("-start")
        if kind == "all-reduce" and computation.startswith("all-reduce-scatter"):
            kind = "reduce-scatter"
        if kind in COLLECTIVES:
            found.append((type_text, kind, opcode.endswith("-start"), rest.split(")", 1)[0],
                          computation))
    runs = _executions(computations, entry) if entry else {}
    out: dict[str, dict[str, Any]] = {kind: {"count": 0, "bytes": 0, "bytes_by_dtype": {}}
                                      for kind in COLLECTIVES}
    for type_text, kind, is_async, operands, computation in found:
        times = runs.get(computation, 1)
        arrays = _ARRAY.findall(type_text)
        if is_async:  # the -start result tuple holds its input, its output and sync flags
            sizes = _array_bytes(type_text)
            size = max(sizes, default=0)
            dtype = [d for d, _ in arrays if d in _BYTES_PER_ELEMENT][sizes.index(size)] \
                if sizes else "?"
        else:
            operand_bytes = sum(sum(_array_bytes(types.get(o, "")))
                                for o in _OPERAND.findall(operands))
            size = max(sum(_array_bytes(type_text)), operand_bytes)
            dtype = arrays[0][0] if arrays else "?"
        entry_out = out[kind]
        entry_out["count"] += times
        entry_out["bytes"] += times * size
        entry_out["bytes_by_dtype"][dtype] = entry_out["bytes_by_dtype"].get(dtype, 0) \
            + times * size
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


def search_batch(probe: Callable[[int], Probe], step: int, limit: int,
                 capacity: int | None = None) -> tuple[int | None, list[Probe]]:
    """The largest global batch, a multiple of `step` (the devices of the mesh) up to `limit`,
    that fits, and every probe in the order run.

    Without `capacity` (bytes per device), or probes without byte counts: doubling from `step`
    until a batch does not fit, then bisecting between the last that fit and the first that did
    not. With them, memory is taken as linear in the batch (the activations grow with it): once
    two batches fit, the next probe is where the line through their bytes meets the capacity;
    once one does not fit, where the line between the largest fit and the smallest non-fit
    (XLA's needed bytes) meets it; when the same end of the bracket moved twice in a row, a
    bisection (the line's guesses can creep when memory is not linear). An exact line ends in
    four probes: 1, 2, the prediction, one step above it. Each probe is a full compile
    (minutes for a large model), so the line saves most of them. None if even `step` does not
    fit."""
    tried: dict[int, Probe] = {}
    top = limit // step
    good: Probe | None = None  # the largest batch that fit
    bad: Probe | None = None   # the smallest that did not
    fitted: list[Probe] = []
    units, moved = 1, ""

    def line(a: Probe | None, b: Probe | None) -> int | None:
        """Where the line through a's and b's bytes meets the capacity, in units of step."""
        if capacity is None or a is None or b is None or None in (a.per_device_bytes,
                                                                   b.per_device_bytes):
            return None
        if b.per_device_bytes <= a.per_device_bytes or b.batch_size == a.batch_size:
            return None
        slope = (b.per_device_bytes - a.per_device_bytes) / (b.batch_size - a.batch_size)
        return int((a.batch_size + (capacity - a.per_device_bytes) / slope) // step)

    while True:
        if units * step not in tried:
            tried[units * step] = probe(units * step)
        result = tried[units * step]
        side = "good" if result.fits else "bad"
        if result.fits:
            good = result if good is None or result.batch_size > good.batch_size else good
            fitted.append(result)
        elif bad is None or result.batch_size < bad.batch_size:
            bad = result
        low = good.batch_size // step if good else 0
        high = bad.batch_size // step if bad else top + 1
        if high - low <= 1:
            break
        if bad is not None:
            guess = None if moved == side else line(good, bad)
            guess = (low + high) // 2 if guess is None else guess
        else:
            known = sorted((p for p in fitted if p.per_device_bytes is not None),
                           key=lambda p: p.batch_size)
            guess = line(*known[-2:]) if len(known) >= 2 else None
            guess = low * 2 if guess is None else guess
        moved = side
        units = max(low + 1, min(high - 1, guess))
    return (good.batch_size if good else None), list(tried.values())


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


COUNTS_NOTE = "XLA cost analysis of one device's partitioned program"
SCANNED_COUNTS_NOTE = (
    "XLA's cost analysis counts a while loop's body once, so with backend.scan_layers these are "
    "XLA's counts of the same step with its layers unrolled, extrapolated from two unrolled "
    "compiles of 1 and 2 layers (same mesh, batch, sequence): c(1) + (n_layers - 1) x "
    "(c(2) - c(1)); the scanned program's own counts are under xla_scanned_program_counts")


def layer_extrapolated_cost(cfg: Any, devices: Sequence[Any], batch: int,
                            aot: Any) -> dict[str, float]:
    """XLA's cost counts of cfg's step with its n_layers unrolled, from unrolled compiles of 1
    and 2 layers: a layer adds the same work, so c(L) = c(1) + (L - 1) (c(2) - c(1)). What a
    scanned step's counts would be if XLA multiplied a loop body by its trip count."""
    import dataclasses

    costs = []
    for layers in (1, 2):
        small = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_layers=layers),
                                    backend=dataclasses.replace(cfg.backend, scan_layers=False))
        costs.append(aot.compile_step(small, devices, batch).cost)
    extra = cfg.model.n_layers - 1
    return {key: costs[0][key] + extra * (costs[1][key] - costs[0][key])
            for key in costs[0] if key in costs[1]}


def compile_section(target: Target, compiled: Any, devices: int, per_chip: int,
                    model_flops: int, compute_dtype: str,
                    unrolled_cost: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The record's `compile` section from one compile (backends/jax/aot.Compiled);
    `unrolled_cost`: layer_extrapolated_cost's counts of a scanned step, used for the FLOP and
    byte counts in place of the scanned program's own."""
    facts = _chip_facts(compiled.device_kind, per_chip, compute_dtype)
    memory = memory_section(compiled.memory, compiled.oom_message, facts["hbm_bytes"],
                            f"{facts['chip']}: hardware table memory_gb (GiB) / {per_chip} "
                            f"device(s) per chip; {facts['source']}")
    cost = compiled.cost if unrolled_cost is None else unrolled_cost
    xla_flops = cost.get("flops")
    xla_bytes = cost.get("bytes accessed")
    comms = collectives(compiled.hlo_text)
    scanned = {} if unrolled_cost is None else {"xla_scanned_program_counts": compiled.cost}
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
        "xla_transcendentals": cost.get("transcendentals"),
        "xla_counts_note": COUNTS_NOTE if unrolled_cost is None else SCANNED_COUNTS_NOTE,
        **scanned,
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
            # the batch splits over the data-parallel devices (dp x fsdp); the tensor axis's
            # devices share each slice
            step = int(compiled.mesh["dp"] * compiled.mesh["fsdp"])
            capacity = _chip_facts(compiled.device_kind, per_chip,
                                   cfg.precision.compute_dtype)["hbm_bytes"]
            best, probes = search_batch(probe, step, step * MAX_PER_DEVICE_BATCH, capacity)
            search_out = {"best_batch_size": best,
                          "best_per_device_batch": None if best is None else best // step,
                          "per_device_note": "sequences per data-parallel device (dp x fsdp); "
                                             "the tensor-parallel devices share them",
                          "limit_per_device_batch": MAX_PER_DEVICE_BATCH,
                          "probes": [dataclasses.asdict(p) for p in probes]}
            if best is not None:
                record["batch_size"] = best
                record["config"]["train"]["batch_size"] = best
                # named by the batch it found (the same command always finds the same one)
                found = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                                           batch_size=best))
                record["run_id"] = run_id(found, model_name, target, search)
                compiled = compile_at(best)
    except aot.CompileFailed as err:
        record["cause"] = f"CompileFailed: {err}"
        return record
    batch = record["batch_size"]
    unrolled_cost = None
    if cfg.backend.scan_layers and compiled.memory is not None:
        try:
            unrolled_cost = layer_extrapolated_cost(cfg, devices, batch, aot)
        except aot.CompileFailed as err:
            record["cause"] = f"CompileFailed (1- and 2-layer cost compiles): {err}"
            return record
    model_flops = flops.training_flops(cfg.model, batch, t.seq_len, t.attention_flops)
    devices_used = int(math.prod(compiled.mesh.values()))
    record.update({
        "status": STATUS,
        "device": {"name": _chip_facts(compiled.device_kind, per_chip,
                                       cfg.precision.compute_dtype)["chip"],
                   "kind": compiled.platform, "count": devices_used,
                   "device_kind": compiled.device_kind, "mesh": compiled.mesh,
                   "attention": cfg.backend.attention, "remat": cfg.backend.remat,
                   "scan_layers": cfg.backend.scan_layers},
        "flops": {"per_step": model_flops, "attention": t.attention_flops,
                  "convention": flops.convention(t.attention_flops),
                  "breakdown": flops.flops_breakdown(cfg.model, batch, t.seq_len,
                                                     t.attention_flops)},
        "compile": compile_section(target, compiled, devices_used, per_chip, model_flops,
                                   cfg.precision.compute_dtype, unrolled_cost),
    })
    if search_out is not None:
        record["compile"]["search"] = search_out
    return record
