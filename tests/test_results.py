import json
import os

import pytest

from trainbench import results
from trainbench.errors import ConfigError


def test_write_is_atomic_and_leaves_no_temp(tmp_path):
    path = results.write_record({"schema": results.SCHEMA, "x": float("nan")}, tmp_path, "r1")
    assert path == tmp_path / "r1.json"
    assert json.loads(path.read_text())["x"] is None  # JSON has no NaN
    assert [p.name for p in tmp_path.iterdir()] == ["r1.json"]


def test_failed_write_keeps_the_old_record(tmp_path, monkeypatch):
    results.write_record({"schema": results.SCHEMA, "v": 1}, tmp_path, "r")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        results.write_record({"schema": results.SCHEMA, "v": 2}, tmp_path, "r")
    assert json.loads((tmp_path / "r.json").read_text())["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_load_records_from_folders_files_and_globs(tmp_path):
    (tmp_path / "a").mkdir()
    results.write_record({"schema": results.SCHEMA, "n": 1}, tmp_path / "a", "one")
    results.write_record({"schema": results.SCHEMA, "n": 2}, tmp_path / "a" / "deep", "two")
    (tmp_path / "a" / "other.json").write_text('{"schema": "something else"}')
    (tmp_path / "a" / "broken.json").write_text("{not json")
    records, skipped = results.load_records([tmp_path / "a"])
    assert sorted(r["n"] for r in records) == [1, 2]
    assert len(skipped) == 2 and any("not a trainbench record" in s for s in skipped)
    records, _ = results.load_records([str(tmp_path / "a" / "o*.json")])
    assert [r["n"] for r in records] == [1]
    with pytest.raises(ConfigError, match="matches no file"):
        results.load_records([str(tmp_path / "zz*.json")])
    with pytest.raises(ConfigError, match="does not exist"):
        results.load_records([tmp_path / "missing"])
