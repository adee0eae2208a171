"""Benchmark the NumPy reference backend on the CPU and print its figures.

    python scripts/bench_reference.py                      # tiny and small, default shapes
    python scripts/bench_reference.py --models small --batch 8 --seq 256 --steps 5

Runs each model through the same runner as `trainbench` (records go to --results), then prints
the comparison table. The CPU peak used for MFU is measured by trainbench's matmul probe.
"""

from __future__ import annotations

import argparse

from trainbench import model, report, runner
from trainbench.backends.reference.backend import ReferenceConfig
from trainbench.config import PRECISIONS, DataConfig, OptimConfig, RunConfig, TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp64"])
    parser.add_argument("--results", default="results/bench_reference")
    args = parser.parse_args()

    records = []
    for name in args.models:
        cfg = RunConfig(model=model.preset(name), backend=ReferenceConfig(),
                        precision=PRECISIONS[args.precision], optim=OptimConfig(),
                        data=DataConfig(), results_dir=args.results,
                        train=TrainConfig(batch_size=args.batch, seq_len=args.seq,
                                          steps=args.steps, warmup_steps=args.warmup))
        record, path = runner.execute(runner.prepare(cfg, name))
        print(f"{name}: {record['status']}, record {path}")
        records.append(record)
    report.print_table(records, title="reference backend on the CPU")


if __name__ == "__main__":
    main()
