import dataclasses

import numpy as np
import pytest

from trainbench import model
from trainbench.errors import ConfigError
from trainbench.model import ModelConfig

PUBLISHED = [n for n in model.preset_names() if "published_params" in model.preset_info(n)]


def test_every_required_preset_exists():
    required = {"tiny", "small", "smollm2_135m", "smollm2_360m", "tinyllama_1b", "llama32_1b",
                "llama32_3b", "llama3_8b", "llama3_70b", "llama31_405b"}
    assert required <= set(model.preset_names())
    assert set(PUBLISHED) == required - {"tiny", "small"}


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_presets_count_exactly(name):
    assert model.count_params(model.preset(name)) == model.preset_info(name)["published_params"]


def test_every_preset_names_its_source():
    for name in model.preset_names():
        assert model.preset_info(name)["source"].strip(), name


def test_ci_presets_sizes():
    assert model.count_params(model.preset("tiny")) < 1_000_000
    assert 20e6 <= model.count_params(model.preset("small")) <= 30e6


def test_count_params_matches_init_and_tying():
    cfg = model.preset("tiny")
    params = model.init_params(cfg, seed=0)
    assert sum(p.size for p in params.values()) == model.count_params(cfg)
    tied = ModelConfig(**{**model.as_dict(cfg), "tie_embeddings": True})
    assert "lm_head" not in model.init_params(tied, 0)
    assert model.count_params(cfg) - model.count_params(tied) == cfg.vocab * cfg.d_model


def test_init_is_seeded_and_canonical():
    cfg = model.preset("tiny")
    a, b, c = (model.init_params(cfg, s) for s in (3, 3, 4))
    assert list(a) == list(model.param_shapes(cfg))
    for name in a:
        assert a[name].dtype == np.float32 and a[name].shape == model.param_shapes(cfg)[name]
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["layers.0.wq"], c["layers.0.wq"])
    np.testing.assert_array_equal(a["final_norm"], 1.0)
    assert a["layers.0.wq"].std() == pytest.approx(0.02, rel=0.1)
    assert a["layers.0.wo"].std() == pytest.approx(0.02 / np.sqrt(2 * cfg.n_layers), rel=0.15)


def test_save_load_roundtrip(tmp_path):
    cfg = model.preset("tiny")
    params = model.init_params(cfg, 1)
    model.save_params(params, tmp_path / "w.safetensors")
    loaded = model.load_params(tmp_path / "w.safetensors")
    model.check_params(cfg, loaded)
    for name in params:
        np.testing.assert_array_equal(params[name], loaded[name])


def test_check_params_names_the_problem():
    cfg = model.preset("tiny")
    params = model.init_params(cfg, 0)
    del params["final_norm"]
    with pytest.raises(ConfigError, match="final_norm"):
        model.check_params(cfg, params)
    params = model.init_params(cfg, 0)
    params["layers.1.wq"] = params["layers.1.wq"][:, :3]
    with pytest.raises(ConfigError, match=r"layers\.1\.wq has shape"):
        model.check_params(cfg, params)
    with pytest.raises(ConfigError, match="does not exist"):
        model.load_params("/nonexistent/w.safetensors")


@pytest.mark.parametrize("change, message", [
    ({"n_kv_heads": 3}, "n_kv_heads=3 does not divide model.n_heads=4"),
    ({"head_dim": 15}, "head_dim=15 must be even"),
    ({"d_model": 0}, "d_model=0 must be a positive integer"),
    ({"norm_eps": -1.0}, "norm_eps=-1.0 must be a positive number"),
])
def test_model_validation_names_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{**model.as_dict(model.preset("tiny")), **change})


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match="model='llama9' is not a known preset; choose one of: tiny"):
        model.preset("llama9")


@pytest.mark.parametrize("tp, message", [
    (3, "backend.tensor_parallel=3 does not divide model.n_heads=4"),
    (4, "backend.tensor_parallel=4 does not divide model.n_kv_heads=2"),
    (0, "backend.tensor_parallel=0 must be a positive integer"),
])
def test_tensor_parallel_must_divide_the_split_dimensions(tp, message):
    with pytest.raises(ConfigError, match=message):
        model.check_tensor_parallel(model.preset("tiny"), tp)
    model.check_tensor_parallel(model.preset("tiny"), 2)  # 4 heads, 2 kv heads, 176, 256


def test_init_is_the_same_numbers_in_every_dtype_and_per_tensor_streams():
    cfg = model.preset("tiny")
    a32, a64 = model.init_params(cfg, 5), model.init_params(cfg, 5, np.float64)
    for name in a32:
        assert a64[name].dtype == np.float64
        np.testing.assert_array_equal(a64[name], a32[name].astype(np.float64))
    deeper = dataclasses.replace(cfg, n_layers=cfg.n_layers + 1)
    # a tensor's values depend only on the seed and its place in the canonical order
    np.testing.assert_array_equal(model.init_params(deeper, 5)["embed"], a32["embed"])
