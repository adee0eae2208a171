"""Model FLOPs of one training step, counted exactly from the model shape (docs/measurement.md).

Convention: 2 FLOPs per multiply-add, every matmul counted. Per token and layer that is the
q/k/v/o projections, 2·d·(q_dim + 2·kv_dim) + 2·q_dim·d, and the three SwiGLU matrices,
3·2·d·d_ff; per token the LM head, 2·d·vocab (also when tied to the embedding: the matmul is
still done). Per sequence and layer the attention score (QKᵀ) and value (PV) products cost
2·head_dim·n_heads FLOPs each per query-key pair, 4·head_dim·n_heads·pairs, where pairs is
seq² for "full" and seq·(seq+1)/2 for "causal", the exact number of unmasked pairs (the
diagonal included). Backward is 2× forward for every one of those matmuls (the input gradient
and the weight gradient; dQ, dK and dP, dV for attention), so a step is 3× forward
(Kaplan et al. 2020, "Scaling Laws", section 2.1; Narayanan et al. 2021, "Efficient
Large-Scale Language Model Training on GPU Clusters", appendix).

Not counted, being no matmuls: the embedding lookup, RMSNorm, softmax, rotary embeddings, the
SwiGLU gate, residual adds, the loss and the optimizer. Activation recomputation is not counted
either: these are model FLOPs (MFU), not hardware FLOPs (HFU).

`palm_flops` gives the common approximation of PaLM (Chowdhery et al. 2022, appendix B) for
comparison; records keep the breakdown so another convention can be recomputed later.
"""

from __future__ import annotations

from trainbench.errors import ConfigError
from trainbench.model import ModelConfig, count_params

ATTENTION = ("causal", "full")
"""How attention score/value products are counted: unmasked pairs only, or every pair."""


def _check(batch: int, seq_len: int, attention: str | None = None) -> None:
    for name, value in (("batch", batch), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r} must be a positive integer")
    if attention is not None and attention not in ATTENTION:
        raise ConfigError(f"attention={attention!r} is not a FLOP-counting convention; "
                          "choose one of: " + ", ".join(ATTENTION))


def attention_pairs(seq_len: int, attention: str) -> int:
    """Query-key pairs per sequence and head: seq² (full) or seq·(seq+1)/2 (causal)."""
    _check(1, seq_len, attention)
    return seq_len * seq_len if attention == "full" else seq_len * (seq_len + 1) // 2


def flops_breakdown(cfg: ModelConfig, batch: int, seq_len: int,
                    attention: str = "causal") -> dict[str, int]:
    """Forward FLOPs of one step per component, and the training (forward + backward) total."""
    _check(batch, seq_len, attention)
    d, layers, tokens = cfg.d_model, cfg.n_layers, batch * seq_len
    attn_proj = 2 * d * (cfg.q_dim + 2 * cfg.kv_dim) + 2 * cfg.q_dim * d  # per token and layer
    mlp = 3 * 2 * d * cfg.d_ff                                            # per token and layer
    scores = 4 * cfg.head_dim * cfg.n_heads * attention_pairs(seq_len, attention)  # per seq, layer
    forward = {
        "attn_proj": tokens * layers * attn_proj,
        "mlp": tokens * layers * mlp,
        "lm_head": tokens * 2 * d * cfg.vocab,
        "attn_scores": batch * layers * scores,
    }
    return {**forward, "training_total": 3 * sum(forward.values())}


def training_flops(cfg: ModelConfig, batch: int, seq_len: int, attention: str = "causal") -> int:
    """Model FLOPs of one training step (forward + backward) of `batch` sequences of `seq_len`."""
    return flops_breakdown(cfg, batch, seq_len, attention)["training_total"]


def palm_flops(cfg: ModelConfig, batch: int, seq_len: int) -> int:
    """tokens × (6·N + 12·L·H·Q·T) (PaLM, appendix B), attention counted full.

    As torchtitan computes it, N leaves out the input embedding, a lookup and no matmul, when
    the LM head is untied; a tied matrix stays in N, being the head's matmul. L layers, H heads,
    Q head_dim, T seq_len.
    """
    _check(batch, seq_len)
    n = count_params(cfg) - (0 if cfg.tie_embeddings else cfg.vocab * cfg.d_model)
    per_token = 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    return batch * seq_len * per_token


def convention(attention: str) -> str:
    """One line saying how training_flops counted, for the record."""
    _check(1, 1, attention)
    pairs = ("causal attention counted over the seq*(seq+1)/2 unmasked query-key pairs"
             if attention == "causal" else "attention counted over all seq*seq query-key pairs")
    return ("model FLOPs: 2 per multiply-add, every matmul forward and backward (backward = 2x "
            f"forward), {pairs}; embedding, norms, softmax, rope and elementwise ops not "
            "counted; no recomputation")
