"""The NKI kernels as PyTorch custom operators with autograd, one per dispatched op, with the
signatures of trainbench.backends.torch.ops so a backend can swap them in one at a time:

    rmsnorm(x [..., d], weight [d], eps)                  RMSNorm, float32 statistics
    swiglu(gate [..., f], up [..., f])                    silu(gate) * up
    cross_entropy(logits [N, V], targets [N])             mean softmax cross-entropy
    linear_cross_entropy(x [N, d], head [d, V], targets)  x @ head in PyTorch, then cross_entropy
    flash_attention(q [B,T,Hq,D], k [B,T,Hkv,D], v, causal=True, scale=None)

Registration follows TorchNeuron's documented path: each kernel call is a custom operator
`trainbench_nki::<kernel>` made with `torch_neuronx.nki_op(name, mutates_args=())` where
TorchNeuron is installed (else with `torch.library.custom_op`, the same API, which nki_op
builds on), with a fake (shape) implementation for torch.compile, and each forward operator gets
its backward with `register_autograd` (not torch.autograd.Function, which the TorchNeuron docs
do not recommend). Kernels launch on an SPMD grid of `lnc()` programs, the logical-NeuronCore
degree the backend sets (set_lnc) to match neuronx-cc's.

On a `neuron` device the `nki.jit` kernels are called on the tensors themselves. Anywhere else
(the CPU) they run on NumPy copies: in `nki.simulate` when the official package is installed,
else in trainbench's emulator; bfloat16 crosses over bit for bit via ml_dtypes.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import ml_dtypes
import numpy as np
import torch

from trainbench.kernels.nki import attention, cross_entropy as ce, rmsnorm as rms, swiglu as glu
from trainbench.kernels.nki._api import nki

try:
    from torch_neuronx import nki_op as custom_op

    REGISTRATION = "torch_neuronx.nki_op"
except ImportError:
    custom_op = torch.library.custom_op
    REGISTRATION = "torch.library.custom_op"

Tensor = torch.Tensor
_LNC = [1]


def set_lnc(degree: int) -> None:
    """Launch every kernel on `degree` programs (LNC=degree); 1 or 2 (the documented degrees)."""
    if degree not in (1, 2):
        raise ValueError(f"NKI logical NeuronCore degree {degree!r}; expected 1 or 2")
    _LNC[0] = degree


def lnc() -> int:
    """The current launch-grid size (logical NeuronCore degree)."""
    return _LNC[0]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A NumPy copy of t (bfloat16 as ml_dtypes.bfloat16, same bits)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy().copy()


def to_torch(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor on `device` holding a (bfloat16 kept bit for bit)."""
    a = np.ascontiguousarray(a)
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).to(device)
    return torch.from_numpy(a).to(device)


def run(kernel: Callable[..., Any], *args: Any) -> tuple[torch.Tensor, ...]:
    """Run `kernel` on an SPMD grid of lnc() programs on tensors and constants; its outputs as
    a tuple of tensors."""
    device = next(a for a in args if isinstance(a, torch.Tensor)).device
    launched = kernel[lnc()]
    if device.type == "neuron":
        out = launched(*args)
        return out if isinstance(out, tuple) else (out,)
    out = nki.simulate(launched)(*(to_numpy(a) if isinstance(a, torch.Tensor) else a
                                   for a in args))
    out = out if isinstance(out, tuple) else (out,)
    return tuple(to_torch(o, device) for o in out)


# --- RMSNorm ------------------------------------------------------------------------------------

@custom_op("trainbench_nki::rmsnorm_fwd", mutates_args=())
def rmsnorm_fwd(x: Tensor, w: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(y [N, D] in x's dtype, rstd [N, 1] float32) for x [N, D], w [1, D]."""
    return run(rms.rmsnorm_fwd, x, w, eps)


@rmsnorm_fwd.register_fake
def _(x: Tensor, w: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), x.new_empty((x.shape[0], 1), dtype=torch.float32)


@custom_op("trainbench_nki::rmsnorm_bwd", mutates_args=())
def rmsnorm_bwd(dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    """(dx [N, D], dw_parts [lnc, D] float32: one partial dw per program, summed by the caller)."""
    return run(rms.rmsnorm_bwd, dy, x, w, rstd)


@rmsnorm_bwd.register_fake
def _(dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), x.new_empty((lnc(), x.shape[1]), dtype=torch.float32)


def _rmsnorm_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, w, _ = inputs
    ctx.save_for_backward(x, w, output[1])


def _rmsnorm_backward(ctx: Any, dy: Tensor, _drstd: Tensor | None) -> tuple:
    x, w, rstd = ctx.saved_tensors
    dx, dw_parts = rmsnorm_bwd(dy.to(x.dtype), x, w, rstd)
    return dx, dw_parts.sum(0, keepdim=True).to(w.dtype), None


rmsnorm_fwd.register_autograd(_rmsnorm_backward, setup_context=_rmsnorm_setup)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x**2) + eps) * weight over the last dim, in x's dtype."""
    y, _ = rmsnorm_fwd(x.reshape(-1, x.shape[-1]), weight.reshape(1, -1), float(eps))
    return y.reshape(x.shape)


# --- SwiGLU -------------------------------------------------------------------------------------

@custom_op("trainbench_nki::swiglu_fwd", mutates_args=())
def swiglu_fwd(a: Tensor, b: Tensor) -> Tensor:
    """silu(a) * b for a, b [N, F] of one dtype."""
    return run(glu.swiglu_fwd, a, b)[0]


@swiglu_fwd.register_fake
def _(a: Tensor, b: Tensor) -> Tensor:
    return torch.empty_like(a)


@custom_op("trainbench_nki::swiglu_bwd", mutates_args=())
def swiglu_bwd(dout: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(da, db) of silu(a) * b."""
    return run(glu.swiglu_bwd, dout, a, b)


@swiglu_bwd.register_fake
def _(dout: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(a), torch.empty_like(b)


def _swiglu_setup(ctx: Any, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _swiglu_backward(ctx: Any, dout: Tensor) -> tuple:
    a, b = ctx.saved_tensors
    return swiglu_bwd(dout.to(a.dtype), a, b)


swiglu_fwd.register_autograd(_swiglu_backward, setup_context=_swiglu_setup)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up."""
    dtype = torch.promote_types(gate.dtype, up.dtype)
    out = swiglu_fwd(gate.reshape(-1, gate.shape[-1]).to(dtype),
                     up.reshape(-1, up.shape[-1]).to(dtype))
    return out.reshape(gate.shape)


# --- cross-entropy ------------------------------------------------------------------------------

@custom_op("trainbench_nki::cross_entropy_fwd", mutates_args=())
def cross_entropy_fwd(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(loss_rows [N, 1], lse [N, 1]) float32, for logits [N, V] and int32 targets [N, 1]."""
    return run(ce.cross_entropy_fwd, logits, targets)


@cross_entropy_fwd.register_fake
def _(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    rows = logits.new_empty((logits.shape[0], 1), dtype=torch.float32)
    return rows, torch.empty_like(rows)


@custom_op("trainbench_nki::cross_entropy_bwd", mutates_args=())
def cross_entropy_bwd(logits: Tensor, targets: Tensor, lse: Tensor, row_scale: Tensor) -> Tensor:
    """dlogits = (softmax(logits) - onehot(targets)) * row_scale [N, 1], in logits' dtype."""
    return run(ce.cross_entropy_bwd, logits, targets, lse, row_scale)[0]


@cross_entropy_bwd.register_fake
def _(logits: Tensor, targets: Tensor, lse: Tensor, row_scale: Tensor) -> Tensor:
    return torch.empty_like(logits)


def _ce_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    logits, targets = inputs
    ctx.save_for_backward(logits, targets, output[1])


def _ce_backward(ctx: Any, dloss_rows: Tensor, _dlse: Tensor | None) -> tuple:
    logits, targets, lse = ctx.saved_tensors
    return cross_entropy_bwd(logits, targets, lse, dloss_rows.float().contiguous()), None


cross_entropy_fwd.register_autograd(_ce_backward, setup_context=_ce_setup)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log softmax(logits)[target]: logits [N, V], integer targets [N]."""
    if logits.shape[-1] >= 2 ** 24:
        raise ValueError(f"cross_entropy: vocab {logits.shape[-1]} >= 2**24; the kernel compares "
                         "float32 column indices with the targets")
    loss_rows, _ = cross_entropy_fwd(logits, targets.reshape(-1, 1).to(torch.int32))
    return loss_rows.sum() / logits.shape[0]


def linear_cross_entropy(x: torch.Tensor, head: torch.Tensor,
                         targets: torch.Tensor) -> torch.Tensor:
    """cross_entropy(x @ head) with the logits in float32, as the native op computes them; the
    LM-head matmul stays in PyTorch (not fused into the kernel)."""
    return cross_entropy((x @ head).float(), targets)


# --- flash attention ----------------------------------------------------------------------------

@custom_op("trainbench_nki::flash_attention_fwd", mutates_args=())
def flash_attention_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float,
                        causal: bool) -> tuple[Tensor, Tensor]:
    """(out like q, lse [B, Hq, T, 1] float32)."""
    return run(attention.flash_attention_fwd, q, k, v, scale, causal)


@flash_attention_fwd.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool) -> tuple[Tensor, Tensor]:
    batch, seq, n_q, _ = q.shape
    return torch.empty_like(q), q.new_empty((batch, n_q, seq, 1), dtype=torch.float32)


@custom_op("trainbench_nki::flash_attention_bwd", mutates_args=())
def flash_attention_bwd(q: Tensor, k: Tensor, v: Tensor, o: Tensor, do: Tensor, lse: Tensor,
                        scale: float, causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) in q's dtype."""
    return run(attention.flash_attention_bwd, q, k, v, o, do, lse, scale, causal)


@flash_attention_bwd.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, o: Tensor, do: Tensor, lse: Tensor, scale: float,
      causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _attention_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    q, k, v, scale, causal = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.meta = (scale, causal)


def _attention_backward(ctx: Any, dout: Tensor, _dlse: Tensor | None) -> tuple:
    """lse is an internal output (flash_attention returns only out), so its gradient is None."""
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = flash_attention_bwd(q, k, v, out, dout.to(q.dtype), lse, *ctx.meta)
    return dq, dk, dv, None, None


flash_attention_fwd.register_autograd(_attention_backward, setup_context=_attention_setup)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v with grouped-query heads; [B, T, H, D] in and out."""
    if q.shape[-1] > 128:
        raise ValueError(f"flash attention: head_dim={q.shape[-1]} > 128; the kernel keeps one "
                         "head's features on the 128 partitions")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"flash attention: {q.shape[2]} query heads are not a multiple of "
                         f"{k.shape[2]} kv heads")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, _ = flash_attention_fwd(q, k.to(q.dtype), v.to(q.dtype), scale, causal)
    return out
