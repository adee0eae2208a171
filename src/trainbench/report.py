"""Comparisons over result records (DESIGN.md, "Results and reports").

Records become one pandas row each (`frame`), put on one FLOP convention (`to_convention`),
grouped over repeats of the same configuration with median and spread (`group`), and shown as
a terminal table (rich), Markdown, CSV and PNG plots (matplotlib). `compare_baseline` flags
regressions beyond a noise threshold derived from the repeats. `add_costs` adds dollars per
million tokens and joules per token from a user-editable table of prices and board power.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from trainbench import flops, hardware, memory
from trainbench.model import ModelConfig

# The columns a group of repeats is identified by.
GROUP_KEYS = ["accelerator", "devices", "backend", "model", "precision", "batch", "seq"]
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
    """Say where MFU's denominator came from whenever the rows do not share one kind of peak."""
    methods = df.groupby("accelerator")["peak_method"].unique()
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


def group(df: pd.DataFrame) -> pd.DataFrame:
    """Successful runs grouped over repeats: median of each metric, spread and repeat count."""
    ok = df[df["status"] == "ok"]
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
    out["memory_measure"] = g["memory_measure"].agg(
        lambda s: ",".join(sorted({str(x) for x in s if isinstance(x, str)})))
    return out.reset_index()


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


def display(grouped: pd.DataFrame) -> pd.DataFrame:
    """The grouped comparison as display strings, one row per configuration."""
    out = pd.DataFrame({
        "accelerator": grouped["accelerator"],
        "devices": grouped["devices"].astype(int).astype(str),
        "backend": grouped["backend"],
        "model": grouped["model"],
        "precision": grouped["precision"],
        "batch": grouped["batch"].astype(int).astype(str),
        "seq": grouped["seq"].astype(int).astype(str),
        "runs": grouped["n"].astype(int).astype(str),
        "tokens/s": [_num(x) for x in grouped["tokens_per_s"]],
        "tokens/s/device": [_num(x) for x in grouped["tokens_per_s_per_device"]],
        "spread": [_pct(x) for x in grouped["noise"]],
        "TFLOP/s/device": [_num(x, "{:.3f}") for x in grouped["tflops_per_device"]],
        "MFU": [_pct(x) for x in grouped["mfu"]],
        "MAMFU": [_pct(x) for x in grouped["mamfu"]],
        "memory": [_fmt_memory(x, m) for x, m in zip(grouped["memory_bytes"],
                                                     grouped["memory_measure"])],
    })
    if "usd_per_mtok" in grouped:
        out["$/Mtok"] = [_num(x, "{:.4f}") for x in grouped["usd_per_mtok"]]
        out["J/token"] = [_num(x, "{:.4f}") for x in grouped["joules_per_token"]]
    return out


def print_frame(df: pd.DataFrame, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in df.columns:
        table.add_column(str(column), overflow="fold")
    for values in df.astype(str).itertuples(index=False):
        table.add_row(*values)
    Console(width=220).print(table)


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


def plots(df: pd.DataFrame, grouped: pd.DataFrame) -> dict[str, Any]:
    """Matplotlib figures: MFU and tokens/s per device by accelerator x backend x model,
    step-time spread per configuration, and peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: dict[str, Any] = {}
    series = grouped.assign(series=grouped["accelerator"] + " / " + grouped["backend"])
    for name, column, label in (("mfu", "mfu", "MFU (%)"),
                                ("tokens_per_s", "tokens_per_s_per_device", "tokens/s per device"),
                                ("memory", "memory_bytes", "peak memory (GiB)")):
        fig, ax = plt.subplots(figsize=(9, 4.5))
        table = series.pivot_table(index="model", columns="series", values=column,
                                   aggfunc="median")
        scale = {"mfu": 100.0, "memory": 1 / 2**30}.get(name, 1.0)
        (table * scale).plot.bar(ax=ax, rot=0)
        ax.set_ylabel(label)
        ax.set_title(f"{label} by model, accelerator / backend")
        ax.legend(title="accelerator / backend", fontsize="small")
        fig.tight_layout()
        figures[name] = fig
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ok = df[(df["status"] == "ok") & df["step_times"].map(len).gt(0)]
    labels = [f"{r.accelerator}/{r.backend}/{r.model}/b{r.batch}s{r.seq}" for r in ok.itertuples()]
    ax.boxplot([np.asarray(t) * 1e3 for t in ok["step_times"]], tick_labels=labels)
    ax.set_ylabel("step time (ms)")
    ax.set_title("step-time spread per run")
    ax.tick_params(axis="x", labelrotation=30, labelsize="small")
    fig.tight_layout()
    figures["step_time"] = fig
    return figures


def save_plots(figures: dict[str, Any], folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths
