"""The op dispatch table: op name -> {choice: implementation}, imported without importing torch.

An implementation is a callable or a "module:function" path, imported only when a model is built,
so listing the choices (config validation) never imports PyTorch or Triton. Another backend adds
its own kernels with `register` (the Neuron backend registers its NKI ops this way) and selects
them with the same per-op config fields. Signatures (B batch, T sequence, H heads, D head_dim):

    rmsnorm(x [..., d], weight [d], eps: float) -> [..., d]
    rope(q [B, T, Hq, D], k [B, T, Hkv, D], cos [T, D], sin [T, D]) -> (q, k) rotated
                                                                       (Hugging Face rotate_half)
    swiglu(gate [..., f], up [..., f]) -> silu(gate) * up
    cross_entropy(x [N, d], head [d, V], targets [N] int64) -> mean loss   (LM head + CE)
    attention(q [B, T, Hq, D], k [B, T, Hkv, D], v [B, T, Hkv, D]) -> [B, T, Hq, D]   (causal, GQA)
"""

from __future__ import annotations

import importlib
from typing import Callable, Mapping, Union

from trainbench.errors import ConfigError

Impl = Union[Callable[..., object], str]

_NATIVE = "trainbench.backends.torch.native"
_TRITON = "trainbench.kernels.triton"

OPS: dict[str, dict[str, Impl]] = {
    "rmsnorm": {"native": f"{_NATIVE}:rmsnorm", "triton": f"{_TRITON}:rmsnorm"},
    "rope": {"native": f"{_NATIVE}:rope_qk", "triton": f"{_TRITON}:rope_qk"},
    "swiglu": {"native": f"{_NATIVE}:swiglu", "triton": f"{_TRITON}:swiglu"},
    "cross_entropy": {"native": f"{_NATIVE}:cross_entropy",
                      "triton": f"{_TRITON}:linear_cross_entropy"},
    "attention": {"native": f"{_NATIVE}:attention", "triton": f"{_TRITON}:flash_attention"},
}


def register(op: str, choice: str, impl: Impl) -> None:
    """Add `choice` as an implementation of `op`; a choice name can be registered only once."""
    if op not in OPS:
        raise ConfigError(f"op {op!r} is not dispatched; choose one of: " + ", ".join(OPS))
    if choice in OPS[op] and OPS[op][choice] != impl:
        raise ConfigError(f"op {op}: choice {choice!r} is already registered as {OPS[op][choice]}")
    OPS[op][choice] = impl


def check_choice(op: str, choice: str, prefix: str = "backend") -> None:
    """Raise ConfigError unless `choice` is registered for `op`."""
    if choice not in OPS[op]:
        raise ConfigError(f"{prefix}.{op}={choice!r} is not an implementation of {op}; "
                          "choose one of: " + ", ".join(OPS[op]))


def resolve(choices: Mapping[str, str]) -> dict[str, Callable[..., object]]:
    """The callable of every op, for choices {op: choice} naming every op of OPS."""
    missing = sorted(set(OPS) - set(choices))
    if missing:
        raise ConfigError(f"no choice given for ops {missing}")
    resolved = {}
    for op, choice in choices.items():
        check_choice(op, choice)
        impl = OPS[op][choice]
        if isinstance(impl, str):
            module_name, _, attr = impl.partition(":")
            impl = getattr(importlib.import_module(module_name), attr)
        resolved[op] = impl
    return resolved
