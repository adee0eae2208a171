"""scripts/bench_kernels.py: refuses to run without a CUDA GPU; on a GPU, runs on a tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_kernels.py"


def test_bench_kernels_needs_a_gpu_or_runs_on_one() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny", "--batch", "1",
                           "--seq", "64", "--no-compile"], capture_output=True, text=True,
                          timeout=600)
    if "needs a CUDA GPU" in proc.stderr:  # a machine without CUDA: stop before any work
        assert proc.returncode == 1, proc.stderr
        assert proc.stdout == "", proc.stdout
    else:  # a GPU: every op is timed for all three implementations
        assert proc.returncode == 0, proc.stderr
        for op in ("rmsnorm", "rope", "swiglu", "linear_cross_entropy", "flash_attention"):
            assert proc.stdout.count(op) == 4, proc.stdout  # (triton, native) x (fwd, fwd+bwd)
