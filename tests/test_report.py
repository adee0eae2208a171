"""The report over committed fixture records of several accelerators (tests/fixtures/: synthetic
numbers in the real record format, made by tests/fixtures/make_records.py)."""

import json

import matplotlib.image
import numpy as np
import pytest

from trainbench import cli, flops, hardware, model, report, results
from trainbench.errors import ConfigError

from conftest import ROOT

RECORDS = ROOT / "tests" / "fixtures" / "records"
BASELINE = ROOT / "tests" / "fixtures" / "baseline"


@pytest.fixture(scope="module")
def loaded():
    records, skipped = results.load_records([RECORDS])
    assert not skipped
    df, notes = report.to_convention(report.frame(records), "causal")
    return records, df, notes


def test_groups_repeats_with_median_and_spread(loaded):
    _, df, _ = loaded
    g = report.group(df)
    torch_h100 = g[(g.backend == "torch") & (g.accelerator == "H100 SXM") & (g.batch == 8)].iloc[0]
    runs = df[(df.backend == "torch") & (df.accelerator == "H100 SXM") & (df.batch == 8)
              & (df.status == "ok")]
    assert torch_h100["n"] == 3 == len(runs)
    assert torch_h100["tokens_per_s"] == pytest.approx(np.median(runs["tokens_per_s"]))
    p10, p90 = np.percentile(runs["tokens_per_s"], [10, 90])
    assert torch_h100["noise"] == pytest.approx((p90 - p10) / torch_h100["tokens_per_s"])
    assert set(g.accelerator) == {"H100 SXM", "TPU v5e", "Trainium2", "NVIDIA GeForce RTX 4090"}
    assert "failed" not in set(g.columns) and len(df[df.status == "failed"]) == 1


def test_unknown_device_has_no_mfu_and_a_note(loaded):
    _, df, notes = loaded
    row = df[df.device_name == "NVIDIA GeForce RTX 4090"].iloc[0]
    assert np.isnan(row["mfu"]) and row["tokens_per_s"] > 0
    assert any("RTX 4090: not in the hardware table; MFU left empty" in n
               for n in report.peak_notes(df))


def test_trainium_mfu_uses_the_per_device_peak(loaded):
    records, df, _ = loaded
    row = df[df.backend == "neuron"].iloc[0]
    per_device = hardware.lookup("NC_v3d").peak_flops_per_device("bf16")
    assert row["mfu"] == pytest.approx(row["tflops_per_device"] * 1e12 / per_device)


def test_other_conventions_are_recounted_not_mixed(loaded):
    records, df, notes = loaded
    [full] = [r for r in records if r["flops"]["attention"] == "full"]
    row = df[df.run_id == full["run_id"]].iloc[0]
    cfg = model.ModelConfig(**full["config"]["model"])
    causal = flops.training_flops(cfg, full["batch_size"], full["seq_len"], "causal")
    assert causal < full["flops"]["per_step"]
    assert row["attention"] == "causal" and row["flops_per_step"] == causal
    assert row["mfu"] == pytest.approx(full["metrics"]["mfu"] * causal / full["flops"]["per_step"])
    assert any("recounted from attention=full to causal" in n for n in notes)
    shapeless = dict(full, config={})
    df2, notes2 = report.to_convention(report.frame([shapeless]), "causal")
    assert np.isnan(df2.iloc[0]["mfu"]) and "no model shape" in notes2[0]


def test_mamfu_is_against_the_measured_matmul_rate(loaded):
    records, df, _ = loaded
    rec = next(r for r in records if r["backend"] == "jax" and "H100" in r["device"]["name"])
    row = df[df.run_id == rec["run_id"]].iloc[0]
    expected = rec["metrics"]["model_tflops_per_device"] * 1e12 / rec["mamf"]["flops_per_s"]
    assert row["mamfu"] == pytest.approx(expected) and row["mamfu"] > row["mfu"]


def test_costs_only_where_the_table_has_numbers(loaded, tmp_path):
    _, df, _ = loaded
    shipped = report.load_costs()
    for entry in shipped["devices"].values():  # shipped numbers all name a source
        assert entry["board_power_source"] and (entry["price_per_device_hour"] is None
                                                or entry["price_source"])
    costs = {"devices": {"H100 SXM": {"price_per_device_hour": 3.0, "board_power_w": 700}}}
    g = report.add_costs(report.group(df), costs)
    h100 = g[(g.accelerator == "H100 SXM") & (g.backend == "jax")].iloc[0]
    assert h100["usd_per_mtok"] == pytest.approx(3.0 * 8 / (h100["tokens_per_s"] * 3600) * 1e6)
    assert h100["joules_per_token"] == pytest.approx(700 * 8 / h100["tokens_per_s"])
    assert g[g.accelerator == "TPU v5e"]["usd_per_mtok"].isna().all()


def test_baseline_flags_the_regression_beyond_noise(loaded):
    _, df, _ = loaded
    base, _ = report.to_convention(report.frame(results.load_records([BASELINE])[0]), "causal")
    cmp = report.compare_baseline(report.group(df), report.group(base))
    flagged = cmp[cmp.regression]
    assert set(flagged.backend) == {"torch"}  # torch got ~11% slower; jax moved within noise
    assert (flagged.change < -flagged.threshold).all()
    jax = cmp[cmp.backend == "jax"]
    assert (jax.change.abs() <= 2 * jax.threshold).all() and not jax.regression.any()


def test_report_command_end_to_end(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", str(RECORDS), "--csv", str(tmp_path / "r.csv"), "--plots",
                  str(tmp_path / "plots"), "--baseline", str(BASELINE), "--fail-on-regression"])
    assert exc.value.code == cli.EXIT_REGRESSION
    out = capsys.readouterr().out
    assert "H100 SXM" in out and "TPU v5e" in out and "Trainium2" in out and "MAMFU" in out
    assert "CUDA out of memory" in out and "regression(s)" in out
    header = (tmp_path / "r.csv").read_text().splitlines()[0]
    assert "mfu" in header and "mamfu" in header and "usd_per_mtok" in header
    for name in ("mfu", "tokens_per_s", "memory", "step_time"):
        image = matplotlib.image.imread(tmp_path / "plots" / f"{name}.png")
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0.01  # not a blank canvas


def test_markdown_report(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "--markdown", str(RECORDS)])
    assert exc.value.code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| accelerator | devices | backend |")
    assert any("| Trainium2 |" in line for line in lines)


def test_fixture_records_say_they_are_synthetic():
    for path in RECORDS.glob("*.json"):
        assert "not a measurement" in json.loads(path.read_text())["fixture"]


def test_bands_are_p10_p90_of_repeats_or_of_one_runs_steps(loaded):
    _, df, _ = loaded
    g = report.group(df)
    torch8 = g[(g.backend == "torch") & (g.accelerator == "H100 SXM") & (g.batch == 8)].iloc[0]
    runs = df[(df.backend == "torch") & (df.accelerator == "H100 SXM") & (df.batch == 8)
              & (df.status == "ok")]
    for metric in report.BAND_METRICS:
        p10, p90 = np.percentile(runs[metric], [10, 90])
        assert torch8[f"{metric}_p10"] == pytest.approx(p10)
        assert torch8[f"{metric}_p90"] == pytest.approx(p90)
    single = g[g.backend == "neuron"].iloc[0]
    run = df[df.backend == "neuron"].iloc[0]
    assert single["tokens_per_s_p10"] == pytest.approx(
        run["tokens_per_s"] * run["step_median_s"] / run["step_p90_s"])
    assert single["tokens_per_s_p10"] < single["tokens_per_s"] < single["tokens_per_s_p90"]


def test_columns_registry_default_all_and_unknown():
    assert report.select_columns(None) == report.DEFAULT_COLUMNS
    assert report.select_columns("all") == tuple(report.TABLE_COLUMNS)
    assert report.select_columns(" backend, MFU ") == ("backend", "MFU")
    assert set(report.DEFAULT_COLUMNS) <= set(report.TABLE_COLUMNS)
    with pytest.raises(ConfigError, match=r"unknown column 'nope'; valid columns: accelerator, "):
        report.select_columns("backend,nope")


def test_default_table_fits_120_columns_without_folding(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", str(RECORDS)])
    assert exc.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 120
    # each configuration on one line: the Trainium2 row holds its tokens/s and MFU
    [trn2] = [line for line in lines if line.startswith("Trainium2")]
    assert "85,860" in trn2 and "50.31%" in trn2 and "27.9 GiB" in trn2


def test_columns_flag_chooses_and_rejects(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "--markdown", "--columns", "backend,batch,MFU", str(RECORDS)])
    assert exc.value.code == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == "| backend | batch | MFU |"
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "--columns", "MFU,speed", str(RECORDS)])
    assert exc.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown column 'speed'" in err and "tokens/s" in err


def test_records_of_an_unknown_status_are_left_out_with_a_note(loaded, tmp_path, capsys):
    records, _, _ = loaded
    plan = {**{k: v for k, v in records[0].items() if k != "_path"}, "run_id": "queued_run",
            "status": "queued", "metrics": None}
    for path in RECORDS.glob("*.json"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", str(tmp_path), "--markdown"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "queued_run" not in out
    assert "1 record(s) with status 'queued' are not shown" in out
    df, _ = report.to_convention(report.frame([*records, plan]), "causal")
    assert "queued" not in set(report.failures(df).status)
    assert report.group(df)["n"].sum() == len(df[df.status == "ok"])


def test_memory_cells_say_what_they_measure(loaded):
    records, _, _ = loaded
    gpu = json.loads(json.dumps(records[0]))
    gpu["memory"] = {"peak_bytes": 3 * 2**30, "kind": "torch.cuda.max_memory_allocated",
                     "measure": "device_peak_allocation", "framework": {"bytes": 3 * 2**30}}
    cpu = json.loads(json.dumps(records[0]))
    cpu["device"] = {"name": "Test CPU", "kind": "cpu", "count": 1}
    cpu["memory"] = {"peak_bytes": 2**30, "kind": "host process peak RSS growth",
                     "measure": "host_rss_growth", "framework": {"bytes": None}}
    assert report.row(gpu)["memory"] == "3.0 GiB (device peak)"
    assert report.row(cpu)["memory"] == "1.0 GiB (RSS growth)"
    shown = report.display(report.group(report.frame([gpu, cpu])))
    assert sorted(shown["memory"]) == ["1.0 GiB (RSS growth)", "3.0 GiB (device peak)"]
    # records written before the measure field: the figure alone, no claimed meaning
    assert report.row(records[0])["memory"] == "27.9 GiB"
