"""`trainbench report --html FILE`: one self-contained page to share (docs/reports.md).

Inline CSS, plots as PNG data URIs, no script and no link to anything outside the file, so it
views the same offline, from an e-mail or a CI artifact. The page is a list of `Section`s, each
rendering one part from the same `Page` data; a section names the record statuses it shows, so
one more table (another status, another view) is one more entry in `SECTIONS`, and records of
a status no section knows are counted in a note instead of being mixed into a table.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

import trainbench
from trainbench import compile_report, plots, report


@dataclass
class Page:
    """What the sections render: the records and every frame the report computed from them."""

    title: str
    records: list[dict[str, Any]]
    df: pd.DataFrame
    """One row per record (report.frame, on one FLOP convention); index i is records[i]."""
    grouped: pd.DataFrame
    """report.group (with costs): one row per configuration."""
    columns: Sequence[str] = report.DEFAULT_COLUMNS
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    plans: list[dict[str, Any]] = field(default_factory=list)
    """Records of compiled plans (`trainbench compile`), shown in their own table."""


@dataclass(frozen=True)
class Section:
    """One part of the page: a heading and a renderer returning HTML, or None to leave it out."""

    title: str
    render: Callable[[Page], str | None]
    statuses: tuple[str, ...] = ()
    """Record statuses whose records this section shows."""


def _pre(value: Any) -> str:
    return f"<pre>{html.escape(json.dumps(value, indent=2, sort_keys=True, default=str))}</pre>"


def _run_details(page: Page, indices: Sequence[Any], what: str) -> str:
    """A collapsed block with each run's environment fingerprint and exact config."""
    return _details([page.records[i] for i in indices], what)


def _details(records: Sequence[dict[str, Any]], what: str) -> str:
    parts = []
    for record in records:
        parts.append(
            f"<h4>{html.escape(str(record.get('run_id')))}</h4>"
            f"<p class=path>{html.escape(str(record.get('_path', '')))}"
            f" &middot; created {html.escape(str(record.get('created', '?')))}</p>"
            f"<h5>device</h5>{_pre(record.get('device'))}"
            f"<h5>environment</h5>{_pre(record.get('environment'))}"
            f"<h5>config</h5>{_pre(record.get('config'))}")
    n = len(records)
    return (f"<details><summary>{what} of {n} run{'s' if n != 1 else ''}</summary>"
            + "".join(parts) + "</details>")


def _table(header: Sequence[str], rows: Sequence[tuple[Sequence[str], str]], cls: str) -> str:
    """A table whose every row is followed by a full-width row holding its details block."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for cells, details in rows:
        body.append(f"<tr class={cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                    + "</tr>")
        body.append(f"<tr class=details><td colspan={len(header)}>{details}</td></tr>")
    return (f"<div class=scroll><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def results_section(page: Page) -> str | None:
    """The grouped comparison, each configuration with its runs' environment and config."""
    if page.grouped.empty:
        return None
    shown = report.display(page.grouped, page.columns)
    ok = page.df[page.df["status"] == report.MEASURED]
    runs = {key: list(rows.index) for key, rows in ok.groupby(report.GROUP_KEYS, dropna=False)}
    rows = []
    for (_, g), cells in zip(page.grouped.iterrows(), shown.astype(str).itertuples(index=False)):
        key = tuple(g[k] for k in report.GROUP_KEYS)
        rows.append((cells, _run_details(page, runs[key], "environment and config")))
    return _table(list(shown.columns), rows, "result")


def failures_section(page: Page) -> str | None:
    """Runs that did not finish, with their cause."""
    if page.df.empty:
        return None
    failed = report.failures(page.df)
    if failed.empty:
        return None
    rows = [([str(v) for v in r.fillna("")], _run_details(page, [i], "environment and config"))
            for i, r in failed.iterrows()]
    return _table(list(failed.columns), rows, "failure")


def plans_section(page: Page) -> str | None:
    """Compiled plans: what the target's compiler says of a step (memory, XLA counts,
    collectives) and roofline bounds, never mixed with measured runs."""
    if not page.plans:
        return None
    shown = compile_report.frame(page.plans).astype(str)
    rows = [(cells, _details([plan], "environment and config"))
            for plan, cells in zip(page.plans, shown.itertuples(index=False))]
    return (f"<p>{html.escape(compile_report.TITLE)}</p>"
            + _table(list(shown.columns), rows, "plan"))


def notes_section(page: Page) -> str | None:
    """The report's notes (conventions, peaks, records no table shows)."""
    if not page.notes:
        return None
    return "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in page.notes) + "</ul>"


def plots_section(page: Page) -> str | None:
    """Every figure as an embedded PNG with its caption."""
    if not page.figures:
        return None
    parts = [f"<p>{html.escape(plots.ERROR_BARS)}</p>"]
    for name, fig in page.figures.items():
        data = base64.b64encode(plots.png(fig)).decode("ascii")
        parts.append(f"<figure id=plot-{name}><img alt='{html.escape(name)}' "
                     f"src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(plots.CAPTIONS.get(name, name))}</figcaption>"
                     "</figure>")
    return "".join(parts)


SECTIONS: list[Section] = [
    Section("Results", results_section, (report.MEASURED,)),
    Section("Runs that did not finish", failures_section, report.UNFINISHED),
    Section("Compiled plans", plans_section, (compile_report.STATUS,)),
    Section("Notes", notes_section),
    Section("Plots", plots_section),
]


def unshown_notes(df: pd.DataFrame, sections: Sequence[Section] | None = None) -> list[str]:
    """A note per record status that no section shows (such records are left out, not mixed)."""
    known = {s for section in (SECTIONS if sections is None else sections)
             for s in section.statuses}
    counts = df.loc[~df["status"].isin(known), "status"].value_counts()
    return [f"{n} record(s) with status {status!r} are not shown: no part of this report "
            "knows that status" for status, n in counts.items()]


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222;
       padding: 0 1em; }
div.scroll { overflow-x: auto; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; width: 100%; }
th, td { padding: 3px 8px; text-align: left; border-bottom: 1px solid #eee; white-space: nowrap; }
th { background: #f4f4f4; position: sticky; top: 0; }
tr.details td { border-bottom: 1px solid #ddd; padding-top: 0; white-space: normal; }
details summary { cursor: pointer; color: #555; font-size: 0.9em; }
pre { background: #f8f8f8; padding: 6px; overflow-x: auto; font-size: 12px; max-height: 30em; }
p.path { color: #666; font-size: 0.85em; margin: 0; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
"""


def render(page: Page, sections: Sequence[Section] | None = None) -> str:
    """The whole page as one HTML string."""
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    body = [f"<h1>{html.escape(page.title)}</h1>",
            f"<p>{len(page.records)} records &middot; trainbench {trainbench.__version__} "
            f"&middot; generated {created}</p>"]
    for section in SECTIONS if sections is None else sections:
        content = section.render(page)
        if content is not None:
            slug = section.title.lower().replace(" ", "-")
            body.append(f"<section id={slug}><h2>{html.escape(section.title)}</h2>"
                        f"{content}</section>")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(page.title)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


def write(page: Page, path: str | Path) -> Path:
    """Render the page into `path` (its folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(page), encoding="utf-8")
    return path
