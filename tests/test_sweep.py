"""Sweeps that survive failure: isolation, causes, re-runs, kills."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, read_json_files

PLUGINS = str(ROOT / "tests" / "plugins")
SWEEP = ["-m", "experiment=cpu_smoke", "backend=faulty", "backend.inject=false,true",
         "backend.fault=abort,hang,nan", "sweep.timeout_s=10", "results_dir=sweep"]


def _cli(cwd, *args, timeout=300):
    env = {**os.environ, "PYTHONPATH": PLUGINS}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "trainbench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _by_fault(records):
    return {(r["config"]["backend"]["inject"], r["config"]["backend"]["fault"]): r
            for r in records}


def test_sweep_with_crash_timeout_and_divergence(tmp_path):
    proc = _cli(tmp_path, *SWEEP)
    assert proc.returncode == 0, proc.stderr
    records = _by_fault(read_json_files(tmp_path / "sweep"))
    assert len(records) == 6
    for fault in ("abort", "hang", "nan"):
        assert records[(False, fault)]["status"] == "ok"
        assert records[(False, fault)]["metrics"]["tokens_per_s"] > 0
    crash, hang, nan = (records[(True, f)] for f in ("abort", "hang", "nan"))
    assert crash["status"] == "failed" and "SIGABRT" in crash["cause"]
    assert hang["status"] == "failed" and "timeout" in hang["cause"]
    assert "sweep.timeout_s=10" in hang["cause"]
    assert nan["status"] == "diverged" and "nan at step 1" in nan["cause"]
    assert "sweep summary: 6 runs: 3 done, 2 failed, 1 diverged, 0 skipped" in proc.stdout
    assert proc.stdout.count("SIGABRT") >= 1

    again = _cli(tmp_path, *SWEEP)
    assert again.returncode == 0, again.stderr
    assert "sweep summary: 6 runs: 0 done, 0 failed, 0 diverged, 6 skipped" in again.stdout
    assert _by_fault(read_json_files(tmp_path / "sweep")) == records  # nothing re-ran

    retry = _cli(tmp_path, *SWEEP, "sweep.rerun_failed=true")
    assert retry.returncode == 0, retry.stderr
    assert "sweep summary: 6 runs: 0 done, 2 failed, 1 diverged, 3 skipped" in retry.stdout
    after = _by_fault(read_json_files(tmp_path / "sweep"))
    for key in records:
        same = after[key]["created"] == records[key]["created"] and after[key] == records[key]
        assert same == (key[0] is False), key  # only the failures ran again


def test_raise_inside_a_run_is_recorded(tmp_path):
    proc = _cli(tmp_path, "-m", "experiment=cpu_smoke", "backend=faulty", "backend.inject=true",
                "backend.fault=raise", "results_dir=out")
    assert proc.returncode == 0, proc.stderr
    [record] = read_json_files(tmp_path / "out")
    assert record["status"] == "failed" and record["cause"] == "RuntimeError: injected fault"
    assert "injected fault" in record["traceback"]


def test_missing_backend_in_a_sweep_is_a_failed_record(tmp_path):
    proc = _cli(tmp_path, "-m", "experiment=cpu_smoke", "backend=reference",
                "precision=fp32,bf16", "results_dir=out")
    assert proc.returncode == 0, proc.stderr
    statuses = sorted((r["status"], r.get("cause") or "") for r in read_json_files(tmp_path / "out"))
    assert statuses[0][0] == "failed" and "does not support precision=bf16" in statuses[0][1]
    assert statuses[1][0] == "ok"


KILLED_SWEEP = ",".join(str(b) for b in range(1, 25))
"""The killed sweep's batch sizes: 24 runs of a few tenths of a second each."""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_killing_a_sweep_leaves_only_whole_records(tmp_path, sig):
    # the sweep starts as from a shell: default signal handling, no signals blocked, and none
    # of the libtpu variables an earlier test of this worker may have left (in CI, with both,
    # the sweep outlived SIGTERM; not reproduced outside the full suite)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TPU_") and k != "ALLOW_MULTIPLE_LIBTPU_LOAD"}
    env["PYTHONPATH"] = PLUGINS

    def default_signals():
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "trainbench", "-m", "experiment=cpu_smoke",
                             "backend=reference", f"train.batch_size={KILLED_SWEEP}",
                             "results_dir=out"], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=default_signals)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "out").glob("*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    written = list((tmp_path / "out").glob("*.json"))
    # killed after the second record, long before the last: a loaded machine may let the test
    # poll late (a sweep of 8 once finished before the kill arrived), so the sweep is long
    assert 2 <= len(written) < len(KILLED_SWEEP.split(","))
    for path in written:
        record = json.loads(path.read_text())
        assert record["status"] == "ok" and record["metrics"]["tokens_per_s"] > 0


def test_submitit_local_launcher(tmp_path):
    """The cluster path (Hydra's submitit launcher) run locally: jobs in their own processes."""
    proc = _cli(tmp_path, "-m", "experiment=cpu_smoke", "backend=reference",
                "train.batch_size=2,3", "hydra/launcher=submitit_local",
                "hydra.launcher.timeout_min=5", "results_dir=out")
    assert proc.returncode == 0, proc.stderr
    records = read_json_files(tmp_path / "out")
    assert sorted(r["batch_size"] for r in records) == [2, 3]
    assert all(r["status"] == "ok" for r in records)
    assert "sweep summary: 2 runs: 2 done" in proc.stdout
