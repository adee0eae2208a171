"""The PyTorch model and its parts: canonical load/export, the op dispatch table, clipping."""

import numpy as np
import pytest

import torch

from trainbench import model, optim, reference
from trainbench.backends.torch import model as torch_model
from trainbench.backends.torch import native, ops
from trainbench.backends.torch.backend import clip_by_global_norm_
from trainbench.errors import ConfigError

TINY = model.preset("tiny")
NATIVE = {op: "native" for op in ops.OPS}


def _model(cfg=TINY, choices=NATIVE, seed=0):
    m = torch_model.Transformer(cfg, ops.resolve(choices))
    params = model.init_params(cfg, seed)
    torch_model.load_canonical(m, params)
    return m, params


@pytest.mark.parametrize("tie", [False, True])
def test_load_then_export_gives_back_the_canonical_mapping(tie):
    cfg = model.ModelConfig(**{**model.as_dict(TINY), "tie_embeddings": tie})
    m, params = _model(cfg)
    out = torch_model.export_canonical(m)
    assert list(out) == list(model.param_shapes(cfg))  # canonical order
    for name, value in params.items():
        assert out[name].dtype == np.float32 and out[name].shape == value.shape, name
        np.testing.assert_array_equal(out[name], value, err_msg=name)  # a copy: bit-exact
    # nn.Linear stores (out, in): the module holds the canonical (in, out) matrix transposed
    np.testing.assert_array_equal(m.layers[0].wq.weight.detach().numpy(), params["layers.0.wq"].T)


def test_loss_and_gradients_match_the_reference_in_float32():
    m, params = _model()
    tokens = np.random.default_rng(1).integers(0, TINY.vocab, size=(3, 20))
    loss = m(torch.from_numpy(tokens))
    loss.backward()
    ref_loss, ref_grads = reference.loss_and_grads(TINY, params, tokens)
    grads = torch_model.export_canonical(m, grads=True)
    # float32 with another summation order than NumPy: a few ulps on the loss, and 1e-4 of the
    # gradient norm per tensor (trainbench.parity's gradient tolerance)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-6)
    for name, g in ref_grads.items():
        assert np.linalg.norm(grads[name] - g) <= 1e-4 * np.linalg.norm(g), name


def test_an_op_choice_registered_by_another_backend_is_used():
    calls = []

    def counting_swiglu(gate, up):
        calls.append(gate.shape)
        return native.swiglu(gate, up)

    ops.register("swiglu", "counting_test", counting_swiglu)
    try:
        m, _ = _model(choices={**NATIVE, "swiglu": "counting_test"})
        m(torch.zeros((2, 5), dtype=torch.int64))
    finally:
        del ops.OPS["swiglu"]["counting_test"]
    assert calls == [(2, 5, TINY.d_ff)] * TINY.n_layers


def test_dispatch_table_refuses_unknown_names_and_double_registration():
    with pytest.raises(ConfigError, match="op 'layernorm' is not dispatched"):
        ops.register("layernorm", "native", native.rmsnorm)
    with pytest.raises(ConfigError, match="choice 'native' is already registered"):
        ops.register("rmsnorm", "native", native.swiglu)
    with pytest.raises(ConfigError, match=r"no choice given for ops \['attention'\]"):
        ops.resolve({op: "native" for op in ops.OPS if op != "attention"})


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clipping_reproduces_optax_formula(max_norm):
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((7, 5)).astype(np.float32),
              "b": rng.standard_normal(11).astype(np.float32)}
    params = [torch.nn.Parameter(torch.zeros(v.shape)) for v in arrays.values()]
    for p, v in zip(params, arrays.values()):
        p.grad = torch.from_numpy(v.copy())
    norm = clip_by_global_norm_(params, max_norm)
    expected, expected_norm = optim.clip_by_global_norm(arrays, max_norm)
    assert float(norm) == pytest.approx(expected_norm, rel=1e-6)
    for p, name in zip(params, arrays):
        if max_norm > expected_norm:  # below the threshold: untouched, bit for bit
            np.testing.assert_array_equal(p.grad.numpy(), arrays[name])
        else:  # g * (max/norm) against (g / norm) * max: one float32 rounding apart
            np.testing.assert_allclose(p.grad.numpy(), expected[name], rtol=1e-6)
