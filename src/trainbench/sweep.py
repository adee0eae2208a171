"""Sweeps that survive failure (docs/design.md, "Configuration and sweeps").

In a multirun each run executes in its own process (`python -m trainbench.worker`), so a crash,
an out-of-memory kill or a hang past `sweep.timeout_s` becomes a failed record with its cause
and the sweep goes on. A re-run skips runs whose record says ok, and those that failed unless
`sweep.rerun_failed=true`. Each job appends one line to the sweep's journal; at the end of the
multirun the `Summary` callback prints done / failed (with causes) / skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from trainbench import results, runner

JOURNAL = "sweep_journal.jsonl"


def existing_status(plan: runner.Plan) -> str | None:
    """Status of the record this run would write, if one exists and parses."""
    path = Path(plan.cfg.results_dir) / f"{plan.run_id}.json"
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, json.JSONDecodeError):
        return None


def skip_reason(plan: runner.Plan) -> str | None:
    """Why a sweep need not run this again, or None to run it."""
    status = existing_status(plan)
    if status == "ok" and plan.cfg.sweep.skip_done:
        return "done earlier (record ok)"
    if status in ("failed", "diverged") and not plan.cfg.sweep.rerun_failed:
        return f"{status} earlier (sweep.rerun_failed=true runs it again)"
    return None


def _describe_exit(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (the kernel's out-of-memory killer sends this)" if name == "SIGKILL" else ""
        return f"process killed by {name}{hint}"
    return f"process exited with code {code}"


def run_isolated(plan: runner.Plan) -> dict[str, Any]:
    """Run `plan` in a child process under the sweep's time limit; return its record.

    The child writes its own record. If it dies or times out before doing so, the parent writes
    a failed record with the cause. Records are written atomically, so a kill at any moment
    leaves the old record or the new one, never part of one.
    """
    payload = json.dumps({"config": dataclasses.asdict(plan.cfg), "model_name": plan.model_name})
    timeout = plan.cfg.sweep.timeout_s or None
    target = Path(plan.cfg.results_dir) / f"{plan.run_id}.json"
    before = target.stat().st_mtime_ns if target.exists() else None
    proc = subprocess.Popen([sys.executable, "-m", "trainbench.worker"], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(payload, timeout=timeout)
        cause = None if proc.returncode == 0 else _describe_exit(proc.returncode)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        _, stderr = proc.communicate()
        cause = f"timeout: still running after sweep.timeout_s={plan.cfg.sweep.timeout_s:g} s"
    except BaseException:  # Ctrl-C / SIGTERM on the sweep: take the child down with it
        _kill_group(proc)
        raise
    written = target.exists() and target.stat().st_mtime_ns != before
    if written and cause is None:
        return json.loads(target.read_text())
    record = runner.base_record(plan)
    record["cause"] = cause or "worker exited without writing a record"
    record["stderr_tail"] = (stderr or "")[-4000:]
    results.write_record(record, plan.cfg.results_dir, plan.run_id)
    return record


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the child's process group, then SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def journal(sweep_dir: str | Path, entry: dict[str, Any]) -> None:
    """Append one job's outcome to the sweep journal (one short line: an atomic append)."""
    path = Path(sweep_dir) / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.time(), **entry}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_journal(sweep_dir: str | Path, since: float) -> list[dict[str, Any]]:
    path = Path(sweep_dir) / JOURNAL
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if e["time"] >= since]


def summary_text(entries: list[dict[str, Any]]) -> str:
    """done / failed with causes / skipped, one line per failure."""
    counts = {k: sum(e["status"] == k for e in entries)
              for k in ("ok", "diverged", "failed", "skipped")}
    lines = [f"sweep summary: {len(entries)} runs: {counts['ok']} done, "
             f"{counts['failed']} failed, {counts['diverged']} diverged, "
             f"{counts['skipped']} skipped"]
    for e in entries:
        if e["status"] != "ok":
            lines.append(f"  {e['status']}: {e['run_id']}: {e.get('cause') or ''}".rstrip())
    return "\n".join(lines)


class Summary(Callback):
    """Hydra callback: print the sweep summary when a multirun ends."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.start = time.time()

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        entries = read_journal(config.hydra.sweep.dir, getattr(self, "start", 0.0))
        print(summary_text(entries))
