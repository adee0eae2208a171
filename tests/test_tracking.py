"""Metric logging (logging=tensorboard|wandb): real runs of the tiny model on the reference
backend, read back with TensorBoard's own event reader and from W&B's offline run file."""

import struct

import pytest

from trainbench import cli, runner, tracking
from trainbench.errors import ConfigError

SMALL = ["model=tiny", "backend=reference", "train.batch_size=2", "train.seq_len=16",
         "train.steps=3", "train.warmup_steps=2"]


def run(tmp_path, *overrides):
    [cfg] = cli.compose_run_configs([[*SMALL, f"results_dir={tmp_path}", *overrides]])
    record, path = runner.execute(runner.prepare(cfg, "tiny"))
    assert record["status"] == "ok", record.get("traceback")
    return record


def expected_series(record):
    """What every step should have logged, from the record itself."""
    times = record["times"]
    step_s = [times["first_step_s"], *times["warmup_step_s"], *times["step_s"]]
    tokens = record["batch_size"] * record["seq_len"]
    peak = record["peak"]["flops_per_s"]
    return {
        "loss": record["loss"]["per_step"],
        "step_time_s": step_s,
        "tokens_per_s": [tokens / s for s in step_s],
        "mfu": [record["flops"]["per_step"] / s / peak for s in step_s],
    }


def test_logging_is_off_by_default_and_not_part_of_the_run_id(tmp_path):
    [default, tb] = cli.compose_run_configs([SMALL, [*SMALL, "logging=tensorboard"]])
    assert default.logging.name == "none" and tb.logging.name == "tensorboard"
    assert tb.logging.mode == "offline"
    assert runner.run_id(default, "tiny", "reference") == runner.run_id(tb, "tiny", "reference")
    assert tracking.start(default.logging, str(tmp_path), "x", {}) is None


@pytest.mark.parametrize("overrides, message", [
    (["logging=mlflow"], "logging=mlflow is not a known option; choose one of: none, tensorboard"),
    (["logging=wandb", "logging.mode=cloud"], "logging.mode='cloud' must be one of: offline"),
])
def test_bad_logging_config_is_one_line_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        cli.check_overrides([*SMALL, *overrides])


def test_missing_package_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setitem(tracking.TRACKERS, "tensorboard",
                        tracking.Kind("no_such_package_trainbench", tracking.TensorBoard))
    [cfg] = cli.compose_run_configs([[*SMALL, f"results_dir={tmp_path}", "logging=tensorboard"]])
    with pytest.raises(ConfigError, match=r"logging=tensorboard needs the "
                                          r"no_such_package_trainbench package: pip install"):
        runner.prepare(cfg, "tiny")
    assert not list(tmp_path.iterdir())  # nothing was written


def test_tensorboard_writer_read_back_by_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [cfg] = cli.compose_run_configs([[*SMALL, "logging=tensorboard"]])
    tracker = tracking.start(cfg.logging, str(tmp_path), "run1", {"seed": 0})
    assert tracker.path == tmp_path / "tensorboard" / "run1"
    for step, loss in enumerate([3.5, 3.25, 3.0]):
        tracker.log(step, tracking.step_values(loss, 0.5, {"tokens_per_s": 64.0, "mfu": None}))
    tracker.close()
    events = EventAccumulator(str(tracker.path))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("train/loss")] == [
        (0, 3.5), (1, 3.25), (2, 3.0)]
    assert [s.value for s in events.Scalars("train/tokens_per_s")] == [64.0] * 3
    assert "train/mfu" not in events.Tags()["scalars"]  # unknown peak: no MFU, not a zero


@pytest.mark.slow  # a real run, with the CPU's matmul-peak probe: several seconds
def test_tensorboard_scalars_per_step_read_back_by_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record = run(tmp_path, "logging=tensorboard")
    folder = tmp_path / "tensorboard" / record["run_id"]
    assert record["logging"] == {"name": "tensorboard", "path": str(folder)}
    events = EventAccumulator(str(folder))
    events.Reload()
    expected = expected_series(record)
    for key, values in expected.items():
        scalars = events.Scalars(tracking.PREFIX + key)
        assert [s.step for s in scalars] == list(range(5))  # 2 warm-up + 3 timed steps
        # TensorBoard stores float32
        assert [s.value for s in scalars] == pytest.approx(values, rel=1e-6), key
    [summary] = events.Scalars("summary/tokens_per_s")
    assert summary.value == pytest.approx(record["metrics"]["tokens_per_s"], rel=1e-6)
    assert "config" in "".join(events.Tags()["tensors"])


def _wandb_records(path):
    """Records of a W&B run file: a 7-byte header (":W&B", magic, version), then LevelDB-log
    records (crc32, uint16 length, type) in 32 KiB blocks, each chunk of a wandb Record."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def _key(item):
    """A history or summary item's key: W&B stores a key with "/" as its parts (nested_key)."""
    return item.key or "/".join(item.nested_key)


@pytest.mark.slow  # W&B starts its own service process: several seconds
def test_wandb_offline_run_file_holds_every_step(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    record = run(tmp_path / "results", "logging=wandb")
    run_dir = record["logging"]["path"]
    assert "offline-run-" in run_dir and run_dir.startswith(str(tmp_path / "results" / "wandb"))
    [run_file] = (tmp_path / "results" / "wandb").rglob("run-*.wandb")
    records = _wandb_records(run_file)
    [run_record] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run_record.display_name == record["run_id"] and run_record.project == "trainbench"
    history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
    assert [h.step.num for h in history] == list(range(5))
    history = [{_key(item): json.loads(item.value_json) for item in h.item} for h in history]
    for key, values in expected_series(record).items():
        assert [h[tracking.PREFIX + key] for h in history] == pytest.approx(values), key
    summaries = {_key(item): json.loads(item.value_json) for r in records
                 if r.WhichOneof("record_type") == "summary" for item in r.summary.update}
    assert summaries["summary/mfu"] == pytest.approx(record["metrics"]["mfu"])
    config = {_key(item): json.loads(item.value_json) for item in run_record.config.update}
    assert config["train"]["batch_size"] == 2 and config["seed"] == 0


def test_a_tracker_failing_to_close_is_reported_not_raised():
    class Broken:
        def close(self):
            raise OSError("disk full")

    assert tracking.close(Broken()) == "OSError: disk full"


def test_summary_values_take_the_median_step_time_and_scalar_metrics():
    m = {"step_time_s": {"median": 0.5, "p10": 0.4}, "tokens_per_s": 10.0, "mfu": None}
    assert tracking.summary_values(m) == {"step_time_s": 0.5, "tokens_per_s": 10.0}
