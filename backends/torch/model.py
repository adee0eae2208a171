"""The shared Llama-architecture model (docs/design.md, "The model") as an nn.Module.

Module parameter names are the canonical names plus ".weight" (`layers.0.wq.weight` holds
`layers.0.wq`), registered in canonical order. Canonical matrices are (in, out) while nn.Linear
stores (out, in), so `load_canonical` and `export_canonical` transpose every matrix except the
embedding table, which both store as [vocab, d_model]. Each op is called through the callables
resolved from the dispatch table (ops.py), so a kernel choice changes no model code.
Shapes: B batch, T sequence, d d_model, Hq/Hkv heads, D head_dim, V vocab.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from trainbench import ops as reference_ops
from trainbench.model import ModelConfig, check_params

Ops = Mapping[str, Callable[..., torch.Tensor]]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, op: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.op = eps, op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x, self.weight, self.eps)


def _linear(d_in: int, d_out: int) -> nn.Linear:
    return nn.Linear(d_in, d_out, bias=False)


class Block(nn.Module):
    """Pre-norm block: h + attention(attn_norm(h)), then h + mlp(mlp_norm(h))."""

    def __init__(self, cfg: ModelConfig, ops: Ops) -> None:
        super().__init__()
        d = cfg.d_model
        self.head_dim = cfg.head_dim
        self.ops = ops
        self.attn_norm = RMSNorm(d, cfg.norm_eps, ops["rmsnorm"])
        self.wq = _linear(d, cfg.q_dim)
        self.wk = _linear(d, cfg.kv_dim)
        self.wv = _linear(d, cfg.kv_dim)
        self.wo = _linear(cfg.q_dim, d)
        self.mlp_norm = RMSNorm(d, cfg.norm_eps, ops["rmsnorm"])
        self.w_gate = _linear(d, cfg.d_ff)
        self.w_up = _linear(d, cfg.d_ff)
        self.w_down = _linear(cfg.d_ff, d)

    def attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        rope = self.ops["rope"]
        # heads counted from the projection's width: under tensor parallelism each rank holds
        # n_heads/tp query and n_kv_heads/tp kv heads (parallel.py), whole GQA groups
        q, k = rope(self.wq(x).view(B, T, -1, self.head_dim),
                    self.wk(x).view(B, T, -1, self.head_dim), cos, sin)
        v = self.wv(x).view(B, T, -1, self.head_dim)
        o = self.ops["attention"](q, k, v)  # (B, T, Hq, D)
        return self.wo(o.reshape(B, T, -1))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(self.ops["swiglu"](self.w_gate(x), self.w_up(x)))

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = h + self.attention(self.attn_norm(h), cos, sin)
        return h + self.mlp(self.mlp_norm(h))


class Transformer(nn.Module):
    """tokens [B, T] -> mean next-token cross-entropy (logits[:, :-1] predict tokens[:, 1:])."""

    def __init__(self, cfg: ModelConfig, ops: Ops) -> None:
        super().__init__()
        self.cfg, self.ops = cfg, ops
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, ops) for _ in range(cfg.n_layers))
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, ops["rmsnorm"])
        self.lm_head = None if cfg.tie_embeddings else _linear(cfg.d_model, cfg.vocab)
        # float64 angles rounded once to float32, like the reference (trainbench.ops.rope_cos_sin)
        cos, sin = reference_ops.rope_cos_sin(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta,
                                              np.float32)
        self.register_buffer("cos", torch.from_numpy(cos), persistent=False)  # (max_T, D)
        self.register_buffer("sin", torch.from_numpy(sin), persistent=False)

    def head_weight(self) -> torch.Tensor:
        """The LM head as [d, V]: a transposed view of the [V, d] lm_head or embedding."""
        return (self.embed if self.lm_head is None else self.lm_head).weight.t()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, T = tokens.shape
        cos, sin = self.cos[:T], self.sin[:T]
        h = self.embed(tokens)  # (B, T, d)
        for layer in self.layers:
            h = layer(h, cos, sin)
        # the last position predicts nothing; normed first, then dropped (the norm is per
        # position), as under sequence parallelism h is split over T until the norm's output
        x = self.final_norm(h)[:, :-1].reshape(B * (T - 1), -1)  # (N, d)
        targets = tokens[:, 1:].reshape(-1)
        return self.ops["cross_entropy"](x, self.head_weight(), targets)


def _is_transposed(name: str, ndim: int) -> bool:
    return ndim == 2 and name != "embed"


def canonical_names(model: Transformer) -> dict[str, str]:
    """canonical name -> module parameter name, in canonical order."""
    return {name.removesuffix(".weight"): name for name, _ in model.named_parameters()}


def load_canonical(model: Transformer, params: Mapping[str, np.ndarray]) -> None:
    """Copy the canonical mapping into the (unsharded) model's parameters."""
    check_params(model.cfg, params)
    modules = dict(model.named_parameters())
    with torch.no_grad():
        for canonical, name in canonical_names(model).items():
            value = np.asarray(params[canonical], dtype=np.float32)
            if _is_transposed(canonical, value.ndim):
                value = value.T
            modules[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP-sharded DTensor) parameter or gradient."""
    full_tensor = getattr(t, "full_tensor", None)  # DTensor: all-gather (every rank must call)
    return full_tensor() if full_tensor is not None else t


def export_canonical(model: nn.Module, grads: bool = False) -> dict[str, np.ndarray]:
    """The weights (or their gradients) as the canonical float32 mapping."""
    out = {}
    for name, p in model.named_parameters():
        canonical = name.removesuffix(".weight")
        t = p.grad if grads else p
        if t is None:
            raise RuntimeError(f"parameter {canonical} has no gradient; run a backward first")
        value = _full(t.detach()).float().cpu().numpy()
        out[canonical] = np.ascontiguousarray(value.T) if _is_transposed(canonical, value.ndim) \
            else value
    return out
