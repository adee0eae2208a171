"""The NKI API conformance table (kernels/nki/api.yaml), loaded once, with its default encoding
resolved to Python values. The emulator takes its enums, operator tables and target limits from
here, and tests/test_nki_conformance.py holds the emulator's signatures to it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

TABLE_PATH = Path(__file__).resolve().parent.parent / "api.yaml"


@functools.cache
def table() -> dict[str, Any]:
    """The parsed api.yaml."""
    return yaml.safe_load(TABLE_PATH.read_text())


REQUIRED = object()
"""The default of a parameter the docs make required."""


def resolve(encoded: Any, enums: dict[str, Any], ops: dict[str, Any]) -> Any:
    """A table default or allowed value as a Python value: {enum: C.M} -> the member,
    {op: NAME} -> the operator, {tuple: [...]} -> a tuple, anything else as written."""
    if isinstance(encoded, dict):
        if "enum" in encoded:
            cls, member = encoded["enum"].split(".")
            return enums[cls][member]
        if "op" in encoded:
            return ops[encoded["op"]]
        if "tuple" in encoded:
            return tuple(encoded["tuple"])
    return encoded


def params(module: str, name: str) -> list[dict[str, Any]]:
    """The documented parameters of nki.<module>.<name>, in order."""
    return table()[module][name]["params"]
