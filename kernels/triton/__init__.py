"""trainbench's Triton training kernels, each a torch custom op ("trainbench::...") with its
autograd formula, behind a plain function that checks its inputs.

Every op has a forward and a backward Triton kernel; all but `rope` (one tensor, kept for
benchmarks) follow the signatures of trainbench.backends.torch.ops, so each can replace the
PyTorch-native op one at a time:

    rmsnorm(x, weight, eps)                      RMSNorm with float32 statistics
    rope(x, cos, sin)                            rotary embedding, Hugging Face half-split layout
    rope_qk(q, k, cos, sin)                      the same for queries and keys in one launch
    swiglu(gate, up)                             silu(gate) * up
    linear_cross_entropy(x, weight, targets)     LM head + mean cross-entropy, chunked over rows
    flash_attention(q, k, v, causal, scale)      FlashAttention-2 with grouped-query heads

On the CPU the kernels run in Triton's interpreter: TRITON_INTERPRET=1 must be set before
`triton` is first imported, because Triton decides at import time whether its own library
functions (tl.sum, tl.max, ...) are compiled or interpreted.
"""

from trainbench.kernels.triton.custom_ops import flash_attention
from trainbench.kernels.triton.cross_entropy import linear_cross_entropy
from trainbench.kernels.triton.rmsnorm import rmsnorm
from trainbench.kernels.triton.rope import rope, rope_qk
from trainbench.kernels.triton.swiglu import swiglu

__all__ = ["flash_attention", "linear_cross_entropy", "rmsnorm", "rope", "rope_qk", "swiglu"]
