"""Figures that match the report's table (matplotlib, Agg): one bar per table row, error bars
from the p10-p90 band of `report.group`, and scaling plots when a sweep varies batch x seq or
the device count.

Every figure is built from the grouped frame, so a row of the table and a bar of a plot are the
same configuration; labels name what tells the rows apart, batch and sequence always.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from trainbench.report import GROUP_KEYS


@dataclass(frozen=True)
class Metric:
    """A grouped metric a figure shows: its column, axis label and display scale."""

    column: str
    label: str
    scale: float = 1.0
    band: bool = True
    """Whether `report.group` gives it a p10-p90 band (`<column>_p10`, `<column>_p90`)."""


BARS = {
    "tokens_per_s": Metric("tokens_per_s_per_device", "tokens/s per device"),
    "mfu": Metric("mfu", "MFU (%)", 100.0),
    "memory": Metric("memory_bytes", "peak memory (GiB)", 1 / 2**30, band=False),
}
SCALING_METRICS = (Metric("tokens_per_s", "tokens/s (global)"), Metric("mfu", "MFU (%)", 100.0))


@dataclass(frozen=True)
class ScalingAxis:
    """A quantity a sweep may vary: what it is computed from and which group keys it replaces."""

    label: str
    value: Callable[[pd.DataFrame], pd.Series]
    keys: tuple[str, ...]


SCALING = {
    "scaling_batch_seq": ScalingAxis("tokens per step (batch x seq)",
                                     lambda g: g["batch"] * g["seq"], ("batch", "seq")),
    "scaling_devices": ScalingAxis("devices", lambda g: g["devices"], ("devices",)),
}

CAPTIONS = {
    "tokens_per_s": "Tokens/s per device, one bar per table row (median of the repeats).",
    "mfu": "MFU, one bar per table row; a row without a known peak has no bar.",
    "memory": "Peak memory, one bar per table row, as each record measured it.",
    "step_time": "Step times of every timed step, one box per run.",
    "scaling_batch_seq": "Throughput and MFU against tokens per step, one line per "
                         "configuration that the sweep ran at several batch x seq.",
    "scaling_devices": "Throughput and MFU against the device count, one line per "
                       "configuration that the sweep ran on several device counts.",
}
ERROR_BARS = ("Error bars: p10-p90 of the repeats; for a single run, the metric at its own "
              "p90 and p10 step times.")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def row_labels(grouped: pd.DataFrame, keys: list[str] | None = None) -> list[str]:
    """A label per row naming those of `keys` (default: the group keys) that differ between rows,
    batch and seq always; every key when none differs."""
    keys = GROUP_KEYS if keys is None else keys
    varying = [k for k in keys if k in ("batch", "seq") or grouped[k].nunique() > 1] or keys
    fmt = {"devices": "x{}", "batch": "b{}", "seq": "s{}"}
    return [" ".join(fmt.get(k, "{}").format(row[k]) for k in varying)
            for _, row in grouped.iterrows()]


def _errors(grouped: pd.DataFrame, metric: Metric) -> np.ndarray | None:
    """Asymmetric error bars (2 x rows) from the band, zero where a row has none."""
    if not metric.band:
        return None
    value = grouped[metric.column].to_numpy(float)
    low = value - grouped[f"{metric.column}_p10"].to_numpy(float)
    high = grouped[f"{metric.column}_p90"].to_numpy(float) - value
    return np.nan_to_num(np.clip(np.vstack([low, high]), 0, None) * metric.scale)


def bar_figure(grouped: pd.DataFrame, metric: Metric) -> Any:
    """Horizontal bars, one per table row in table order, with p10-p90 error bars."""
    plt = _pyplot()
    labels = row_labels(grouped)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.38 * max(len(labels), 1)))
    y = np.arange(len(labels))
    values = grouped[metric.column].to_numpy(float) * metric.scale
    ax.barh(y, np.nan_to_num(values), xerr=_errors(grouped, metric), capsize=3,
            color=[f"C{i % 10}" for i in range(len(labels))])
    for i, v in enumerate(values):
        if not np.isfinite(v):
            ax.text(0, i, "  n/a", va="center", fontsize="small", color="0.4")
    ax.set_yticks(y, labels, fontsize="small")
    ax.invert_yaxis()  # first table row on top
    ax.set_xlabel(metric.label)
    ax.set_title(f"{metric.label}, one bar per configuration")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def step_time_figure(df: pd.DataFrame) -> Any:
    """Box plot of every timed step time of every measured run, labelled with batch and seq."""
    plt = _pyplot()
    ok = df[(df["status"] == "ok") & df["step_times"].map(len).gt(0)]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = [f"{r.accelerator}/{r.backend}/{r.model}/b{r.batch} s{r.seq}"
              for r in ok.itertuples()]
    ax.boxplot([np.asarray(t) * 1e3 for t in ok["step_times"]], tick_labels=labels)
    ax.set_ylabel("step time (ms)")
    ax.set_title("step-time spread per run")
    ax.tick_params(axis="x", labelrotation=30, labelsize="small")
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    fig.tight_layout()
    return fig


def scaling_series(grouped: pd.DataFrame, axis: ScalingAxis) -> list[tuple[str, pd.DataFrame]]:
    """Configurations (group keys other than the axis's) that were run at 2+ values of the axis,
    each with its rows sorted along the axis."""
    keys = [k for k in GROUP_KEYS if k not in axis.keys]
    frame = grouped.assign(_x=axis.value(grouped))
    out = []
    for _, rows in frame.groupby(keys, sort=False):
        if rows["_x"].nunique() >= 2:
            out.append(rows.sort_values("_x"))
    if not out:
        return []
    firsts = pd.DataFrame([rows.iloc[0] for rows in out])
    return list(zip(row_labels(firsts, keys), out))


def scaling_figure(grouped: pd.DataFrame, axis: ScalingAxis) -> Any | None:
    """tokens/s and MFU against the axis, one line per configuration; None when nothing varies."""
    series = scaling_series(grouped, axis)
    if not series:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(SCALING_METRICS), figsize=(11, 4.5))
    for ax, metric in zip(axes, SCALING_METRICS):
        for label, rows in series:
            ax.errorbar(rows["_x"], rows[metric.column] * metric.scale,
                        yerr=_errors(rows, metric), marker="o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ticks = sorted(set().union(*(rows["_x"] for _, rows in series)))
        ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(axis.label)
        ax.set_ylabel(metric.label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(f"scaling with {axis.label}")
    fig.tight_layout()
    return fig


def figures(df: pd.DataFrame, grouped: pd.DataFrame) -> dict[str, Any]:
    """Every figure for these records, by name (the file stem `save` uses); none without a
    measured run."""
    if grouped.empty:
        return {}
    out: dict[str, Any] = {name: bar_figure(grouped, metric) for name, metric in BARS.items()}
    out["step_time"] = step_time_figure(df)
    for name, axis in SCALING.items():
        fig = scaling_figure(grouped, axis)
        if fig is not None:
            out[name] = fig
    return out


def png(fig: Any, dpi: int = 100) -> bytes:
    """A figure as PNG bytes."""
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save(figs: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write each figure as folder/<name>.png."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figs.items():
        path = folder / f"{name}.png"
        path.write_bytes(png(fig))
        paths.append(path)
    return paths


def close(figs: dict[str, Any]) -> None:
    """Free the figures' memory (pyplot keeps every open figure)."""
    plt = _pyplot()
    for fig in figs.values():
        plt.close(fig)
