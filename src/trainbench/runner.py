"""One benchmark run from a validated RunConfig: check everything, train, measure, write the record.

Everything that can be checked is checked before any work starts (`prepare`), so a bad value
costs nothing and never touches a record already written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainbench import config as config_lib
from trainbench import (data, env, flops, hardware, memory, metrics, model, peakcache,
                        registry, results, tracking)
from trainbench.backend import Backend
from trainbench.config import RunConfig
from trainbench.errors import ConfigError
from trainbench.loop import run_loop


@dataclass
class Plan:
    """A run that passed every check: what to build and where its record goes."""

    cfg: RunConfig
    model_name: str
    backend_name: str
    backend_cls: type[Backend]
    source: data.SyntheticTokens | data.TokenFile
    run_id: str


def config_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def run_id(cfg: RunConfig, model_name: str, backend_name: str) -> str:
    """Readable and stable: the same resolved config always gets the same id."""
    payload = config_dict(cfg)
    for key in ("results_dir", "sweep", "logging"):  # where and how it runs, not what runs
        payload.pop(key)
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]
    t = cfg.train
    repeat = f"_r{cfg.repeat}" if cfg.repeat else ""
    # Processes of a torchrun / SLURM launch: a 2-rank run is not the 1-process run.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    repeat += f"_w{world}" if world > 1 else ""
    return (f"{backend_name}_{model_name}_b{t.batch_size}_s{t.seq_len}_{cfg.precision.name}"
            f"{repeat}_{digest}")


def prepare(cfg: RunConfig, model_name: str) -> Plan:
    """Validate the config, resolve and check the backend, open the data; raise ConfigError."""
    config_lib.validate(cfg)
    requested = cfg.backend.name
    backend_name = registry.resolve_auto() if requested == "auto" else requested
    backend_cls = registry.get(backend_name)
    if requested == "auto":
        cfg.backend = backend_cls.config_class(name=backend_name)
    available = backend_cls.availability()
    if not available.ok:
        raise ConfigError(f"backend={backend_name} cannot run here: {available.reason}")
    missing = tracking.missing_package(cfg.logging.name)
    if missing:
        raise ConfigError(missing)
    if cfg.precision.name not in backend_cls.precisions:
        raise ConfigError(f"backend={backend_name} does not support precision="
                          f"{cfg.precision.name}; it supports: " + ", ".join(backend_cls.precisions))
    backend_cls.check_config(cfg.backend, cfg.model, cfg.train)
    t = cfg.train
    source = data.make_source(cfg.data.path, cfg.data.dtype, cfg.model.vocab, t.batch_size,
                              t.seq_len, cfg.seed)
    return Plan(cfg, model_name, backend_name, backend_cls, source,
                run_id(cfg, model_name, backend_name))


def _cpu_probe(backend: Backend, compute_dtype: str) -> hardware.PeakInfo:
    """The backend's own matmul probe if it has one, else NumPy's."""
    measured = backend.matmul_peak(compute_dtype)
    if measured is not None:
        return measured
    if compute_dtype not in ("float64", "float32", "float16"):
        return hardware.PeakInfo(None, compute_dtype, "", "unknown",
                                 f"no {compute_dtype} matmul probe on the CPU for this backend; "
                                 "MFU left empty")
    return hardware.measure_cpu_matmul_peak(compute_dtype)


def device_peak(backend: Backend, device: Any, compute_dtype: str) -> hardware.PeakInfo:
    """Datasheet peak of the device; on the CPU, which has no datasheet peak here, the measured
    matmul rate of the backend's own framework (NumPy's for a backend without a probe), probed
    once per machine, backend and dtype and then read from trainbench.peakcache."""
    if device.kind != "cpu":
        return hardware.resolve_peak(device.name, config_lib.PEAK_DTYPE[compute_dtype])
    return peakcache.cpu_peak(backend.name, compute_dtype, type(backend).versions(),
                              lambda: _cpu_probe(backend, compute_dtype))


def base_record(plan: Plan) -> dict[str, Any]:
    cfg = plan.cfg
    return {
        "schema": results.SCHEMA,
        "run_id": plan.run_id,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "failed",
        "cause": None,
        "backend": plan.backend_name,
        "model": plan.model_name,
        "precision": cfg.precision.name,
        "batch_size": cfg.train.batch_size,
        "seq_len": cfg.train.seq_len,
        "repeat": cfg.repeat,
        "params": model.count_params(cfg.model),
        "config": config_dict(cfg),
    }


def execute(plan: Plan) -> tuple[dict[str, Any], Path | None]:
    """Train and measure; the primary process always writes a record (status ok, diverged or
    failed with its cause); other ranks of a multi-process run return path None."""
    cfg, t = plan.cfg, plan.cfg.train
    record = base_record(plan)
    record["environment"] = env.fingerprint(plan.backend_cls.versions())
    backend = tracker = None
    try:
        backend = plan.backend_cls(cfg.backend, cfg.model, cfg.precision, cfg.optim,
                                   total_steps=t.warmup_steps + t.steps)
        device = backend.device()
        record["device"] = {"name": device.name, "kind": device.kind, "count": device.count,
                            **device.extra}
        flop_count = flops.training_flops(cfg.model, t.batch_size, t.seq_len, t.attention_flops)
        peak = device_peak(backend, device, cfg.precision.compute_dtype)
        if backend.is_primary():
            tracker = tracking.start(cfg.logging, cfg.results_dir, plan.run_id, config_dict(cfg))
        on_step = None
        if tracker is not None:
            record["logging"] = {"name": cfg.logging.name, "path": str(tracker.path)}
            on_step = tracking.step_logger(tracker, t.batch_size * t.seq_len, flop_count,
                                           device.count, peak.flops_per_s)
        params = model.init_params(cfg.model, cfg.seed)
        rss = memory.RssGrowth()  # after the framework's start-up, before weights and steps
        loop = run_loop(backend, params, plan.source.batch, t.warmup_steps, t.steps,
                        on_step=on_step)
        record.update(_measurements(cfg, backend, device, loop, flop_count, peak,
                                    rss.result()))
        if tracker is not None and "metrics" in record:
            tracker.summary(tracking.summary_values(record["metrics"]))
    except Exception as err:  # a crash in one run is recorded, not raised: sweeps go on
        record["status"] = "failed"
        record["cause"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc()
    finally:
        if tracker is not None:
            error = tracking.close(tracker)
            if error:
                record["logging"]["close_error"] = error
    if backend is not None and not backend.is_primary():
        return record, None
    path = results.write_record(record, cfg.results_dir, plan.run_id)
    return record, path


def _measurements(cfg: RunConfig, backend: Backend, device: Any, loop: Any, flop_count: int,
                  peak: hardware.PeakInfo, host_memory: tuple[int | None, str]) -> dict[str, Any]:
    t = cfg.train
    # MAMF (Bekman, "maximum achievable matmul FLOPS"): the measured best matmul rate of the
    # device; on the CPU the peak itself is that measurement.
    mamf = peak if peak.method == "measured" else backend.matmul_peak(cfg.precision.compute_dtype)
    out: dict[str, Any] = {
        "status": loop.status,
        "cause": loop.cause,
        "loss": {"per_step": loop.losses, "first": loop.losses[0] if loop.losses else None,
                 "last": loop.losses[-1] if loop.losses else None,
                 "warmup_steps": t.warmup_steps},
        "times": {"setup_s": loop.setup_s, "first_step_s": loop.first_step_s,
                  "warmup_step_s": loop.warmup_step_s, "step_s": loop.step_s},
        "flops": {
            "per_step": flop_count,
            "attention": t.attention_flops,
            "convention": flops.convention(t.attention_flops),
            "breakdown": flops.flops_breakdown(cfg.model, t.batch_size, t.seq_len,
                                               t.attention_flops),
            "palm_per_step": flops.palm_flops(cfg.model, t.batch_size, t.seq_len),
        },
        "peak": dataclasses.asdict(peak),
        "mamf": dataclasses.asdict(mamf) if mamf is not None else
        {"flops_per_s": None, "note": f"backend {backend.name} has no matmul probe"},
        "memory": memory.record(device.kind, host_memory, backend.peak_memory()),
        "units": {"step_time": "s", "tokens_per_s": "tokens/s",
                  "model_tflops_per_device": "TFLOP/s", "mfu": "fraction of peak (0-1)",
                  "memory": "bytes"},
    }
    recompute = backend.recompute_flops(t.batch_size, t.seq_len, t.attention_flops)
    out["flops"]["recompute_per_step"] = recompute
    out["flops"]["hardware_per_step"] = flop_count + recompute
    out["backend_facts"] = backend.record_extra()
    if loop.step_s:
        stats = metrics.step_stats(loop.step_s)
        out["metrics"] = {
            "step_time_s": stats,
            **metrics.throughput(stats["median"], t.batch_size * t.seq_len, flop_count,
                                 device.count, peak.flops_per_s),
        }
        if recompute:  # HFU: the FLOPs the hardware did, recomputation included
            hardware_flops = metrics.throughput(stats["median"], 1, flop_count + recompute,
                                                device.count, peak.flops_per_s)
            out["metrics"]["hfu"] = hardware_flops["mfu"]
    return out
