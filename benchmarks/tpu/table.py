"""The README's table of the compiled TPU plans, from the records in this folder.

    python benchmarks/tpu/table.py [FOLDER]

One row per record (model, slice, mesh, the batch the search found with its probes, memory per
device against HBM, XLA's FLOPs over the model's, collective bytes per step, the roofline MFU
bound, compile time). `trainbench report benchmarks/tpu` shows the same records in its
compiled-plans table; this one adds the slice names, the per-device batch and the probes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SLICES = {"v5e:16x16": "v5e-256", "v5p:4x4x4": "v5p-128", "v5p:4x4x8": "v5p-256",
          "v6e:16x16": "v6e-256", "tpu7x:4x4x4": "tpu7x-128", "tpu7x:2x4x4": "tpu7x-64"}
"""libtpu topology -> the slice name Google Cloud sells it as (v5p and TPU7x count cores)."""
MODELS = ("llama32_1b", "llama3_8b", "llama3_70b", "llama31_405b")


def row(record: dict) -> tuple[tuple, str]:
    c, m = record["compile"], record["compile"]["memory"]
    mesh = c["mesh"]
    topology = c["target"].removeprefix("tpu:")
    shards = mesh["dp"] * mesh["fsdp"]
    unit = "FSDP shard" if mesh["tp"] > 1 else "device"
    search = c.get("search")
    if search:
        batch = (f"{search['best_batch_size']} ({search['best_per_device_batch']}/{unit})"
                 if search["best_batch_size"] else "none fits")
        probes = ", ".join(f"{p['batch_size']}{'✓' if p['fits'] else '✗'}"
                           for p in search["probes"])
    else:
        batch, probes = f"{record['batch_size']} ({record['batch_size'] // shards}/{unit})", "–"
    fits = m["fits"]
    ceiling = c["roofline"]["mfu_ceiling"]
    cells = [
        record["model"], f"{SLICES.get(topology, topology)} (`{topology}`)", str(c["chips"]),
        f"FSDP {mesh['fsdp']}" + (f" × TP {mesh['tp']}" if mesh["tp"] > 1 else ""), batch,
        f"{m['per_device_bytes'] / 2**30:.1f} / {m['hbm_bytes'] / 2**30:.0f}",
        "yes" if fits else "**no**",
        f"{c['flop_ratio']:.2f}" if fits else "–",
        f"{c['collective_bytes'] / 2**30:.0f}" if fits else "–",
        f"{ceiling:.0%}" if fits and ceiling else "–",
        f"{c['compile_s']:.0f}", probes,
    ]
    return (MODELS.index(record["model"]), c["chips"], topology), "| " + " | ".join(cells) + " |"


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else Path(__file__).parent
    rows = sorted(row(json.loads(p.read_text())) for p in folder.glob("compile_*.json"))
    print("| model | slice (topology) | chips | mesh | global batch (per device) | GiB per "
          "device / HBM | fits | XLA/model FLOPs | collectives GiB/step | MFU ceiling "
          "(**bound**) | compile s | batch-search probes |")
    print("|" + "---|" * 12)
    for _, line in rows:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
