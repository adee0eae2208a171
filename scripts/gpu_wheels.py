"""Fetch the wheels the lent GPU machine lacks, and build trainbench's own, into one folder.

    python3 scripts/gpu_wheels.py                 # what `make gpu-wheels` runs: fill .whl/
    python3 scripts/gpu_wheels.py --check         # only list the folder and what is missing

What to fetch, for which interpreter, and what the machine already has: scripts/gpu_wheels.toml.
Each pinned package is downloaded as a wheel for that interpreter (`pip download --no-deps
--only-binary=:all: --python-version ...`); a package PyPI ships only as an sdist is built here
with `pip wheel`, and kept only if the result is pure Python (any interpreter, any platform).
Other versions of a pinned package are removed first: two versions in the folder stop the
whole offline install. Then every wheel's own requirements (Requires-Dist, markers evaluated
for the target Python) must be met by the folder or by the machine's package list, at the
machine's versions where known. Exit status 1 if anything is missing or unmet.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = Path(__file__).with_suffix(".toml")
DEST = ROOT / ".whl"
PROJECT = "trainbench"


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Spec:
    """scripts/gpu_wheels.toml: the target interpreter, the machine's packages, the pins."""

    python: str
    implementation: str
    abi: str
    platforms: tuple[str, ...]
    machine: frozenset[str]
    machine_versions: dict[str, str]
    wheels: dict[str, str]
    """Normalized name -> pinned version."""


def load_spec(path: Path = SPEC) -> Spec:
    data = tomllib.loads(path.read_text())
    target, machine = data["target"], data["machine"]
    return Spec(python=target["python"], implementation=target["implementation"],
                abi=target["abi"], platforms=tuple(target["platforms"]),
                machine=frozenset(normalize(n) for n in machine["packages"]),
                machine_versions={normalize(k): v for k, v in machine["versions"].items()},
                wheels={normalize(k): v["version"] for k, v in data["wheels"].items()})


def parse_wheel_name(filename: str) -> tuple[str, str]:
    """(normalized name, version) of a wheel file name (PEP 427: NAME-VERSION-...-TAGS.whl)."""
    parts = filename[:-len(".whl")].split("-")
    if not filename.endswith(".whl") or len(parts) < 5:
        raise ValueError(f"{filename!r} is not a wheel file name "
                         "(NAME-VERSION-PY-ABI-PLATFORM.whl)")
    return normalize(parts[0]), parts[1]


@dataclass
class Inventory:
    """What a wheel folder holds against the pins."""

    found: dict[str, Path]
    """Normalized name -> the wheel at the pinned version (or trainbench's own)."""
    missing: list[str]
    """Pins (name==version) with no wheel in the folder."""
    stale: list[Path]
    """Wheels of a pinned name at another version, or a second trainbench wheel."""
    unpinned: list[Path]
    """Wheels of names the pins do not list (installed too: they are in the folder)."""


def inventory(folder: Path, spec: Spec) -> Inventory:
    inv = Inventory({}, [], [], [])
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    for path in wheels:
        name, version = parse_wheel_name(path.name)
        if name == PROJECT and name in inv.found:
            inv.stale.append(path)
        elif name == PROJECT:
            inv.found[name] = path
        elif name not in spec.wheels:
            inv.unpinned.append(path)
        elif spec.wheels[name] == version:
            inv.found[name] = path
        else:
            inv.stale.append(path)
    inv.missing = [f"{n}=={v}" for n, v in spec.wheels.items() if n not in inv.found]
    return inv


def requirements(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


def unmet(wheels: list[Path], spec: Spec) -> list[str]:
    """Each requirement of these wheels (for the target Python, no extras) that neither another
    wheel of the list nor the machine meets; a range is checked where the version is known."""
    from packaging.requirements import Requirement

    env = {"python_version": spec.python, "python_full_version": spec.python + ".0",
           "implementation_name": "cpython", "platform_system": "Linux",
           "sys_platform": "linux", "platform_machine": "x86_64", "extra": ""}
    have = {parse_wheel_name(w.name)[0]: parse_wheel_name(w.name)[1] for w in wheels}
    out = []
    for wheel in wheels:
        for line in requirements(wheel):
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = normalize(req.name)
            version = have.get(name) or spec.machine_versions.get(name)
            if name not in have and name not in spec.machine:
                out.append(f"{wheel.name} needs {line}: not in the folder nor on the machine")
            elif version is not None and not req.specifier.contains(version, prereleases=True):
                out.append(f"{wheel.name} needs {line}: the folder or machine has {version}")
    return out


def download_command(spec: Spec, name: str, version: str, dest: Path) -> list[str]:
    """pip download of one binary wheel for the target interpreter, without its dependencies."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--only-binary=:all:", "--python-version", spec.python,
           "--implementation", spec.implementation, "--abi", spec.abi, "--abi", "none"]
    for platform in spec.platforms:
        cmd += ["--platform", platform]
    return cmd + ["--dest", str(dest), f"{name}=={version}"]


def build_pure_wheel(name: str, version: str, dest: Path) -> Path:
    """Build a package's sdist into a wheel here; refuse it unless it is pure Python."""
    before = set(dest.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-binary", name, "--wheel-dir", str(dest), f"{name}=={version}"],
                   check=True)
    [built] = set(dest.glob("*.whl")) - before
    if not built.name.endswith("-none-any.whl"):
        built.unlink()
        raise RuntimeError(f"{name}=={version} built as {built.name}, not a pure-Python wheel: "
                           "it cannot be carried to another interpreter")
    return built


def fetch(spec: Spec, dest: Path) -> None:
    """Fill `dest`: remove stale versions, download or build each pin, build trainbench."""
    dest.mkdir(parents=True, exist_ok=True)
    inv = inventory(dest, spec)
    old_project = [inv.found[PROJECT]] if PROJECT in inv.found else []
    for path in inv.stale + old_project:  # trainbench's own is rebuilt from the tree each time
        print(f"removing {path.name}")
        path.unlink()
    for name, version in spec.wheels.items():
        if name in inv.found:
            print(f"have {inv.found[name].name}")
            continue
        print(f"fetching {name}=={version}")
        if subprocess.run(download_command(spec, name, version, dest)).returncode != 0:
            print(f"  no wheel of {name}=={version} for Python {spec.python}: building its sdist")
            build_pure_wheel(name, version, dest)
    print(f"building {PROJECT} from {ROOT}")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                            "--wheel-dir", str(dest), str(ROOT)], capture_output=True, text=True)
    if build.returncode != 0:  # setuptools' warnings are shown only when the build fails
        sys.stderr.write(build.stdout + build.stderr)
        raise SystemExit(f"building {PROJECT}'s wheel failed (exit {build.returncode})")


def report(spec: Spec, dest: Path) -> list[str]:
    """Print the folder's contents; return the problems (missing pins, unmet requirements)."""
    inv = inventory(dest, spec)
    for path in sorted(inv.found.values()) + inv.unpinned:
        print(f"  {path.name}  ({path.stat().st_size / 1e6:.2f} MB)")
    problems = [f"missing wheel {m}" for m in inv.missing]
    problems += [f"stale wheel {p.name} (pinned another version; two stop the install)"
                 for p in inv.stale]
    if PROJECT not in inv.found:
        problems.append(f"missing {PROJECT}'s own wheel (the campaign's fallback install)")
    present = [p for n, p in inv.found.items() if n != PROJECT] + inv.unpinned
    return problems + unmet(present, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEST, help="wheel folder (default .whl/)")
    parser.add_argument("--spec", type=Path, default=SPEC, help="pins (default gpu_wheels.toml)")
    parser.add_argument("--check", action="store_true", help="list and check only; fetch nothing")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    if not args.check:
        fetch(spec, args.dest)
    print(f"{args.dest}:")
    problems = report(spec, args.dest)
    for problem in problems:
        print(f"problem: {problem}")
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
