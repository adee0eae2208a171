"""The NKI emulator held to the conformance table kernels/nki/api.yaml, itself transcribed from
the documented API (aws-neuron/aws-neuron-sdk stubs and operator tables, NKI 0.6.0 / SDK 2.32):
the same names, the same parameters in the same order with the same defaults, the documented
enum members, exactly the documented operators and activation functions, an unknown keyword
raising what NKI raises (Python's TypeError: the stubs have no catch-all), an operator outside
the tables raising, and every name the kernels use being in the table.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from trainbench.kernels.nki.emulator import NkiRuleError, isa, language
from trainbench.kernels.nki.emulator.table import REQUIRED, params, resolve, table

T = table()
MODULES = {"isa": isa, "language": language}
OPS = {**language.ALU_OPS, **language.ACTIVATIONS}
KERNEL_FILES = sorted((Path(language.__file__).parent.parent).glob("*.py"))


def documented(module: str) -> list[str]:
    return [n for n, e in T[module].items() if isinstance(e, dict) and "params" in e]


def test_every_entry_names_its_source():
    for module in ("isa", "language"):
        for name, entry in T[module].items():
            assert entry["source"] in T["sources"], f"{module}.{name}"
    for key in ("enums",):
        for name, entry in T[key].items():
            assert entry["source"] in T["sources"], f"{key}.{name}"
    assert T["operators"]["source"] == T["activations"]["source"] == "tables"
    assert T["version"] == {"nki": "0.6.0", "neuron_sdk": "2.32"}


@pytest.mark.parametrize("module, name", [(m, n) for m in MODULES for n in documented(m)])
def test_signature_matches_the_table(module: str, name: str):
    sig = inspect.signature(getattr(MODULES[module], name))
    got = [(p.name, REQUIRED if p.default is p.empty else p.default)
           for p in sig.parameters.values()]
    expected = [(p["name"], resolve(p["default"], isa.ENUMS, OPS) if "default" in p else REQUIRED)
                for p in params(module, name)]
    assert got == expected
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in sig.parameters.values()), \
        "no *args / **kwargs catch-all"


@pytest.mark.parametrize("name", documented("isa"))
def test_unknown_keyword_raises_type_error(name: str):
    with pytest.raises(TypeError, match="unexpected keyword argument 'transpose_x'"):
        getattr(isa, name)(transpose_x=True)


def test_enums_have_the_documented_members():
    for cls, entry in T["enums"].items():
        assert [m.name for m in isa.ENUMS[cls]] == entry["members"]


def test_operators_are_exactly_the_documented_tables():
    documented_alu = {**T["operators"]["arithmetic"], **T["operators"]["bitvec"]}
    assert set(language.ALU_OPS) == set(documented_alu)
    assert language.REDUCTION_OPS == {n for n, legal in documented_alu.items() if legal}
    assert set(language.ACTIVATIONS) == set(T["activations"]["names"])
    for name, op in OPS.items():
        assert getattr(language, name) is op


def _sbuf(shape):
    t = language.zeros(shape, language.float32, buffer=language.sbuf)
    return t


def test_an_operator_outside_the_tables_raises():
    x = _sbuf((4, 5))
    with pytest.raises(NkiRuleError, match=r"^\[unsupported-op\].*tbl-aluop.*reciprocal"):
        isa.tensor_scalar(dst=_sbuf((4, 5)), data=x, op0=language.divide, operand0=2.0)
    with pytest.raises(NkiRuleError, match=r"^\[unsupported-op\]"):
        isa.tensor_tensor(dst=_sbuf((4, 5)), data1=x, data2=x, op=language.divide)
    with pytest.raises(NkiRuleError, match=r"^\[unsupported-op\].*tbl-act-func"):
        isa.activation(dst=_sbuf((4, 5)), op=language.divide, data=x)


def test_a_documented_but_unimplemented_operator_says_so():
    x = _sbuf((4, 5))
    with pytest.raises(NkiRuleError, match=r"^\[not-emulated\] nl.bitwise_and"):
        isa.tensor_tensor(dst=_sbuf((4, 5)), data1=x, data2=x, op=language.bitwise_and)


def test_documented_options_the_emulator_cannot_execute_raise():
    x = _sbuf((4, 4))
    dst = language.ndarray((4, 4), language.float32, buffer=language.psum)
    with pytest.raises(NkiRuleError, match=r"^\[not-emulated\] nc_matmul: perf_mode"):
        isa.nc_matmul(dst=dst, stationary=x, moving=x, perf_mode=isa.matmul_perf_mode.double_row)
    with pytest.raises(NkiRuleError, match=r"^\[not-emulated\] nc_matmul: tile_size"):
        isa.nc_matmul(dst=dst, stationary=x, moving=x, tile_size=(64, 128))


def _used_names(module_alias: str) -> set[str]:
    """Attributes of `module_alias` (nisa / nl) the kernel sources use."""
    names = set()
    for path in KERNEL_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == module_alias):
                names.add(node.attr)
    return names


def test_every_name_the_kernels_use_is_in_the_table():
    isa_names = set(T["isa"]) | set(T["enums"])
    assert _used_names("nisa") <= isa_names
    lang = T["language"]
    lang_names = (set(documented("language")) | set(lang["buffers"]["names"])
                  | set(lang["dtypes"]["names"]) | {"tile_size"} | set(OPS))
    assert _used_names("nl") <= lang_names


def test_values_outside_the_allowed_lists_raise():
    """The table's `allowed` lists: accumulate None/True/False; activation's reduce_cmd and
    reduce_op (tested with the reduce_cmd rules in test_nki_emulator.py)."""
    x = _sbuf((4, 4))
    assert [p["allowed"] for p in params("isa", "nc_matmul") if p["name"] == "accumulate"] == \
        [[None, True, False]]
    with pytest.raises(NkiRuleError, match=r"^\[bad-value\] nc_matmul accumulate='yes'"):
        isa.nc_matmul(dst=language.ndarray((4, 4), language.float32, buffer=language.psum),
                      stationary=x, moving=x, accumulate="yes")
