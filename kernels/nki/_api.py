"""The NKI modules the kernels are written against: the official `nki` package when it is the
real one, else trainbench's NumPy emulator of the same names (trainbench.kernels.nki.emulator).

`BACKEND` says which: "nki" (kernels run in `nki.simulate` on the CPU, compiled by `nki.jit` on
a NeuronCore) or "emulator"; `NKI_MISSING` says why the real package was not used (None when it
is). PyPI has a placeholder project named `nki` (AWS publishes the real one on its own index):
it imports, but has neither `nki.jit` nor `nki.isa` / `nki.language`, so it is refused.
"""

from __future__ import annotations

from types import ModuleType


def real_nki() -> tuple[ModuleType, ModuleType, ModuleType] | str:
    """(nki, nki.isa, nki.language) from the installed `nki` package, or why it is unusable."""
    try:
        import nki
    except ImportError:
        return "the `nki` package is not installed"
    try:
        import nki.isa as isa
        import nki.language as language
    except ImportError:
        return (f"the installed `nki` ({getattr(nki, '__file__', '?')}) has no nki.isa / "
                "nki.language: a placeholder, not AWS's NKI")
    if not (callable(getattr(nki, "jit", None)) and callable(getattr(nki, "simulate", None))):
        return (f"the installed `nki` ({getattr(nki, '__file__', '?')}) lacks nki.jit / "
                "nki.simulate: a placeholder, not AWS's NKI")
    return nki, isa, language


_found = real_nki()
if isinstance(_found, tuple):
    nki, nisa, nl = _found
    BACKEND, NKI_MISSING = "nki", None
else:
    from trainbench.kernels.nki import emulator as nki
    from trainbench.kernels.nki.emulator import isa as nisa
    from trainbench.kernels.nki.emulator import language as nl

    BACKEND, NKI_MISSING = "emulator", _found

__all__ = ["BACKEND", "NKI_MISSING", "nisa", "nki", "nl", "real_nki"]
