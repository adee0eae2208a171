"""A source check of the NKI Python subset: what the NKI compiler traces and what it rejects.

`check(kernel)` parses an `nki.jit` kernel and every helper it calls (functions of trainbench's
kernel modules, found by name in the kernel's globals, recursively) and raises NkiSubsetError at
the first construct outside the subset. `nki.simulate` runs plain Python, so code like this
passes there and fails only in the compiler; trainbench runs the check as a test and before the
emulator runs a kernel. The rules: constructs the kernels of aws-neuron/nki-library do without
and that the NKI guide's warning about code that runs in nki.simulate but fails to compile
covers (trainbench's reading; no NKI compiler was available to confirm each one):

    raise            error handling inside a kernel: use `assert` (checked while tracing)
    comprehension    list / set / dict comprehensions and generator expressions
    loop-target      a `for` target that is not a plain name (no tuple unpacking)
    loop-else        `else` on a for / while loop
    lambda           lambda expressions
    try / with       exception handling and context managers
    is               `is` / `is not` comparisons
    generator        yield (a kernel is traced, not iterated)
    global           global / nonlocal declarations
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from typing import Any, Callable, Iterator

KERNEL_PACKAGE = "trainbench.kernels.nki"


class NkiSubsetError(Exception):
    """Kernel source outside the NKI Python subset; `rule` names the construct."""

    def __init__(self, rule: str, where: str, message: str) -> None:
        super().__init__(f"[{rule}] {where}: {message}")
        self.rule = rule


_NODE_RULES: dict[type, tuple[str, str]] = {
    ast.Raise: ("raise", "`raise` is outside the NKI subset; use `assert`"),
    ast.ListComp: ("comprehension", "list comprehension; build the value with a loop"),
    ast.SetComp: ("comprehension", "set comprehension"),
    ast.DictComp: ("comprehension", "dict comprehension"),
    ast.GeneratorExp: ("comprehension", "generator expression"),
    ast.Lambda: ("lambda", "lambda expression; define a helper function"),
    ast.Try: ("try", "try/except is outside the NKI subset"),
    ast.With: ("with", "`with` is outside the NKI subset"),
    ast.Yield: ("generator", "yield: a kernel is traced once, not iterated"),
    ast.YieldFrom: ("generator", "yield from"),
    ast.Global: ("global", "global declaration"),
    ast.Nonlocal: ("global", "nonlocal declaration"),
}
"""Node type -> (rule, message) for constructs rejected wherever they appear."""
if hasattr(ast, "TryStar"):
    _NODE_RULES[ast.TryStar] = ("try", "try/except* is outside the NKI subset")


def _violations(fn: Callable[..., Any]) -> Iterator[tuple[str, int, str]]:
    """(rule, line, message) of every construct outside the subset in fn's own source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    first = inspect.getsourcelines(fn)[1] - 1
    for node in ast.walk(tree):
        line = first + getattr(node, "lineno", 1)
        if type(node) in _NODE_RULES:
            rule, message = _NODE_RULES[type(node)]
            yield rule, line, message
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            if not isinstance(node.target, ast.Name):
                yield ("loop-target", line, f"loop target `{ast.unparse(node.target)}` is not a "
                       "plain name; loop over an index and compute the values in the body")
            if node.orelse:
                yield "loop-else", line, "`else` on a loop"
        elif isinstance(node, ast.While) and node.orelse:
            yield "loop-else", line, "`else` on a loop"
        elif isinstance(node, ast.Compare) and any(isinstance(o, (ast.Is, ast.IsNot))
                                                   for o in node.ops):
            yield "is", line, "`is` comparison; compare with == / !="


def _helpers(fn: Callable[..., Any], modules: set[str]) -> Iterator[Callable[..., Any]]:
    """Functions of trainbench's kernel modules (or of `modules`) that fn calls by name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            target = fn.__globals__.get(node.func.id)
            target = getattr(target, "fn", target)  # an emulator _Kernel wraps its function
            if inspect.isfunction(target) and (
                    target.__module__ in modules or (target.__module__.startswith(KERNEL_PACKAGE)
                                                     and ".emulator" not in target.__module__)):
                yield target


@functools.cache
def check(fn: Callable[..., Any]) -> None:
    """Raise NkiSubsetError if fn (a kernel function) or a helper it calls leaves the subset."""
    seen: set[Callable[..., Any]] = set()
    todo = [getattr(fn, "fn", fn)]
    modules = {todo[0].__module__}
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for rule, line, message in _violations(f):
            raise NkiSubsetError(rule, f"{f.__module__}.{f.__qualname__} line {line}", message)
        todo.extend(_helpers(f, modules))
