"""Every experiment file composes, validates, and so does every run its sweep describes."""

from importlib import resources

import pytest
import yaml

from trainbench import cli

EXPERIMENTS = sorted(p.name[:-5] for p in resources.files("trainbench.configs")
                     .joinpath("experiment").iterdir() if p.name.endswith(".yaml"))


def test_the_standard_experiments_exist():
    assert {"cpu_smoke", "cpu_matrix", "mfu_matrix", "batch_scaling"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_with_its_sweep(name):
    text = resources.files("trainbench.configs").joinpath(f"experiment/{name}.yaml").read_text()
    assert text.startswith("# @package _global_"), "experiment files are global packages"
    assert f"experiment={name}" in text, "the header comment shows the command that runs it"
    sweep = ((yaml.safe_load(text) or {}).get("hydra") or {}).get("sweeper", {}).get("params", {})
    overrides = [f"experiment={name}"] + [f"{k}={v}" for k, v in sweep.items()]
    combos = cli._combinations(overrides)
    expected = 1
    for v in sweep.values():
        expected *= len(str(v).split(","))
    assert len(combos) == expected
    configs = cli.compose_run_configs(combos)
    assert len(configs) == expected
    for key, values in sweep.items():  # each sweep value reaches a composed config
        seen = set()
        for cfg in configs:
            node = cfg
            for part in key.split("."):
                node = getattr(node, part)
            seen.add(str(node))
        assert len(seen) == len(str(values).split(",")), (key, seen)
