from importlib import metadata

import pytest

from trainbench import registry
from trainbench.backend import Backend
from trainbench.errors import ConfigError


def test_builtin_reference_backend():
    cls = registry.get("reference")
    assert issubclass(cls, Backend) and cls.name == "reference"
    assert cls.availability().ok
    assert registry.resolve_auto() in registry.names()


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ConfigError, match="backend='nope' is not a known backend; choose one of: auto, reference"):
        registry.get("nope")


def test_entry_points_extend_and_duplicates_are_refused(monkeypatch):
    def fake(group):
        assert group == registry.ENTRY_POINT_GROUP
        return [metadata.EntryPoint("mine", "trainbench.backends.reference.backend:ReferenceBackend",
                                    group)]

    monkeypatch.setattr(registry.metadata, "entry_points", fake)
    registry._targets.cache_clear()
    try:
        assert "mine" in registry.names()
        monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [
            metadata.EntryPoint("reference", "elsewhere:Other", group)])
        registry._targets.cache_clear()
        with pytest.raises(ConfigError, match="registered twice"):
            registry.names()
    finally:
        registry._targets.cache_clear()
