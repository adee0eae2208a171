"""The NKI modules the kernels are written against: the official `nki` package when it imports,
else trainbench's NumPy emulator of the same names (trainbench.kernels.nki.emulator).

`BACKEND` says which: "nki" (kernels run in `nki.simulate` on the CPU, compiled by `nki.jit` on
a NeuronCore) or "emulator".
"""

from __future__ import annotations

try:
    import nki
    import nki.isa as nisa
    import nki.language as nl

    BACKEND = "nki"
except ImportError:
    from trainbench.kernels.nki import emulator as nki
    from trainbench.kernels.nki.emulator import isa as nisa
    from trainbench.kernels.nki.emulator import language as nl

    BACKEND = "emulator"

__all__ = ["BACKEND", "nisa", "nki", "nl"]
