"""The typed config schema (Hydra structured configs) and its registration in the ConfigStore.

Every default lives here; YAML under configs/ only adds to it. Groups: model (one entry per
preset in data/presets.yaml), backend (one per registered backend), precision, optim, data, train,
logging (none, tensorboard, wandb), experiment (YAML files in configs/experiment/).
`validate(cfg)` checks what the types cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from trainbench import model as model_lib
from trainbench import tracking
from trainbench.errors import ConfigError
from trainbench.model import ModelConfig


@dataclass
class PrecisionConfig:
    """Number formats of one run."""

    name: str = "fp32"
    """fp32 | bf16 | fp64: the name the record and the report use."""
    param_dtype: str = "float32"
    """Master weights and optimizer state."""
    compute_dtype: str = "float32"
    """Matmul inputs; also the dtype whose peak FLOP/s MFU is measured against."""


PRECISIONS = {
    "fp32": PrecisionConfig("fp32", "float32", "float32"),
    "bf16": PrecisionConfig("bf16", "float32", "bfloat16"),
    "fp64": PrecisionConfig("fp64", "float64", "float64"),
}
# Key of the hardware table's peak for each compute dtype.
PEAK_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float64": "fp64"}


@dataclass
class OptimConfig:
    """AdamW with global-norm clipping and a warm-up + cosine schedule (trainbench.optim)."""

    name: str = "adamw"
    lr: float = 1e-3
    """Peak learning rate."""
    b1: float = 0.9
    b2: float = 0.95
    """0.95 rather than 0.999: the Llama / GPT-3 recipe for short, large-batch runs."""
    eps: float = 1e-8
    weight_decay: float = 0.1
    """Decoupled; applied to matrices only (trainbench.optim.decay_mask)."""
    grad_clip: float = 1.0
    """Global-norm clip; 0 disables."""
    warmup_steps: int = 2
    """Learning-rate warm-up steps (not the untimed measurement warm-up, train.warmup_steps)."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio at the last step."""


@dataclass
class DataConfig:
    """Where the token batches come from (trainbench.data)."""

    name: str = "synthetic"
    path: Optional[str] = None
    """Token file (.npy, or a raw .bin memmap); None means deterministic synthetic tokens."""
    dtype: str = "uint16"
    """Element type of a raw .bin file (uint16 as nanoGPT writes, or uint32); .npy says its own."""


@dataclass
class TrainConfig:
    """Batch shape and the measurement protocol of docs/measurement.md."""

    batch_size: int = 8
    """Sequences per step, global (over all devices)."""
    seq_len: int = 64
    """Tokens per sequence fed to the model; the loss predicts tokens[:, 1:]."""
    steps: int = 10
    """Timed steps."""
    warmup_steps: int = 2
    """Untimed steps run first (the first one includes compilation); at least 1."""
    attention_flops: str = "causal"
    """FLOP convention for attention: causal (unmasked pairs only) or full."""


@dataclass
class BackendConfig:
    """Fields every backend's config has; each backend subclasses it with its own options."""

    name: str = MISSING


@dataclass
class AutoBackendConfig(BackendConfig):
    """Pick the most capable backend that can run on this machine."""

    name: str = "auto"


@dataclass
class SweepConfig:
    """How a multirun (`-m`) treats each run: own process, time limit, what a re-run repeats.
    Not part of a run's identity: changing it never changes the record a run writes to."""

    isolate: bool = True
    """Run each job of a sweep in its own process, so a crash or hang cannot sink the sweep."""
    timeout_s: float = 3600.0
    """Wall-clock limit of one isolated run, build included; 0 means none."""
    skip_done: bool = True
    """Skip a run whose record already exists with status ok."""
    rerun_failed: bool = False
    """Run again the runs whose record says failed or diverged (otherwise they are skipped)."""


@dataclass
class LoggingConfig:
    """Per-step metrics (loss, step time, tokens/s, MFU) to an experiment tracker
    (trainbench.tracking). Not part of a run's identity, like `sweep`."""

    name: str = "none"
    """none | tensorboard | wandb."""
    dir: Optional[str] = None
    """Folder the tracker writes into; None means <results_dir>/<name>."""
    project: str = "trainbench"
    """W&B project name."""
    mode: str = "offline"
    """W&B mode: offline (files only, `wandb sync` uploads them later), online or disabled."""


WANDB_MODES = ("offline", "online", "disabled")
LOGGERS = ("none", *tracking.TRACKERS)


@dataclass
class RunConfig:
    """One training benchmark run."""

    model: ModelConfig = MISSING
    backend: Any = MISSING
    precision: PrecisionConfig = MISSING
    optim: OptimConfig = MISSING
    data: DataConfig = MISSING
    train: TrainConfig = MISSING
    seed: int = 0
    """Seeds the initial weights and the synthetic data."""
    results_dir: str = "results"
    """Folder the run's JSON record is written into."""
    repeat: int = 0
    """Index of a repetition of the same config (own record; the report groups repeats)."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a validated RunConfig from `dataclasses.asdict` output (e.g. in a worker process)."""
    from omegaconf import OmegaConf

    from trainbench import registry

    data = dict(data)
    backend = data.pop("backend")
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), data)
    merged.backend = OmegaConf.structured(registry.get(backend["name"]).config_class(**backend))
    return OmegaConf.to_object(merged)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: RunConfig) -> None:
    """Check what the schema's types cannot; raise ConfigError naming the first bad value."""
    model_lib.validate_model(cfg.model)
    t = cfg.train
    for key in ("batch_size", "seq_len", "steps", "warmup_steps"):
        _check(getattr(t, key) >= 1, f"train.{key}={getattr(t, key)} must be at least 1")
    _check(t.seq_len >= 2, f"train.seq_len={t.seq_len} must be at least 2 (the loss predicts "
                           "each token from the ones before it)")
    _check(t.seq_len <= cfg.model.max_seq_len,
           f"train.seq_len={t.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}")
    _check(t.attention_flops in ("causal", "full"),
           f"train.attention_flops={t.attention_flops!r} must be one of: causal, full")
    _check(cfg.precision.name in PRECISIONS,
           f"precision={cfg.precision.name!r} is not known; choose one of: " + ", ".join(PRECISIONS))
    o = cfg.optim
    _check(o.lr > 0, f"optim.lr={o.lr} must be positive")
    _check(0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"optim.b1={o.b1}, optim.b2={o.b2} must be in [0, 1)")
    _check(o.eps > 0, f"optim.eps={o.eps} must be positive")
    _check(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay} must be >= 0")
    _check(o.grad_clip >= 0, f"optim.grad_clip={o.grad_clip} must be >= 0 (0 disables clipping)")
    _check(o.warmup_steps >= 0, f"optim.warmup_steps={o.warmup_steps} must be >= 0")
    _check(0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]")
    _check(cfg.data.dtype in ("uint16", "uint32"),
           f"data.dtype={cfg.data.dtype!r} must be one of: uint16, uint32")
    _check(bool(str(cfg.results_dir).strip()), "results_dir must not be empty")
    _check(cfg.repeat >= 0, f"repeat={cfg.repeat} must be >= 0")
    _check(cfg.sweep.timeout_s >= 0, f"sweep.timeout_s={cfg.sweep.timeout_s} must be >= 0 "
                                     "(0 means no limit)")
    _check(cfg.logging.name in LOGGERS,
           f"logging={cfg.logging.name!r} is not known; choose one of: " + ", ".join(LOGGERS))
    _check(cfg.logging.mode in WANDB_MODES,
           f"logging.mode={cfg.logging.mode!r} must be one of: " + ", ".join(WANDB_MODES))
    if Path(cfg.results_dir).exists():
        _check(Path(cfg.results_dir).is_dir(),
               f"results_dir={cfg.results_dir!r} exists and is not a folder")


def register(store: ConfigStore | None = None) -> None:
    """Register the schema and every built-in group entry in Hydra's ConfigStore."""
    from trainbench import registry

    cs = store or ConfigStore.instance()
    cs.store(name="trainbench_schema", node=RunConfig)
    for name in model_lib.preset_names():
        cs.store(group="model", name=name, node=model_lib.preset(name))
    for name, precision in PRECISIONS.items():
        cs.store(group="precision", name=name, node=precision)
    cs.store(group="optim", name="adamw", node=OptimConfig())
    cs.store(group="data", name="synthetic", node=DataConfig())
    cs.store(group="train", name="default", node=TrainConfig())
    for name in LOGGERS:
        cs.store(group="logging", name=name, node=LoggingConfig(name=name))
    cs.store(group="backend", name="auto", node=AutoBackendConfig())
    for name, config_class in registry.backend_configs().items():
        cs.store(group="backend", name=name, node=config_class(name=name))


__all__ = ["RunConfig", "TrainConfig", "OptimConfig", "DataConfig", "PrecisionConfig",
           "LoggingConfig", "BackendConfig", "ModelConfig", "PRECISIONS", "PEAK_DTYPE",
           "validate", "register"]

