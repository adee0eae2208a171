"""Comparison tables over result records: a terminal table (rich) and Markdown."""

from __future__ import annotations

from typing import Any, Sequence

COLUMNS = ("backend", "device", "model", "batch", "seq", "precision", "tokens/s", "MFU",
           "step time", "memory", "status")


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def row(record: dict[str, Any]) -> dict[str, str]:
    """One record as the report's display strings."""
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
        "memory": _fmt_bytes((record.get("memory") or {}).get("peak_bytes")),
        "status": status,
    }


def print_table(records: Sequence[dict[str, Any]], title: str = "trainbench results") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for record in records:
        table.add_row(*row(record).values())
    Console(width=200).print(table)


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for record in records:
        cells = [v.replace("|", "\\|") for v in row(record).values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
