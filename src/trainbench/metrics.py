"""Throughput and utilization from step times (docs/measurement.md)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def step_stats(step_s: Sequence[float]) -> dict[str, float]:
    """Median, p10, p90, mean and relative spread ((p90 - p10) / median) of step times, seconds."""
    t = np.asarray(step_s, dtype=np.float64)
    median = float(np.median(t))
    p10, p90 = (float(x) for x in np.percentile(t, [10, 90]))
    return {"median": median, "p10": p10, "p90": p90, "mean": float(t.mean()),
            "min": float(t.min()), "max": float(t.max()),
            "spread": (p90 - p10) / median if median > 0 else float("nan"), "n": int(t.size)}


def throughput(step_median_s: float, tokens_per_step: int, flops_per_step: int, devices: int,
               peak_flops_per_device: float | None) -> dict[str, float | None]:
    """tokens/s (global and per device), model TFLOP/s per device, and MFU.

    MFU = model FLOPs per second / (devices x peak FLOP/s of one device), as PaLM (Chowdhery et al.
    2022, appendix B) defines it; None when the peak is unknown.
    """
    tokens_per_s = tokens_per_step / step_median_s
    flops_per_s_per_device = flops_per_step / step_median_s / devices
    mfu = flops_per_s_per_device / peak_flops_per_device if peak_flops_per_device else None
    return {
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_device": tokens_per_s / devices,
        "model_tflops_per_device": flops_per_s_per_device / 1e12,
        "mfu": mfu,
    }
