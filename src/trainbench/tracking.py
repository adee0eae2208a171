"""Per-step metrics to the experiment trackers users already watch: TensorBoard and W&B
(`logging=tensorboard`, `logging=wandb`; off by default, docs/logging.md).

Every step of a run, warm-up included, logs its loss, step time, tokens/s (global and per
device), model TFLOP/s per device and MFU (when the device's peak is known); at the end the
run's summary (median step time, tokens/s, MFU) goes to the tracker too. Framework-free:
TensorBoard files are written with tensorboardX, which needs neither torch nor TensorFlow, so a
JAX-only install logs the same way; W&B runs offline unless `logging.mode=online`.
Only the process that writes the record logs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

if TYPE_CHECKING:
    from trainbench.config import LoggingConfig

PREFIX = "train/"
"""Tag prefix of per-step values (train/loss, train/mfu, ...); summary values use summary/."""


class Tracker(Protocol):
    """An open tracker run."""

    path: Path
    """Where its files are (recorded in the run's record)."""

    def log(self, step: int, values: Mapping[str, float]) -> None: ...

    def summary(self, values: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    """Scalars in a TensorBoard event file under folder/run_id (`tensorboard --logdir folder`)."""

    def __init__(self, folder: Path, run_id: str, cfg: LoggingConfig,
                 run_config: Mapping[str, Any]) -> None:
        from tensorboardX import SummaryWriter

        self.path = folder / run_id
        self.writer = SummaryWriter(logdir=str(self.path))
        self.writer.add_text("config", "```\n" + json.dumps(run_config, indent=2) + "\n```")

    def log(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(PREFIX + key, value, step)

    def summary(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar("summary/" + key, value, 0)

    def close(self) -> None:
        self.writer.close()


class WandB:
    """A W&B run named after the run id, with the resolved config; offline by default, so its
    files (folder/wandb/offline-run-*) stay local until `wandb sync`."""

    def __init__(self, folder: Path, run_id: str, cfg: LoggingConfig,
                 run_config: Mapping[str, Any]) -> None:
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        # console="off": trainbench's own output is not copied into the run; stats off: a
        # benchmark does not need a sampler thread competing with the timed steps.
        settings = wandb.Settings(console="off", quiet=True, x_disable_stats=True)
        self.run = wandb.init(project=cfg.project, name=run_id, dir=str(folder), mode=cfg.mode,
                              config=dict(run_config), settings=settings)
        self.path = Path(self.run.dir).parent

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log({PREFIX + key: value for key, value in values.items()}, step=step)

    def summary(self, values: Mapping[str, float]) -> None:
        self.run.summary.update({"summary/" + key: value for key, value in values.items()})

    def close(self) -> None:
        self.run.finish()


@dataclass(frozen=True)
class Kind:
    """A tracker trainbench can log to, and the package it needs."""

    package: str
    open: Callable[[Path, str, "LoggingConfig", Mapping[str, Any]], Tracker]


TRACKERS: dict[str, Kind] = {
    "tensorboard": Kind("tensorboardX", TensorBoard),
    "wandb": Kind("wandb", WandB),
}


def missing_package(name: str) -> str | None:
    """Why `logging=name` cannot run here (its package is not installed), or None."""
    from importlib.util import find_spec

    kind = TRACKERS.get(name)
    if kind is None or find_spec(kind.package) is not None:
        return None
    return (f"logging={name} needs the {kind.package} package: "
            "pip install 'trainbench[logging]'")


def start(cfg: LoggingConfig, results_dir: str, run_id: str,
          run_config: Mapping[str, Any]) -> Tracker | None:
    """Open the configured tracker for one run; None when logging is off."""
    kind = TRACKERS.get(cfg.name)
    if kind is None:
        return None
    folder = Path(cfg.dir) if cfg.dir else Path(results_dir) / cfg.name
    return kind.open(folder, run_id, cfg, run_config)


def step_values(loss: float, step_s: float, throughput: Mapping[str, float | None]
                ) -> dict[str, float]:
    """One step's values: loss, step time and trainbench.metrics.throughput at this step's time
    (MFU left out when the peak is unknown)."""
    values = {"loss": loss, "step_time_s": step_s}
    values.update({key: value for key, value in throughput.items() if value is not None})
    return values


def step_logger(tracker: Tracker, tokens_per_step: int, flops_per_step: int, devices: int,
                peak_flops_per_device: float | None) -> Callable[[int, float, float], None]:
    """The loop's `on_step`: each step's values, its throughput computed from its own time."""
    from trainbench import metrics

    def on_step(step: int, loss: float, seconds: float) -> None:
        tracker.log(step, step_values(loss, seconds, metrics.throughput(
            seconds, tokens_per_step, flops_per_step, devices, peak_flops_per_device)))

    return on_step


def summary_values(run_metrics: Mapping[str, Any]) -> dict[str, float]:
    """A record's `metrics` as summary values: the median step time and every scalar metric."""
    values = {"step_time_s": run_metrics["step_time_s"]["median"]}
    values.update({key: value for key, value in run_metrics.items() if isinstance(value, float)})
    return values


def close(tracker: Tracker) -> str | None:
    """Close a tracker; the error as text if that failed, so the run's record is still written."""
    try:
        tracker.close()
    except Exception as err:  # a tracker's flush failing must not lose the measurement
        return f"{type(err).__name__}: {err}"
    return None
