"""Result records: one JSON file per run, written atomically; read back from folders and globs."""

from __future__ import annotations

import glob
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from trainbench.errors import ConfigError

SCHEMA = "trainbench.record/1"


def _jsonable(value: Any) -> Any:
    """Non-finite floats become None (JSON has no NaN); everything else must already be JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_record(record: dict[str, Any], folder: str | Path, name: str) -> Path:
    """Write `record` to folder/name.json atomically: a temp file in the same folder, fsynced,
    then renamed over the target, so a reader sees the old file or the new one, never a part."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.json"
    text = json.dumps(_jsonable(record), indent=2, sort_keys=False, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; records are ordinary files
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def record_paths(paths: Iterable[str | Path]) -> list[Path]:
    """JSON files named by `paths`: files, folders (searched recursively) or glob patterns."""
    found: list[Path] = []
    for p in paths:
        p = str(p)
        matches = sorted(glob.glob(p, recursive=True)) if glob.has_magic(p) else [p]
        if not matches:
            raise ConfigError(f"{p!r} matches no file")
        for m in map(Path, matches):
            if m.is_dir():
                found.extend(sorted(m.rglob("*.json")))
            elif m.is_file():
                found.append(m)
            else:
                raise ConfigError(f"{str(m)!r} does not exist")
    return found


def load_records(paths: Iterable[str | Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Records under `paths`, each with its file in "_path"; and a note per skipped file."""
    records, skipped = [], []
    for path in record_paths(paths):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            skipped.append(f"{path}: not readable JSON ({err})")
            continue
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            skipped.append(f"{path}: not a trainbench record")
            continue
        data["_path"] = str(path)
        records.append(data)
    return records, skipped
