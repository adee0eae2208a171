"""Multi-node launch under SLURM: one task per device (docs/design.md, "Scale").

trainbench's documented pattern is one SLURM task per device (`hydra/launcher=submitit_slurm`
with `hydra.launcher.tasks_per_node=<devices per node>`; or `srun --ntasks-per-node=<devices>
trainbench ...`). Each task is one rank. JAX's `jax.distributed.initialize()` reads the SLURM
variables itself; for torch.distributed, `torch_env_from_slurm` derives RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT from them — unless torchrun already set them.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, MutableMapping

DEFAULT_MASTER_PORT = "29500"


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[003-005,9],cpu1" -> "gpu003"."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"SLURM node list {nodelist!r} is not of the form host[1-3,5],other")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def torch_env_from_slurm(environ: Mapping[str, str]) -> dict[str, str]:
    """torch.distributed's env:// variables for this SLURM task; {} outside a multi-task job
    or when RANK is already set (torchrun)."""
    if "RANK" in environ or int(environ.get("SLURM_NTASKS", "1")) <= 1:
        return {}
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        raise ValueError("SLURM_NTASKS > 1 but SLURM_JOB_NODELIST is not set")
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": environ["SLURM_NTASKS"],
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0],
        "MASTER_ADDR": environ.get("MASTER_ADDR") or first_host(nodelist),
        "MASTER_PORT": environ.get("MASTER_PORT", DEFAULT_MASTER_PORT),
    }


def apply_slurm_env(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set torch.distributed's variables from SLURM's in `environ`; return what was set."""
    update = torch_env_from_slurm(environ)
    environ.update(update)
    return update
