"""The report's table of compiled plans (`trainbench compile` records, status `compiled`).

Compiled plans answer what a compiler can tell, not what a chip did: they get their own table,
and `split` keeps them out of every measured table, so no roofline ceiling is ever read as MFU.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd

from trainbench.compile import STATUS, roofline

GIB = 2**30


def split(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(compiled plans, every other record)."""
    compiled = [r for r in records if r.get("status") == STATUS]
    return compiled, [r for r in records if r.get("status") != STATUS]


def _gib(n: Any) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def _fmt(x: Any, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _ceiling(record: dict[str, Any]) -> float | None:
    """The roofline's MFU ceiling, recomputed from the counts the record keeps (so a record
    written before a fix of the bound reads right); the record's own figure otherwise."""
    c = record.get("compile") or {}
    per_step = (record.get("flops") or {}).get("per_step")
    if per_step is not None and c.get("devices"):
        return roofline(c.get("xla_flops"), c.get("xla_bytes_accessed"),
                        c.get("peak_flops_per_device"), c.get("hbm_bandwidth_per_device"),
                        per_step / c["devices"])["mfu_ceiling"]
    return (c.get("roofline") or {}).get("mfu_ceiling")


def frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One display row per compiled plan, sorted by target, model and batch."""
    rows = []
    for r in records:
        c = r.get("compile") or {}
        mem = c.get("memory") or {}
        search = c.get("search")
        fits = mem.get("fits")
        rows.append({
            "target": c.get("target", "?"),
            "chips": c.get("chips"),
            "mesh": "x".join(f"{k}={v}" for k, v in (c.get("mesh") or {}).items()),
            "model": r.get("model", "?"),
            "precision": r.get("precision", "?"),
            "attention": (r.get("device") or {}).get("attention", "?"),
            "batch": r.get("batch_size"),
            "seq": r.get("seq_len"),
            "searched": "yes" if search else "",
            "GiB/device": _gib(mem.get("per_device_bytes")),
            "HBM GiB": _gib(mem.get("hbm_bytes")),
            "fits": "?" if fits is None else ("yes" if fits else "NO"),
            "XLA/model FLOPs": _fmt(c.get("flop_ratio"), "{:.2f}"),
            "collectives GiB": _gib(c.get("collective_bytes")),
            "MFU ceiling (bound)": _fmt(_ceiling(r), "{:.1%}"),
            "compile s": _fmt(c.get("compile_s"), "{:.1f}"),
        })
    df = pd.DataFrame(rows)
    return df.sort_values(["target", "model", "batch"], kind="stable") if len(df) else df


TITLE = "compiled plans (compiler analyses and roofline bounds, not measurements)"
