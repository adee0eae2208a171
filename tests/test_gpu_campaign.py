"""scripts/gpu_campaign.py (with gpu_wheels.py and gpu_ceilings.py): the plan and its dry run,
the time budget, a step's time limit, going on past a failure, parallel checks, the out-of-memory
retry, the choice of the llama3_8b run, and the files it returns. The campaign's steps are tiny
fake commands here; nothing needs a GPU or the network."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gc = _load("gpu_campaign")
gw = sys.modules["gpu_wheels"]
PY = sys.executable


def cmd(code: str, *args: str) -> "gc.Command":
    return gc.Command([PY, "-c", code, *args])


def campaign(tmp_path: Path, steps, budget_s: float = 600, out: bool = True, clock=time.monotonic):
    return gc.Campaign(steps, budget_s, tmp_path / "work", tmp_path / "out" if out else None,
                       dict(os.environ), clock=clock, info={"command": "test"})


def make_wheel(folder: Path, name: str, version: str, requires: list[str] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}-{version}.dist-info/METADATA", meta)
    return path


def full_wheel_folder(folder: Path) -> Path:
    spec = gw.load_spec()
    for name, version in spec.wheels.items():
        make_wheel(folder, name, version)
    make_wheel(folder, "trainbench", "0.1.0", ["numpy>=1.26", "hydra-core>=1.3.2,<1.4"])
    return folder


# ---- the campaign's runner -----------------------------------------------------------------------

def test_failing_step_does_not_stop_the_campaign(tmp_path: Path) -> None:
    c = campaign(tmp_path, [gc.Step("bad", "g", [cmd("raise SystemExit(3)")], 60),
                            gc.Step("good", "g", [cmd("print('after the failure')")], 60)])
    results = c.run()
    assert [r.status for r in results] == ["failed", "ok"]
    assert results[0].commands[0]["returncode"] == 3
    assert "- bad: `python3 -c raise SystemExit(3)`: exit 3" in (
        tmp_path / "out" / "summary.md").read_text()
    assert "after the failure" in Path(results[1].commands[0]["log"]).read_text()


def test_missing_program_fails_its_step_only(tmp_path: Path) -> None:
    tool = gc.Command(["no-such-program-here"], "tool")
    c = campaign(tmp_path, [gc.Step("tool", "g", [tool], 60),
                            gc.Step("next", "g", [cmd("pass")], 60)])
    assert [r.status for r in c.run()] == ["failed", "ok"]


def test_step_limit_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
            "time.sleep(120)\n")
    c = campaign(tmp_path, [gc.Step("hang", "g", [cmd(code)], 3),
                            gc.Step("next", "g", [cmd("pass")], 60)])
    start = time.monotonic()
    results = c.run()
    assert time.monotonic() - start < 60  # not the 120 s the command would take
    assert [r.status for r in results] == ["timeout", "ok"]
    assert results[0].commands[0]["returncode"] is None
    pid = int(pidfile.read_text())
    for _ in range(100):  # the grandchild was killed with its group (reaped by init)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"process {pid} started by the timed-out step is still running")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float):
        def then(campaign, step, result):
            self.now += seconds
        return then


def test_budget_skips_what_cannot_fit_and_keeps_the_report_reserve(tmp_path: Path) -> None:
    clock = FakeClock()
    steps = [gc.Step("a", "g", [cmd("pass")], 60, then=clock.advance(50)),
             gc.Step("b", "g", [cmd("pass")], 60, min_s=30, then=clock.advance(20)),
             gc.Step("c", "g", [cmd("pass")], 60, min_s=30),  # 100 - 70 - 10 = 20 s < 30
             gc.Step("d", "g", [cmd("pass")], 60, min_s=5),   # fits in those 20 s
             gc.Step("report", "report", [cmd("pass")], 10, final=True)]
    results = campaign(tmp_path, steps, budget_s=100, clock=clock).run()
    assert [r.status for r in results] == ["ok", "ok", "skipped", "ok", "ok"]
    assert results[1].limit_s == 40  # 100 - 50 - 10 kept for the report
    assert results[3].limit_s == 20
    assert "budget leaves 20 s" in results[2].note and "at least 30 s" in results[2].note
    assert results[4].limit_s == 10


def test_budget_spent_skips_the_rest_with_a_note(tmp_path: Path) -> None:
    clock = FakeClock()
    steps = [gc.Step("long", "g", [cmd("pass")], 60, then=clock.advance(95)),
             gc.Step("x", "g", [cmd("pass")], 60, min_s=1),
             gc.Step("y", "g", lambda c: "decided not to run", 60, min_s=1),
             gc.Step("report", "report", [cmd("pass")], 5, final=True)]
    results = campaign(tmp_path, steps, budget_s=90, clock=clock).run()
    assert [r.status for r in results] == ["ok", "skipped", "skipped", "skipped"]
    log = (tmp_path / "work" / "campaign.log").read_text()
    assert "x: skipped: the budget leaves 0 s" in log
    assert gc.rerun_hint(results, tmp_path / "records").endswith("--only x,y,report")
    assert gc.rerun_hint(results[:1], tmp_path / "records") is None


def test_parallel_step_runs_its_commands_at_once(tmp_path: Path) -> None:
    # Each command marks itself started and waits for the others: only concurrency finishes.
    code = ("import pathlib, sys, time\n"
            "d = pathlib.Path(sys.argv[1]); (d / sys.argv[2]).touch()\n"
            "while len(list(d.iterdir())) < 3: time.sleep(0.05)\n")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    step = gc.Step("par", "g", [cmd(code, str(barrier), str(i)) for i in range(3)], 60, workers=3)
    [result] = campaign(tmp_path, [step]).run()
    assert result.status == "ok"
    assert len({c["log"] for c in result.commands}) == 3  # one log per command


def test_step_decided_at_run_time_can_skip_itself(tmp_path: Path) -> None:
    steps = [gc.Step("dyn", "g", lambda c: "nothing to run yet", 60),
             gc.Step("dyn2", "g", lambda c: [cmd("pass")], 60)]
    results = campaign(tmp_path, steps).run()
    assert [(r.status, r.note) for r in results] == [("skipped", "nothing to run yet"), ("ok", "")]


def write_record_code(status: str, cause: str | None, mfu: float | None = None) -> str:
    """A fake `trainbench` run: writes a record into the results_dir=... argument."""
    record = {"schema": "trainbench.record/1", "status": status, "cause": cause,
              "created": "2026-01-01T00:00:00", "backend": "torch", "model": "llama32_1b",
              "metrics": {"mfu": mfu, "model_tflops_per_device": 400.0, "tokens_per_s": 5e4,
                          "step_time_s": {"median": 0.5}} if mfu else None}
    return ("import json, pathlib, sys\n"
            "args = dict(a.split('=', 1) for a in sys.argv[1:])\n"
            "d = pathlib.Path(args['results_dir']); d.mkdir(parents=True, exist_ok=True)\n"
            f"rec = {record!r}\n"
            "rec['batch_size'] = int(args['train.batch_size'])\n"
            "(d / f\"run_b{rec['batch_size']}.json\").write_text(json.dumps(rec))\n"
            f"sys.exit(0 if rec['status'] == 'ok' else 1)\n")


def test_out_of_memory_run_is_retried_once_at_half_the_batch(tmp_path: Path) -> None:
    results_dir = tmp_path / "work" / "records" / "variant"
    code = write_record_code("failed", "OutOfMemoryError: CUDA out of memory. Tried to allocate")
    step = gc.Step("variant", "train", [cmd(code, "train.batch_size=12",
                                            f"results_dir={results_dir}")], 60,
                   then=gc.retry_half_batch_on_oom)
    results = campaign(tmp_path, [step]).run()
    assert [(r.name, r.status) for r in results] == [("variant", "failed"),
                                                     ("variant-retry", "failed")]
    assert "- variant (failed): OutOfMemoryError" in (tmp_path / "out" / "summary.md").read_text()
    assert "train.batch_size=6" in results[1].commands[0]["command"]
    assert sorted(p.name for p in results_dir.iterdir()) == ["run_b12.json", "run_b6.json"]


def test_other_failures_are_not_retried(tmp_path: Path) -> None:
    results_dir = tmp_path / "records" / "variant"
    code = write_record_code("failed", "ConfigError: backend.attention=cudnn needs an NVIDIA GPU")
    step = gc.Step("variant", "train", [cmd(code, "train.batch_size=12",
                                            f"results_dir={results_dir}")], 60,
                   then=gc.retry_half_batch_on_oom)
    assert [r.name for r in campaign(tmp_path, [step]).run()] == ["variant"]


def test_outputs_are_few_plainly_named_files_with_an_archive(tmp_path: Path) -> None:
    records = tmp_path / "work" / "records" / "llama32_1b-torch-native"
    code = write_record_code("ok", None, mfu=0.4)
    steps = [gc.Step("train", "train", [cmd(code, "train.batch_size=12", f"results_dir={records}")],
                     60)]
    campaign(tmp_path, steps).run()
    out = tmp_path / "out"
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(gc.OUT_FILES)
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)
    with tarfile.open(out / "campaign.tar.gz") as tar:
        names = tar.getnames()
    assert "campaign/logs/train.log" in names
    assert "campaign/records/llama32_1b-torch-native/run_b12.json" in names
    summary = json.loads((out / "summary.json").read_text())
    [row] = summary["training"]
    assert (row["variant"], row["mfu"], row["status"]) == ("llama32_1b-torch-native", 0.4, "ok")
    assert "| llama32_1b-torch-native | llama32_1b | 12 x None | ok |" in (
        out / "summary.md").read_text()


def test_mamfu_divides_by_the_measured_gemm_rate(tmp_path: Path) -> None:
    records = tmp_path / "records" / "v"
    records.mkdir(parents=True)
    (records / "r.json").write_text(json.dumps({
        "schema": "trainbench.record/1", "status": "ok",
        "metrics": {"model_tflops_per_device": 400.0, "mfu": 400 / 989.5}}))
    [row] = gc.training_rows(tmp_path / "records", {"gemm": {"tflops_median": 800.0}})
    assert row["mamfu"] == pytest.approx(0.5)
    assert row["mfu"] == pytest.approx(400 / 989.5)


# ---- the plan ------------------------------------------------------------------------------------

def test_plan_has_the_issue_order_and_every_kernel_check(tmp_path: Path) -> None:
    steps = gc.build_plan(PY, tmp_path, full_wheel_folder(tmp_path / "whl"), set(gc.GROUPS))
    groups = [s.group for s in steps]
    assert groups == sorted(groups, key=gc.GROUPS.index)  # install, facts, ceilings, ... report
    [triton] = [s for s in steps if s.group == "triton"]
    checks = {tuple(c.argv[2:5]) for c in triton.commands}
    for op in ("rmsnorm", "rope", "swiglu", "linear_cross_entropy", "flash_attention"):
        for dtype in ("float32", "bfloat16"):
            assert (op, dtype, "large") in checks
    assert all(c.argv[-2:] == ["--device", "cuda"] for c in triton.commands)
    names = [s.name for s in steps if s.group == "train"]
    assert names == [f"llama32_1b-{v.name}" for v in gc.TRAIN_VARIANTS] + ["llama3_8b-best"]
    [install] = [s for s in steps if s.group == "install"]
    assert all("--no-index" in c.argv and "--no-deps" in c.argv for c in install.commands)
    assert not any("trainbench-" in a for a in install.commands[0].argv)  # built from the tree


def test_only_restricts_the_plan_but_always_installs(tmp_path: Path) -> None:
    steps = gc.build_plan(PY, tmp_path, tmp_path, {"report", "llama32_1b-jax-xla"})
    assert [s.name for s in steps] == ["install", "llama32_1b-jax-xla", "report"]


def test_all_triton_variants_set_every_torch_op() -> None:
    assert gc.check_torch_ops() == []
    triton = [v for v in gc.TRAIN_VARIANTS if "triton" in v.name]
    for v in triton:
        assert {f"backend.{op}=triton" for op in gc.TORCH_OPS} <= set(v.overrides)


def test_batches_fit_the_h200_by_the_stated_arithmetic() -> None:
    presets = gc.load_yaml("src/trainbench/data/presets.yaml")
    capacity = gc.device_memory_gb()
    assert capacity == 141
    one_b = presets["llama32_1b"]
    # 18 B x 1,235,814,400 params + 24,576 tokens x 16 layers x (31 x 2048 + 8 x 8192) B
    # + 24,576 x 10 x 128,256 B of logits + 2 GB = 22.24 + 50.73 + 31.52 + 2 GB
    assert gc.memory_estimate_gb(one_b, 12, 2048, fused_loss=False, scores=False,
                                 remat=False) == pytest.approx(106.5, abs=0.1)
    for v in gc.TRAIN_VARIANTS:
        est = gc.memory_estimate_gb(one_b, v.batch, 2048, fused_loss=v.fused_loss,
                                    scores=v.scores, remat=False)
        assert est <= capacity, (v.name, est)
        doubled = gc.memory_estimate_gb(one_b, 2 * v.batch, 2048, fused_loss=False,
                                        scores=v.scores, remat=False)
        assert doubled > capacity, (v.name, doubled)  # the native-loss runs fill the card


def fake_record(folder: Path, mfu: float) -> None:
    folder.mkdir(parents=True)
    (folder / "r.json").write_text(json.dumps({"schema": "trainbench.record/1", "status": "ok",
                                               "created": "x", "metrics": {"mfu": mfu}}))


def test_large_run_takes_the_best_variant_and_skips_what_cannot_fit(tmp_path: Path) -> None:
    presets = gc.load_yaml("src/trainbench/data/presets.yaml")
    c = campaign(tmp_path, [])
    work = tmp_path / "w"
    assert "no llama32_1b run finished" in gc.large_run(c, PY, work, presets["llama3_8b"], 141)
    fake_record(work / "records" / "llama32_1b-torch-native", 0.30)
    fake_record(work / "records" / "llama32_1b-jax-cudnn", 0.45)
    [run] = gc.large_run(c, PY, work, presets["llama3_8b"], 141)
    assert {"model=llama3_8b", "backend.attention=cudnn", "backend.remat=true",
            "train.seq_len=8192", "train.batch_size=1"} <= set(run.argv)
    assert run.env == gc.JAX_ENV
    fake_record(work / "records" / "llama32_1b-torch-compile", 0.50)  # torch: no remat, no fit
    reason = gc.large_run(c, PY, work, presets["llama3_8b"], 141)
    assert isinstance(reason, str) and "torch-compile" in reason and "out of memory" in reason
    [run] = gc.large_run(c, PY, work, presets["llama3_8b"], 141, chosen="jax-cudnn")
    assert "backend.attention=cudnn" in run.argv


def test_rerun_hint_keeps_the_best_variant_for_the_large_run(tmp_path: Path) -> None:
    fake_record(tmp_path / "records" / "llama32_1b-jax-cudnn", 0.45)
    skipped = gc.StepResult("llama3_8b-best", "train", "skipped", 0, 0, gc.BUDGET_SKIP + " ...")
    assert gc.rerun_hint([skipped], tmp_path / "records").endswith(
        "--only llama3_8b-best,report --large-variant jax-cudnn")


def test_dry_run_reports_bad_commands_and_missing_wheels(tmp_path: Path, capsys) -> None:
    steps = [gc.Step("bad-run", "train", [gc.Command([PY, "-m", "trainbench", "model=tiny",
                                                      "train.batch_size=0"], "trainbench")], 60),
             gc.Step("bad-args", "bench", [gc.Command([PY, "scripts/gpu_ceilings.py",
                                                       "--no-such-flag"])], 60),
             gc.Step("no-script", "bench", [gc.Command([PY, "scripts/no_such_script.py"])], 60),
             gc.Step("ok", "bench",
                     [gc.Command([PY, "scripts/gpu_ceilings.py", "--out", "x.json"])], 60)]
    problems = gc.dry_run(steps, tmp_path / "empty", PY)
    text = "\n".join(problems)
    assert "train.batch_size=0 must be at least 1" in text
    assert "--no-such-flag" in text and "no_such_script.py" in text
    assert "gpu_ceilings.py --out x.json" not in text
    assert "missing wheel hydra-core==1.3.8" in text
    assert "bad-run [train]" in capsys.readouterr().out  # the plan is printed


def test_dry_run_composes_every_training_run(tmp_path: Path, capsys) -> None:
    """The training part of the real plan: every run (and each llama3_8b candidate) composes and
    validates with trainbench's own functions. The whole dry run is the slow test below."""
    wheels = full_wheel_folder(tmp_path / "whl")
    assert gc.dry_run(gc.build_plan(PY, tmp_path, wheels, {"train"}), wheels, PY) == []
    assert "composed and validated 12 trainbench run(s)" in capsys.readouterr().out


def test_command_line_errors_exit_2(capsys) -> None:
    for argv, message in ((["--budget-s", "0"], "--budget-s=0 must be positive"),
                          ([], "--out DIR is required"),
                          (["--dry-run", "--only", "nope"], "nope is neither a group")):
        with pytest.raises(SystemExit) as exit_info:
            gc.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_of_the_whole_campaign_passes(tmp_path: Path) -> None:
    """Every command parses: trainbench runs compose and validate, every script and test entry
    point accepts its arguments, the wheel folder is complete (fake wheels here)."""
    proc = subprocess.run([PY, str(SCRIPTS / "gpu_campaign.py"), "--dry-run", "--wheels",
                           str(full_wheel_folder(tmp_path / "whl"))], capture_output=True,
                          text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "composed and validated 12 trainbench run(s)" in proc.stdout
    assert proc.stdout.rstrip().endswith("dry run: ok")
    for name in ("ceilings", "triton", "bench-llama3_8b", "llama32_1b-jax-cudnn", "report"):
        assert f"\n{name} [" in proc.stdout


# ---- the wheels ----------------------------------------------------------------------------------

def test_wheel_spec_pins_exactly_what_the_machine_lacks() -> None:
    spec = gw.load_spec()
    assert set(spec.wheels) == {"hydra-core", "omegaconf", "antlr4-python3-runtime", "liger-kernel"}
    assert not set(spec.wheels) & spec.machine
    assert spec.wheels["antlr4-python3-runtime"].startswith("4.9.")  # omegaconf 2.3 needs 4.9.*


def test_inventory_and_requirements(tmp_path: Path) -> None:
    spec = gw.load_spec()
    folder = tmp_path / "whl"
    make_wheel(folder, "hydra-core", spec.wheels["hydra-core"],
               ["omegaconf<2.4,>=2.2", "antlr4-python3-runtime==4.9.*",
                'importlib-resources; python_version < "3.9"', "packaging"])
    make_wheel(folder, "omegaconf", "2.2.0")  # another version than pinned
    make_wheel(folder, "liger-kernel", spec.wheels["liger-kernel"],
               ["torch>=3.0", 'pytest; extra == "dev"', "no-such-package"])
    inv = gw.inventory(folder, spec)
    assert set(inv.found) == {"hydra-core", "liger-kernel"}
    assert [p.name for p in inv.stale] == ["omegaconf-2.2.0-py3-none-any.whl"]
    assert set(inv.missing) == {f"omegaconf=={spec.wheels['omegaconf']}",
                                f"antlr4-python3-runtime=={spec.wheels['antlr4-python3-runtime']}"}
    unmet = gw.unmet(list(inv.found.values()), spec)
    assert any("torch>=3.0" in u and "2.11.0" in u for u in unmet)  # the machine's torch
    assert any("no-such-package" in u for u in unmet)
    assert any("antlr4-python3-runtime==4.9.*" in u for u in unmet)  # not in the folder yet
    assert not any("importlib-resources" in u or "pytest" in u for u in unmet)  # markers
    assert not any("packaging" in u for u in unmet)  # on the machine


def test_complete_folder_has_no_problems(tmp_path: Path) -> None:
    assert gw.report(gw.load_spec(), full_wheel_folder(tmp_path / "whl")) == []


def test_download_command_targets_the_machine_interpreter(tmp_path: Path) -> None:
    spec = gw.load_spec()
    argv = gw.download_command(spec, "hydra-core", "1.3.8", tmp_path)
    assert {"--no-deps", "--only-binary=:all:"} <= set(argv)
    assert argv[argv.index("--python-version") + 1] == "3.12"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--platform"] == list(spec.platforms)
    assert argv[-1] == "hydra-core==1.3.8"


def test_wheel_names_parse() -> None:
    assert gw.parse_wheel_name("hydra_core-1.3.8-py3-none-any.whl") == ("hydra-core", "1.3.8")
    with pytest.raises(ValueError, match="not a wheel file name"):
        gw.parse_wheel_name("hydra_core-1.3.8.tar.gz")


# ---- the ceilings script -------------------------------------------------------------------------

@pytest.mark.slow
def test_ceilings_script_measures_on_the_cpu(tmp_path: Path) -> None:
    """The GPU's code path on the CPU at tiny sizes: checked product, checked copy, JSON."""
    out = tmp_path / "ceilings.json"
    proc = subprocess.run([PY, str(SCRIPTS / "gpu_ceilings.py"), "--device", "cpu", "--gemm-n",
                           "128", "--copy-mb", "4", "--repeats", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    gemm, copy = result["gemm"], result["copy"]
    assert gemm["flops_per_call"] == 2 * 128**3 and len(gemm["times_ms"]) == 3
    assert gemm["rel_err_vs_fp32"] < 1e-2
    assert gemm["tflops_median"] == pytest.approx(
        2 * 128**3 / (sorted(gemm["times_ms"])[1] / 1e3) / 1e12)
    assert copy["gbps_median"] == pytest.approx(2 * 4e6 / (sorted(copy["times_ms"])[1] / 1e3) / 1e9)


@pytest.mark.slow
def test_a_real_run_and_report_on_the_cpu(tmp_path: Path) -> None:
    """The train and report steps as the campaign builds them, with a real trainbench run (the
    tiny model, torch on the CPU in bf16): a record, a summary row, the report's plots."""
    work = tmp_path / "work"
    v = gc.Variant("torch-cpu", ("backend=torch", "backend.device=cpu"), 2, 300, 1)
    overrides = gc.train_overrides(v, work / "records" / "tiny-torch-cpu", model="tiny", seq=32,
                                   batch=2, warmup=1, steps=2)
    steps = [gc.train_step("tiny-torch-cpu", v, overrides, PY, work, 300, 1, ""),
             gc.report_step(PY, work)]
    results = gc.Campaign(steps, 600, work, tmp_path / "out", dict(os.environ)).run()
    assert [r.status for r in results] == ["ok", "ok"], (work / "campaign.log").read_text()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    [row] = summary["training"]
    assert (row["variant"], row["model"], row["batch"], row["seq"]) == ("tiny-torch-cpu", "tiny",
                                                                        2, 32)
    assert row["status"] == "ok" and row["tokens_per_s"] > 0 and row["mfu"] > 0
    assert row["mamfu"] is None  # no ceilings measured in this campaign
    with tarfile.open(tmp_path / "out" / "campaign.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.startswith("campaign/report/") and n.endswith(".png") for n in names), names
    assert "## trainbench report" in (tmp_path / "out" / "summary.md").read_text()
