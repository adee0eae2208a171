"""The backend registry: built-in backends plus any registered through the
`trainbench.backends` entry-point group. Names are unique; an unknown name is an error that lists
the known ones."""

from __future__ import annotations

import functools
import importlib
from importlib import metadata
from typing import TYPE_CHECKING

from trainbench.errors import ConfigError

if TYPE_CHECKING:
    from trainbench.backend import Backend
    from trainbench.config import BackendConfig

# name -> "module:Class". Built-ins are listed here as well as in pyproject's entry points so a
# checkout works before it is installed; an entry point may not reuse a built-in name.
BUILTIN = {
    "reference": "trainbench.backends.reference.backend:ReferenceBackend",
    "jax": "trainbench.backends.jax.backend:JaxBackend",
    "torch": "trainbench.backends.torch.backend:TorchBackend",
    "neuron": "trainbench.backends.neuron.backend:NeuronBackend",
}
ENTRY_POINT_GROUP = "trainbench.backends"


@functools.cache
def _targets() -> dict[str, str]:
    targets = dict(BUILTIN)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in targets and targets[ep.name] != ep.value:
            raise ConfigError(f"backend name {ep.name!r} is registered twice: "
                              f"{targets[ep.name]} and {ep.value}")
        targets[ep.name] = ep.value
    return targets


def names() -> list[str]:
    return list(_targets())


def get(name: str) -> type[Backend]:
    """The backend class registered under `name`."""
    targets = _targets()
    if name not in targets:
        raise ConfigError(f"backend={name!r} is not a known backend; choose one of: "
                          + ", ".join(["auto", *targets]))
    module_name, _, attr = targets[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def backend_configs() -> dict[str, type[BackendConfig]]:
    return {name: get(name).config_class for name in names()}


def resolve_auto() -> str:
    """The available backend with the highest preference."""
    ranked = []
    for name in names():
        cls = get(name)
        if cls.availability().ok:
            ranked.append((cls.preference(), name))
    if not ranked:
        raise ConfigError("backend=auto found no backend that can run here; "
                          "run `trainbench backends` to see why")
    return max(ranked)[1]
