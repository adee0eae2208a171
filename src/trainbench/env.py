"""The environment fingerprint every record carries (docs/records.md, "Where it ran")."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import trainbench
from trainbench import hardware

_CORE_PACKAGES = ("numpy", "hydra-core", "omegaconf")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> dict[str, Any]:
    """Commit of the trainbench checkout this code runs from, and whether it has local changes."""
    root = Path(trainbench.__file__).resolve().parents[2]  # src/trainbench/__init__.py
    if not (root / "pyproject.toml").is_file():
        return {"commit": None, "dirty": None, "note": "installed package, not a git checkout"}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "note": "not running from a git checkout"}
    return {"commit": commit, "dirty": bool(dirty)}


def fingerprint(framework_versions: dict[str, str]) -> dict[str, Any]:
    """Host, OS, CPU, Python, library versions, trainbench version and git commit."""
    versions = {name: package_version(name) for name in _CORE_PACKAGES}
    versions.update(framework_versions)
    return {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "cpu": hardware.cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "trainbench": trainbench.__version__,
        "git": git_commit(),
        "versions": versions,
    }
