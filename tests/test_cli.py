"""The `trainbench` command end to end: real runs in subprocesses, user errors in-process."""

import json
import subprocess
import sys

import pytest

from trainbench import cli, results

from conftest import ROOT, read_json_files

SMOKE = ["experiment=cpu_smoke", "backend=reference"]


def _user_error(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_full_run_writes_a_valid_record(cli, tmp_path):
    proc = cli(*SMOKE, "results_dir=out", "model.n_layers=3", "seed=7", "train.steps=4")
    assert proc.returncode == 0, proc.stderr
    assert "tokens/s" in proc.stdout and "MFU" in proc.stdout
    [record] = read_json_files(tmp_path / "out")
    assert record["schema"] == results.SCHEMA and record["status"] == "ok"
    assert record["backend"] == "reference" and record["model"] == "tiny"
    cfg = record["config"]
    assert cfg["model"]["n_layers"] == 3 and cfg["seed"] == 7 and cfg["train"]["steps"] == 4
    assert len(record["times"]["step_s"]) == 4 and len(record["loss"]["per_step"]) == 5
    m = record["metrics"]
    assert m["tokens_per_s"] > 0 and 0 < m["mfu"] < 1
    assert m["step_time_s"]["p10"] <= m["step_time_s"]["median"] <= m["step_time_s"]["p90"]
    assert record["peak"]["method"] == "measured" and record["peak"]["flops_per_s"] > 0
    probe = record["peak"]["probe"]  # the cached CPU probe, cited with its spread
    assert probe["spread"] >= 0 and probe["measured_at"] and probe["cache_file"].endswith(".json")
    assert record["flops"]["attention"] == "causal" and "causal" in record["flops"]["convention"]
    assert record["flops"]["per_step"] > 0 and record["flops"]["palm_per_step"] > 0
    env = record["environment"]
    assert env["python"] and env["versions"]["numpy"] and env["trainbench"]
    assert "commit" in env["git"]
    assert record["device"]["kind"] == "cpu" and record["device"]["count"] == 1
    assert record["memory"]["peak_bytes"] > 0 and record["memory"]["measure"] == "host_rss_growth"
    assert record["memory"]["framework"]["bytes"] is None  # NumPy has no allocator figure


def test_multirun_of_two_runs_and_report(cli, tmp_path):
    proc = cli("-m", *SMOKE, "train.batch_size=2,3", "results_dir=sweep")
    assert proc.returncode == 0, proc.stderr
    records = read_json_files(tmp_path / "sweep")
    assert sorted(r["batch_size"] for r in records) == [2, 3]
    assert all(r["status"] == "ok" for r in records)
    report = cli("report", "sweep")
    assert report.returncode == 0, report.stderr
    assert report.stdout.count("reference") >= 2 and "tiny" in report.stdout
    md = cli("report", "--markdown", str(tmp_path / "sweep" / "*.json"))
    header, rule, *rows = [line for line in md.stdout.splitlines() if line.startswith("|")]
    assert "| backend |" in header and "| MFU |" in header and "| tokens/s |" in header
    assert len(rows) == 2 and all("| reference |" in r for r in rows)


def test_backends_command(cli):
    proc = cli("backends")
    assert proc.returncode == 0, proc.stderr
    assert "reference" in proc.stdout and "yes" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["train.batch_sz=3"], "train.batch_sz is not a config key; train has: batch_size, seq_len"),
    (["train.batch_size=abc"], "train.batch_size"),
    (["model=llama9"], "model=llama9 is not a known option; choose one of:"),
    (["backend=nope"], "backend=nope is not a known option; choose one of:"),
    (["precision=fp8"], "precision=fp8 is not a known option; choose one of:"),
    (["model.n_kv_heads=3"], "model.n_kv_heads=3 does not divide model.n_heads=4"),
    (["train.seq_len=4096"], "train.seq_len=4096 exceeds model.max_seq_len=128"),
    (["train.steps=0"], "train.steps=0 must be at least 1"),
    (["train.attention_flops=half"], "train.attention_flops='half' must be one of: causal, full"),
    (["-m", "train.batch_size=2,0"], "train.batch_size=0 must be at least 1"),
    (["nokey=1"], "nokey is not a config key"),
])
def test_config_errors_are_one_line(capsys, args, message):
    assert message in _user_error(capsys, *SMOKE, *args)


def test_run_errors_before_work_are_one_line(capsys, tmp_path):
    line = _user_error(capsys, *SMOKE, "precision=bf16", f"results_dir={tmp_path}")
    assert "backend=reference does not support precision=bf16; it supports: fp32, fp64" in line
    line = _user_error(capsys, *SMOKE, f"data.path={tmp_path}/none.bin", f"results_dir={tmp_path}")
    assert f"data.path='{tmp_path}/none.bin' does not exist" in line
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_bad_input_does_not_touch_an_existing_record(cli, tmp_path):
    assert cli(*SMOKE, "results_dir=out").returncode == 0
    [path] = (tmp_path / "out").glob("*.json")
    before = path.read_bytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00\x01\x00")
    proc = cli(*SMOKE, "results_dir=out", f"data.path={bad}")
    assert proc.returncode == 2 and "not a whole number of uint16 tokens" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert path.read_bytes() == before and len(list((tmp_path / "out").iterdir())) == 1


def test_token_file_run(cli, tmp_path):
    import numpy as np

    (np.arange(4000) % 200).astype(np.uint16).tofile(tmp_path / "tokens.bin")
    proc = cli(*SMOKE, "results_dir=out", f"data.path={tmp_path / 'tokens.bin'}")
    assert proc.returncode == 0, proc.stderr
    [record] = read_json_files(tmp_path / "out")
    assert record["config"]["data"]["path"].endswith("tokens.bin") and record["status"] == "ok"


@pytest.mark.slow
def test_installed_wheel_finds_its_configs(tmp_path):
    """Build the wheel, install it into a folder, and run it from outside the checkout."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, timeout=300)
    [wheel] = wheels.glob("trainbench-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, timeout=300)
    run = tmp_path / "elsewhere"
    run.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    where = subprocess.run([sys.executable, "-c", "import trainbench; print(trainbench.__file__)"],
                           cwd=run, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(site)), where.stdout
    proc = subprocess.run([sys.executable, "-m", "trainbench", *SMOKE, "results_dir=out"],
                          cwd=run, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [record] = read_json_files(run / "out")
    assert record["status"] == "ok"
    assert record["environment"]["git"]["commit"] is None  # installed, not a checkout
    assert json.dumps(record)
