"""Softmax cross-entropy over the vocabulary, forward and backward as NKI kernels.

Rows on the partitions, the vocabulary streamed in 512-column chunks with an online log-sum-exp
(running max m and sum l, rescaled by exp(m_old - m_new) per chunk), so a row's logits never
need to fit in SBUF at once. The target's logit is picked with an iota == target one-hot.
Forward gives per-row loss lse - z[target] and lse (float32, [N, 1]); the mean over rows is the
caller's (one sum). Backward: dlogits = (exp(z - lse) - onehot) * row_scale, row_scale [N, 1]
float32 the upstream gradient of each row's loss (dloss / N for the mean).
logits [N, V] in float32 or bfloat16, targets [N, 1] int32. Row tiles are shared out over the
launch grid's programs.
"""

from __future__ import annotations

from trainbench.kernels.nki._api import nisa, nki, nl
from trainbench.kernels.nki._tiles import (FCHUNK, NEG_BIG, P, cast, extent, load, log_sum_exp,
                                           my_units, n_tiles, new, online_softmax_step)


def _onehot(tgt_f, rows: int, c0: int, cols: int):
    """1.0 where column c0 + x equals the row's target, else 0.0 (float32 (rows, cols))."""
    idx = new((rows, cols))
    nisa.iota(dst=idx, pattern=[[1, cols]], offset=c0, channel_multiplier=0)
    hot = new((rows, cols))
    nisa.tensor_scalar(dst=hot, data=idx, op0=nl.equal, operand0=tgt_f)
    return hot


@nki.jit
def cross_entropy_fwd(logits, targets):
    """(loss_rows, lse), each [N, 1] float32: loss_rows = lse - logits[target]."""
    n_rows, vocab = logits.shape
    loss = nl.ndarray((n_rows, 1), nl.float32, buffer=nl.shared_hbm)
    lse_out = nl.ndarray((n_rows, 1), nl.float32, buffer=nl.shared_hbm)
    for i in my_units(n_tiles(n_rows, P)):
        r0 = i * P
        rows = extent(n_rows, P, i)
        tgt_f = cast(load(targets[r0:r0 + rows, 0:1]), nl.float32)
        m = new((rows, 1))
        nisa.memset(dst=m, value=NEG_BIG)
        l_sum = nl.zeros((rows, 1), nl.float32, buffer=nl.sbuf)
        z_tgt = nl.zeros((rows, 1), nl.float32, buffer=nl.sbuf)
        for j in nl.static_range(n_tiles(vocab, FCHUNK)):
            c0 = j * FCHUNK
            cols = extent(vocab, FCHUNK, j)
            z = load(logits[r0:r0 + rows, c0:c0 + cols])
            online_softmax_step(m, l_sum, z, rows, cols)
            picked = new((rows, cols))
            nisa.tensor_tensor(dst=picked, data1=_onehot(tgt_f, rows, c0, cols), data2=z,
                               op=nl.multiply)
            zc = new((rows, 1))
            nisa.tensor_reduce(dst=zc, op=nl.add, data=picked, axis=1, keepdims=True)
            nisa.tensor_tensor(dst=z_tgt, data1=z_tgt, data2=zc, op=nl.add)
        lse = log_sum_exp(m, l_sum, rows)
        row_loss = new((rows, 1))
        nisa.tensor_tensor(dst=row_loss, data1=lse, data2=z_tgt, op=nl.subtract)
        nisa.dma_copy(dst=loss[r0:r0 + rows, 0:1], src=row_loss)
        nisa.dma_copy(dst=lse_out[r0:r0 + rows, 0:1], src=lse)
    return loss, lse_out


@nki.jit
def cross_entropy_bwd(logits, targets, lse, row_scale):
    """dlogits [N, V] in logits' dtype: (softmax(logits) - onehot(targets)) * row_scale."""
    n_rows, vocab = logits.shape
    dlogits = nl.ndarray((n_rows, vocab), logits.dtype, buffer=nl.shared_hbm)
    for i in my_units(n_tiles(n_rows, P)):
        r0 = i * P
        rows = extent(n_rows, P, i)
        tgt_f = cast(load(targets[r0:r0 + rows, 0:1]), nl.float32)
        neg_lse = new((rows, 1))
        nisa.tensor_scalar(dst=neg_lse, data=load(lse[r0:r0 + rows, 0:1]), op0=nl.multiply,
                           operand0=-1.0)
        scale = load(row_scale[r0:r0 + rows, 0:1])
        for j in nl.static_range(n_tiles(vocab, FCHUNK)):
            c0 = j * FCHUNK
            cols = extent(vocab, FCHUNK, j)
            z = load(logits[r0:r0 + rows, c0:c0 + cols])
            prob = new((rows, cols))
            nisa.activation(dst=prob, op=nl.exp, data=z, bias=neg_lse)
            diff = new((rows, cols))
            nisa.tensor_tensor(dst=diff, data1=prob, data2=_onehot(tgt_f, rows, c0, cols),
                               op=nl.subtract)
            d_t = new((rows, cols), logits.dtype)
            nisa.tensor_scalar(dst=d_t, data=diff, op0=nl.multiply, operand0=scale)
            nisa.dma_copy(dst=dlogits[r0:r0 + rows, c0:c0 + cols], src=d_t)
    return dlogits
