"""The shared training loop and measurement protocol (docs/measurement.md).

build (setup) -> untimed warm-up steps (the first one includes compilation and is reported
alone) -> timed steps. Each step's time ends only after the backend has synchronized, so
asynchronous devices are measured when their work is done, not when it was queued. Batches are
made before the clock starts: host-side data generation is not part of a step.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from trainbench.backend import Backend


@dataclass
class LoopResult:
    """What one run of the loop measured."""

    status: str = "ok"
    """ok | diverged."""
    cause: str | None = None
    setup_s: float = 0.0
    """Building the model and optimizer on the device, loading the weights."""
    first_step_s: float = 0.0
    """The first step alone: compilation for JIT backends."""
    warmup_step_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    """Timed steady-state steps."""
    losses: list[float] = field(default_factory=list)
    """Loss of every step run, warm-up included, in order."""


def run_loop(backend: Backend, params: Mapping[str, np.ndarray],
             batch_at: Callable[[int], np.ndarray], warmup_steps: int, steps: int,
             progress: bool | None = None,
             on_step: Callable[[int, float, float], None] | None = None) -> LoopResult:
    """Train for warmup_steps + steps steps on batch_at(step), timed as docs/measurement.md says.

    `on_step(step, loss, seconds)` runs after each step's clock has stopped (metric logging).
    """
    result = LoopResult()
    t0 = time.perf_counter()
    backend.setup(params)
    backend.synchronize()
    result.setup_s = time.perf_counter() - t0

    total = warmup_steps + steps
    show = sys.stdout.isatty() if progress is None else progress
    with _progress(show, total, backend.name) as advance:
        for step in range(total):
            tokens = batch_at(step)
            start = time.perf_counter()
            handle = backend.train_step(step, tokens)
            backend.synchronize()
            elapsed = time.perf_counter() - start
            loss = backend.loss(handle)
            result.losses.append(loss)
            if step == 0:
                result.first_step_s = elapsed
            elif step < warmup_steps:
                result.warmup_step_s.append(elapsed)
            else:
                result.step_s.append(elapsed)
            advance(loss)
            if on_step is not None:
                on_step(step, loss, elapsed)
            if not math.isfinite(loss):
                result.status = "diverged"
                result.cause = f"loss became {loss} at step {step}"
                break
    return result


class _progress:
    """A rich progress bar on a terminal; nothing otherwise."""

    def __init__(self, show: bool, total: int, label: str) -> None:
        self.show, self.total, self.label = show, total, label

    def __enter__(self) -> Callable[[float], None]:
        if not self.show:
            return lambda loss: None
        from rich.progress import Progress, TextColumn

        self.bar = Progress(*Progress.get_default_columns(), TextColumn("loss {task.fields[loss]}"),
                            transient=True)
        self.bar.__enter__()
        task = self.bar.add_task(f"training ({self.label})", total=self.total, loss="-")
        return lambda loss: self.bar.update(task, advance=1, loss=f"{loss:.4f}")

    def __exit__(self, *exc: object) -> None:
        if self.show:
            self.bar.__exit__(*exc)
