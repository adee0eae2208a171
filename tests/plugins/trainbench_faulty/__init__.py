"""A third-party backend for the tests, registered through the `trainbench.backends` entry point
(see the dist-info beside it; put tests/plugins on PYTHONPATH to install it). It is the reference
backend with one injected fault, so sweep tests can make a run crash, die, hang or diverge."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from trainbench.backends.reference.backend import ReferenceBackend, ReferenceConfig


@dataclass
class FaultyConfig(ReferenceConfig):
    name: str = "faulty"
    inject: bool = False
    """Whether the fault strikes at all (a sweep axis: false runs are good runs)."""
    fault: str = "raise"
    """raise (Python exception) | abort (process dies) | hang | nan (loss becomes NaN)."""
    at_step: int = 1
    """The step at which the fault strikes."""


class FaultyBackend(ReferenceBackend):
    name = "faulty"
    config_class = FaultyConfig

    def train_step(self, step: int, tokens):
        fault = self.backend_cfg.fault
        if self.backend_cfg.inject and step == self.backend_cfg.at_step:
            if fault == "raise":
                raise RuntimeError("injected fault")
            if fault == "abort":
                os.abort()
            if fault == "hang":
                time.sleep(3600)
            if fault == "nan":
                return float("nan")
        return super().train_step(step, tokens)
