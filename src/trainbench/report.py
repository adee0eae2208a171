"""Comparisons over result records (docs/reports.md).

Records become one pandas row each (`frame`), put on one FLOP convention (`to_convention`),
grouped over repeats of the same configuration with median, p10-p90 band and spread (`group`),
and shown as a terminal table (rich) whose columns come from the `TABLE_COLUMNS` registry,
Markdown and CSV; trainbench.plots draws the figures and trainbench.report_html the page.
`compare_baseline` flags regressions beyond a noise threshold derived from the repeats.
`add_costs` adds dollars per million tokens and joules per token from a user-editable table of
prices and board power.

Only records whose status this module knows are tabulated: `MEASURED` runs in the comparison,
`UNFINISHED` ones in the failures table; any other status (e.g. a compile-only record) is left
to the module that knows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import yaml

from trainbench import flops, hardware, memory
from trainbench.errors import ConfigError
from trainbench.model import ModelConfig

# The columns a group of repeats is identified by.
GROUP_KEYS = ["accelerator", "devices", "backend", "model", "precision", "batch", "seq"]
MEASURED = "ok"
"""Status of a run that trained and was measured: the comparison table's rows."""
UNFINISHED = ("failed", "diverged")
"""Statuses of runs that did not finish: the failures table's rows."""
# Metrics that get a p10-p90 band over repeats (all inversely proportional to step time).
BAND_METRICS = ("tokens_per_s", "tokens_per_s_per_device", "tflops_per_device", "mfu")
# The per-run table's columns (one row per record, printed after a run).
COLUMNS = ("backend", "device", "model", "batch", "seq", "precision", "tokens/s", "MFU",
           "step time", "memory", "status")


def _accelerator(device_name: str) -> str:
    """The hardware table's name for a device, or the device's own name when unknown."""
    entry = hardware.lookup(device_name) if device_name else None
    return entry.name if entry is not None else (device_name or "?")


def frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per record with the report's columns (metrics NaN where a run has none)."""
    rows = []
    for r in records:
        m = r.get("metrics") or {}
        device = r.get("device") or {}
        step = m.get("step_time_s") or {}
        peak = r.get("peak") or {}
        mamf = (r.get("mamf") or {}).get("flops_per_s")
        f = r.get("flops") or {}
        per_device = m.get("model_tflops_per_device")
        rows.append({
            "run_id": r.get("run_id"),
            "path": r.get("_path"),
            "status": r.get("status", "?"),
            "cause": r.get("cause"),
            "accelerator": _accelerator(device.get("name", "")),
            "device_name": device.get("name"),
            "device_kind": device.get("kind"),
            "devices": device.get("count", 0),
            "backend": r.get("backend", "?"),
            "model": r.get("model", "?"),
            "precision": r.get("precision", "?"),
            "batch": r.get("batch_size", 0),
            "seq": r.get("seq_len", 0),
            "repeat": r.get("repeat", 0),
            "tokens_per_s": m.get("tokens_per_s", np.nan),
            "tokens_per_s_per_device": m.get("tokens_per_s_per_device", np.nan),
            "tflops_per_device": np.nan if per_device is None else per_device,
            "mfu": np.nan if m.get("mfu") is None else m["mfu"],
            "mamfu": (per_device * 1e12 / mamf) if (per_device is not None and mamf) else np.nan,
            "peak_method": peak.get("method", "unknown"),
            "peak_source": peak.get("source"),
            "attention": f.get("attention"),
            "flops_per_step": f.get("per_step", np.nan),
            "step_median_s": step.get("median", np.nan),
            "step_p10_s": step.get("p10", np.nan),
            "step_p90_s": step.get("p90", np.nan),
            "step_spread": step.get("spread", np.nan),
            "step_times": list((r.get("times") or {}).get("step_s") or []),
            "memory_bytes": (r.get("memory") or {}).get("peak_bytes"),
            "memory_measure": (r.get("memory") or {}).get("measure"),
            "model_shape": (r.get("config") or {}).get("model"),
        })
    return pd.DataFrame(rows)


def to_convention(df: pd.DataFrame, attention: str) -> tuple[pd.DataFrame, list[str]]:
    """Put every row's FLOP-based metrics on one attention convention; notes say what changed.

    A row counted under another convention is recomputed from the model shape its record keeps;
    a row without the shape has its FLOP metrics cleared, with a note, rather than mixed in.
    """
    df = df.copy()
    notes: list[str] = []
    for i, row in df.iterrows():
        if row["attention"] in (None, attention) or not math.isfinite(row["flops_per_step"]):
            continue
        if not row["model_shape"]:
            df.loc[i, ["mfu", "mamfu", "tflops_per_device"]] = np.nan
            notes.append(f"{row['run_id']}: counted with attention={row['attention']} and its "
                         f"record has no model shape to recount with {attention}; FLOP metrics left out")
            continue
        new = flops.training_flops(ModelConfig(**row["model_shape"]), int(row["batch"]),
                                   int(row["seq"]), attention)
        scale = new / row["flops_per_step"]
        for col in ("mfu", "mamfu", "tflops_per_device"):
            df.loc[i, col] = row[col] * scale
        df.loc[i, "flops_per_step"] = new
        df.loc[i, "attention"] = attention
        notes.append(f"{row['run_id']}: recounted from attention={row['attention']} to {attention}")
    return df, notes


def peak_notes(df: pd.DataFrame) -> list[str]:
    """Say where MFU's denominator came from whenever the measured rows do not share one kind of
    peak."""
    methods = df[df["status"] == MEASURED].groupby("accelerator")["peak_method"].unique()
    notes = []
    for accel, kinds in methods.items():
        kinds = sorted(set(kinds))
        if kinds == ["measured"]:
            notes.append(f"{accel}: MFU is against a measured matmul peak (no datasheet peak)")
        elif len(kinds) > 1:
            notes.append(f"{accel}: records use different peaks ({', '.join(kinds)}); compare "
                         "their MFU with care")
        elif kinds == ["unknown"]:
            notes.append(f"{accel}: not in the hardware table; MFU left empty")
    return notes


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """The runs that did not finish, with their cause."""
    return df[df["status"].isin(UNFINISHED)][["run_id", "backend", "model", "status", "cause"]]


def group(df: pd.DataFrame) -> pd.DataFrame:
    """Measured runs grouped over repeats: median of each metric, its p10-p90 band
    (`<metric>_p10`, `<metric>_p90`, see `_band`), spread and repeat count."""
    ok = df[df["status"] == MEASURED]
    if ok.empty:
        return pd.DataFrame(columns=GROUP_KEYS + ["n"])
    metrics = ["tokens_per_s", "tokens_per_s_per_device", "tflops_per_device", "mfu", "mamfu",
               "step_median_s", "memory_bytes"]
    g = ok.groupby(GROUP_KEYS, dropna=False)
    out = g[metrics].median()
    out["n"] = g.size()
    out["tokens_per_s_min"] = g["tokens_per_s"].min()
    out["tokens_per_s_max"] = g["tokens_per_s"].max()
    out["noise"] = g.apply(_noise, include_groups=False)
    out["peak_method"] = g["peak_method"].agg(lambda s: ",".join(sorted(set(s))))
    for metric in BAND_METRICS:
        bands = g.apply(lambda rows, m=metric: _band(rows, m), include_groups=False)
        out[f"{metric}_p10"] = [lo for lo, _ in bands]
        out[f"{metric}_p90"] = [hi for _, hi in bands]
    out["memory_measure"] = g["memory_measure"].agg(
        lambda s: ",".join(sorted({str(x) for x in s if isinstance(x, str)})))
    return out.reset_index()


def _band(rows: pd.DataFrame, metric: str) -> tuple[float, float]:
    """p10 and p90 of a metric over a group's repeats; for a single run, the metric at its own
    p90 and p10 step times (the metric is inversely proportional to step time), the only spread
    one run shows."""
    values = rows[metric].to_numpy(dtype=float)
    if len(values) >= 2:
        p10, p90 = np.percentile(values, [10, 90])
        return float(p10), float(p90)
    r = rows.iloc[0]
    return (float(values[0] * r["step_median_s"] / r["step_p90_s"]),
            float(values[0] * r["step_median_s"] / r["step_p10_s"]))


def _noise(rows: pd.DataFrame) -> float:
    """Relative run-to-run noise of tokens/s in a group: (p90 - p10) / median over repeats when
    there are 3 or more, (max - min) / median for 2, and for a single run its own step-time
    spread (p90 - p10) / median, the only variability one run shows."""
    values = rows["tokens_per_s"].to_numpy(dtype=float)
    median = float(np.median(values))
    if len(values) >= 3:
        p10, p90 = np.percentile(values, [10, 90])
        return float((p90 - p10) / median)
    if len(values) == 2:
        return float((values.max() - values.min()) / median)
    return float(rows["step_spread"].iloc[0])


def add_costs(grouped: pd.DataFrame, costs: dict[str, Any]) -> pd.DataFrame:
    """Dollars per million tokens and joules per token, where the cost table has the numbers."""
    table = costs.get("devices") or {}
    out = grouped.copy()
    dollars, joules = [], []
    for _, row in out.iterrows():
        entry = table.get(row["accelerator"]) or {}
        price, power = entry.get("price_per_device_hour"), entry.get("board_power_w")
        tps = row["tokens_per_s"]
        dollars.append(price * row["devices"] / (tps * 3600) * 1e6 if price and tps else np.nan)
        joules.append(power * row["devices"] / tps if power and tps else np.nan)
    out["usd_per_mtok"] = dollars
    out["joules_per_token"] = joules
    return out


def load_costs(path: str | Path | None = None) -> dict[str, Any]:
    """The cost table: `path`, or the one shipped in trainbench's configs."""
    if path is None:
        from importlib import resources

        return yaml.safe_load(resources.files("trainbench.configs").joinpath("costs.yaml")
                              .read_text())
    return yaml.safe_load(Path(path).read_text())


def compare_baseline(current: pd.DataFrame, baseline: pd.DataFrame, k: float = 2.0,
                     metrics: Sequence[str] = ("tokens_per_s_per_device", "mfu")) -> pd.DataFrame:
    """Per group and metric: change vs baseline, the noise threshold, and whether it regressed.

    threshold = k x max(noise of current, noise of baseline), noise as in `group`; a drop larger
    than the threshold is a regression. k = 2 by default: a change twice the spread either side
    shows is unlikely to be run-to-run noise.
    """
    merged = current.merge(baseline, on=GROUP_KEYS, suffixes=("", "_base"))
    rows = []
    for _, r in merged.iterrows():
        threshold = k * max(r["noise"], r["noise_base"])
        for metric in metrics:
            cur, base = r[metric], r[f"{metric}_base"]
            if not (np.isfinite(cur) and np.isfinite(base)) or base == 0:
                continue
            change = (cur - base) / base
            rows.append({**{key: r[key] for key in GROUP_KEYS}, "metric": metric,
                         "baseline": base, "current": cur, "change": change,
                         "threshold": threshold, "regression": bool(change < -threshold)})
    return pd.DataFrame(rows)


# ---- presentation ---------------------------------------------------------------------------

def _fmt_bytes(n: Any) -> str:
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _fmt_memory(n: Any, measure: str | None) -> str:
    """Bytes with what they measure (trainbench.memory.LABELS), so a cell never passes host RSS
    off as device memory; records older than the measure field show the figure alone."""
    labels = [memory.LABELS.get(m, m) for m in (measure or "").split(",") if m]
    text = _fmt_bytes(n)
    return f"{text} ({', '.join(labels)})" if labels and text != "-" else text


def row(record: dict[str, Any]) -> dict[str, str]:
    """One record as display strings (the table a single run prints)."""
    m = record.get("metrics") or {}
    device = record.get("device") or {}
    step = m.get("step_time_s") or {}
    peak = record.get("peak") or {}
    mfu = m.get("mfu")
    if mfu is not None:
        mfu_text = f"{100 * mfu:.2f}%" + (" (measured peak)" if peak.get("method") == "measured"
                                          else "")
    else:
        mfu_text = "-" if not m else "n/a (unknown peak)"
    status = record.get("status", "?")
    if record.get("cause"):
        status += f": {record['cause']}"
    return {
        "backend": str(record.get("backend", "?")),
        "device": f"{device.get('count', '?')} x {device.get('name', '?')}" if device else "-",
        "model": str(record.get("model", "?")),
        "batch": str(record.get("batch_size", "-")),
        "seq": str(record.get("seq_len", "-")),
        "precision": str(record.get("precision", "-")),
        "tokens/s": f"{m['tokens_per_s']:,.0f}" if "tokens_per_s" in m else "-",
        "MFU": mfu_text,
        "step time": (f"{1e3 * step['median']:.1f} ms (p10-p90 {1e3 * step['p10']:.1f}-"
                      f"{1e3 * step['p90']:.1f})") if step else "-",
        "memory": _fmt_memory((record.get("memory") or {}).get("peak_bytes"),
                              (record.get("memory") or {}).get("measure")),
        "status": status,
    }


def print_table(records: Sequence[dict[str, Any]], title: str = "trainbench results") -> None:
    """The per-run table (one row per record)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for record in records:
        table.add_row(*row(record).values())
    Console(width=200).print(table)


def _pct(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{100 * x:.2f}%"


def _num(x: float, fmt: str = "{:,.0f}") -> str:
    return "-" if not np.isfinite(x) else fmt.format(x)


@dataclass(frozen=True)
class Column:
    """One column of the grouped table: how it shows a grouped frame, and what it means."""

    show: Callable[[pd.DataFrame], list[str]]
    help: str
    numeric: bool = True
    """Right-aligned in the terminal."""


def _text(key: str) -> Callable[[pd.DataFrame], list[str]]:
    return lambda g: [str(v) for v in g[key]]


def _integer(key: str) -> Callable[[pd.DataFrame], list[str]]:
    return lambda g: [str(int(v)) for v in g[key]]


def _formatted(key: str, fmt: Callable[[float], str]) -> Callable[[pd.DataFrame], list[str]]:
    """`fmt` of each value of `key`; "-" in every row when the frame lacks the column."""
    return lambda g: [fmt(v) for v in g[key]] if key in g else ["-"] * len(g)


TABLE_COLUMNS: dict[str, Column] = {
    "accelerator": Column(_text("accelerator"), "hardware-table name of the device", False),
    "devices": Column(_integer("devices"), "devices the run used"),
    "backend": Column(_text("backend"), "trainbench backend", False),
    "model": Column(_text("model"), "model preset", False),
    "precision": Column(_text("precision"), "precision preset", False),
    "batch": Column(_integer("batch"), "global batch, sequences per step"),
    "seq": Column(_integer("seq"), "tokens per sequence"),
    "runs": Column(_integer("n"), "repeats grouped into the row"),
    "tokens/s": Column(_formatted("tokens_per_s", _num), "median global tokens per second"),
    "tokens/s/device": Column(_formatted("tokens_per_s_per_device", _num),
                              "median tokens per second per device"),
    "spread": Column(_formatted("noise", _pct), "run-to-run noise of tokens/s"),
    "TFLOP/s/device": Column(_formatted("tflops_per_device", lambda x: _num(x, "{:.3f}")),
                             "median model TFLOP/s per device"),
    "MFU": Column(_formatted("mfu", _pct), "median model FLOPs utilization"),
    "MAMFU": Column(_formatted("mamfu", _pct),
                    "model FLOP/s over the measured best matmul rate"),
    "memory": Column(lambda g: [_fmt_memory(x, m) for x, m in zip(g["memory_bytes"],
                                                                   g["memory_measure"])]
                     if "memory_bytes" in g else ["-"] * len(g),
                     "median peak memory, labelled with what it measures (host RSS growth on "
                     "the CPU, peak device allocation on accelerators)"),
    "$/Mtok": Column(_formatted("usd_per_mtok", lambda x: _num(x, "{:.4f}")),
                     "dollars per million tokens (cost table)"),
    "J/token": Column(_formatted("joules_per_token", lambda x: _num(x, "{:.4f}")),
                      "joules per token at board power (cost table)"),
}
DEFAULT_COLUMNS = ("accelerator", "devices", "backend", "model", "precision", "batch", "seq",
                   "runs", "tokens/s", "spread", "MFU", "MAMFU", "memory")
"""The compact set, about 116 characters wide with the longest accelerator name of the table."""


def select_columns(spec: str | None) -> tuple[str, ...]:
    """Column names from a comma-separated list (or "all"; None gives the default set)."""
    if spec is None:
        return DEFAULT_COLUMNS
    if spec.strip() == "all":
        return tuple(TABLE_COLUMNS)
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    unknown = [name for name in names if name not in TABLE_COLUMNS]
    if unknown or not names:
        raise ConfigError(f"--columns={spec!r}: unknown column {', '.join(map(repr, unknown))}; "
                          "valid columns: " + ", ".join(TABLE_COLUMNS) + " (or all)")
    return names


def display(grouped: pd.DataFrame, columns: Sequence[str] = DEFAULT_COLUMNS) -> pd.DataFrame:
    """The grouped comparison as display strings, one row per configuration."""
    return pd.DataFrame({name: TABLE_COLUMNS[name].show(grouped) for name in columns},
                        columns=list(columns))


def print_frame(df: pd.DataFrame, title: str, width: int | None = None) -> None:
    """A compact rich table (no outer border, one space between columns). With `width` None the
    console is as wide as the table (at least 120 characters), so no cell folds; otherwise long
    cells fold to fit `width`."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  padding=(0, 0))
    for column in df.columns:
        numeric = TABLE_COLUMNS[column].numeric if column in TABLE_COLUMNS else False
        table.add_column(str(column), justify="right" if numeric else "left")
    for values in df.astype(str).itertuples(index=False):
        table.add_row(*values)
    if width is None:
        width = max(120, Console(width=10_000).measure(table).maximum)
    Console(width=width).print(table)


def markdown(df: pd.DataFrame) -> str:
    """A Markdown table of a display frame (no extra dependency: pipes escaped)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for values in df.astype(str).itertuples(index=False):
        lines.append("| " + " | ".join(v.replace("|", "\\|") for v in values) + " |")
    return "\n".join(lines)


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """The per-run table in Markdown."""
    return markdown(pd.DataFrame([row(r) for r in records], columns=list(COLUMNS)))
