"""The report's table of compiled plans, and `trainbench report` keeping them out of the
measured tables."""

import json
import shutil
from pathlib import Path

from trainbench import cli, compile_report

FIXTURES = Path(__file__).parent / "fixtures" / "records"


def _plan(**compile_fields):
    """A compiled-plan record with the fields the table reads."""
    memory = {"per_device_bytes": 3 * 2**30, "hbm_bytes": 16 * 2**30, "fits": True}
    return {"status": "compiled", "model": "tiny", "precision": "bf16", "batch_size": 8,
            "seq_len": 64, "device": {"attention": "pallas"},
            "compile": {"target": "tpu:v5e:2x2", "chips": 4, "mesh": {"dp": 1, "fsdp": 4, "tp": 1},
                        "memory": memory, "flop_ratio": 1.2, "collective_bytes": 2**30,
                        "roofline": {"mfu_ceiling": 0.42}, "compile_s": 2.0, **compile_fields}}


def test_compiled_plans_have_their_own_table():
    measured = {"status": "ok", "model": "tiny"}
    plans, others = compile_report.split([_plan(), measured, _plan(target="tpu:v6e:2x2")])
    assert others == [measured] and len(plans) == 2
    df = compile_report.frame(plans)
    row = df.iloc[0].to_dict()
    assert row["target"] == "tpu:v5e:2x2" and row["chips"] == 4
    assert row["mesh"] == "dp=1xfsdp=4xtp=1" and row["fits"] == "yes"
    assert row["GiB/device"] == "3.00" and row["HBM GiB"] == "16.00"
    assert row["MFU ceiling (bound)"] == "42.0%" and row["collectives GiB"] == "1.00"
    assert "bound" in compile_report.TITLE and "not measurements" in compile_report.TITLE


def _record(**fields):
    return {"schema": "trainbench.record/1", "run_id": "plan", "backend": "jax", **_plan(),
            **fields}


def test_report_shows_plans_apart_and_never_among_measured_runs(tmp_path, capsys):
    shutil.copy(FIXTURES / "jax_llama32_1b_v5e_r0.json", tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps(_record()))
    assert cli.cmd_report([str(tmp_path), "--markdown"]) == 0
    plans, *measured = capsys.readouterr().out.strip().split("\n\n")
    assert plans.startswith("| target | chips |") and "tpu:v5e:2x2" in plans
    assert "42.0%" in plans  # the MFU ceiling, in its bound-labelled column
    measured = "\n\n".join(measured)
    assert "llama32_1b" in measured  # the measured run
    # the plan is in no measured table, nor among the runs that did not finish
    assert "compiled" not in measured and "tpu:v5e:2x2" not in measured
    assert "| tiny |" not in measured


def test_report_of_plans_only(tmp_path, capsys):
    (tmp_path / "plan.json").write_text(json.dumps(_record()))
    assert cli.cmd_report([str(tmp_path)]) == 0
    assert "compiled plans" in capsys.readouterr().out
