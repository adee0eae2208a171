"""Causal flash attention with grouped-query heads, forward and backward as NKI kernels
(FlashAttention-2: Dao, 2023), for head_dim <= 128.

Layout: q [B, T, Hq, D], k and v [B, T, Hkv, D] in HBM, as the model holds them; query head h
reads kv head h // (Hq // Hkv). Per (batch, head), query tiles of 128 rows sit on the
partitions. Scores S = Q K^T come from nc_matmul(stationary=Q^T [D, rows], moving=K^T
[D, cols]) into a float32 PSUM tile; the diagonal tile is masked with affine_select
(row - col >= 0); the online softmax keeps the running max m and sum l per row in float32; P is
cast to v's dtype and transposed on the Tensor Engine so that P V = nc_matmul(P^T, V). The
output O = acc * (1 / l) (nisa.reciprocal: there is no divide instruction) and
lse = m + log(l) (float32, [B, Hq, T, 1]) are stored.

Backward recomputes P = exp(S - lse) per tile. Pass 1, per key tile: dV += P^T dO and
dK += dS^T Q over every query head of the group and every query tile at or below the diagonal,
with dS = P * (dO V^T - delta) * scale and delta = rowsum(dO * O). Pass 2, per query tile:
dQ += dS K. Every sum over tiles accumulates in SBUF float32; each PSUM tile holds one product.
Work is shared out over the launch grid's programs by (batch, head) in the forward and by
(batch, kv head) in the backward, so no two programs write the same rows.
"""

from __future__ import annotations

from trainbench.kernels.nki._api import nisa, nki, nl
from trainbench.kernels.nki._tiles import (NEG_BIG, P, cast, extent, load, log_sum_exp, my_units,
                                           n_tiles, new, online_softmax_step, transpose)


def _check(q, k):
    """(batch, seq, query heads, head dim, group size), asserting the kernel's limits."""
    batch, seq, n_q, dim = q.shape
    n_kv = k.shape[2]
    assert dim <= P, "flash attention keeps one head's features on the partitions: head_dim <= 128"
    assert n_q % n_kv == 0, "flash attention: query heads must be a multiple of kv heads"
    return batch, seq, n_q, dim, n_q // n_kv


def _scores(q_t, k_t, r0: int, c0: int, scale: float, masked: bool):
    """scale * Q K^T for a (rows, cols) tile in float32 SBUF, -big above the diagonal if masked.

    q_t is Q^T [D, rows], k_t is K^T [D, cols], both SBUF."""
    rows, cols = q_t.shape[1], k_t.shape[1]
    ps = nl.ndarray((rows, cols), nl.float32, buffer=nl.psum)
    nisa.nc_matmul(dst=ps, stationary=q_t, moving=k_t)
    s = new((rows, cols))
    nisa.tensor_scalar(dst=s, data=ps, op0=nl.multiply, operand0=scale)
    if masked:  # keep key c0 + x for query r0 + p iff (r0 + p) - (c0 + x) >= 0
        nisa.affine_select(dst=s, pattern=[[-1, cols]], offset=r0 - c0, channel_multiplier=1,
                           on_true_tile=s, on_false_value=NEG_BIG, cmp_op=nl.greater_equal)
    return s


def _n_key_tiles(seq: int, r0: int, rows: int, causal: bool) -> int:
    """Key tiles 0.. a query tile [r0, r0 + rows) attends to: up to its diagonal when causal."""
    return n_tiles(r0 + rows, P) if causal else n_tiles(seq, P)


def _acc_add(acc, ps):
    """acc += ps (an SBUF float32 accumulator and a PSUM product of the same shape)."""
    nisa.tensor_tensor(dst=acc, data1=acc, data2=ps, op=nl.add)


@nki.jit
def flash_attention_fwd(q, k, v, scale: float, causal: bool):
    """(out [B, T, Hq, D] in q's dtype, lse [B, Hq, T, 1] float32)."""
    batch, seq, n_q, dim, group = _check(q, k)
    out = nl.ndarray((batch, seq, n_q, dim), q.dtype, buffer=nl.shared_hbm)
    lse = nl.ndarray((batch, n_q, seq, 1), nl.float32, buffer=nl.shared_hbm)
    for u in my_units(batch * n_q):
        b = u // n_q
        h = u % n_q
        hk = h // group
        for i in nl.static_range(n_tiles(seq, P)):
            r0 = i * P
            rows = extent(seq, P, i)
            q_t = transpose(load(q[b, r0:r0 + rows, h, 0:dim], (rows, dim)))  # (D, rows)
            m = new((rows, 1))
            nisa.memset(dst=m, value=NEG_BIG)
            l_sum = nl.zeros((rows, 1), nl.float32, buffer=nl.sbuf)
            acc = nl.zeros((rows, dim), nl.float32, buffer=nl.sbuf)
            for j in nl.static_range(_n_key_tiles(seq, r0, rows, causal)):
                c0 = j * P
                cols = extent(seq, P, j)
                k_t = transpose(load(k[b, c0:c0 + cols, hk, 0:dim], (cols, dim)))  # (D, cols)
                v_t = load(v[b, c0:c0 + cols, hk, 0:dim], (cols, dim))
                s = _scores(q_t, k_t, r0, c0, scale, causal and c0 + cols > r0)
                p, alpha = online_softmax_step(m, l_sum, s, rows, cols)
                p_t = transpose(cast(p, v.dtype))  # (cols, rows)
                pv = nl.ndarray((rows, dim), nl.float32, buffer=nl.psum)
                nisa.nc_matmul(dst=pv, stationary=p_t, moving=v_t)
                nisa.tensor_scalar(dst=acc, data=acc, op0=nl.multiply, operand0=alpha)
                _acc_add(acc, pv)
            inv_l = new((rows, 1))
            nisa.reciprocal(dst=inv_l, data=l_sum)
            o_t = new((rows, dim), q.dtype)
            nisa.tensor_scalar(dst=o_t, data=acc, op0=nl.multiply, operand0=inv_l)
            nisa.dma_copy(dst=out[b, r0:r0 + rows, h, 0:dim], src=o_t)
            nisa.dma_copy(dst=lse[b, h, r0:r0 + rows, 0:1], src=log_sum_exp(m, l_sum, rows))
    return out, lse


def _probs_and_dscores(q_t, k_t, v_t, do_t, neg_lse, delta, r0, c0, scale, masked, dtype):
    """P = exp(S - lse) and dS = P * (dO V^T - delta) * scale for one tile, both in `dtype`.

    q_t [D, rows], k_t [D, cols], v_t V^T [D, cols], do_t dO^T [D, rows]; SBUF."""
    rows, cols = q_t.shape[1], k_t.shape[1]
    s = _scores(q_t, k_t, r0, c0, scale, masked)
    p = new((rows, cols))
    nisa.activation(dst=p, op=nl.exp, data=s, bias=neg_lse)
    dp = nl.ndarray((rows, cols), nl.float32, buffer=nl.psum)
    nisa.nc_matmul(dst=dp, stationary=do_t, moving=v_t)
    ds = new((rows, cols))
    nisa.tensor_scalar(dst=ds, data=dp, op0=nl.subtract, operand0=delta, op1=nl.multiply,
                       operand1=scale)
    nisa.tensor_tensor(dst=ds, data1=ds, data2=p, op=nl.multiply)
    return cast(p, dtype), cast(ds, dtype)


def _query_side(q, do, lse, delta_hbm, b, h, r0, rows, dim):
    """Q^T, dO^T, Q, dO, -lse and delta for one query tile."""
    q_rows = load(q[b, r0:r0 + rows, h, 0:dim], (rows, dim))
    do_rows = load(do[b, r0:r0 + rows, h, 0:dim], (rows, dim))
    neg_lse = new((rows, 1))
    nisa.tensor_scalar(dst=neg_lse, data=load(lse[b, h, r0:r0 + rows, 0:1], (rows, 1)),
                       op0=nl.multiply, operand0=-1.0)
    delta = load(delta_hbm[b, h, r0:r0 + rows, 0:1], (rows, 1))
    return transpose(q_rows), transpose(do_rows), q_rows, do_rows, neg_lse, delta


def _delta(do, o, delta_hbm, b, h, seq, dim):
    """delta = rowsum(dO * O) for query head h of batch b, float32, into delta_hbm."""
    for i in nl.static_range(n_tiles(seq, P)):
        r0 = i * P
        rows = extent(seq, P, i)
        prod = new((rows, dim))
        nisa.tensor_tensor(dst=prod, data1=load(do[b, r0:r0 + rows, h, 0:dim], (rows, dim)),
                           data2=load(o[b, r0:r0 + rows, h, 0:dim], (rows, dim)),
                           op=nl.multiply)
        d_t = new((rows, 1))
        nisa.tensor_reduce(dst=d_t, op=nl.add, data=prod, axis=1, keepdims=True)
        nisa.dma_copy(dst=delta_hbm[b, h, r0:r0 + rows, 0:1], src=d_t)


@nki.jit
def flash_attention_bwd(q, k, v, o, do, lse, scale: float, causal: bool):
    """(dq, dk, dv) in q's dtype, shaped like q, k, v."""
    batch, seq, n_q, dim, group = _check(q, k)
    n_kv = k.shape[2]
    dq = nl.ndarray(q.shape, q.dtype, buffer=nl.shared_hbm)
    dk = nl.ndarray(k.shape, q.dtype, buffer=nl.shared_hbm)
    dv = nl.ndarray(v.shape, q.dtype, buffer=nl.shared_hbm)
    delta_hbm = nl.ndarray((batch, n_q, seq, 1), nl.float32, buffer=nl.hbm)
    n_seq_tiles = n_tiles(seq, P)
    for u in my_units(batch * n_kv):
        b = u // n_kv
        hk = u % n_kv
        for g in nl.static_range(group):
            _delta(do, o, delta_hbm, b, hk * group + g, seq, dim)
        for j in nl.static_range(n_seq_tiles):  # pass 1: dK, dV per key tile
            c0 = j * P
            cols = extent(seq, P, j)
            k_rows = load(k[b, c0:c0 + cols, hk, 0:dim], (cols, dim))
            k_t = transpose(k_rows)
            v_t = transpose(load(v[b, c0:c0 + cols, hk, 0:dim], (cols, dim)))
            dk_acc = nl.zeros((cols, dim), nl.float32, buffer=nl.sbuf)
            dv_acc = nl.zeros((cols, dim), nl.float32, buffer=nl.sbuf)
            first = j if causal else 0  # query tiles above the diagonal see no key of tile j
            for g in nl.static_range(group):
                h = hk * group + g
                for i in nl.static_range(first, n_seq_tiles):
                    r0 = i * P
                    rows = extent(seq, P, i)
                    q_t, do_t, q_rows, do_rows, neg_lse, delta = _query_side(
                        q, do, lse, delta_hbm, b, h, r0, rows, dim)
                    p, ds = _probs_and_dscores(q_t, k_t, v_t, do_t, neg_lse, delta, r0, c0,
                                               scale, causal and c0 + cols > r0, q.dtype)
                    dv_ps = nl.ndarray((cols, dim), nl.float32, buffer=nl.psum)
                    nisa.nc_matmul(dst=dv_ps, stationary=p, moving=do_rows)  # P^T dO
                    _acc_add(dv_acc, dv_ps)
                    dk_ps = nl.ndarray((cols, dim), nl.float32, buffer=nl.psum)
                    nisa.nc_matmul(dst=dk_ps, stationary=ds, moving=q_rows)  # dS^T Q
                    _acc_add(dk_acc, dk_ps)
            nisa.dma_copy(dst=dk[b, c0:c0 + cols, hk, 0:dim], src=cast(dk_acc, q.dtype))
            nisa.dma_copy(dst=dv[b, c0:c0 + cols, hk, 0:dim], src=cast(dv_acc, q.dtype))
        for g in nl.static_range(group):  # pass 2: dQ per query tile
            h = hk * group + g
            for i in nl.static_range(n_seq_tiles):
                r0 = i * P
                rows = extent(seq, P, i)
                q_t, do_t, _, _, neg_lse, delta = _query_side(q, do, lse, delta_hbm, b, h, r0,
                                                              rows, dim)
                dq_acc = nl.zeros((rows, dim), nl.float32, buffer=nl.sbuf)
                for j in nl.static_range(_n_key_tiles(seq, r0, rows, causal)):
                    c0 = j * P
                    cols = extent(seq, P, j)
                    k_rows = load(k[b, c0:c0 + cols, hk, 0:dim], (cols, dim))
                    k_t = transpose(k_rows)
                    v_t = transpose(load(v[b, c0:c0 + cols, hk, 0:dim], (cols, dim)))
                    _, ds = _probs_and_dscores(q_t, k_t, v_t, do_t, neg_lse, delta, r0, c0,
                                               scale, causal and c0 + cols > r0, q.dtype)
                    dq_ps = nl.ndarray((rows, dim), nl.float32, buffer=nl.psum)
                    nisa.nc_matmul(dst=dq_ps, stationary=transpose(ds), moving=k_rows)
                    _acc_add(dq_acc, dq_ps)
                nisa.dma_copy(dst=dq[b, r0:r0 + rows, h, 0:dim], src=cast(dq_acc, q.dtype))
    return dq, dk, dv
