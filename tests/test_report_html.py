"""The self-contained HTML report: parsed without a browser, and (slow) loaded in headless
Chromium, which must lay out every table row and decode every plot."""

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib.image
import pytest

from trainbench import cli, plots, report, report_html, results

from conftest import ROOT

RECORDS = ROOT / "tests" / "fixtures" / "records"


class Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag, **attrs):
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


@pytest.fixture(scope="module")
def page():
    records, _ = results.load_records([RECORDS])
    df, notes = report.to_convention(report.frame(records), "causal")
    grouped = report.group(df)
    figs = plots.figures(df, grouped)
    p = report_html.Page("fixture report", records, df, grouped, tuple(report.TABLE_COLUMNS),
                         notes + report.peak_notes(df), figs)
    yield p, report_html.render(p)
    plots.close(figs)


def test_page_holds_every_row_failure_note_and_plot(page):
    p, text = page
    doc = Elements(text)
    assert len(doc.find("tr", **{"class": "result"})) == len(p.grouped) == 6
    assert len(doc.find("tr", **{"class": "failure"})) == 1
    body = "".join(doc.text)
    assert "CUDA out of memory" in body and "recounted from attention=full to causal" in body
    first_table = text.split("</thead>")[0]
    assert first_table.count("<th>") == len(report.TABLE_COLUMNS)  # the page shows every column
    images = doc.find("img")
    assert len(images) == len(p.figures) and len(images) >= 5
    for img in images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(img["src"][len(prefix):])))
        assert pixels.shape[0] > 100 and pixels[..., :3].std() > 0.01


def test_page_needs_no_network(page):
    _, text = page
    doc = Elements(text)
    assert not doc.find("script") and not doc.find("link") and not doc.find("iframe")
    for _, attrs in doc.tags:
        for key in ("src", "href"):
            assert key not in attrs or attrs[key].startswith("data:")
    assert "@import" not in text and "url(" not in text


def test_each_row_has_its_runs_environment_and_config(page):
    p, text = page
    doc = Elements(text)
    assert len(doc.find("details")) == len(p.grouped) + 1  # every row, and the failure
    body = "".join(doc.text)
    three = "environment and config of 3 runs"
    assert body.count(three) == 2  # torch and jax on the H100 at batch 8, three repeats each
    jax = next(r for r in p.records if r["run_id"] == "jax_llama32_1b_h100_r1")
    assert json.dumps(jax["config"], indent=2, sort_keys=True) in body
    assert "jax_llama32_1b_h100_r1" in body and jax["_path"] in body


def test_sections_are_a_list_and_unknown_statuses_get_a_note(page):
    p, _ = page
    plan = {**p.records[0], "run_id": "queued_run", "status": "queued", "metrics": None}
    records = [*p.records, plan]
    df, _ = report.to_convention(report.frame(records), "causal")
    assert report_html.unshown_notes(df) == [
        "1 record(s) with status 'queued' are not shown: no part of this report knows that "
        "status"]
    queued = report_html.Section(
        "Queued runs", lambda pg: "<p>" + ", ".join(pg.df[pg.df.status == "queued"].run_id)
        + "</p>", ("queued",))
    sections = [*report_html.SECTIONS, queued]
    assert report_html.unshown_notes(df, sections) == []
    page2 = report_html.Page("t", records, df, report.group(df))
    text = report_html.render(page2, sections)
    assert "<h2>Queued runs</h2><p>queued_run</p>" in text
    assert len(Elements(text).find("tr", **{"class": "result"})) == len(p.grouped)


def test_html_flag_writes_the_page(tmp_path, capsys):
    target = tmp_path / "out" / "report.html"
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", str(RECORDS), "--html", str(target), "--columns", "backend,MFU"])
    assert exc.value.code == 0
    assert f"wrote {target}" in capsys.readouterr().out
    doc = Elements(target.read_text())
    assert "<tr><th>backend</th><th>MFU</th></tr>" in target.read_text()
    assert len(doc.find("img")) >= 5


def test_page_of_failed_runs_only(tmp_path, capsys):
    target = tmp_path / "report.html"
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", str(RECORDS / "torch_llama3_8b_h100_oom.json"), "--html",
                  str(target), "--plots", str(tmp_path / "plots")])
    assert exc.value.code == 0
    doc = Elements(target.read_text())
    assert len(doc.find("tr", **{"class": "failure"})) == 1
    assert not doc.find("tr", **{"class": "result"}) and not doc.find("img")
    assert not (tmp_path / "plots").exists() or not list((tmp_path / "plots").iterdir())


# Flags from the project's browser-test policy: no GPU, no network side traffic, fresh profile.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
# Appended to a copy of the page, never to the product: after load, write each image's decoded
# size into the DOM so --dump-dom shows whether the browser could draw it.
PROBE = ("<script>window.addEventListener('load', () => { for (const i of document.images) "
         "i.dataset.decoded = i.naturalWidth + 'x' + i.naturalHeight; "
         "for (const r of document.querySelectorAll('tr.result')) "
         "r.dataset.height = r.getBoundingClientRect().height; });</script>")


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (`make browser`)")
def test_page_in_headless_chromium(tmp_path):
    page_path = tmp_path / "report.html"
    with pytest.raises(SystemExit):
        cli.main(["report", str(RECORDS), "--html", str(page_path)])
    text = page_path.read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", PROBE + "</body>"))

    def chromium(*args):
        profile = tmp_path / f"profile{len(list(tmp_path.iterdir()))}"
        profile.mkdir()
        return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               *args], capture_output=True, text=True, timeout=120, check=True)

    dom = Elements(chromium("--virtual-time-budget=5000", "--dump-dom",
                            probed.as_uri()).stdout)
    rows = dom.find("tr", **{"class": "result"})
    assert len(rows) == 6 and all(float(r["data-height"]) > 0 for r in rows)
    images = dom.find("img")
    expected = Elements(text).find("img")
    assert len(images) == len(expected) >= 5
    for img, source in zip(images, expected):
        pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(source["src"].split(",")[1])))
        assert img["data-decoded"] == f"{pixels.shape[1]}x{pixels.shape[0]}", img["alt"]

    shot = tmp_path / "screenshot.png"
    chromium("--hide-scrollbars", "--window-size=1300,3000", f"--screenshot={shot}",
             page_path.as_uri())
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (3000, 1300) and pixels[..., :3].std() > 0.05


@pytest.mark.parametrize("with_runs", [False, True])
def test_compiled_plans_get_their_own_section(tmp_path, capsys, with_runs):
    """The committed TPU plans (benchmarks/tpu/) as a table of their own, with or without
    measured runs beside them, never among the measured rows."""
    plans = sorted((ROOT / "benchmarks" / "tpu").glob("compile_*.json"))
    folder = tmp_path / "records"
    folder.mkdir()
    for path in plans + (sorted(RECORDS.glob("*.json")) if with_runs else []):
        shutil.copy(path, folder / path.name)
    out = tmp_path / "page.html"
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", str(folder), "--html", str(out)])
    assert exc.value.code == 0
    text = out.read_text()
    assert "<h2>Compiled plans</h2>" in text
    rows = Elements(text).find("tr", **{"class": "plan"})
    assert len(rows) == len(plans)
    assert "not measurements" in text and "status 'compiled'" not in text
    assert ("<h2>Results</h2>" in text) == with_runs
