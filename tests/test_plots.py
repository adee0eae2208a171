"""Figures match the table: one bar per grouped row, p10-p90 error bars, scaling plots only when a
sweep varies batch x seq or the device count (fixture records, tests/fixtures/)."""

import sys

import matplotlib.image
import numpy as np
import pytest

from trainbench import plots, report, results

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import make_records  # noqa: E402  (the fixture generator: synthetic records in the real format)

RECORDS = ROOT / "tests" / "fixtures" / "records"


@pytest.fixture(scope="module")
def frames():
    records, _ = results.load_records([RECORDS])
    df, _ = report.to_convention(report.frame(records), "causal")
    figs = plots.figures(df, report.group(df))
    yield df, report.group(df), figs
    plots.close(figs)


def _bars(fig):
    ax = fig.axes[0]
    [container] = [c for c in ax.containers if hasattr(c, "patches")]
    return ax, container


def test_one_bar_per_table_row_labelled_with_batch_and_seq(frames):
    df, g, figs = frames
    for name in ("tokens_per_s", "mfu", "memory"):
        ax, bars = _bars(figs[name])
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert len(bars.patches) == len(g) == len(labels) == len(set(labels))
        assert labels == plots.row_labels(g)
    labels = plots.row_labels(g)
    # the case: torch on the H100 at batch 4 and batch 8 are two bars, not one
    assert "H100 SXM x8 torch b4 s2048" in labels and "H100 SXM x8 torch b8 s2048" in labels
    ax, bars = _bars(figs["tokens_per_s"])
    widths = [p.get_width() for p in bars.patches]
    assert widths == pytest.approx(list(g["tokens_per_s_per_device"]))


def test_error_bars_span_p10_to_p90(frames):
    _, g, figs = frames
    _, bars = _bars(figs["mfu"])
    segments = bars.errorbar.lines[2][0].get_segments()
    for i, segment in enumerate(segments):
        low, high = sorted(x for x, _ in segment)
        row = g.iloc[i]
        if np.isfinite(row["mfu"]):
            assert low == pytest.approx(100 * row["mfu_p10"])
            assert high == pytest.approx(100 * row["mfu_p90"])
            assert low <= 100 * row["mfu"] <= high


def test_a_row_without_mfu_has_no_bar_and_says_so(frames):
    _, g, figs = frames
    ax, bars = _bars(figs["mfu"])
    i = list(g.accelerator).index("NVIDIA GeForce RTX 4090")
    assert bars.patches[i].get_width() == 0
    assert any(t.get_text().strip() == "n/a" for t in ax.texts)


def test_scaling_plot_when_batch_x_seq_varies_not_devices(frames):
    _, _, figs = frames
    assert "scaling_devices" not in figs  # no configuration ran on two device counts
    fig = figs["scaling_batch_seq"]
    tokens_ax, mfu_ax = fig.axes
    [series] = tokens_ax.containers  # one errorbar series: its data line first
    assert list(series.lines[0].get_xdata()) == [4 * 2048, 8 * 2048]
    assert tokens_ax.get_legend().get_texts()[0].get_text() == "H100 SXM x8 torch llama32_1b bf16"
    assert len(mfu_ax.containers) == 1


def test_device_scaling_plot_one_line_per_configuration():
    records = [make_records.record(f"jax_{n}", "jax", "NVIDIA H100 80GB HBM3", n, "llama32_1b",
                                   8, 2048, make_records.jitter(0.06 * (1 + 0.05 * n), 5, n))
               for n in (1, 2, 4, 8)]
    records.append(make_records.record("torch_1", "torch", "NVIDIA H100 80GB HBM3", 1,
                                       "llama32_1b", 8, 2048, make_records.jitter(0.07, 5, 9)))
    df = report.frame(records)
    g = report.group(df)
    figs = plots.figures(df, g)
    try:
        assert "scaling_batch_seq" not in figs
        tokens_ax, mfu_ax = figs["scaling_devices"].axes
        [series] = tokens_ax.containers  # torch ran on one device count only: no line
        line = series.lines[0]
        assert list(line.get_xdata()) == [1, 2, 4, 8]
        jax = g[g.backend == "jax"].sort_values("devices")
        assert list(line.get_ydata()) == pytest.approx(list(jax["tokens_per_s"]))
    finally:
        plots.close(figs)


def test_save_writes_readable_pngs(frames, tmp_path):
    _, _, figs = frames
    paths = plots.save(figs, tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{n}.png" for n in figs)
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0.01  # not a blank canvas
