"""Each trainbench backend against the training loop a user would otherwise write.

    python scripts/bench_peers.py                                   # CPU, model=small, 2048 tok/step
    python scripts/bench_peers.py --seq 256 1024 --rounds 5 --json peers.json
    python scripts/bench_peers.py --device cuda --precision bf16 --model llama32_1b --tokens 8192

Pairs (trainbench side / peer), each peer an independent loop of the same shape, AdamW and
global-norm clipping, on the same token batches:
  - torch            / Hugging Face LlamaForCausalLM, eager (its default sdpa attention)
  - torch            / a minimal hand-written PyTorch Llama (F.scaled_dot_product_attention)
  - torch compiled   / LlamaForCausalLM under torch.compile   (backend.compile=true: per block)
  - jax              / a minimal JAX + Optax Llama (jit, donated buffers,
                       jax.nn.dot_product_attention(is_causal=True))
  - jax attention=jax / the same minimal JAX loop: trainbench with the peer's own attention
                       call, so the two differ in the harness alone (model code, schedule,
                       sharding setup), not in the attention

Protocol: every contestant is built and warmed up (compilation included) first; then `--rounds`
rounds, each timing `--steps` steps of every contestant in turn (interleaved, so a change in the
machine's load hits both sides of a pair alike). A round's figures are its mean wall-clock
step time and the process's CPU time per step (all threads; other processes inflate it far less
on a shared machine). The speed of a pair is the median over rounds of peer time / trainbench
time (> 1: trainbench is faster), for each of the two clocks. The peers keep a constant learning rate and decay every parameter (what a short user
loop does); trainbench runs its warm-up + cosine schedule and decays matrices only: element-wise
work that does not show at these sizes. The JSON records the machine's load average and cores,
because on a shared machine only the paired ratios mean much.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

PRECISIONS = ("fp32", "bf16")
DEVICES = ("cpu", "cuda")


@dataclass
class Contestant:
    """One training loop: `step(i, tokens)` dispatches step i, `sync()` waits for the device."""

    name: str
    step: Callable[[int, np.ndarray], Any]
    sync: Callable[[], None]
    round_step_s: list[float] = field(default_factory=list)
    round_cpu_s: list[float] = field(default_factory=list)
    """The process's CPU seconds (all threads) per step of each round."""


# --- trainbench's side: the backends themselves -------------------------------------------------

def trainbench_loop(backend_name: str, overrides: dict[str, Any], args: argparse.Namespace,
                    cfg: Any, total_steps: int) -> Contestant:
    """A trainbench backend from the registry, set up on the canonical seed-0 weights."""
    from trainbench import model, registry
    from trainbench.config import PRECISIONS as TB_PRECISIONS
    from trainbench.config import OptimConfig

    cls = registry.get(backend_name)
    backend_cfg = cls.config_class(name=backend_name, **overrides)
    backend = cls(backend_cfg, cfg, TB_PRECISIONS[args.precision], OptimConfig(), total_steps)
    backend.setup(model.init_params(cfg, seed=0))
    label = (backend_name + (" compiled" if overrides.get("compile") else "")
             + (f" attention={overrides['attention']}" if "attention" in overrides else ""))
    return Contestant(f"trainbench {label}", backend.train_step, backend.synchronize)


# --- PyTorch peers ------------------------------------------------------------------------------

def _torch_optimizer(module: Any) -> Any:
    import torch

    from trainbench.config import OptimConfig

    o = OptimConfig()
    return torch.optim.AdamW(module.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps,
                             weight_decay=o.weight_decay)


def torch_loop(name: str, module: Any, forward: Callable[[Any, Any], Any], device: str,
               precision: str) -> Contestant:
    """A plain PyTorch loop: forward to the loss, backward, clip_grad_norm_, AdamW step."""
    import torch

    from trainbench.config import OptimConfig

    clip = OptimConfig().grad_clip
    opt = _torch_optimizer(module)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step(_: int, tokens: np.ndarray) -> Any:
        ids = torch.from_numpy(tokens).to(device, torch.long)
        with autocast:
            loss = forward(module, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    return Contestant(name, step, sync)


def hf_llama(cfg: Any, device: str) -> Any:
    """transformers' LlamaForCausalLM in trainbench's model shape, randomly initialised."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(vocab_size=cfg.vocab, hidden_size=cfg.d_model,
                         intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers,
                         num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                         head_dim=cfg.head_dim, rope_theta=cfg.rope_theta,
                         rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
                         max_position_embeddings=cfg.max_seq_len, attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForCausalLM(hf_cfg).to(device)


def hf_forward(model: Any, ids: Any) -> Any:
    return model(input_ids=ids, labels=ids).loss  # HF shifts the labels itself


class MiniLlama:
    """The Llama a user writes in an afternoon: ~40 lines of plain PyTorch (built lazily so the
    script's pure parts import without torch)."""

    @staticmethod
    def build(cfg: Any, device: str) -> Any:
        import torch
        import torch.nn.functional as F
        from torch import nn

        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                d, hq, hkv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
                self.attn_norm, self.mlp_norm = nn.RMSNorm(d, cfg.norm_eps), nn.RMSNorm(d, cfg.norm_eps)
                self.qkv = nn.Linear(d, (hq + 2 * hkv) * hd, bias=False)
                self.wo = nn.Linear(hq * hd, d, bias=False)
                self.gate_up = nn.Linear(d, 2 * cfg.d_ff, bias=False)
                self.down = nn.Linear(cfg.d_ff, d, bias=False)

            def forward(self, x: Any, cos: Any, sin: Any) -> Any:
                B, T, _ = x.shape
                hq, hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
                q, k, v = self.qkv(self.attn_norm(x)).split([hq * hd, hkv * hd, hkv * hd], -1)
                q, k, v = (t.view(B, T, -1, hd).transpose(1, 2) for t in (q, k, v))
                q, k = rope(q, cos, sin), rope(k, cos, sin)
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                x = x + self.wo(o.transpose(1, 2).reshape(B, T, hq * hd))
                gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, -1)
                return x + self.down(F.silu(gate) * up)

        def rope(x: Any, cos: Any, sin: Any) -> Any:
            x1, x2 = x.chunk(2, -1)
            return x * cos + torch.cat([-x2, x1], -1) * sin

        class Model(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
                self.blocks = nn.ModuleList(Block() for _ in range(cfg.n_layers))
                self.norm = nn.RMSNorm(cfg.d_model, cfg.norm_eps)
                inv = cfg.rope_theta ** (-torch.arange(0, cfg.head_dim, 2) / cfg.head_dim)
                self.register_buffer("inv_freq", inv, persistent=False)

            def forward(self, ids: Any) -> Any:
                angles = torch.outer(torch.arange(ids.shape[1], device=ids.device), self.inv_freq)
                angles = torch.cat([angles, angles], -1)
                cos, sin = angles.cos(), angles.sin()
                x = self.embed(ids)
                for block in self.blocks:
                    x = block(x, cos, sin)
                logits = self.norm(x) @ self.embed.weight.T  # tied head
                return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())

        torch.manual_seed(0)
        return Model().to(device)


# --- the JAX peer -------------------------------------------------------------------------------

def mini_jax_loop(cfg: Any, precision: str) -> Contestant:
    """The JAX loop a user writes: a pytree of weights, jax.nn.dot_product_attention, Optax
    clip + AdamW, one jitted step with donated parameters and optimizer state."""
    import jax
    import jax.numpy as jnp
    import optax

    from trainbench.config import OptimConfig

    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    d, hq, hkv, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
    keys = iter(jax.random.split(jax.random.key(0), 8 * cfg.n_layers + 2))

    def w(*shape: int) -> jax.Array:
        return 0.02 * jax.random.normal(next(keys), shape, jnp.float32)

    params = {"embed": w(cfg.vocab, d), "norm": jnp.ones(d),
              "layers": [{"attn_norm": jnp.ones(d), "mlp_norm": jnp.ones(d),
                          "wq": w(d, hq * hd), "wk": w(d, hkv * hd), "wv": w(d, hkv * hd),
                          "wo": w(hq * hd, d), "gate": w(d, f), "up": w(d, f), "down": w(f, d)}
                         for _ in range(cfg.n_layers)]}

    def rms(x: jax.Array, g: jax.Array) -> jax.Array:
        return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + cfg.norm_eps) * g

    def mm(x: jax.Array, m: jax.Array) -> jax.Array:
        return (x.astype(dtype) @ m.astype(dtype)).astype(jnp.float32)

    def rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        x1, x2 = jnp.split(x, 2, -1)
        return x * cos + jnp.concatenate([-x2, x1], -1) * sin

    def loss_fn(p: Any, ids: jax.Array) -> jax.Array:
        B, T = ids.shape
        inv = cfg.rope_theta ** (-jnp.arange(0, hd, 2) / hd)
        angles = jnp.outer(jnp.arange(T), inv)
        angles = jnp.concatenate([angles, angles], -1)[:, None, :]  # (T, 1, hd)
        cos, sin = jnp.cos(angles), jnp.sin(angles)
        x = p["embed"][ids]
        for layer in p["layers"]:
            h = rms(x, layer["attn_norm"])
            q = rope(mm(h, layer["wq"]).reshape(B, T, hq, hd), cos, sin)
            k = rope(mm(h, layer["wk"]).reshape(B, T, hkv, hd), cos, sin)
            v = mm(h, layer["wv"]).reshape(B, T, hkv, hd)
            o = jax.nn.dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype),
                                             is_causal=True)
            x = x + mm(o.reshape(B, T, hq * hd), layer["wo"])
            h = rms(x, layer["mlp_norm"])
            x = x + mm(jax.nn.silu(mm(h, layer["gate"])) * mm(h, layer["up"]), layer["down"])
        logits = mm(rms(x, p["norm"]), p["embed"].T)[:, :-1]
        labels = ids[:, 1:]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    o = OptimConfig()
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip),
                     optax.adamw(o.lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))

    def update(p: Any, s: Any, ids: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(p, ids)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    update = jax.jit(update, donate_argnums=(0, 1))
    state = {"params": params, "opt": tx.init(params), "loss": None}

    def step(_: int, tokens: np.ndarray) -> Any:
        state["params"], state["opt"], state["loss"] = update(state["params"], state["opt"],
                                                              jnp.asarray(tokens))
        return state["loss"]

    def sync() -> None:
        jax.block_until_ready(state["params"])

    return Contestant("minimal JAX + Optax", step, sync)


# --- what is compared ---------------------------------------------------------------------------

PAIRS = (("trainbench torch", "HF Llama eager"),
         ("trainbench torch", "minimal PyTorch"),
         ("trainbench torch compiled", "HF Llama torch.compile"),
         ("trainbench jax", "minimal JAX + Optax"),
         ("trainbench jax attention=jax", "minimal JAX + Optax"))
"""(trainbench side, peer) pairs, each compared by its paired ratios."""

GROUPS = {"torch": ("trainbench torch", "HF Llama eager", "minimal PyTorch"),
          "compile": ("trainbench torch compiled", "HF Llama torch.compile"),
          "jax": ("trainbench jax", "trainbench jax attention=jax", "minimal JAX + Optax")}
"""--only choices: which contestants a run builds."""


def build(name: str, args: argparse.Namespace, cfg: Any, total_steps: int) -> Contestant:
    """The contestant called `name` (one of the names in GROUPS)."""
    import torch

    builders: dict[str, Callable[[], Contestant]] = {
        "trainbench torch": lambda: trainbench_loop(
            "torch", {"device": args.device}, args, cfg, total_steps),
        "trainbench torch compiled": lambda: trainbench_loop(
            "torch", {"device": args.device, "compile": True}, args, cfg, total_steps),
        "trainbench jax": lambda: trainbench_loop("jax", {}, args, cfg, total_steps),
        # the peer's own attention: what is left between the two is the harness alone
        "trainbench jax attention=jax": lambda: trainbench_loop(
            "jax", {"attention": "jax"}, args, cfg, total_steps),
        "HF Llama eager": lambda: torch_loop(
            "HF Llama eager", hf_llama(cfg, args.device), hf_forward, args.device,
            args.precision),
        "HF Llama torch.compile": lambda: torch_loop(
            "HF Llama torch.compile", torch.compile(hf_llama(cfg, args.device)), hf_forward,
            args.device, args.precision),
        "minimal PyTorch": lambda: torch_loop(
            "minimal PyTorch", MiniLlama.build(cfg, args.device), lambda m, ids: m(ids),
            args.device, args.precision),
        "minimal JAX + Optax": lambda: mini_jax_loop(cfg, args.precision),
    }
    return builders[name]()


def batch_for(tokens: int, seq: int) -> int:
    """Sequences per step so that every length trains `tokens` tokens a step."""
    if seq < 2 or tokens % seq:
        raise SystemExit(f"bench_peers.py: --seq {seq} must be >= 2 and divide "
                         f"--tokens {tokens}")
    return tokens // seq


def paired_ratios(side_s: list[float], peer_s: list[float]) -> dict[str, Any]:
    """Speed of the trainbench side relative to its peer, round by round (peer time / side
    time, > 1: trainbench faster), with its median and range over rounds."""
    ratios = [p / s for s, p in zip(side_s, peer_s, strict=True)]
    return {"per_round": ratios, "median": statistics.median(ratios),
            "min": min(ratios), "max": max(ratios)}


def time_rounds(contestants: list[Contestant], batches: list[np.ndarray], warmup: int,
                rounds: int, steps: int) -> None:
    """Warm every contestant up, then time `rounds` interleaved rounds of `steps` steps each;
    a round's figures are its mean wall-clock seconds per step (round_step_s) and the process's
    CPU seconds per step (round_cpu_s), which other processes on a shared machine inflate far
    less than wall-clock time."""
    step_no = {c.name: 0 for c in contestants}

    def run(c: Contestant, n: int) -> None:
        for _ in range(n):
            i = step_no[c.name]
            c.step(i, batches[i % len(batches)])
            step_no[c.name] += 1
        c.sync()

    for c in contestants:
        run(c, warmup)
    for _ in range(rounds):
        for c in contestants:
            start, cpu_start = time.perf_counter(), time.process_time()
            run(c, steps)
            c.round_step_s.append((time.perf_counter() - start) / steps)
            c.round_cpu_s.append((time.process_time() - cpu_start) / steps)


def summarize(seq: int, batch: int, contestants: list[Contestant]) -> dict[str, Any]:
    """One sequence length's result: per contestant medians, per pair the paired ratios."""
    by_name = {c.name: c for c in contestants}
    tokens = seq * batch
    return {
        "seq": seq, "batch": batch,
        "contestants": {c.name: {"round_step_s": c.round_step_s,
                                 "median_step_s": statistics.median(c.round_step_s),
                                 "tokens_per_s": tokens / statistics.median(c.round_step_s),
                                 "round_cpu_s": c.round_cpu_s,
                                 "median_cpu_s": statistics.median(c.round_cpu_s)}
                        for c in contestants},
        "pairs": [{"trainbench": side, "peer": peer,
                   "speed": paired_ratios(by_name[side].round_step_s,
                                          by_name[peer].round_step_s),
                   "cpu_speed": paired_ratios(by_name[side].round_cpu_s,
                                              by_name[peer].round_cpu_s)}
                  for side, peer in PAIRS if side in by_name and peer in by_name],
    }


def print_table(result: dict[str, Any], title: str) -> None:
    """The pairs of every length as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("seq (batch)", "trainbench", "s/step", "peer", "s/step",
                   "speed vs peer (median)", "range over rounds", "CPU-time speed", "range"):
        table.add_column(column)
    for length in result["lengths"]:
        c = length["contestants"]
        for pair in length["pairs"]:
            s, cpu = pair["speed"], pair["cpu_speed"]
            table.add_row(f"{length['seq']} ({length['batch']})", pair["trainbench"],
                          f"{c[pair['trainbench']]['median_step_s']:.3f}", pair["peer"],
                          f"{c[pair['peer']]['median_step_s']:.3f}", f"{s['median']:.3f}x",
                          f"{s['min']:.3f}-{s['max']:.3f}", f"{cpu['median']:.3f}x",
                          f"{cpu['min']:.3f}-{cpu['max']:.3f}")
    Console(width=160).print(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", help="trainbench model preset")
    parser.add_argument("--seq", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per step at every length")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument("--only", nargs="+", default=list(GROUPS), choices=list(GROUPS),
                        help="contestant groups to build (compile is slow to build on the CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compiles first)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--json", default=None, help="write the result to this JSON file")
    args = parser.parse_args(argv)
    for name in ("tokens", "warmup", "rounds", "steps"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name} {getattr(args, name)} must be "
                         + ("non-negative" if name == "warmup" else "positive"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from trainbench import env, model, registry

    cfg = model.preset(args.model)
    batches_of = {seq: batch_for(args.tokens, seq) for seq in args.seq}
    too_long = [s for s in args.seq if s > cfg.max_seq_len]
    if too_long:
        raise SystemExit(f"bench_peers.py: --seq {too_long} exceeds model {args.model}'s "
                         f"max_seq_len={cfg.max_seq_len}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("bench_peers.py --device cuda needs a CUDA GPU (torch.cuda.is_available() is "
                  "False)", file=sys.stderr)
            return 1
    else:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    names = [n for group in args.only for n in GROUPS[group]]
    versions: dict[str, str] = {}
    for backend in {"torch"} | ({"jax"} if "jax" in args.only else set()):
        versions.update(registry.get(backend).versions())
    result: dict[str, Any] = {
        "schema": "trainbench.bench_peers/1",
        "command": "python scripts/bench_peers.py " + " ".join(sys.argv[1:] if argv is None
                                                                else argv),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "model_shape": dataclasses.asdict(cfg),
        "cpu_count": os.cpu_count(),
        "load_avg_start": list(os.getloadavg()),
        "environment": env.fingerprint(versions),
        "protocol": __doc__.split("Protocol: ")[1].strip(),
        "lengths": [],
    }
    rng = np.random.default_rng(0)
    total = args.warmup + args.rounds * args.steps
    for seq, batch in batches_of.items():
        batches = [rng.integers(0, cfg.vocab, (batch, seq), dtype=np.int32) for _ in range(4)]
        contestants = []
        for name in names:
            start = time.perf_counter()
            contestants.append(build(name, args, cfg, total))
            print(f"seq {seq}: built {name} in {time.perf_counter() - start:.1f} s",
                  file=sys.stderr, flush=True)
        time_rounds(contestants, batches, args.warmup, args.rounds, args.steps)
        result["lengths"].append({**summarize(seq, batch, contestants),
                                  "load_avg_after": list(os.getloadavg())})
        print(f"seq {seq}: done", file=sys.stderr, flush=True)
    result["load_avg_end"] = list(os.getloadavg())
    print_table(result, f"trainbench vs peers: {args.model}, {args.precision}, {args.device}, "
                        f"{args.tokens} tokens/step, median of {args.rounds} interleaved rounds")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
