"""The composed reference model: gradients against finite differences, logits and loss against
Hugging Face's LlamaForCausalLM with the same weights, and input validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from trainbench import reference
from trainbench.errors import ConfigError
from trainbench.model import ModelConfig, init_params, param_shapes, preset

MICRO = ModelConfig(vocab=32, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4,
                    d_ff=24, max_seq_len=16)


def random_params(cfg: ModelConfig, seed: int, dtype: type = np.float64) -> dict[str, np.ndarray]:
    """Weights at unit scale (std 1/sqrt(fan_in), gains near 1), unlike init_params' std 0.02,
    so that attention patterns, rotary phases and every gain visibly move the logits."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if len(shape) == 1:
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name == "embed":
            value = rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(shape[0])
        params[name] = value.astype(dtype)
    return params


# --- gradients against finite differences ---------------------------------------------------------

# float64 central differences, step 1e-6: truncation ~1e-12, rounding ~1e-10 relative; a wrong
# gradient term is off by O(1), so 1e-6 leaves orders of magnitude on both sides.
FD_STEP = 1e-6
FD_RTOL = 1e-6


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_grads_match_finite_differences(tied: bool) -> None:
    cfg = dataclasses.replace(MICRO, tie_embeddings=tied)
    params = random_params(cfg, seed=0)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, cfg.vocab, (2, 7))
    loss, grads = reference.loss_and_grads(cfg, params, tokens)
    assert list(grads) == list(params)
    for name, value in params.items():
        assert grads[name].shape == value.shape and grads[name].dtype == value.dtype, name
        for _ in range(2):  # directional derivatives along random dense directions
            u = rng.standard_normal(value.shape)
            moved = dict(params)
            moved[name] = value + FD_STEP * u
            up = reference.loss_and_grads(cfg, moved, tokens)[0]
            moved[name] = value - FD_STEP * u
            down = reference.loss_and_grads(cfg, moved, tokens)[0]
            numeric = (up - down) / (2 * FD_STEP)
            analytic = float(np.sum(grads[name] * u))
            floor = 1e-9 * np.linalg.norm(grads[name]) * np.linalg.norm(u)
            assert abs(analytic - numeric) <= FD_RTOL * abs(numeric) + floor, \
                f"{name}: analytic {analytic!r} vs finite differences {numeric!r}"


def test_loss_is_next_token_cross_entropy_of_logits() -> None:
    params = random_params(MICRO, seed=0)
    tokens = np.random.default_rng(1).integers(0, MICRO.vocab, (3, 9))
    out = reference.logits(MICRO, params, tokens)  # (B, T, V)
    logp = out - np.log(np.sum(np.exp(out), axis=-1, keepdims=True))
    expected = -np.mean(np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1))
    assert reference.loss_and_grads(MICRO, params, tokens)[0] == pytest.approx(expected, rel=1e-12)


def test_logits_are_causal() -> None:
    params = random_params(MICRO, seed=0)
    tokens = np.random.default_rng(1).integers(0, MICRO.vocab, (1, 10))
    changed = tokens.copy()
    changed[0, 6] = (tokens[0, 6] + 1) % MICRO.vocab
    a, b = reference.logits(MICRO, params, tokens), reference.logits(MICRO, params, changed)
    np.testing.assert_array_equal(a[:, :6], b[:, :6])
    assert not np.allclose(a[:, 6:], b[:, 6:])


def test_float32_params_compute_in_float32() -> None:
    cfg = preset("tiny")
    params64 = init_params(cfg, seed=0, dtype=np.float64)
    params32 = {k: v.astype(np.float32) for k, v in params64.items()}
    tokens = np.random.default_rng(0).integers(0, cfg.vocab, (2, 33))
    assert reference.logits(cfg, params32, tokens).dtype == np.float32
    loss32, grads32 = reference.loss_and_grads(cfg, params32, tokens)
    loss64, grads64 = reference.loss_and_grads(cfg, params64, tokens)
    assert {g.dtype for g in grads32.values()} == {np.dtype(np.float32)}
    assert loss32 == pytest.approx(loss64, rel=1e-6)
    for name in grads64:  # float32 rounding, accumulated through two layers: ~1e-6 relative
        err = np.linalg.norm(grads32[name] - grads64[name]) / np.linalg.norm(grads64[name])
        assert err < 1e-4, name


# --- Hugging Face Llama ---------------------------------------------------------------------------

def hf_model(cfg: ModelConfig, params: dict[str, np.ndarray]) -> LlamaForCausalLM:
    """LlamaForCausalLM of the same shape holding `params`, transposed into torch's (out, in)."""
    config = LlamaConfig(
        vocab_size=cfg.vocab, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
        max_position_embeddings=cfg.max_seq_len, attention_bias=False, mlp_bias=False,
        hidden_act="silu", attn_implementation="eager")
    model = LlamaForCausalLM(config).to(torch.float64).eval()
    hf_names = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
                "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
                "w_down": "mlp.down_proj", "attn_norm": "input_layernorm",
                "mlp_norm": "post_attention_layernorm"}
    state = {"model.embed_tokens.weight": params["embed"],
             "model.norm.weight": params["final_norm"]}
    if not cfg.tie_embeddings:
        state["lm_head.weight"] = params["lm_head"].T
    for i in range(cfg.n_layers):
        for ours, theirs in hf_names.items():
            state[f"model.layers.{i}.{theirs}.weight"] = params[f"layers.{i}.{ours}"].T
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False)
    assert not unexpected
    assert set(missing) <= {"lm_head.weight"} and cfg.tie_embeddings == bool(missing)
    return model


HF_CASES = {
    "tiny": preset("tiny"),
    "tiny_tied": dataclasses.replace(preset("tiny"), tie_embeddings=True, rope_theta=500000.0,
                                     norm_eps=1e-6),
}


@pytest.mark.parametrize("name", HF_CASES)
def test_logits_and_loss_match_hugging_face_llama(name: str) -> None:
    cfg = HF_CASES[name]
    params = random_params(cfg, seed=0)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab, (2, 67))
    ours = reference.logits(cfg, params, tokens)
    loss, _ = reference.loss_and_grads(cfg, params, tokens)
    with torch.no_grad():
        result = hf_model(cfg, params)(input_ids=torch.from_numpy(tokens),
                                       labels=torch.from_numpy(tokens))
    theirs = result.logits.numpy()
    # Even in a float64 model, Hugging Face Llama computes RMSNorm, softmax, the rotary tables
    # and the loss in float32, so agreement is bounded by float32 rounding: measured ~2e-7 of
    # the logits' scale, checked at 2e-6. A convention error (rotary layout or frequencies,
    # GQA head mapping, a transposed weight) is off by O(1) at this weight scale.
    scale = np.max(np.abs(theirs))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6 * scale)
    assert loss == pytest.approx(result.loss.item(), rel=1e-6)


# --- input validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("tokens,match", [
    (np.zeros((2, 4), dtype=np.float32), "dtype float32, expected an integer"),
    (np.zeros(4, dtype=np.int64), r"shape \(4,\), expected a non-empty \[batch, seq\]"),
    (np.zeros((2, 0), dtype=np.int64), r"shape \(2, 0\)"),
    (np.zeros((1, 17), dtype=np.int64), "length 17, expected at most model.max_seq_len=16"),
    (np.array([[0, 5, 32]]), "token id 32 is out of range, expected 0 <= id < model.vocab=32"),
    (np.array([[0, -1, 3]]), "token id -1 is out of range"),
])
def test_invalid_tokens_are_rejected(tokens: np.ndarray, match: str) -> None:
    params = random_params(MICRO, seed=0)
    with pytest.raises(ConfigError, match=match):
        reference.logits(MICRO, params, tokens)
    with pytest.raises(ConfigError, match=match):
        reference.loss_and_grads(MICRO, params, tokens)


def test_loss_needs_two_tokens() -> None:
    params = random_params(MICRO, seed=0)
    tokens = np.zeros((2, 1), dtype=np.int64)
    assert reference.logits(MICRO, params, tokens).shape == (2, 1, MICRO.vocab)
    with pytest.raises(ConfigError, match="length 1, expected at least 2"):
        reference.loss_and_grads(MICRO, params, tokens)


def test_invalid_params_are_rejected() -> None:
    tokens = np.zeros((1, 4), dtype=np.int64)
    params = random_params(MICRO, seed=0)
    mixed = dict(params, final_norm=params["final_norm"].astype(np.float32))
    with pytest.raises(ConfigError, match="final_norm has dtype float32, expected float64"):
        reference.logits(MICRO, mixed, tokens)
    ints = {k: v.astype(np.int32) for k, v in params.items()}
    with pytest.raises(ConfigError, match="embed has dtype int32, expected float32 or float64"):
        reference.logits(MICRO, ints, tokens)
    missing = {k: v for k, v in params.items() if k != "lm_head"}
    with pytest.raises(ConfigError, match="missing"):
        reference.logits(MICRO, missing, tokens)
