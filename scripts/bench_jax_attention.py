"""The jax backend's XLA attention at several query blocks against jax.nn.dot_product_attention.

    python scripts/bench_jax_attention.py                       # T = 128 256 512 1024, 7 rounds
    python scripts/bench_jax_attention.py --seq 256 --blocks 64 128 --json attn.json

model=small's heads (8 query heads, 4 kv heads, head dim 64), float32, 2048 tokens per call
(batch = 2048 / T), forward and backward (the gradient of sum(out**2) with respect to q, k and
v), each jitted and warmed up, then timed in interleaved rounds. It prints, per length, each
implementation's median time as a fraction of dot_product_attention(is_causal=True)'s: below
1, trainbench's blocks are faster. This is how backends/jax/attention.CPU_QUERY_BLOCK was
chosen; on an accelerator it compares the same choices there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128],
                        help="smallest query blocks of trainbench's XLA attention to time")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=2048, help="batch x seq per call")
    parser.add_argument("--json", type=Path, help="write every round's times here")
    args = parser.parse_args(argv)
    bad = [t for t in args.seq if t < 1 or args.tokens % t]
    if bad or args.rounds < 1 or any(b < 1 for b in args.blocks):
        parser.error(f"--seq {bad} must divide --tokens {args.tokens}; --rounds and --blocks "
                     "must be positive")

    import functools

    import jax
    import jax.numpy as jnp

    from trainbench.backends.jax import attention

    Hq, Hkv, D = 8, 4, 64
    rows = []
    for T in args.seq:
        B = args.tokens // T
        kq, kk, kv = jax.random.split(jax.random.key(0), 3)
        q = jax.random.normal(kq, (B, T, Hq, D))
        k = jax.random.normal(kk, (B, T, Hkv, D))
        v = jax.random.normal(kv, (B, T, Hkv, D))

        def grad_of(fn):
            return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) ** 2), argnums=(0, 1, 2)))

        fns = {f"trainbench block {b}": grad_of(functools.partial(attention.xla_attention,
                                                                   smallest_block=b))
               for b in args.blocks}
        fns["dot_product_attention"] = grad_of(
            lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
        for fn in fns.values():
            jax.block_until_ready(fn(q, k, v))
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                start = time.perf_counter()
                jax.block_until_ready(fn(q, k, v))
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["dot_product_attention"])
        row = {"seq": T, "batch": B, "times_s": times,
               "median_s": {n: statistics.median(t) for n, t in times.items()},
               "fraction_of_dot_product_attention": {n: statistics.median(t) / base
                                                     for n, t in times.items()}}
        rows.append(row)
        print(f"T={T:5d} B={B:3d}  " + "  ".join(
            f"{n}: {f:.3f}" for n, f in row["fraction_of_dot_product_attention"].items())
            + f"  (dot_product_attention {base * 1e3:.1f} ms)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": " ".join(["python", "scripts/bench_jax_attention.py", *sys.argv[1:]]),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "load_average": os.getloadavg(), "cpus": os.cpu_count(),
            "jax": jax.__version__, "heads": {"Hq": Hq, "Hkv": Hkv, "D": D},
            "dtype": "float32", "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
