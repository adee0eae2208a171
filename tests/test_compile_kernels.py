"""scripts/compile_kernels.py: the Triton kernels compile for real NVIDIA targets on the CPU.

The compile runs go through the script in a fresh process (Triton decides at import time whether
it interprets, and another test in the same worker may have imported it with TRITON_INTERPRET=1),
with TRITON_CACHE_DIR in a temporary folder, and are judged on the JSON the script writes:
  - a representative subset (sm_90a, the tiny preset, bfloat16, every op, every autotune
    candidate) compiles without error or shared-memory overflow, and spills nowhere the committed
    table (benchmarks/compile/) has no spill; the full matrix of the committed table is the same
    check, marked slow;
  - the flash-attention kernels compile with float64 scalars (Inductor's convention), which the
    kernels before issue 9 could not ("loop-carried variable m_i ... fp32 re-assigned to fp64");
  - float32 attention uses tensor cores (TF32) exactly when the matmul precision allows it.
The pure functions (ptxas log parsing, tensor-core counting, the failure and new-spill rules) and
the committed table itself are checked in this process.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "compile_kernels.py"
COMMITTED = sorted((ROOT / "benchmarks" / "compile").glob("*.json"))  # each with its .md
REQUIRED = ("kernel", "arch", "dtype", "convention", "registers", "spill_bytes", "shared_bytes",
            "error")


@functools.cache
def _module():
    """The script as a module, for its pure functions (its import pops TRITON_INTERPRET, which
    only matters to a triton not yet imported)."""
    spec = importlib.util.spec_from_file_location("compile_kernels", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    saved = os.environ.get("TRITON_INTERPRET")
    try:
        spec.loader.exec_module(mod)
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    return mod


def _compile(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=3000, cwd=ROOT)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    return proc, rows


def _check_rows(proc: subprocess.CompletedProcess, rows: list[dict]) -> None:
    mod = _module()
    assert rows, f"no rows written:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    bad = mod.failures([mod.Row(**r) for r in rows])
    assert not bad, "\n".join(bad)
    assert proc.returncode == 0, proc.stderr[-3000:]
    committed = [r for path in COMMITTED for r in json.loads(path.read_text())["rows"]]
    spills = mod.new_spills([mod.Row(**r) for r in rows], committed)
    assert not spills, "\n".join(spills)


def test_representative_subset_compiles_without_overflow_or_new_spill(tmp_path: Path) -> None:
    proc, rows = _compile(tmp_path, "--arch", "sm_90a", "--presets", "tiny",
                          "--dtypes", "bfloat16", "--first-candidate")
    _check_rows(proc, rows)
    kernels = {r["kernel"] for r in rows}
    assert {"_rmsnorm_fwd", "_rmsnorm_bwd", "_rope", "_swiglu_fwd", "_swiglu_bwd", "_ce_rows",
            "_attn_fwd", "_attn_bwd_delta", "_attn_bwd_dkdv", "_attn_bwd_dq"} <= kernels, kernels
    assert {r["convention"] for r in rows} == {"eager", "inductor"}


@pytest.mark.slow
@pytest.mark.parametrize("table", COMMITTED, ids=lambda p: p.stem)
def test_committed_matrix_compiles_as_committed(table: Path, tmp_path: Path) -> None:
    command = json.loads(table.read_text())["command"].split()  # python scripts/... ARGS
    proc, rows = _compile(tmp_path, *command[2:])
    _check_rows(proc, rows)


def test_attention_compiles_with_float64_scalars(tmp_path: Path) -> None:
    proc, rows = _compile(tmp_path, "--arch", "sm_90a", "--presets", "tiny", "--dtypes",
                          "bfloat16", "--ops", "flash_attention", "--first-candidate",
                          "--kernels", "_attn_fwd", "_attn_bwd_dq")
    inductor = [r for r in rows if r["convention"] == "inductor"]
    assert {r["kernel"] for r in inductor} == {"_attn_fwd", "_attn_bwd_dq"}, rows
    for r in inductor:
        assert r["error"] is None, r["error"]
        assert r["wgmma"] > 0, r  # still bfloat16 tensor-core products


def test_float32_attention_uses_tf32_only_when_allowed(tmp_path: Path) -> None:
    proc, rows = _compile(tmp_path, "--arch", "sm_80", "--presets", "tiny", "--dtypes",
                          "float32", "tf32", "--ops", "flash_attention", "--first-candidate",
                          "--kernels", "_attn_fwd")
    eager = {r["dtype"]: r for r in rows if r["convention"] == "eager"}
    assert set(eager) == {"float32", "tf32"}, rows
    assert eager["float32"]["config"].count("PRECISION=ieee") == 1
    assert eager["float32"]["mma"] == 0  # IEEE float32 products: no tensor cores
    assert eager["tf32"]["config"].count("PRECISION=tf32") == 1
    assert eager["tf32"]["mma"] > 0


def test_bad_arch_is_a_usage_error(tmp_path: Path) -> None:
    proc, rows = _compile(tmp_path, "--arch", "sm_75")
    assert proc.returncode == 2
    assert "--arch 'sm_75'" in proc.stderr and "sm_90a" in proc.stderr
    assert rows == []


# --- the pure parts and the committed table, in this process --------------------------------------

def test_parse_ptxas_log() -> None:
    log = ("ptxas info    : Compiling entry function '_attn_fwd' for 'sm_90a'\n"
           "ptxas info    : Function properties for _attn_fwd\n"
           "    16 bytes stack frame, 12 bytes spill stores, 20 bytes spill loads\n"
           "ptxas info    : Used 168 registers, used 1 barriers\n")
    assert _module().parse_ptxas(log) == (168, 32)
    with pytest.raises(ValueError, match="no register or spill line"):
        _module().parse_ptxas("ptxas info: nothing\n")


def test_count_tensor_core_ops() -> None:
    ptx = ("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {...};\n"
           "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {...};\n"
           "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {...};\n"
           "wgmma.fence.sync.aligned;\n")
    assert _module().count_tensor_core_ops(ptx) == {"wgmma": 1, "mma": 2, "tcgen05": 0}


def _row(mod, **kw):
    base = dict(kernel="_k", op="op", arch="sm_90a", dtype="bfloat16", convention="eager",
                config="BLOCK=1", presets=["tiny"], candidate="", num_warps=4, num_stages=3,
                registers=100, spill_bytes=0, shared_bytes=1000, shared_limit=2000, wgmma=0,
                mma=0, tcgen05=0, error=None)
    return mod.Row(**dict(base, **kw))


def test_failures_are_compile_errors_and_shared_overflow() -> None:
    mod = _module()
    rows = [_row(mod), _row(mod, error="CompilationError: boom"),
            _row(mod, shared_bytes=2001), _row(mod, spill_bytes=64)]
    bad = mod.failures(rows)
    assert len(bad) == 2
    assert "boom" in bad[0] and "2001 B > limit 2000 B" in bad[1]


def test_new_spill_fails_only_where_the_committed_table_had_none() -> None:
    mod = _module()
    committed = [vars(_row(mod, config="A")),
                 vars(_row(mod, kernel="_spilly", config="B", spill_bytes=8))]
    now = [_row(mod, config="A", spill_bytes=16),  # had none: fails
           _row(mod, kernel="_spilly", config="B", spill_bytes=32),  # spilled before: reported
           _row(mod, config="C", spill_bytes=4),  # new variant of a kernel that never spilled
           _row(mod, kernel="_spilly", config="D", spill_bytes=4),  # a kernel that did spill
           _row(mod, config="A", arch="sm_80", spill_bytes=4)]  # an arch the table lacks
    out = mod.new_spills(now, committed)
    assert len(out) == 2 and "[A]" in out[0] and "[C]" in out[1], out


@pytest.mark.parametrize("table", COMMITTED, ids=lambda p: p.stem)
def test_committed_table_is_complete_and_clean(table: Path) -> None:
    record = json.loads(table.read_text())
    assert record["command"].startswith("python scripts/compile_kernels.py")
    assert record["triton"]
    rows = record["rows"]
    assert {r["arch"] for r in rows} == set(record["targets"])
    assert {r["convention"] for r in rows} == {"eager", "inductor"}
    for r in rows:
        assert all(k in r for k in REQUIRED), r
    mod = _module()
    assert not mod.failures([mod.Row(**r) for r in rows])
    markdown = table.with_suffix(".md").read_text()
    assert record["command"] in markdown and record["triton"] in markdown


def test_committed_tables_cover_every_kernel_and_dtype() -> None:
    rows = [r for path in COMMITTED for r in json.loads(path.read_text())["rows"]]
    assert {"_rmsnorm_fwd", "_rmsnorm_bwd", "_rope", "_swiglu_fwd", "_swiglu_bwd", "_ce_rows",
            "_attn_fwd", "_attn_bwd_delta", "_attn_bwd_dkdv", "_attn_bwd_dq"} <= {
        r["kernel"] for r in rows}
    assert {"float32", "bfloat16", "tf32"} <= {r["dtype"] for r in rows}
