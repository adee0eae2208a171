"""The shared model: its shape (`ModelConfig`), named presets, parameter count and seeded init.

The parameters are a flat mapping of canonical names to NumPy arrays, every matrix stored as
(in_features, out_features) so that ``y = x @ W`` (docs/design.md, "The model"). Every backend loads
this mapping, so every backend starts from the same weights.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from trainbench.errors import ConfigError


@dataclass
class ModelConfig:
    """Shape of a Llama-architecture decoder-only transformer."""

    vocab: int = 256
    """Vocabulary size (rows of the embedding)."""
    d_model: int = 64
    """Residual stream width."""
    n_layers: int = 2
    """Number of transformer blocks."""
    n_heads: int = 4
    """Query heads per attention layer."""
    n_kv_heads: int = 2
    """Key/value heads (grouped-query attention); must divide n_heads."""
    head_dim: int = 16
    """Width of one head; even, since rotary embeddings rotate pairs."""
    d_ff: int = 176
    """Hidden width of the SwiGLU MLP."""
    rope_theta: float = 10000.0
    """Rotary embedding base."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_embeddings: bool = False
    """Whether the LM head reuses the embedding matrix (transposed)."""
    max_seq_len: int = 128
    """Longest sequence the model is trained on."""

    def __post_init__(self) -> None:
        validate_model(self)

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


_POSITIVE_INT_FIELDS = ("vocab", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                        "d_ff", "max_seq_len")


def validate_model(cfg: Any, prefix: str = "model") -> None:
    """Raise ConfigError naming the first field of `cfg` that makes no valid model."""
    for name in _POSITIVE_INT_FIELDS:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{prefix}.{name}={value!r} must be a positive integer")
    for name in ("rope_theta", "norm_eps"):
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{prefix}.{name}={value!r} must be a positive number")
    if cfg.n_heads % cfg.n_kv_heads:
        raise ConfigError(f"{prefix}.n_kv_heads={cfg.n_kv_heads} does not divide "
                          f"{prefix}.n_heads={cfg.n_heads} (grouped-query attention)")
    if cfg.head_dim % 2:
        raise ConfigError(f"{prefix}.head_dim={cfg.head_dim} must be even "
                          "(rotary embeddings rotate pairs of features)")


TENSOR_PARALLEL_FIELDS = ("n_heads", "n_kv_heads", "d_ff", "vocab")
"""The dimensions tensor parallelism splits: query and kv heads (whole heads per rank), the MLP's
hidden width, and the vocabulary of the embedding and LM head."""


def check_tensor_parallel(cfg: Any, tp: int, option: str = "backend.tensor_parallel") -> None:
    """Raise ConfigError unless `tp` (>= 1) divides every dimension tensor parallelism splits."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"{option}={tp!r} must be a positive integer")
    for name in TENSOR_PARALLEL_FIELDS:
        value = getattr(cfg, name)
        if value % tp:
            raise ConfigError(f"{option}={tp} does not divide model.{name}={value}")


@functools.cache
def _preset_table() -> dict[str, dict[str, Any]]:
    text = resources.files("trainbench").joinpath("data/presets.yaml").read_text()
    return yaml.safe_load(text)


_META_KEYS = ("source", "published_params")


def preset_names() -> list[str]:
    """Names of every preset, in the order of the preset table."""
    return list(_preset_table())


def preset_info(name: str) -> dict[str, Any]:
    """The preset's table entry: shape fields plus `source` and, if published, `published_params`."""
    table = _preset_table()
    if name not in table:
        raise ConfigError(f"model={name!r} is not a known preset; choose one of: "
                          + ", ".join(table))
    return dict(table[name])


def preset(name: str) -> ModelConfig:
    """The ModelConfig of a named preset (see data/presets.yaml for the sources)."""
    entry = preset_info(name)
    return ModelConfig(**{k: v for k, v in entry.items() if k not in _META_KEYS})


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical parameter names and shapes, in canonical order."""
    d = cfg.d_model
    shapes: dict[str, tuple[int, ...]] = {"embed": (cfg.vocab, d)}
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        shapes[p + "attn_norm"] = (d,)
        shapes[p + "wq"] = (d, cfg.q_dim)
        shapes[p + "wk"] = (d, cfg.kv_dim)
        shapes[p + "wv"] = (d, cfg.kv_dim)
        shapes[p + "wo"] = (cfg.q_dim, d)
        shapes[p + "mlp_norm"] = (d,)
        shapes[p + "w_gate"] = (d, cfg.d_ff)
        shapes[p + "w_up"] = (d, cfg.d_ff)
        shapes[p + "w_down"] = (cfg.d_ff, d)
    shapes["final_norm"] = (d,)
    if not cfg.tie_embeddings:
        shapes["lm_head"] = (d, cfg.vocab)
    return shapes


def count_params(cfg: ModelConfig) -> int:
    """Number of trainable parameters (a tied LM head is counted once)."""
    return sum(int(np.prod(s)) for s in param_shapes(cfg).values())


def init_params(cfg: ModelConfig, seed: int, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Seeded initial weights, identical for every backend and every `dtype`.

    Norm gains are ones; matrices are normal with std 0.02 (GPT-2 / Llama practice), and the two
    projections that write into the residual stream (wo, w_down) are scaled by 1/sqrt(2·n_layers)
    as in GPT-2, so the residual variance does not grow with depth. Each tensor has its own
    generator (SeedSequence(seed).spawn, in canonical order) and is drawn in float32, so tensors
    are drawn in parallel threads (NumPy releases the GIL while it fills) and a float64 run starts
    from the same values as a float32 one: an 8B model's weights take seconds, not minutes.
    """
    shapes = param_shapes(cfg)
    seeds = np.random.SeedSequence(seed).spawn(len(shapes))
    residual_std = 0.02 / np.sqrt(2 * cfg.n_layers)

    def draw(name: str, shape: tuple[int, ...], seq: np.random.SeedSequence) -> np.ndarray:
        leaf = name.rsplit(".", 1)[-1]
        if leaf.endswith("norm"):
            return np.ones(shape, dtype)
        value = np.random.default_rng(seq).standard_normal(shape, dtype=np.float32)
        value *= np.float32(residual_std if leaf in ("wo", "w_down") else 0.02)
        return value.astype(dtype, copy=False)

    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        values = pool.map(draw, shapes, shapes.values(), seeds)
        return dict(zip(shapes, values))


def check_params(cfg: ModelConfig, params: Mapping[str, np.ndarray]) -> None:
    """Raise ConfigError if `params` is not exactly the canonical mapping of `cfg`."""
    expected = param_shapes(cfg)
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing or extra:
        raise ConfigError(f"parameters do not match the model: missing {missing}, unexpected {extra}")
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise ConfigError(f"parameter {name} has shape {tuple(params[name].shape)}, "
                              f"expected {shape}")


def save_params(params: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write the canonical mapping to a safetensors file."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, str(path))


def load_params(path: str | Path) -> dict[str, np.ndarray]:
    """Read a canonical mapping written by save_params."""
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {str(path)!r} does not exist")
    return dict(load_file(str(path)))


def as_dict(cfg: ModelConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
