"""The PyTorch autograd wrappers of the NKI kernels (trainbench.kernels.nki.autograd) on the
CPU, where they run the kernels on NumPy copies (emulator, or nki.simulate when installed):
forward and backward through torch.autograd against the float64 reference math, with the
signatures of the PyTorch backend's op table and the model's leading dimensions.

Tolerance (float32): |wrapper - ref| <= 1e-5 (|ref| + max|ref|), as for the kernels
(tests/test_nki_kernels.py), since the wrappers add only reshapes and dtype-exact copies.
bfloat16 tensors are checked to cross into NumPy and back bit for bit and to keep their dtype;
their numerics are the kernels' and are tested there.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from test_nki_kernels import attention_ref  # float64 GQA attention, causal or not
from trainbench import ops
from trainbench.kernels.nki import autograd as nki_autograd

TOL = 1e-5


def close(name: str, got: "torch.Tensor", ref: np.ndarray) -> None:
    got = got.detach().double().numpy()
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    bound = TOL * (np.abs(ref) + np.max(np.abs(ref)))
    err = np.abs(got - ref)
    assert (err <= bound).all(), f"{name}: max error {err.max():.3g} over the bound"


def leaf(rng: np.random.Generator, *shape: int) -> "torch.Tensor":
    return torch.tensor(rng.standard_normal(shape), dtype=torch.float32, requires_grad=True)


def f64(t: "torch.Tensor") -> np.ndarray:
    return t.detach().double().numpy()


def test_bfloat16_crosses_to_numpy_and_back_bit_for_bit():
    t = torch.randn(5, 7).to(torch.bfloat16)
    back = nki_autograd.to_torch(nki_autograd.to_numpy(t), t.device)
    assert back.dtype == torch.bfloat16
    assert torch.equal(back.view(torch.int16), t.view(torch.int16))


def test_rmsnorm():
    rng = np.random.default_rng(0)
    x, w = leaf(rng, 2, 70, 96), leaf(rng, 96)
    dy = rng.standard_normal((2, 70, 96))
    y = nki_autograd.rmsnorm(x, w, 1e-5)
    y.backward(torch.tensor(dy, dtype=torch.float32))
    y_ref, cache = ops.rmsnorm_fwd(f64(x), f64(w), 1e-5)
    dx_ref, dw_ref = ops.rmsnorm_bwd(dy, cache)
    close("y", y, y_ref)
    close("dx", x.grad, dx_ref)
    close("dw", w.grad, dw_ref)


def test_swiglu():
    rng = np.random.default_rng(1)
    a, b = leaf(rng, 3, 50, 200), leaf(rng, 3, 50, 200)
    dout = rng.standard_normal((3, 50, 200))
    out = nki_autograd.swiglu(a, b)
    out.backward(torch.tensor(dout, dtype=torch.float32))
    out_ref, cache = ops.swiglu_fwd(f64(a), f64(b))
    da_ref, db_ref = ops.swiglu_bwd(dout, cache)
    close("out", out, out_ref)
    close("da", a.grad, da_ref)
    close("db", b.grad, db_ref)


def test_linear_cross_entropy():
    rng = np.random.default_rng(2)
    x, head = leaf(rng, 150, 24), leaf(rng, 24, 700)
    targets = torch.tensor(rng.integers(0, 700, 150))
    loss = nki_autograd.linear_cross_entropy(x, head, targets)
    (loss * 3.0).backward()  # an upstream gradient other than 1 reaches the kernel's scale
    logits, lin_cache = ops.linear_fwd(f64(x), f64(head))
    loss_ref, ce_cache = ops.cross_entropy_fwd(logits, targets.numpy())
    (dlogits,) = ops.cross_entropy_bwd(3.0, ce_cache)
    dx_ref, dhead_ref = ops.linear_bwd(dlogits, lin_cache)
    close("loss", loss, np.float64(loss_ref))
    close("dx", x.grad, dx_ref)
    close("dhead", head.grad, dhead_ref)


@pytest.mark.parametrize("causal", [True, False])
def test_flash_attention(causal: bool):
    rng = np.random.default_rng(3)
    q, k, v = leaf(rng, 2, 140, 4, 32), leaf(rng, 2, 140, 2, 32), leaf(rng, 2, 140, 2, 32)
    do = rng.standard_normal((2, 140, 4, 32))
    out = nki_autograd.flash_attention(q, k, v, causal=causal)
    out.backward(torch.tensor(do, dtype=torch.float32))
    out_ref, (dq, dk, dv) = attention_ref(f64(q), f64(k), f64(v), do, causal)
    close("out", out, out_ref)
    close("dq", q.grad, dq)
    close("dk", k.grad, dk)
    close("dv", v.grad, dv)


def test_bfloat16_in_bfloat16_out():
    x = torch.randn(4, 9, 40, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(40, dtype=torch.bfloat16, requires_grad=True)
    y = nki_autograd.rmsnorm(x, w, 1e-6)
    y.float().sum().backward()
    assert y.dtype == x.grad.dtype == w.grad.dtype == torch.bfloat16
    q = torch.randn(1, 20, 2, 16, dtype=torch.bfloat16, requires_grad=True)
    out = nki_autograd.flash_attention(q, q.detach(), q.detach())
    out.float().sum().backward()
    assert out.dtype == q.grad.dtype == torch.bfloat16


def test_kernels_are_registered_custom_operators_with_autograd():
    """nki_op where TorchNeuron is installed, else torch.library.custom_op (same registry)."""
    expected = ("torch_neuronx.nki_op" if importlib.util.find_spec("torch_neuronx")
                else "torch.library.custom_op")
    assert nki_autograd.REGISTRATION == expected
    for name in ("rmsnorm", "swiglu", "cross_entropy", "flash_attention"):
        for way in ("fwd", "bwd"):
            assert hasattr(torch.ops.trainbench_nki, f"{name}_{way}")


def test_fake_implementations_match_the_kernels():
    """torch.library.opcheck: schema, fake (meta) shapes and autograd registration agree with
    what the kernels return (torch.compile traces with the fake implementations)."""
    rng = np.random.default_rng(4)
    x, w = torch.randn(70, 24), torch.randn(1, 24)
    torch.library.opcheck(nki_autograd.rmsnorm_fwd, (x.requires_grad_(), w, 1e-5),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))
    logits = torch.randn(9, 600, requires_grad=True)
    tgt = torch.tensor(rng.integers(0, 600, (9, 1)), dtype=torch.int32)
    torch.library.opcheck(nki_autograd.cross_entropy_fwd, (logits, tgt),
                          test_utils=("test_faketensor", "test_autograd_registration"))
    q = torch.randn(1, 20, 2, 16, requires_grad=True)
    torch.library.opcheck(nki_autograd.flash_attention_fwd, (q, q[:, :, :1].detach(),
                                                             q[:, :, :1].detach(), 0.25, True),
                          test_utils=("test_faketensor", "test_autograd_registration"))


def test_lnc_grid_gives_the_same_gradients(monkeypatch):
    rng = np.random.default_rng(5)
    results = []
    for degree in (1, 2):
        monkeypatch.setattr(nki_autograd, "_LNC", [1])
        nki_autograd.set_lnc(degree)
        x, w = leaf(rng, 300, 40), leaf(rng, 40)
        x.data[...] = torch.linspace(-1, 1, 300 * 40).reshape(300, 40)
        w.data[...] = torch.linspace(0.5, 1.5, 40)
        nki_autograd.rmsnorm(x, w, 1e-5).square().sum().backward()
        results.append((x.grad, w.grad))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="degree 3"):
        nki_autograd.set_lnc(3)


def test_wrapper_rejects_wide_heads_before_running():
    q = torch.zeros(1, 4, 1, 129)
    with pytest.raises(ValueError, match="head_dim=129 > 128"):
        nki_autograd.flash_attention(q, q, q)
