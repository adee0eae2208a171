"""The GPU campaign: install offline, measure the ceilings, check the kernels, record, report.

    make gpu-wheels                                   # here, with network: fill .whl/
    python3 scripts/gpu_campaign.py --out $OUT        # on the GPU machine (the tree and .whl/)
    python scripts/gpu_campaign.py --dry-run          # anywhere: the plan, every command checked

Built for a GPU machine lent briefly and with no network (README "Measuring on a GPU"): one
command of about 8 minutes. It installs trainbench and the carried wheels into a folder on
PYTHONPATH (`pip install --no-index --no-deps --target`), then runs, in this order, each step in
its own process group under its own time limit, going on past a step that fails:

  install   the wheels in .whl/ and trainbench from this tree (its wheel in .whl/ as fallback)
  facts     nvidia-smi, the GPU's clocks, every installed version
  ceilings  a bf16 GEMM rate and a device copy bandwidth (scripts/gpu_ceilings.py)
  triton    every Triton kernel's check on CUDA, fp32 and bf16, forward and backward, large shapes
  bench     scripts/bench_kernels.py at the llama32_1b and llama3_8b shapes
  train     trainbench runs of llama32_1b, seq 2048, bf16 (TRAIN_VARIANTS), then llama3_8b seq
            8192 on the variant with the best MFU; a run that fails out of memory is run once more
            at half the batch
  report    `trainbench report` over the records: Markdown and PNG plots

The campaign keeps its own clock (--budget-s): a step starts only if what is left, less the time
kept for the report, covers the step's minimum; it gets at most its own limit and at most what is
left. Skipped steps are listed with the reason. After every step the results are rewritten into
--out, as few files as possible: campaign.tar.gz (records, logs, JSON, plots), summary.md,
summary.json and campaign.log, so a call cut off early still returns what was done.

--dry-run runs nothing on a GPU: it prints the plan, composes and validates every trainbench run
with trainbench's own functions, runs every script and test entry point with its arguments up to
its argparse parse and stops there (PARSE_ONLY), and checks the wheel folder.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


def _sibling(name: str) -> ModuleType:
    """Import scripts/NAME.py (the scripts folder is no package and stays off sys.path)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return sys.modules[name]


gpu_wheels = _sibling("gpu_wheels")

PROJECT_ROOT = "."
"""trainbench is installed from the tree the campaign runs in (cwd = ROOT)."""
TRITON_CHECKS = "tests/test_triton_kernels.py"
BENCH_KERNELS = "scripts/bench_kernels.py"
CEILINGS = "scripts/gpu_ceilings.py"
BENCH_PEERS = "scripts/bench_peers.py"
GROUPS = ("install", "facts", "ceilings", "triton", "bench", "train", "peers", "report")
OUT_FILES = ("campaign.tar.gz", "summary.md", "summary.json", "campaign.log")

TARGET_DEVICE = "H200"
"""The hardware table entry the batch sizes are chosen for (its memory_gb)."""

TORCH_OPS = ("rmsnorm", "rope", "swiglu", "cross_entropy", "attention")
"""backend.<op> fields of the torch backend (checked against its config by --dry-run)."""
_ALL_TRITON = tuple(f"backend.{op}=triton" for op in TORCH_OPS)


@dataclass(frozen=True)
class Variant:
    """One training configuration: its overrides and what its memory estimate assumes."""

    name: str
    overrides: tuple[str, ...]
    batch: int
    limit_s: float
    """The run's time limit; min_s: not started with less left."""
    min_s: float
    fused_loss: bool = False
    """The LM head and loss never hold [tokens, vocab] logits (the Triton cross-entropy)."""
    scores: bool = False
    """Attention keeps its [heads, T, T] probabilities (jax attention=xla)."""
    jax: bool = False


# The bf16 training runs of llama32_1b at seq 2048. Batches from memory_estimate_gb on an H200
# (141 GB): 12 sequences (24,576 tokens) put the native-loss runs at ~106 GB and the fused-loss
# runs at ~75 GB; the same 12 everywhere keeps the runs comparable. jax attention=xla keeps every
# layer's [heads, T, T] scores (32 x 2048^2 x 6 bytes per sequence per layer): batch 4, ~103 GB.
# Time limits and minimums are estimates, not measurements: every run first draws its 1.24B
# initial weights with NumPy on the host (19 s on 2 busy cores, spread over every core;
# trainbench.model.init_params), then compiles (torch.compile or XLA: tens of seconds; Triton
# JIT: seconds per kernel); 10 steps take ~5 s.
TRAIN_VARIANTS = (
    Variant("torch-native", ("backend=torch", "backend.device=cuda"), 12, 120, 45),
    Variant("torch-compile", ("backend=torch", "backend.device=cuda", "backend.compile=true"), 12,
            180, 90),
    Variant("torch-triton", ("backend=torch", "backend.device=cuda", *_ALL_TRITON), 12, 150, 60,
            fused_loss=True),
    Variant("torch-triton-compile", ("backend=torch", "backend.device=cuda", *_ALL_TRITON,
                                     "backend.compile=true"), 12, 180, 90, fused_loss=True),
    Variant("jax-xla", ("backend=jax", "backend.attention=xla"), 4, 180, 75, scores=True,
            jax=True),
    Variant("jax-cudnn", ("backend=jax", "backend.attention=cudnn"), 12, 180, 75, jax=True),
)
VARIANTS = {v.name: v for v in TRAIN_VARIANTS}
SMALL = {"model": "llama32_1b", "seq": 2048, "warmup": 2, "steps": 8}
LARGE = {"model": "llama3_8b", "seq": 8192, "batch": 1, "warmup": 2, "steps": 4,
         "limit_s": 360, "min_s": 200}
"""min_s: NumPy alone draws the 8.03B initial weights in about two minutes."""
OVERSIZE_SKIP = 1.10
"""The llama3_8b run is skipped when its estimate exceeds the device's memory by more than this
factor: the estimate is rough (about 10%), beyond that the run can only fail out of memory."""

JAX_ENV = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95"}
"""XLA takes 75% of the GPU by default; the runs are sized for the whole card."""
BUDGET_SKIP = "skipped: the budget"
OOM = re.compile(r"out of memory|OutOfMemory|RESOURCE_EXHAUSTED", re.IGNORECASE)


# ---- sizing --------------------------------------------------------------------------------------

def load_yaml(relpath: str) -> dict[str, Any]:
    """One of trainbench's data files, read from the tree (trainbench need not be installed)."""
    import yaml

    return yaml.safe_load((ROOT / relpath).read_text())


def memory_estimate_gb(preset: dict[str, Any], batch: int, seq: int, *, fused_loss: bool,
                       scores: bool, remat: bool) -> float:
    """Rough peak device memory of one bf16-autocast training step, in GB (1e9 bytes).

    16 bytes per parameter: fp32 weights, gradients, AdamW m and v; plus 2 for the bf16 copies of
    the weights the backward pass keeps (with remat, one layer's at a time). Per token and layer,
    what the backward pass keeps: 31 d bytes around attention and the two norms (fp32 residual and
    norm inputs, bf16 q, k, v, output and matmul inputs) and 8 d_ff for the SwiGLU MLP (bf16 gate,
    up, silu(gate) and their product); with remat only the fp32 layer input (4 d) is kept, plus one
    layer's full set while it is recomputed. Materialized attention adds heads x T x 6 bytes (fp32
    probabilities and a bf16 copy); an unfused loss adds 10 x vocab (bf16 logits, their fp32 copy
    and fp32 gradient). Plus 2 GB of context and workspace.
    """
    d, d_ff, layers = preset["d_model"], preset["d_ff"], preset["n_layers"]
    params, tokens = preset["published_params"], batch * seq
    per_layer = 31 * d + 8 * d_ff + (6 * preset["n_heads"] * seq if scores else 0)
    kept = tokens * (4 * d * layers + per_layer if remat else per_layer * layers)
    bf16_weights = 2 * params / (layers if remat else 1)
    logits = 0 if fused_loss else tokens * 10 * preset["vocab"]
    return (16 * params + bf16_weights + kept + logits + 2e9) / 1e9


def device_memory_gb(name: str = TARGET_DEVICE) -> float:
    return float(load_yaml("src/trainbench/data/hardware.yaml")[name]["memory_gb"])


# ---- steps and their execution -------------------------------------------------------------------

@dataclass
class Command:
    """One process of a step. `check` says how --dry-run checks it: args (the Python script or
    module runs up to its argparse parse and stops there, see PARSE_ONLY), trainbench (compose and
    validate the run's config), tool (a program the GPU machine has; noted if absent here), none."""

    argv: list[str]
    check: str = "args"
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    """Scripts run from the tree; `python -m trainbench` from the work folder, since -m puts the
    current folder first on sys.path and the tree's top-level kernels/ would shadow the
    `kernels` package transformers imports."""
    echo: bool = False
    """Print its output on the console and in summary.md (short facts: nvidia-smi, ceilings)."""

    def text(self) -> str:
        return " ".join(self.argv)


@dataclass
class Step:
    name: str
    group: str
    commands: list[Command] | Callable[["Campaign"], list[Command] | str]
    """The processes, or a function of the results so far giving them (or why there are none)."""
    timeout_s: float
    """Wall-clock limit of the whole step."""
    min_s: float = 1.0
    """Not started with less time than this left (it could not finish)."""
    workers: int = 1
    """Commands run at once (independent checks share the GPU)."""
    final: bool = False
    """Runs in the time kept back from the other steps (the report)."""
    note: str = ""
    then: Callable[["Campaign", "Step", "StepResult"], "Step | None"] | None = None
    """A follow-up step to run next, decided from this step's result (e.g. a retry)."""
    dry_commands: list[Command] = field(default_factory=list)
    """What --dry-run checks for a step whose commands are decided at run time."""


@dataclass
class StepResult:
    name: str
    group: str
    status: str
    """ok | failed | timeout | skipped"""
    seconds: float
    limit_s: float
    note: str = ""
    commands: list[dict[str, Any]] = field(default_factory=list)


def run_command(cmd: Command, env: dict[str, str], log: Path, timeout_s: float) -> dict[str, Any]:
    """Run one command in its own process group with its output in `log`. When it ends or times
    out, whatever is left of its group is killed (torch.compile and XLA start worker processes,
    which must not hold the GPU during the next step)."""
    start = time.monotonic()
    with log.open("a") as f:
        f.write(f"$ {cmd.text()}\n")
        f.flush()
        try:
            proc = subprocess.Popen(cmd.argv, cwd=cmd.cwd, env={**env, **cmd.env}, stdout=f,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        except OSError as err:  # e.g. the program is not installed: the step fails, the rest go on
            f.write(f"[could not start: {err}]\n")
            return {"command": cmd.text(), "returncode": 127, "seconds": 0.0, "log": str(log),
                    "echo": cmd.echo}
        try:
            rc: int | None = proc.wait(timeout=max(timeout_s, 0.01))
        except subprocess.TimeoutExpired:
            rc = None
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this command started, by its id
        except ProcessLookupError:
            pass  # nothing of it is left
        proc.wait()
        seconds = time.monotonic() - start
        f.write(f"[{'timed out' if rc is None else f'exit {rc}'} after {seconds:.1f} s]\n")
    return {"command": cmd.text(), "returncode": rc, "seconds": round(seconds, 2),
            "log": str(log), "echo": cmd.echo}


class Campaign:
    """Runs steps in order under one time budget; writes the results after every step."""

    def __init__(self, steps: list[Step], budget_s: float, work: Path, out: Path | None,
                 env: dict[str, str], clock: Callable[[], float] = time.monotonic,
                 info: dict[str, Any] | None = None) -> None:
        self.steps = list(steps)
        self.budget_s = budget_s
        self.work, self.out, self.env, self.clock = work, out, env, clock
        self.info = info or {}
        self.results: list[StepResult] = []
        self.reserve_s = sum(s.timeout_s for s in steps if s.final)
        self.start = clock()
        (work / "logs").mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def say(self, line: str) -> None:
        print(line, flush=True)
        with (self.work / "campaign.log").open("a") as f:
            f.write(line + "\n")

    def allowance(self, step: Step) -> float:
        """Seconds this step may take: its limit, what is left, less the final steps' reserve."""
        left = self.budget_s - self.elapsed() - (0 if step.final else self.reserve_s)
        return min(step.timeout_s, left)

    def run(self) -> list[StepResult]:
        queue = list(self.steps)
        while queue:
            step = queue.pop(0)
            result = self.run_step(step)
            self.results.append(result)
            self.write_outputs()
            follow = step.then(self, step, result) if step.then else None
            if follow is not None:
                queue.insert(0, follow)
        return self.results

    def run_step(self, step: Step) -> StepResult:
        allowed = self.allowance(step)
        stamp = f"[{self.elapsed():6.1f} s]"
        if allowed < step.min_s:
            note = (f"{BUDGET_SKIP} leaves {max(allowed, 0):.0f} s for it "
                    f"(--budget-s {self.budget_s:g}, {self.reserve_s:g} s kept for the report); "
                    f"it needs at least {step.min_s:g} s")
            self.say(f"{stamp} {step.name}: {note}")
            return StepResult(step.name, step.group, "skipped", 0.0, 0.0, note)
        commands = step.commands(self) if callable(step.commands) else step.commands
        if isinstance(commands, str):
            self.say(f"{stamp} {step.name}: skipped: {commands}")
            return StepResult(step.name, step.group, "skipped", 0.0, 0.0, commands)
        self.say(f"{stamp} {step.name}: {len(commands)} command(s), limit {allowed:.0f} s"
                 + (f"; {step.note}" if step.note else ""))
        deadline = self.clock() + allowed
        logs = [self.work / "logs" / (f"{step.name}.log" if len(commands) == 1
                                      else f"{step.name}.{i}.log") for i in range(len(commands))]
        start = self.clock()

        def one(i: int) -> dict[str, Any]:
            left = deadline - self.clock()
            if left <= 0:
                return {"command": commands[i].text(), "returncode": None, "seconds": 0.0,
                        "log": str(logs[i]), "echo": False,
                        "note": "not started: the step's limit was reached"}
            return run_command(commands[i], self.env, logs[i], left)

        with ThreadPoolExecutor(max_workers=max(1, step.workers)) as pool:
            ran = list(pool.map(one, range(len(commands))))
        seconds = self.clock() - start
        codes = [r["returncode"] for r in ran]
        status = ("ok" if all(c == 0 for c in codes) else
                  "timeout" if any(c is None for c in codes) else "failed")
        self.say(f"{'':10} {step.name}: {status} in {seconds:.1f} s")
        for r, log in zip(ran, logs):
            if r["echo"] and r["returncode"] == 0:
                self.say(log.read_text(errors="replace").rstrip())
            elif r["returncode"] != 0 and log.exists():
                tail = log.read_text(errors="replace").splitlines()[-15 if len(ran) == 1 else -6:]
                self.say("\n".join(f"{'':12}| {line}" for line in tail))
        return StepResult(step.name, step.group, status, round(seconds, 2), round(allowed, 1),
                          step.note, ran)

    # ---- results ----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        ceilings = read_json(self.work / "ceilings.json")
        return {"campaign": {**self.info, "budget_s": self.budget_s,
                             "elapsed_s": round(self.elapsed(), 1)},
                "ceilings": ceilings,
                "steps": [vars(r) for r in self.results],
                "training": training_rows(self.work / "records", ceilings)}

    def write_outputs(self) -> None:
        """summary.json, summary.md and the archive of the work folder, into --out (atomically)."""
        if self.out is None:
            return
        summary = self.summary()
        (self.work / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        (self.work / "summary.md").write_text(summary_markdown(summary, self.work))
        self.out.mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "summary.md", "campaign.log"):
            if (self.work / name).exists():
                atomic_copy(self.work / name, self.out / name)
        tmp = self.out / ".campaign.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:  # all but the installed packages
            tar.add(self.work, arcname="campaign",
                    filter=lambda info: None if info.name == "campaign/site" else info)
        tmp.replace(self.out / "campaign.tar.gz")


def atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def records_in(folder: Path) -> list[dict[str, Any]]:
    """trainbench records under `folder` (any JSON with the record schema), oldest first."""
    out = []
    for path in sorted(folder.rglob("*.json")) if folder.is_dir() else []:
        data = read_json(path)
        if isinstance(data, dict) and str(data.get("schema", "")).startswith("trainbench.record"):
            out.append({**data, "_variant": path.parent.name})
    return sorted(out, key=lambda r: str(r.get("created")))


def training_rows(folder: Path, ceilings: Any) -> list[dict[str, Any]]:
    """One row per training record: throughput, MFU (datasheet) and MAMFU (measured GEMM)."""
    gemm = (ceilings or {}).get("gemm", {}).get("tflops_median")
    rows = []
    for rec in records_in(folder):
        m = rec.get("metrics") or {}
        tflops = m.get("model_tflops_per_device")
        step = (m.get("step_time_s") or {}).get("median")
        rows.append({
            "variant": rec["_variant"], "backend": rec.get("backend"), "model": rec.get("model"),
            "batch": rec.get("batch_size"), "seq": rec.get("seq_len"), "status": rec.get("status"),
            "tokens_per_s": m.get("tokens_per_s"), "model_tflops": tflops, "mfu": m.get("mfu"),
            "mamfu": tflops / gemm if tflops and gemm else None, "step_s": step,
            "first_step_s": (rec.get("times") or {}).get("first_step_s"),
            "peak_memory_gb": ((rec.get("memory") or {}).get("peak_bytes") or 0) / 1e9 or None,
            "cause": rec.get("cause"), "run_id": rec.get("run_id")})
    return rows


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def summary_markdown(summary: dict[str, Any], work: Path) -> str:
    c = summary["campaign"]
    lines = [f"# GPU campaign {c.get('started', '')}", "",
             f"`{c.get('command', '')}` — {c['elapsed_s']} s of a {c['budget_s']:g} s budget.",
             ""]
    ceil = summary["ceilings"]
    if ceil:
        g, cp, facts = ceil["gemm"], ceil["copy"], ceil["facts"]
        lines += [f"Device: {facts.get('name')}, torch {facts['versions'].get('torch')}, "
                  f"triton {facts['versions'].get('triton')}, jax {facts['versions'].get('jax')}.",
                  f"Measured ceilings: bf16 GEMM {g['n']}^3 {g['tflops_median']:.1f} TFLOP/s "
                  f"(median; MAMF), device copy {cp['gbps_median']:.0f} GB/s (read + written).", ""]
    lines += ["| step | status | seconds | limit | note |", "|---|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['limit_s']} | {s['note']} |"
              for s in summary["steps"]]
    python = c.get("python") or sys.executable
    bad = [f"- {s['name']}: `{cmd['command'].replace(python, 'python3')}`: "
           + ("timed out" if cmd["returncode"] is None else f"exit {cmd['returncode']}")
           for s in summary["steps"] for cmd in s["commands"] if cmd["returncode"] != 0]
    lines += ["", "Commands that did not succeed (their logs are in campaign.tar.gz):", *bad] \
        if bad else []
    rows = summary["training"]
    if rows:
        lines += ["", "| variant | model | batch x seq | status | tokens/s | TFLOP/s | MFU "
                  "| MAMFU (ceilings) | step s | first step s | peak GB |", "|---" * 11 + "|"]
        for r in rows:
            lines.append(
                f"| {r['variant']} | {r['model']} | {r['batch']} x {r['seq']} | {r['status']} | "
                f"{_fmt(r['tokens_per_s'], ',.0f')} | {_fmt(r['model_tflops'], '.1f')} | "
                f"{_fmt(r['mfu'], '.1%')} | {_fmt(r['mamfu'], '.1%')} | {_fmt(r['step_s'], '.3f')} "
                f"| {_fmt(r['first_step_s'], '.1f')} | {_fmt(r['peak_memory_gb'], '.1f')} |")
        failed = [f"- {r['variant']} ({r['status']}): {r['cause']}" for r in rows
                  if r["status"] != "ok"]
        lines += [""] + failed if failed else []
        lines += ["", "MFU: model FLOP/s over the peak the record names (on a GPU the datasheet "
                  "dense bf16 peak); MAMFU (ceilings): over the bf16 GEMM rate the ceilings step "
                  "measured (the report's MAMFU column divides by each run's own matmul probe)."]
    echoed = [c["log"] for s in summary["steps"] for c in s["commands"]
              if c.get("echo") and c["returncode"] == 0]
    if echoed:
        lines += ["", "## Facts", ""]
        for log in echoed:
            lines += ["```", Path(log).read_text(errors="replace").rstrip(), "```"]
    report = work / "logs" / "report.log"
    if report.exists():
        lines += ["", "## trainbench report", "", report.read_text(errors="replace")]
    return "\n".join(lines) + "\n"


# ---- the plan ------------------------------------------------------------------------------------

def read_tuple(path: Path, name: str) -> tuple[str, ...]:
    """A module-level tuple of string literals, read without importing the module."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise ValueError(f"{path} has no module-level {name} = (...)")


def train_overrides(variant: Variant, results: Path, *, model: str, seq: int, batch: int,
                    warmup: int, steps: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [f"model={model}", "precision=bf16", *variant.overrides, *extra,
            f"train.seq_len={seq}", f"train.batch_size={batch}", f"train.warmup_steps={warmup}",
            f"train.steps={steps}", f"results_dir={results}"]


def trainbench(python: str, work: Path, args: list[str], check: str = "trainbench",
               jax: bool = False) -> Command:
    """`python -m trainbench ARGS`, run from the work folder (see Command.cwd)."""
    return Command([python, "-m", "trainbench", *args], check, JAX_ENV if jax else {}, work)


def train_step(name: str, variant: Variant, overrides: list[str], python: str, work: Path,
               timeout_s: float, min_s: float, note: str) -> Step:
    return Step(name, "train", [trainbench(python, work, overrides, jax=variant.jax)],
                timeout_s, min_s, note=note, then=retry_half_batch_on_oom)


def retry_half_batch_on_oom(campaign: Campaign, step: Step, result: StepResult) -> Step | None:
    """Once, if the run's record says it ran out of memory: the same run at half the batch."""
    if result.status != "failed" or "-retry" in step.name or callable(step.commands):
        return None
    [cmd] = step.commands
    results_dir = next(a.split("=", 1)[1] for a in cmd.argv if a.startswith("results_dir="))
    records = records_in(Path(results_dir))
    if not records or not OOM.search(str(records[-1].get("cause"))):
        return None
    batch = int(next(a.split("=", 1)[1] for a in cmd.argv if a.startswith("train.batch_size=")))
    if batch < 2:
        return None
    argv = [f"train.batch_size={batch // 2}" if a.startswith("train.batch_size=") else a
            for a in cmd.argv]
    return Step(f"{step.name}-retry", step.group, [Command(argv, cmd.check, cmd.env, cmd.cwd)],
                step.timeout_s, step.min_s,
                note=f"out of memory at batch {batch}: batch {batch // 2}")


def build_plan(python: str, work: Path, wheels: Path, only: set[str],
               large_variant: str | None = None) -> list[Step]:
    """Every step of the campaign, in order, restricted to the groups or steps in `only`."""
    site, records = work / "site", work / "records"
    presets = load_yaml("src/trainbench/data/presets.yaml")
    capacity = device_memory_gb()
    steps: list[Step] = []

    carried = [str(p) for p in sorted(wheels.glob("*.whl")) if not p.name.startswith("trainbench-")]
    pip = [python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(site)]
    steps.append(Step("install", "install",
                      [Command(pip + carried, "none"),
                       Command(pip + ["--no-build-isolation", PROJECT_ROOT], "none")],
                      90, then=install_project_wheel(pip, wheels),
                      note=f"{len(carried)} wheel(s) from {wheels.name}/, trainbench from the "
                      "tree"))

    query = ("name,driver_version,memory.total,pstate,clocks.sm,clocks.max.sm,clocks.mem,"
             "clocks.max.mem,power.draw,power.limit,temperature.gpu")
    smi = Command(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], "tool", echo=True)
    steps.append(Step("facts", "facts", [Command(["nvidia-smi"], "tool", echo=True), smi,
                                         Command([python, "-m", "pip", "list"], "none")], 30))
    steps.append(Step("ceilings", "ceilings",
                      [Command([python, CEILINGS, "--out", str(work / "ceilings.json")],
                               echo=True), smi],
                      60, min_s=20, note="clocks read again right after the GEMM"))

    ops = read_tuple(ROOT / TRITON_CHECKS, "OPS")
    dtypes = read_tuple(ROOT / TRITON_CHECKS, "DTYPES")
    checks = [Command([python, TRITON_CHECKS, op, dtype, "large", "--device", "cuda"])
              for op in ops for dtype in dtypes]
    checks.append(Command([python, TRITON_CHECKS, "errors", "float32", "small", "--device",
                           "cuda"]))
    steps.append(Step("triton", "triton", checks, 120, min_s=30, workers=4,
                      note="4 checks at a time on the one GPU (correctness, not timing)"))

    small_batch = TRAIN_VARIANTS[0].batch
    for model, batch, seq in ((SMALL["model"], small_batch, SMALL["seq"]),
                              (LARGE["model"], LARGE["batch"], LARGE["seq"])):
        out = work / f"bench_{model}.json"  # the work folder exists; a subfolder might not
        steps.append(Step(f"bench-{model}", "bench",
                          [Command([python, BENCH_KERNELS, "--model", model, "--batch", str(batch),
                                    "--seq", str(seq), "--dtype", "bfloat16", "--out", str(out)])],
                          60, min_s=30))

    for v in TRAIN_VARIANTS:
        name = f"{SMALL['model']}-{v.name}"
        est = memory_estimate_gb(presets[SMALL["model"]], v.batch, SMALL["seq"],
                                 fused_loss=v.fused_loss, scores=v.scores, remat=False)
        over = train_overrides(v, records / name, model=SMALL["model"], seq=SMALL["seq"],
                               batch=v.batch, warmup=SMALL["warmup"], steps=SMALL["steps"])
        steps.append(train_step(name, v, over, python, work, v.limit_s, v.min_s,
                                f"batch {v.batch}: ~{est:.0f} GB of {capacity:g} GB"))

    large = Step(f"{LARGE['model']}-best", "train",
                 lambda c: large_run(c, python, work, presets[LARGE["model"]], capacity,
                                     large_variant),
                 LARGE["limit_s"], min_s=LARGE["min_s"],
                 note=f"batch {LARGE['batch']} x {LARGE['seq']} on "
                 + (large_variant or f"the best {SMALL['model']} variant by MFU")
                 + " (jax: with remat)")
    large.dry_commands = [trainbench(python, work, large_overrides(v, records), jax=v.jax)
                          for v in TRAIN_VARIANTS]
    steps.append(large)

    # each backend against the loop a user would otherwise write, at the small model's shape
    # (README "Peer benchmark"); last before the report, so a short call skips it first
    steps.append(Step("peers", "peers",
                      [Command([python, BENCH_PEERS, "--device", "cuda", "--model",
                                SMALL["model"], "--seq", str(SMALL["seq"]), "--tokens",
                                str(4 * SMALL["seq"]), "--precision", "bf16", "--rounds", "2",
                                "--steps", "3", "--json", str(work / "peers.json")])],
                      150, min_s=90, note="trainbench vs HF Llama, a minimal PyTorch and a "
                      "minimal JAX loop, interleaved rounds"))

    steps.append(report_step(python, work))
    return [s for s in steps if {s.group, s.name} & only or s.group == "install"]


def report_step(python: str, work: Path) -> Step:
    """`trainbench report` over every record: Markdown (its log), CSV and PNG plots."""
    records = work / "records"
    report = trainbench(python, work, ["report", "--markdown", "--plots", str(work / "report"),
                                       "--csv", str(work / "report.csv"), str(records)],
                        check="args")
    return Step("report", "report",
                lambda c: [report] if records_in(records) else "no training record to report",
                45, final=True, dry_commands=[report])


def install_project_wheel(pip: list[str], wheels: Path
                          ) -> Callable[[Campaign, Step, StepResult], Step | None]:
    """If trainbench did not build from the tree there, install the wheel from make gpu-wheels."""
    def then(campaign: Campaign, step: Step, result: StepResult) -> Step | None:
        codes = [r["returncode"] for r in result.commands]
        if len(codes) < 2 or codes[1] == 0:
            return None
        built = sorted(wheels.glob("trainbench-*.whl"))
        if not built:
            return None
        return Step("install-wheel", "install", [Command(pip + [str(built[-1])], "none")], 60,
                    note="trainbench did not build from the tree: its wheel from make gpu-wheels")
    return then


def large_overrides(v: Variant, records: Path) -> list[str]:
    extra = ("backend.remat=true",) if v.jax else ()
    return train_overrides(v, records / f"{LARGE['model']}-{v.name}", model=LARGE["model"],
                           seq=LARGE["seq"], batch=LARGE["batch"], warmup=LARGE["warmup"],
                           steps=LARGE["steps"], extra=extra)


def best_variant(records: Path) -> tuple[Variant, float] | None:
    """The llama32_1b variant whose finished run has the best MFU, and that MFU."""
    by_folder = {f"{SMALL['model']}-{v.name}": v for v in TRAIN_VARIANTS}
    done = [(by_folder[r["_variant"]], r["metrics"]["mfu"]) for r in records_in(records)
            if r.get("status") == "ok" and r["_variant"] in by_folder
            and (r.get("metrics") or {}).get("mfu")]
    return max(done, key=lambda vm: vm[1]) if done else None


def large_run(campaign: Campaign, python: str, work: Path, preset: dict[str, Any],
              capacity: float, chosen: str | None = None) -> list[Command] | str:
    """The llama3_8b run on `chosen` or else on the finished llama32_1b variant with the best
    MFU, if its memory estimate leaves it a chance to fit."""
    records = work / "records"
    if chosen:
        v, why = VARIANTS[chosen], "--large-variant"
    else:
        best = best_variant(records)
        if best is None:
            return f"no {SMALL['model']} run finished with an MFU: no best variant to run"
        v, why = best[0], f"MFU {best[1]:.1%}"
    est = memory_estimate_gb(preset, LARGE["batch"], LARGE["seq"], fused_loss=v.fused_loss,
                             scores=v.scores, remat=v.jax)
    arithmetic = (f"{v.name} ({why}) at batch {LARGE['batch']} x {LARGE['seq']}: ~{est:.0f} GB "
                  f"of {capacity:g} GB")
    if est > OVERSIZE_SKIP * capacity:
        return (f"{arithmetic}, beyond the estimate's margin: it could only fail out of memory "
                f"(weights, gradients and AdamW state alone are "
                f"{16 * preset['published_params'] / 1e9:.0f} GB)")
    campaign.say(f"{'':10} {LARGE['model']}: {arithmetic}")
    return [trainbench(python, work, large_overrides(v, records), jax=v.jax)]


# ---- dry run -------------------------------------------------------------------------------------

def dry_run(steps: list[Step], wheels: Path, python: str) -> list[str]:
    """Print the plan and check every command; return the problems found."""
    problems: list[str] = []
    parses: list[Command] = []
    runs: list[tuple[str, list[str]]] = []
    for step in steps:
        cmds = step.dry_commands if callable(step.commands) else step.commands
        print(f"{step.name} [{step.group}] limit {step.timeout_s:g} s, min {step.min_s:g} s"
              + (f", {step.workers} at a time" if step.workers > 1 else "")
              + (f" — {step.note}" if step.note else ""))
        if callable(step.commands):
            print("  decided at run time; candidates:")
        for cmd in cmds:
            env = " ".join(f"{k}={v}" for k, v in cmd.env.items())
            print(f"  {env + ' ' if env else ''}{cmd.text()}")
            if cmd.check == "args":
                parses.append(cmd)
            elif cmd.check == "trainbench":
                runs.append((step.name, cmd.argv[3:]))
            elif cmd.check == "tool" and shutil.which(cmd.argv[0]) is None:
                print(f"    note: {cmd.argv[0]} is not on this machine (the GPU machine has it)")

    print(f"\nwheels in {wheels}:")
    problems += [f"wheels: {p}" for p in gpu_wheels.report(gpu_wheels.load_spec(), wheels)]
    problems += check_torch_ops()
    problems += check_runs(runs)
    with ThreadPoolExecutor(max_workers=4) as pool:
        problems += [p for p in pool.map(check_args, parses) if p]
    return problems


def check_torch_ops() -> list[str]:
    """TORCH_OPS must be every op field of the torch backend (all-Triton means every op)."""
    from trainbench.backends.torch import ops

    if set(TORCH_OPS) != set(ops.OPS):
        return [f"TORCH_OPS {sorted(TORCH_OPS)} differ from the torch backend's ops "
                f"{sorted(ops.OPS)}"]
    return []


def check_runs(runs: list[tuple[str, list[str]]]) -> list[str]:
    """Compose and validate each run's config with trainbench's own functions (runs nothing)."""
    from trainbench.cli import compose_run_configs
    from trainbench.errors import ConfigError

    problems = []
    for name, overrides in runs:
        try:
            compose_run_configs([overrides])
        except ConfigError as err:
            problems.append(f"{name}: trainbench {' '.join(overrides)}: {err}")
    print(f"composed and validated {len(runs)} trainbench run(s)")
    return problems


PARSE_ONLY = """\
import argparse, runpy, sys
parse = argparse.ArgumentParser.parse_args
def parse_then_stop(self, args=None, namespace=None):
    parse(self, args, namespace)  # a bad argument exits 2 here, with argparse's message
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = parse_then_stop
if sys.argv[1] == "-m":
    sys.argv = [sys.argv[2], *sys.argv[3:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    sys.path[0] = __import__("os").path.dirname(sys.argv[0]) or "."
    runpy.run_path(sys.argv[0], run_name="__main__")
raise SystemExit(f"{sys.argv[0]} ended without parsing its arguments with argparse")
"""
"""Runs a Python script or module (`python -c PARSE_ONLY script.py ARGS` or `-m module ARGS`)
as `python` would, up to its first ArgumentParser.parse_args, and exits there: 0 if the
arguments parse, 2 with argparse's message if not. Nothing after the parse runs."""


def check_args(cmd: Command) -> str | None:
    """Whether the command's script exists and its argparse accepts the arguments (PARSE_ONLY)."""
    proc = subprocess.run([cmd.argv[0], "-c", PARSE_ONLY, *cmd.argv[1:]], cwd=cmd.cwd,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"{cmd.text()}: exit {proc.returncode}: {err}"
    return None


def rerun_hint(results: list[StepResult], records: Path) -> str | None:
    """The command that runs what the budget skipped (another call, if device time is left);
    the llama3_8b run keeps the variant this call found best."""
    skipped = [r.name for r in results if r.note.startswith(BUDGET_SKIP) and r.group != "report"]
    if not skipped:
        return None
    best = best_variant(records)
    large = (f" --large-variant {best[0].name}"
             if f"{LARGE['model']}-best" in skipped and best else "")
    return ("to run what the budget skipped: python3 scripts/gpu_campaign.py --out DIR --only "
            + ",".join(skipped) + ",report" + large)


# ---- main ----------------------------------------------------------------------------------------

def parse_only(text: str) -> set[str]:
    """Groups or step names; a step name is checked against the plan in main."""
    names = {g.strip() for g in text.split(",") if g.strip()}
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names no group; choose from "
                                         + ", ".join(GROUPS))
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        help="folder for the results (required unless --dry-run)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="the campaign's own time budget in seconds (default 480)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and check every command; run nothing")
    parser.add_argument("--only", default=",".join(GROUPS), type=parse_only,
                        help="comma-separated groups or step names to run (install always runs); "
                        "groups: " + ", ".join(GROUPS))
    parser.add_argument("--large-variant", choices=list(VARIANTS),
                        help="run llama3_8b on this variant instead of the best of this call's "
                        "llama32_1b runs (for a second call)")
    parser.add_argument("--wheels", type=Path, default=gpu_wheels.DEST,
                        help="folder of carried wheels (default .whl/)")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"--budget-s={args.budget_s:g} must be positive")
    if not args.dry_run and args.out is None:
        parser.error("--out DIR is required (the folder the results are written into)")

    python = sys.executable
    work = Path(tempfile.mkdtemp(prefix="trainbench-campaign-"))
    every = build_plan(python, work, args.wheels, set(GROUPS))
    unknown = args.only - set(GROUPS) - {s.name for s in every}
    if unknown:
        shutil.rmtree(work)
        parser.error(f"--only: {', '.join(sorted(unknown))} is neither a group ("
                     + ", ".join(GROUPS) + ") nor a step: " + ", ".join(s.name for s in every))
    steps = build_plan(python, work, args.wheels, args.only, args.large_variant)
    if args.dry_run:
        problems = dry_run(steps, args.wheels, python)
        shutil.rmtree(work)
        for p in problems:
            print(f"problem: {p}")
        print("dry run: ok" if not problems else f"dry run: {len(problems)} problem(s)")
        return 1 if problems else 0

    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(work / "site"),
                                                        os.environ.get("PYTHONPATH")])))
    env.pop("TRITON_INTERPRET", None)  # the kernels must run compiled on the GPU
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                         text=True) if shutil.which("git") else None
    info = {"command": " ".join([Path(python).name, *sys.argv]),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "work": str(work), "python": python, "host": os.uname().nodename,
            "git_commit": git.stdout.strip() if git and git.returncode == 0 else None}
    campaign = Campaign(steps, args.budget_s, work, args.out, env, info=info)
    campaign.say(f"trainbench GPU campaign: budget {args.budget_s:g} s, work folder {work}, "
                 f"results into {args.out}")
    for problem in gpu_wheels.report(gpu_wheels.load_spec(), args.wheels):
        campaign.say(f"warning: {problem} (run `make gpu-wheels` where there is network, and "
                     "bring .whl/ along)")
    campaign.run()
    campaign.say(f"[{campaign.elapsed():6.1f} s] done")
    hint = rerun_hint(campaign.results, work / "records")
    if hint:
        campaign.say(hint)
    campaign.write_outputs()
    print((args.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
