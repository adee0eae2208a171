"""Compile every Triton kernel for real NVIDIA GPUs on this (CPU) machine; report what ptxas says.

    python scripts/compile_kernels.py                                  # sm_80, sm_90a, sm_100a
    python scripts/compile_kernels.py --arch sm_90a --json out.json --markdown out.md
    python scripts/compile_kernels.py --presets tiny llama3_8b --dtypes bfloat16 --ops rmsnorm
    python scripts/compile_kernels.py --ops flash_attention --kernels _attn_fwd --jobs 2

Triton needs no GPU to compile: triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))
produces PTX and a cubin here, and the ptxas inside the triton wheel reports registers, spills
and shared memory. What is compiled is exactly what the wrappers launch, found by running them:

  1. Capture. Each op's public function (trainbench.kernels.triton) runs forward and backward on
     small CPU stand-in tensors while triton's JITFunction.run is replaced by a recorder: every
     launch gives its kernel, its argument signature as Triton specializes it (tensor dtypes,
     16-byte alignment, integers that are 1 or divisible by 16, 32- or 64-bit), its constexprs,
     num_warps and num_stages, and nothing runs. An autotuned kernel gives one launch per
     candidate config its pruning keeps (any of them may win on the GPU). The stand-ins have the
     preset's real d_model, d_ff, vocab, head counts and head dim, on which the wrappers choose
     their blocks; 256 tokens stand in for batch x seq (a multiple of 16, as every real batch x
     seq is, so every integer argument specializes as at the real size); the LM head's
     d_model is 64 (the cross-entropy kernel reads only the logits, whose width is the vocab).
  2. Two call conventions per launch: eager (Python floats passed as fp32, as Triton's launcher
     does) and inductor (as fp64: torch.compile's Inductor types Python float arguments of user
     Triton kernels as fp64). A kernel without float arguments compiles the same in both.
  3. Compile per arch, then run ptxas -v on the PTX (the arch's ptxas from the triton wheel):
     registers and spill bytes per thread; shared_bytes is the shared memory Triton's kernel
     requests at launch (its metadata), judged against the arch's limit per block
     (trainbench/data/nvidia_targets.yaml, with its source); tensor-core instructions are counted
     in the PTX (wgmma = Hopper warpgroup MMA, mma = mma.sync, tcgen05 = Blackwell MMA).

dtypes: float32 and bfloat16 inputs, and "tf32": float32 inputs under
torch.set_float32_matmul_precision("high"), listed only where it compiles differently (attention).
Exit status 1 when any variant fails to compile or overflows shared memory (spills are reported,
not failures: tests/test_compile_kernels.py fails on a spill the committed table lacks).
Set TRITON_CACHE_DIR to keep Triton's compile cache elsewhere than ~/.triton.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Callable, Iterator

os.environ.pop("TRITON_INTERPRET", None)  # the real compiler, not the interpreter: before triton

import torch  # noqa: E402
import triton  # noqa: E402
import yaml  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.compiler.compiler import make_backend  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

from trainbench import model  # noqa: E402

PRESETS = ("tiny", "small", "smollm2_135m", "smollm2_360m", "tinyllama_1b", "llama32_1b",
           "llama32_3b", "llama3_8b", "llama3_70b")
DTYPES = ("float32", "bfloat16", "tf32")
CONVENTIONS = ("eager", "inductor")
TOKENS = 256  # stand-in for batch x seq, see the module docstring
LM_HEAD_D = 64  # stand-in d_model of the LM head, see the module docstring
_DTYPE_SETUP = {"float32": (torch.float32, "highest"), "bfloat16": (torch.bfloat16, "highest"),
                "tf32": (torch.float32, "high")}  # dtype label -> (inputs, matmul precision)


def targets() -> dict[str, dict[str, Any]]:
    """The arch table: name -> capability, max_shared_bytes, max_registers, gpus, source."""
    text = resources.files("trainbench").joinpath("data/nvidia_targets.yaml").read_text()
    return yaml.safe_load(text)


# --- 1. capture: run the wrappers, record the launches --------------------------------------------

@dataclass
class Launch:
    """One kernel launch as Triton would compile it (for one dtype label)."""
    kernel: str
    fn: JITFunction = field(repr=False)
    signature: dict[str, str]
    constexprs: dict[tuple, Any]
    attrs: dict[tuple, Any]
    options: dict[str, Any]  # num_warps, num_stages, ...: the launch's compile options
    candidate: str  # "i/n" for an autotune candidate, "" for a plain launch

    def config(self) -> str:
        """The constexprs that set the block shape (and the precision), as one string."""
        names = self.fn.arg_names
        return " ".join(f"{names[k[0]]}={v}" for k, v in sorted(self.constexprs.items())
                        if names[k[0]].isupper() and names[k[0]] != "UPCAST")

    def key(self, convention: str) -> tuple:
        return (self.kernel, json.dumps(self.signature_for(convention), sort_keys=True),
                repr(sorted(self.constexprs.items())), repr(sorted(self.attrs.items())),
                json.dumps(self.options, sort_keys=True, default=str))

    def signature_for(self, convention: str) -> dict[str, str]:
        """The signature with Python-float scalars as fp32 (eager) or fp64 (inductor)."""
        if convention == "eager":
            return self.signature
        return {k: "fp64" if v == "fp32" else v for k, v in self.signature.items()}


class _Recorder:
    """Replaces JITFunction.run and Autotuner.run: records launches instead of running them."""

    def __init__(self) -> None:
        self.launches: list[Launch] = []
        self.backend = make_backend(GPUTarget("cuda", 90, 32))  # any CUDA arch specializes alike
        self._candidate = ""

    def jit_run(self, fn: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        binder = create_function_from_signature(fn.signature, fn.params, self.backend)
        bound, specialization, options = binder(*args, **kwargs)
        _, signature, constexprs, attrs = fn._pack_args(self.backend, kwargs, bound,
                                                        specialization, options)
        launch_options = {k: v for k, v in kwargs.items() if k not in fn.arg_names}
        self.launches.append(Launch(fn.__name__, fn, signature, constexprs, attrs,
                                    launch_options, self._candidate))

    def autotune_run(self, tuner: Autotuner, *args: Any, **kwargs: Any) -> None:
        tuner.nargs = dict(zip(tuner.arg_names, args))
        configs = tuner.prune_configs({k: v for k, v in kwargs.items()
                                       if k not in ("grid", "warmup")})
        for i, cfg in enumerate(configs):
            self._candidate = f"{i + 1}/{len(configs)}"
            tuner.fn.run(*args, **kwargs, **cfg.all_kwargs())
        self._candidate = ""

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        from trainbench.kernels.triton import _common

        recorder = self
        saved = (JITFunction.run, Autotuner.run, _common.INTERPRETING)
        JITFunction.run = lambda fn, *a, **k: recorder.jit_run(fn, *a, **k)
        Autotuner.run = lambda tuner, *a, **k: recorder.autotune_run(tuner, *a, **k)
        _common.INTERPRETING = True  # lets check_runnable accept the CPU stand-ins; kernels
        try:                         # still take their GPU path (their own INTERPRETING is False)
            yield
        finally:
            JITFunction.run, Autotuner.run, _common.INTERPRETING = saved


def _randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, dtype=dtype, requires_grad=True)


def _run_rmsnorm(cfg: model.ModelConfig, dtype: torch.dtype) -> None:
    from trainbench.kernels.triton import rmsnorm

    x, w = _randn(TOKENS, cfg.d_model, dtype=dtype), _randn(cfg.d_model, dtype=dtype)
    rmsnorm(x, w, cfg.norm_eps).sum().backward()


def _run_rope(cfg: model.ModelConfig, dtype: torch.dtype) -> None:
    from trainbench.kernels.triton import rope_qk

    cos = torch.randn(TOKENS, cfg.head_dim)
    q = _randn(1, TOKENS, cfg.n_heads, cfg.head_dim, dtype=dtype)
    k = _randn(1, TOKENS, cfg.n_kv_heads, cfg.head_dim, dtype=dtype)
    q_rot, k_rot = rope_qk(q, k, cos, cos)  # one launch for both, as the model calls it
    (q_rot.sum() + k_rot.sum()).backward()


def _run_swiglu(cfg: model.ModelConfig, dtype: torch.dtype) -> None:
    from trainbench.kernels.triton import swiglu

    gate, up = _randn(TOKENS, cfg.d_ff, dtype=dtype), _randn(TOKENS, cfg.d_ff, dtype=dtype)
    swiglu(gate, up).sum().backward()


def _run_linear_cross_entropy(cfg: model.ModelConfig, dtype: torch.dtype) -> None:
    from trainbench.kernels.triton import linear_cross_entropy

    x, w = _randn(TOKENS, LM_HEAD_D, dtype=dtype), _randn(LM_HEAD_D, cfg.vocab, dtype=dtype)
    targets = torch.randint(0, cfg.vocab, (TOKENS,))
    linear_cross_entropy(x, w, targets).backward()


def _run_flash_attention(cfg: model.ModelConfig, dtype: torch.dtype) -> None:
    from trainbench.kernels.triton import flash_attention

    q = _randn(1, TOKENS, cfg.n_heads, cfg.head_dim, dtype=dtype)
    k, v = (_randn(1, TOKENS, cfg.n_kv_heads, cfg.head_dim, dtype=dtype) for _ in range(2))
    flash_attention(q, k, v, causal=True).sum().backward()


OPS: dict[str, Callable[[model.ModelConfig, torch.dtype], None]] = {
    "rmsnorm": _run_rmsnorm, "rope": _run_rope, "swiglu": _run_swiglu,
    "linear_cross_entropy": _run_linear_cross_entropy, "flash_attention": _run_flash_attention,
}


@dataclass
class Variant:
    """One distinct compile job: a launch in one convention, with the presets that use it and
    the conventions it stands for (both when the kernel has no float argument)."""
    launch: Launch
    op: str
    dtype: str
    conventions: list[str]
    presets: list[str]


def capture(presets: list[str], dtypes: list[str], ops: list[str]) -> list[Variant]:
    """Every distinct (launch, convention) the wrappers make for these presets, dtypes and ops.

    A launch that compiles identically under an earlier dtype label (tf32 outside attention) is
    kept once, under the earlier label; one that compiles identically in both conventions (no
    float argument) is one variant standing for both; the presets that share a variant are
    gathered on it."""
    variants: dict[tuple, Variant] = {}
    recorder = _Recorder()
    precision = torch.get_float32_matmul_precision()
    try:
        for label in dtypes:
            dtype, matmul_precision = _DTYPE_SETUP[label]
            torch.set_float32_matmul_precision(matmul_precision)
            for name in presets:
                cfg = model.preset(name)
                for op in ops:
                    recorder.launches.clear()
                    with recorder.patched():
                        OPS[op](cfg, dtype)
                    for launch in recorder.launches:
                        keys = {launch.key(c): [] for c in CONVENTIONS}
                        for c in CONVENTIONS:
                            keys[launch.key(c)].append(c)
                        for key, conventions in keys.items():
                            if key in variants:
                                if name not in variants[key].presets:
                                    variants[key].presets.append(name)
                            else:
                                variants[key] = Variant(launch, op, label, conventions, [name])
    finally:
        torch.set_float32_matmul_precision(precision)
    return list(variants.values())


# --- 2-3. compile per arch, read ptxas -v ---------------------------------------------------------

@dataclass
class Row:
    """One compiled kernel variant on one arch (a JSON row of --json)."""
    kernel: str
    op: str
    arch: str
    dtype: str
    convention: str
    config: str
    presets: list[str]
    candidate: str
    num_warps: int | None
    num_stages: int | None
    registers: int | None = None
    spill_bytes: int | None = None
    shared_bytes: int | None = None
    shared_limit: int | None = None
    wgmma: int | None = None
    mma: int | None = None
    tcgen05: int | None = None
    error: str | None = None

    def key(self) -> tuple:
        """What identifies a row across runs (for the committed table's spills)."""
        return (self.kernel, self.arch, self.dtype, self.convention, self.config,
                self.num_warps, self.num_stages)


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(log: str) -> tuple[int, int]:
    """(registers, spill bytes = spill stores + spill loads) from a `ptxas -v` log."""
    regs = _PTXAS_REGS.search(log)
    spill = _PTXAS_SPILL.search(log)
    if regs is None or spill is None:
        raise ValueError(f"ptxas -v log has no register or spill line:\n{log}")
    return int(regs.group(1)), int(spill.group(1)) + int(spill.group(2))


def count_tensor_core_ops(ptx: str) -> dict[str, int]:
    """Tensor-core instructions in PTX: wgmma.mma_async, mma.sync and tcgen05.mma."""
    return {"wgmma": len(re.findall(r"\bwgmma\.mma_async\b", ptx)),
            "mma": len(re.findall(r"\bmma\.sync\b", ptx)),
            "tcgen05": len(re.findall(r"\btcgen05\.mma\b", ptx))}


def _compile_with_log(src: ASTSource, capability: int, options: dict[str, Any]
                      ) -> tuple[Any, str]:
    """triton.compile, and the `ptxas -v` log of its cubin step ("" when Triton's cache served
    the kernel and ptxas did not run)."""
    from triton import knobs

    out = io.StringIO()
    saved = knobs.nvidia.dump_ptxas_log
    knobs.nvidia.dump_ptxas_log = True  # Triton runs ptxas -v and prints its log
    try:
        with contextlib.redirect_stdout(out):
            kernel = triton.compile(src, target=GPUTarget("cuda", capability, 32),
                                    options=options)
    finally:
        knobs.nvidia.dump_ptxas_log = saved
    return kernel, out.getvalue()


def _ptxas_log(ptx: str, arch: str, capability: int) -> str:
    """Run the arch's ptxas -v (from the triton wheel) on PTX, as Triton's cubin step does."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([get_ptxas(capability).path, "-v", "--regAllocOptLevel=2",
                               f"--gpu-name={arch}", src, "-o", src + ".o"],
                              capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ptxas failed: {proc.stderr.strip()}")
    return proc.stderr


def compile_variant(variant: Variant, arch: str, target: dict[str, Any]) -> list[Row]:
    """Compile one variant for one arch: one row per convention it stands for; a compile error
    goes into the rows, not out."""
    launch = variant.launch
    row = Row(launch.kernel, variant.op, arch, variant.dtype, variant.conventions[0],
              launch.config(),
              sorted(variant.presets, key=PRESETS.index), launch.candidate,
              launch.options.get("num_warps"), launch.options.get("num_stages"),
              shared_limit=target["max_shared_bytes"])
    capability = target["capability"]
    backend = make_backend(GPUTarget("cuda", capability, 32))
    options = backend.parse_options(dict(launch.options))
    row.num_warps, row.num_stages = options.num_warps, options.num_stages
    try:
        src = ASTSource(launch.fn, launch.signature_for(row.convention), launch.constexprs,
                        launch.attrs)
        kernel, log = _compile_with_log(src, capability, options.__dict__)
        if "Used" not in log:
            log = _ptxas_log(kernel.asm["ptx"], arch, capability)
        row.registers, row.spill_bytes = parse_ptxas(log)
        row.shared_bytes = kernel.metadata.shared
        counts = count_tensor_core_ops(kernel.asm["ptx"])
        row.wgmma, row.mma, row.tcgen05 = counts["wgmma"], counts["mma"], counts["tcgen05"]
    except Exception as e:  # noqa: BLE001 -- a failed compile is a result to report
        row.error = " ".join(f"{type(e).__name__}: {e}".split())[:500]
    return [Row(**dict(asdict(row), convention=c)) for c in variant.conventions]


_JOBS: list[tuple[Variant, str, dict[str, Any]]] = []  # read by forked workers (JITFunctions
#                                                       do not pickle; an index does)


def _compile_job(i: int) -> list[Row]:
    variant, arch, target = _JOBS[i]
    print(f"[{i + 1}/{len(_JOBS)}] {arch} {variant.launch.kernel} {variant.dtype} "
          f"{'+'.join(variant.conventions)} [{variant.launch.config()}]", file=sys.stderr,
          flush=True)
    return compile_variant(variant, arch, target)


def compile_all(variants: list[Variant], arches: dict[str, dict[str, Any]], jobs: int
                ) -> list[Row]:
    """Rows of every variant on every arch, in that order; `jobs` forked processes."""
    _JOBS[:] = [(v, arch, target) for arch, target in arches.items() for v in variants]
    if jobs <= 1:
        results = [_compile_job(i) for i in range(len(_JOBS))]
    else:
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            results = list(pool.map(_compile_job, range(len(_JOBS))))
    return [r for rows in results for r in rows]


def failures(rows: list[Row]) -> list[str]:
    """One line per row that failed to compile or needs more shared memory than its arch has."""
    out = []
    for r in rows:
        where = f"{r.kernel} {r.arch} {r.dtype} {r.convention} [{r.config}]"
        if r.error:
            out.append(f"{where}: {r.error}")
        elif r.shared_bytes > r.shared_limit:
            out.append(f"{where}: shared memory {r.shared_bytes} B > limit {r.shared_limit} B")
    return out


def new_spills(rows: list[Row], committed: list[dict[str, Any]]) -> list[str]:
    """Rows that spill where the committed table has the same variant without spills, or a
    variant the table lacks of a kernel that never spilled on that arch there."""
    by_key = {Row(**c).key(): c for c in committed}
    clean_kernels = {(c["kernel"], c["arch"]) for c in committed}
    clean_kernels -= {(c["kernel"], c["arch"]) for c in committed if c["spill_bytes"]}
    out = []
    for r in rows:
        if not r.spill_bytes:
            continue
        old = by_key.get(r.key())
        if (old is not None and not old["spill_bytes"]) or (
                old is None and (r.kernel, r.arch) in clean_kernels):
            out.append(f"{r.kernel} {r.arch} {r.dtype} {r.convention} [{r.config}] spills "
                       f"{r.spill_bytes} B; the committed table has no spill there")
    return out


# --- output ---------------------------------------------------------------------------------------

def _tc(r: Row) -> str:
    parts = [f"{n} {getattr(r, n)}" for n in ("wgmma", "mma", "tcgen05") if getattr(r, n)]
    return ", ".join(parts) or "-"


COLUMNS = ("kernel", "arch", "dtype", "conv", "config", "presets", "warps", "stages", "regs",
           "spill B", "shared B / limit", "tensor cores", "error")


def table_cells(r: Row) -> list[str]:
    ok = r.error is None
    cand = f" (cand. {r.candidate})" if r.candidate else ""
    return [r.kernel, r.arch, r.dtype, r.convention, r.config + cand, ",".join(r.presets),
            str(r.num_warps), str(r.num_stages), str(r.registers) if ok else "",
            str(r.spill_bytes) if ok else "",
            f"{r.shared_bytes} / {r.shared_limit}" if ok else "", _tc(r) if ok else "",
            r.error or ""]


def print_table(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Triton kernels compiled for NVIDIA targets (ptxas -v)")
    for c in COLUMNS:
        table.add_column(c, overflow="fold")
    for r in rows:
        style = "red" if r.error or (r.shared_bytes or 0) > r.shared_limit else (
            "yellow" if r.spill_bytes else None)
        table.add_row(*table_cells(r), style=style)
    Console(width=240).print(table)


def markdown(rows: list[Row], command: str) -> str:
    lines = ["# Triton kernels compiled for NVIDIA targets", "",
             f"Produced on a CPU machine by `{command}` with triton {triton.__version__}, "
             f"torch {torch.__version__}. Registers and spill bytes per thread from `ptxas -v`; "
             "shared memory is what the kernel requests at launch, against the arch's limit per "
             "block; tensor cores counts wgmma / mma.sync / tcgen05.mma instructions in the PTX. "
             "See the docstring of scripts/compile_kernels.py for what is compiled.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _command(argv: list[str]) -> str:
    """The command line that made the table, without where its outputs went."""
    kept = [a for i, a in enumerate(argv) if a not in ("--json", "--markdown")
            and (i == 0 or argv[i - 1] not in ("--json", "--markdown"))]
    return " ".join(["python scripts/compile_kernels.py", *kept])


def main(argv: list[str] | None = None) -> int:
    arches = targets()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=",".join(arches),
                        help=f"comma-separated targets among {', '.join(arches)}")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    parser.add_argument("--conventions", nargs="+", default=list(CONVENTIONS),
                        choices=CONVENTIONS)
    parser.add_argument("--kernels", nargs="+", default=None,
                        help="compile only these kernels (e.g. _attn_fwd); default: all")
    parser.add_argument("--first-candidate", action="store_true",
                        help="of an autotuned kernel, compile only the default (first) candidate")
    parser.add_argument("--jobs", type=int, default=1,
                        help="compile in this many processes (ptxas is single-threaded)")
    parser.add_argument("--json", default=None, help="write one JSON object per row here")
    parser.add_argument("--markdown", default=None, help="write the table as Markdown here")
    args = parser.parse_args(argv)
    chosen = [a.strip() for a in args.arch.split(",") if a.strip()]
    unknown = [a for a in chosen if a not in arches]
    if unknown or not chosen:
        parser.error(f"--arch {args.arch!r}: unknown target(s) {unknown}; "
                     f"expected a comma-separated list of {', '.join(arches)}")

    variants = [v for v in capture(args.presets, args.dtypes, args.ops)
                if (args.kernels is None or v.launch.kernel in args.kernels)
                and set(v.conventions) & set(args.conventions)
                and not (args.first_candidate
                         and v.launch.candidate.split("/")[0] not in ("", "1"))]
    rows = compile_all(variants, {a: arches[a] for a in chosen}, args.jobs)
    print_table(rows)
    command = _command(sys.argv[1:] if argv is None else argv)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "triton": triton.__version__,
                       "torch": torch.__version__, "targets": {a: arches[a] for a in chosen},
                       "rows": [asdict(r) for r in rows]}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(rows, command))
    bad = failures(rows)
    spills = sum(1 for r in rows if r.spill_bytes)
    print(f"{len(rows)} variants compiled, {len(bad)} failed, {spills} spill")
    for line in bad:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
