"""trainbench's NKI emulator (trainbench.kernels.nki.emulator): each instruction against NumPy,
and each NeuronCore rule it enforces raising NkiRuleError with that rule's name.

The emulator is tested directly, whether or not the official `nki` package is installed.
Instructions compute in float32 and round once into dst, so results are compared with the same
float32 NumPy expression exactly, or within 1e-6 relative where NumPy's summation order differs.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from trainbench.kernels.nki.emulator import NkiRuleError, Tensor, isa as nisa, jit, simulate
from trainbench.kernels.nki.emulator import language as nl
from trainbench.kernels.nki.emulator.core import SHARED_HBM

RNG = np.random.default_rng(0)


def sbuf(a: np.ndarray) -> Tensor:
    t = nl.ndarray(a.shape, a.dtype, buffer=nl.sbuf)
    t.data[...] = a
    return t


def psum(shape: tuple[int, int]) -> Tensor:
    return nl.ndarray(shape, nl.float32, buffer=nl.psum)


def hbm(a: np.ndarray) -> Tensor:
    return Tensor(a.copy(), SHARED_HBM)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def rule(name: str):
    """pytest.raises for an NkiRuleError naming `name`."""
    return pytest.raises(NkiRuleError, match=rf"^\[{name}\]")


# --- tensors and buffers ------------------------------------------------------------------------

def test_ndarray_is_poisoned_and_zeros_is_not():
    assert np.isnan(nl.ndarray((4, 3), nl.float32, buffer=nl.sbuf).data).all()
    assert (nl.ndarray((2, 2), nl.int32, buffer=nl.sbuf).data == np.iinfo(np.int32).min).all()
    assert (nl.zeros((4, 3), nl.float32, buffer=nl.sbuf).data == 0).all()


def test_views_write_through():
    t = nl.zeros((4, 6), nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=t[1:3, 2:5], value=7.0)
    expected = np.zeros((4, 6), np.float32)
    expected[1:3, 2:5] = 7.0
    np.testing.assert_array_equal(t.data, expected)


def test_partition_size_rule():
    nl.ndarray((128, 4), nl.float32, buffer=nl.sbuf)
    with rule("partition-size"):
        nl.ndarray((129, 4), nl.float32, buffer=nl.sbuf)
    nl.ndarray((129, 4), nl.float32, buffer=nl.shared_hbm)  # HBM has no partitions


def test_psum_bank_rule():
    nl.ndarray((128, 512), nl.float32, buffer=nl.psum)
    with rule("psum-bank"):
        nl.ndarray((128, 513), nl.float32, buffer=nl.psum)


def test_tile_rank_rule():
    with rule("tile-rank"):
        nl.ndarray((128,), nl.float32, buffer=nl.sbuf)
    t = nl.zeros((4, 3), nl.float32, buffer=nl.sbuf)
    assert t[0:4, 1].shape == (4, 1)  # an integer index keeps its dimension, as in NKI


def test_buffer_kind_rule():
    with rule("buffer-kind"):
        nl.ndarray((4, 4), nl.float32, buffer="sbuf")


def test_static_access_rule():
    t = nl.zeros((4, 4), nl.float32, buffer=nl.sbuf)
    with rule("static-access"):
        t[0:4:2, 0:4]
    with rule("static-access"):
        t[np.array([0, 1]), 0:4]


# --- DMA ----------------------------------------------------------------------------------------

def test_dma_copy_round_trip_and_cast():
    a = rand(5, 7)
    src = hbm(a)
    tile = nl.ndarray((5, 7), nl.bfloat16, buffer=nl.sbuf)
    nisa.dma_copy(dst=tile, src=src)
    out = Tensor(np.zeros((5, 7), np.float32), SHARED_HBM)
    nisa.dma_copy(dst=out, src=tile)
    np.testing.assert_array_equal(out.data, a.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_dma_memory_rule():
    with rule("dma-memory"):
        nisa.dma_copy(dst=psum((4, 4)), src=hbm(rand(4, 4)))
    with rule("dma-memory"):
        nisa.dma_copy(dst=hbm(rand(4, 4)), src=psum((4, 4)))


def test_dma_shape_rule():
    with rule("shape-mismatch"):
        nisa.dma_copy(dst=sbuf(rand(4, 4)), src=hbm(rand(4, 5)))


# --- Tensor Engine ------------------------------------------------------------------------------

def test_nc_matmul_is_stationary_transpose_times_moving():
    s, m = rand(100, 70), rand(100, 300)
    dst = psum((70, 300))
    nisa.nc_matmul(dst=dst, stationary=sbuf(s), moving=sbuf(m))
    np.testing.assert_allclose(dst.data, s.T @ m, rtol=1e-6, atol=1e-5)
    nisa.nc_matmul(dst=dst, stationary=sbuf(s), moving=sbuf(m), accumulate=True)
    np.testing.assert_allclose(dst.data, 2 * (s.T @ m), rtol=1e-6, atol=1e-5)


def test_nc_matmul_bfloat16_operands_accumulate_in_float32():
    s = rand(128, 8).astype(ml_dtypes.bfloat16)
    m = rand(128, 16).astype(ml_dtypes.bfloat16)
    dst = psum((8, 16))
    nisa.nc_matmul(dst=dst, stationary=sbuf(s), moving=sbuf(m))
    np.testing.assert_allclose(dst.data, s.astype(np.float32).T @ m.astype(np.float32),
                               rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("case, name", [
    ("stationary_in_psum", "matmul-memory"),
    ("dst_in_sbuf", "matmul-memory"),
    ("dst_bfloat16", "psum-dtype"),
    ("contraction_differs", "matmul-contraction"),
    ("stationary_too_wide", "matmul-stationary-size"),
    ("moving_too_wide", "matmul-moving-size"),
    ("dst_wrong_shape", "shape-mismatch"),
    ("operand_in_hbm", "engine-memory"),
])
def test_nc_matmul_rules(case: str, name: str):
    s, m, dst = sbuf(rand(8, 4)), sbuf(rand(8, 6)), psum((4, 6))
    if case == "stationary_in_psum":
        s = psum((8, 4))
    elif case == "dst_in_sbuf":
        dst = sbuf(rand(4, 6))
    elif case == "dst_bfloat16":
        dst = nl.ndarray((4, 6), nl.bfloat16, buffer=nl.psum)
    elif case == "contraction_differs":
        m = sbuf(rand(7, 6))
    elif case == "stationary_too_wide":
        s, dst = sbuf(rand(8, 129)), psum((128, 6))
    elif case == "moving_too_wide":
        m = sbuf(rand(8, 513))
    elif case == "dst_wrong_shape":
        dst = psum((6, 4))
    elif case == "operand_in_hbm":
        m = hbm(rand(8, 6))
    with rule(name):
        nisa.nc_matmul(dst=dst, stationary=s, moving=m)


def test_nc_transpose_and_its_rules():
    a = rand(100, 37)
    dst = psum((37, 100))
    nisa.nc_transpose(dst=dst, data=sbuf(a))
    np.testing.assert_array_equal(dst.data, a.T)
    with rule("transpose-memory"):
        nisa.nc_transpose(dst=sbuf(rand(37, 100)), data=sbuf(a))
    with rule("transpose-size"):
        nisa.nc_transpose(dst=psum((128, 4)), data=sbuf(rand(4, 129)))
    with rule("shape-mismatch"):
        nisa.nc_transpose(dst=psum((100, 37)), data=sbuf(a))
    with rule("transpose-dtype"):
        nisa.nc_transpose(dst=psum((37, 100)), data=sbuf(a.astype(ml_dtypes.bfloat16)))


# --- Scalar / Vector / GpSimd engines -----------------------------------------------------------

def test_activation_with_vector_scale_bias_and_sum():
    x, scale, bias = rand(9, 20), rand(9, 1), rand(9, 1)
    dst, total = sbuf(rand(9, 20)), sbuf(rand(9, 1))
    nisa.activation(dst=dst, op=nl.exp, data=sbuf(x), bias=sbuf(bias), scale=sbuf(scale),
                    reduce_op=nl.add, reduce_res=total, reduce_cmd=nisa.reduce_cmd.reset_reduce)
    expected = np.exp(x * scale + bias)
    np.testing.assert_allclose(dst.data, expected, rtol=1e-6)
    np.testing.assert_allclose(total.data, expected.sum(axis=1, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize("op, ref", [
    (nl.log, np.log), (nl.rsqrt, lambda x: 1 / np.sqrt(x)), (nl.copy, lambda x: x),
    (nl.sigmoid, lambda x: 0.5 * (1 + np.tanh(x / 2))),
])
def test_activation_functions(op, ref):
    x = np.abs(rand(6, 11)) + 0.1
    x[0, 0] = -80.0 if op is nl.sigmoid else x[0, 0]  # sigmoid must not overflow
    dst = sbuf(rand(6, 11))
    nisa.activation(dst=dst, op=op, data=sbuf(x), scale=2.0)
    np.testing.assert_allclose(dst.data, ref(np.float32(2.0) * x), rtol=2e-6)


def test_activation_rules():
    x = sbuf(rand(4, 5))
    with rule("unsupported-op"):
        nisa.activation(dst=sbuf(rand(4, 5)), op=np.tanh, data=x)
    with rule("unsupported-op"):  # an ALU operator, not an activation function
        nisa.activation(dst=sbuf(rand(4, 5)), op=nl.maximum, data=x)
    with rule("activation-reduce"):
        nisa.activation(dst=sbuf(rand(4, 5)), op=nl.exp, data=x, reduce_op=nl.maximum,
                        reduce_res=sbuf(rand(4, 1)))
    with rule("vector-operand"):
        nisa.activation(dst=sbuf(rand(4, 5)), op=nl.exp, data=x, bias=sbuf(rand(4, 2)))
    with rule("engine-memory"):
        nisa.activation(dst=hbm(rand(4, 5)), op=nl.exp, data=x)


@pytest.mark.parametrize("op, ref", [
    (nl.add, np.add), (nl.subtract, np.subtract), (nl.multiply, np.multiply),
    (nl.maximum, np.maximum), (nl.minimum, np.minimum),
])
def test_tensor_tensor(op, ref):
    a, b = rand(7, 13), rand(7, 13)
    dst = sbuf(rand(7, 13))
    nisa.tensor_tensor(dst=dst, data1=sbuf(a), data2=sbuf(b), op=op)
    np.testing.assert_array_equal(dst.data, ref(a, b))


def test_tensor_tensor_rules():
    with rule("shape-mismatch"):
        nisa.tensor_tensor(dst=sbuf(rand(4, 5)), data1=sbuf(rand(4, 5)), data2=sbuf(rand(4, 6)),
                           op=nl.add)
    with rule("engine-memory"):
        nisa.tensor_tensor(dst=sbuf(rand(4, 5)), data1=psum((4, 5)), data2=psum((4, 5)),
                           op=nl.add)
    with rule("engine-memory"):
        nisa.tensor_tensor(dst=sbuf(rand(4, 5)), data1=hbm(rand(4, 5)), data2=sbuf(rand(4, 5)),
                           op=nl.add)


def test_tensor_scalar_orders_and_reverses():
    x, v = rand(5, 9), rand(5, 1)
    dst = sbuf(rand(5, 9))
    nisa.tensor_scalar(dst=dst, data=sbuf(x), op0=nl.subtract, operand0=sbuf(v), reverse0=True,
                       op1=nl.multiply, operand1=3.0)
    np.testing.assert_array_equal(dst.data, (v - x) * np.float32(3.0))
    nisa.tensor_scalar(dst=dst, data=sbuf(x), op0=nl.equal, operand0=sbuf(x[:, 2:3]))
    np.testing.assert_array_equal(dst.data, (x == x[:, 2:3]).astype(np.float32))
    with rule("vector-operand"):
        nisa.tensor_scalar(dst=dst, data=sbuf(x), op0=nl.add, operand0=sbuf(rand(1, 9)))


def test_tensor_reduce_and_its_axis_rule():
    x = rand(6, 40)
    dst = sbuf(rand(6, 1))
    nisa.tensor_reduce(dst=dst, op=nl.maximum, data=sbuf(x), axis=1, keepdims=True)
    np.testing.assert_array_equal(dst.data, x.max(axis=1, keepdims=True))
    nisa.tensor_reduce(dst=dst, op=nl.add, data=sbuf(x), axis=1, keepdims=True, negate=True)
    np.testing.assert_allclose(dst.data, -x.sum(axis=1, keepdims=True), rtol=1e-6)
    with rule("reduce-axis"):
        nisa.tensor_reduce(dst=sbuf(rand(1, 40)), op=nl.add, data=sbuf(x), axis=0,
                           keepdims=True)
    with rule("shape-mismatch"):
        nisa.tensor_reduce(dst=sbuf(rand(6, 2)), op=nl.add, data=sbuf(x), axis=1, keepdims=True)


def test_tensor_copy_rounds_to_bfloat16_and_memset():
    x = rand(4, 8)
    dst = nl.ndarray((4, 8), nl.bfloat16, buffer=nl.sbuf)
    nisa.tensor_copy(dst=dst, src=sbuf(x))
    np.testing.assert_array_equal(dst.data, x.astype(ml_dtypes.bfloat16))
    nisa.memset(dst=dst, value=-2.5)
    assert (dst.data.astype(np.float32) == -2.5).all()


def test_iota_and_affine_select_make_a_causal_mask():
    idx = sbuf(rand(5, 7))
    nisa.iota(dst=idx, pattern=[[1, 7]], offset=10, channel_multiplier=0)
    np.testing.assert_array_equal(idx.data, np.broadcast_to(np.arange(10, 17), (5, 7)))
    s = rand(5, 7)
    dst = sbuf(rand(5, 7))
    # rows are queries 3..7, columns keys 0..6: keep key <= query
    nisa.affine_select(dst=dst, pattern=[[-1, 7]], offset=3, channel_multiplier=1,
                       on_true_tile=sbuf(s), on_false_value=-9.0, cmp_op=nl.greater_equal)
    query, key = np.arange(3, 8)[:, None], np.arange(7)[None, :]
    np.testing.assert_array_equal(dst.data, np.where(key <= query, s, np.float32(-9.0)))
    with rule("affine-pattern"):
        nisa.iota(dst=idx, pattern=[[1, 6]], offset=0)
    with rule("engine-memory"):
        nisa.iota(dst=psum((5, 7)), pattern=[[1, 7]], offset=0)


# --- kernels ------------------------------------------------------------------------------------

@jit
def _double(x):
    out = nl.ndarray(x.shape, x.dtype, buffer=nl.shared_hbm)
    t = nl.ndarray(x.shape, x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x)
    nisa.tensor_scalar(dst=t, data=t, op0=nl.multiply, operand0=2.0)
    nisa.dma_copy(dst=out, src=t)
    return out


@jit
def _forgets_last_row(x):
    out = nl.ndarray(x.shape, x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out[0:x.shape[0] - 1, 0:x.shape[1]],
                  src=_load_rows(x, x.shape[0] - 1))
    return out


def _load_rows(x, rows):
    t = nl.ndarray((rows, x.shape[1]), x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x[0:rows, 0:x.shape[1]])
    return t


@jit
def _returns_sbuf(x):
    return _load_rows(x, x.shape[0])


def test_kernel_takes_and_returns_numpy():
    x = rand(3, 4)
    out = simulate(_double)(x)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, 2 * x)


def test_unwritten_output_stays_poisoned():
    out = simulate(_forgets_last_row)(rand(3, 4))
    assert not np.isnan(out[:2]).any() and np.isnan(out[2]).all()


def test_top_level_outputs_must_be_hbm():
    with rule("top-level-hbm"):
        simulate(_returns_sbuf)(rand(3, 4))


def test_kernels_use_the_emulator_only_without_nki():
    from trainbench.kernels.nki import _api
    try:
        import nki  # noqa: F401
        expected = "nki"
    except ImportError:
        expected = "emulator"
    assert _api.BACKEND == expected


# --- documented semantics: reduce_cmd registers ---------------------------------------------------

def test_reduce_cmd_register_semantics_across_calls():
    """reset zeroes the Scalar Engine's reduce_regs, reduce adds this call's row sums,
    reset_reduce does both, idle leaves them: reduce_res reads the registers in every case."""
    x1, x2 = rand(6, 10), rand(6, 7)
    s1 = np.exp(x1).sum(axis=1, keepdims=True)
    s2 = np.exp(x2).sum(axis=1, keepdims=True)
    res = sbuf(rand(6, 1))

    def act(x, cmd, reduce_op=nl.add):
        nisa.activation(dst=sbuf(x), op=nl.exp, data=sbuf(x), reduce_op=reduce_op,
                        reduce_res=res, reduce_cmd=cmd)
        return res.data.copy()

    @jit
    def _sequence(x):  # one launch: the registers start undefined
        assert np.isnan(act(x1, nisa.reduce_cmd.idle)).all()  # undefined before any reset
        np.testing.assert_allclose(act(x1, nisa.reduce_cmd.reset_reduce), s1, rtol=1e-6)
        np.testing.assert_allclose(act(x2, nisa.reduce_cmd.idle), s1, rtol=1e-6)  # stale: bug 1
        np.testing.assert_allclose(act(x2, nisa.reduce_cmd.reduce), s1 + s2, rtol=1e-6)
        np.testing.assert_array_equal(act(x2, nisa.reduce_cmd.reset, reduce_op=None), 0.0)
        np.testing.assert_allclose(act(x1, nisa.reduce_cmd.reduce), s1, rtol=1e-6)
        dst = sbuf(x2)
        nisa.activation_reduce(dst=dst, op=nl.exp, data=sbuf(x2), reduce_op=nl.add,
                               reduce_res=res)  # = reset_reduce
        np.testing.assert_allclose(res.data, s2, rtol=1e-6)
        return x

    simulate(_sequence)(np.zeros((1, 1), np.float32))


def test_reduce_cmd_rules():
    x = sbuf(rand(4, 5))
    with rule("activation-reduce"):  # accumulating needs reduce_op=nl.add
        nisa.activation(dst=sbuf(rand(4, 5)), op=nl.exp, data=x,
                        reduce_cmd=nisa.reduce_cmd.reset_reduce)
    with rule("bad-value"):  # load_reduce is a reduce_cmd, but not one activation documents
        nisa.activation(dst=sbuf(rand(4, 5)), op=nl.exp, data=x, reduce_op=nl.add,
                        reduce_cmd=nisa.reduce_cmd.load_reduce)


# --- nc_matmul accumulate -------------------------------------------------------------------------

def test_matmul_accumulate_none_overwrites_first_then_accumulates():
    s, m = rand(16, 8), rand(16, 12)
    dst = psum((8, 12))
    nisa.nc_matmul(dst=dst, stationary=sbuf(s), moving=sbuf(m))  # first write: overwrite NaN
    np.testing.assert_allclose(dst.data, s.T @ m, rtol=1e-5, atol=1e-5)
    nisa.nc_matmul(dst=dst, stationary=sbuf(s), moving=sbuf(m))  # written: accumulate
    np.testing.assert_allclose(dst.data, 2 * (s.T @ m), rtol=1e-5, atol=1e-5)
    nisa.nc_matmul(dst=dst, stationary=sbuf(s), moving=sbuf(m), accumulate=False)
    np.testing.assert_allclose(dst.data, s.T @ m, rtol=1e-5, atol=1e-5)
    half = psum((8, 12))  # auto-detection is per PSUM location
    nisa.nc_matmul(dst=half[0:8, 0:6], stationary=sbuf(s), moving=sbuf(m[:, :6]))
    nisa.nc_matmul(dst=half, stationary=sbuf(s), moving=sbuf(m))
    np.testing.assert_allclose(half.data[:, :6], 2 * (s.T @ m)[:, :6], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(half.data[:, 6:], (s.T @ m)[:, 6:], rtol=1e-5, atol=1e-5)


# --- float32 and buffer rules ---------------------------------------------------------------------

def bf16(a: np.ndarray) -> Tensor:
    t = nl.ndarray(a.shape, nl.bfloat16, buffer=nl.sbuf)
    t.data[...] = a.astype(ml_dtypes.bfloat16)
    return t


def test_matmul_float32_operand_needs_a_float32_partner():
    s, m = rand(8, 4), rand(8, 6)
    nisa.nc_matmul(dst=psum((4, 6)), stationary=bf16(s), moving=bf16(m))
    with rule("matmul-fp32-pair"):
        nisa.nc_matmul(dst=psum((4, 6)), stationary=sbuf(s), moving=bf16(m))


def test_scale_and_operand_tiles_must_be_float32():
    x = sbuf(rand(4, 5))
    with rule("fp32-operand"):
        nisa.activation(dst=sbuf(rand(4, 5)), op=nl.exp, data=x, scale=bf16(rand(4, 1)))
    nisa.activation(dst=sbuf(rand(4, 5)), op=nl.exp, data=x, bias=bf16(rand(4, 1)))  # any dtype
    with rule("fp32-operand"):
        nisa.tensor_scalar(dst=sbuf(rand(4, 5)), data=x, op0=nl.add, operand0=bf16(rand(4, 1)))


def test_affine_select_is_sbuf_only():
    s = psum((4, 6))
    s.data[...] = 0
    with rule("engine-memory"):
        nisa.affine_select(dst=sbuf(rand(4, 6)), pattern=[[-1, 6]], channel_multiplier=1,
                           on_true_tile=s, on_false_value=0.0)
    with rule("engine-memory"):
        nisa.affine_select(dst=psum((4, 6)), pattern=[[-1, 6]], channel_multiplier=1,
                           on_true_tile=sbuf(rand(4, 6)), on_false_value=0.0)


def test_memset_value_must_fit_the_dtype():
    nisa.memset(dst=bf16(rand(2, 2)), value=-3.0e38)
    with rule("memset-value"):
        nisa.memset(dst=nl.ndarray((2, 2), nl.int32, buffer=nl.sbuf), value=0.5)
    with rule("memset-value"):
        nisa.memset(dst=bf16(rand(2, 2)), value=1e39)


@jit
def _returns_private_hbm(x):
    out = nl.ndarray(x.shape, x.dtype, buffer=nl.hbm)
    nisa.dma_copy(dst=out, src=x)
    return out


def test_kernel_outputs_must_be_shared_hbm():
    with rule("top-level-hbm"):
        simulate(_returns_private_hbm)(rand(3, 4))


# --- per-target limits ----------------------------------------------------------------------------

def test_trn2_and_trn3_matmul_limits_differ():
    from trainbench.kernels.nki.emulator import target

    s, m = bf16(rand(8, 4)), bf16(rand(8, 1024))
    with rule("matmul-moving-size"):  # trn2 (the default): moving free <= 512
        nisa.nc_matmul(dst=psum((4, 512)), stationary=s, moving=m[0:8, 0:513])
    with rule("psum-dtype"):  # trn2: float32 dst only
        nisa.nc_matmul(dst=nl.ndarray((4, 8), nl.bfloat16, buffer=nl.psum), stationary=s,
                       moving=m[0:8, 0:8])
    with target("trn3"):
        assert nisa.get_nc_version() is nisa.nc_version.gen4
        out = nl.ndarray((4, 8), nl.bfloat16, buffer=nl.psum)
        nisa.nc_matmul(dst=out, stationary=s, moving=m[0:8, 0:8])
        np.testing.assert_allclose(out.data.astype(np.float32),
                                   (s.data.astype(np.float32).T @ m.data[:, :8].astype(
                                       np.float32)).astype(ml_dtypes.bfloat16).astype(np.float32))
        wide = Tensor(np.zeros((4, 1024), np.float32), nl.psum)  # 4 banks: a trn3 accumulation
        nisa.nc_matmul(dst=wide, stationary=s, moving=m)
    assert nisa.get_nc_version() is nisa.nc_version.gen3
    with pytest.raises(ValueError, match="trn9"):
        with target("trn9"):
            pass


# --- relaxations: what NKI allows -----------------------------------------------------------------

def test_integer_index_keeps_a_size_one_dimension():
    x = hbm(rand(2, 5, 3, 4))
    assert x[1, 0:5, 2, 0:4].shape == (1, 5, 1, 4)
    t = nl.ndarray((5, 4), nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x[1, 0:5, 2, 0:4])  # equal element counts suffice for DMA
    np.testing.assert_array_equal(t.data, x.data[1, :, 2, :])


def test_elementwise_needs_equal_partitions_and_elements_per_partition_only():
    a = rand(4, 6)
    dst = sbuf(rand(4, 2, 3))
    nisa.tensor_tensor(dst=dst, data1=sbuf(a), data2=sbuf(a), op=nl.add)
    np.testing.assert_array_equal(dst.data.reshape(4, 6), a + a)
    with rule("shape-mismatch"):
        nisa.tensor_tensor(dst=sbuf(rand(2, 12)), data1=sbuf(a), data2=sbuf(a), op=nl.add)


def test_tensor_reduce_without_keepdims():
    x = rand(6, 40)
    dst = sbuf(rand(6, 1))
    nisa.tensor_reduce(dst=dst, op=nl.add, data=sbuf(x), axis=1)
    np.testing.assert_allclose(dst.data, x.sum(axis=1, keepdims=True), rtol=1e-6)
    with rule("unsupported-op"):  # not a legal reduction op in tbl-aluop
        nisa.tensor_reduce(dst=dst, op=nl.equal, data=sbuf(x), axis=1)


def test_reciprocal():
    x = rand(3, 5) + 3.0
    dst = sbuf(rand(3, 5))
    nisa.reciprocal(dst=dst, data=sbuf(x))
    np.testing.assert_array_equal(dst.data, np.float32(1.0) / x)


# --- SPMD launch grid -----------------------------------------------------------------------------

@jit
def _row_per_program(x):
    out = nl.ndarray(x.shape, x.dtype, buffer=nl.shared_hbm)
    pid = nl.program_id(0)
    t = nl.ndarray((1, x.shape[1]), x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x[pid:pid + 1, 0:x.shape[1]])
    nisa.tensor_scalar(dst=t, data=t, op0=nl.add, operand0=float(nl.num_programs()))
    nisa.dma_copy(dst=out[pid:pid + 1, 0:x.shape[1]], src=t)
    return out


def test_grid_programs_share_their_shared_hbm_outputs():
    x = rand(3, 4)
    out = simulate(_row_per_program[3])(x)
    np.testing.assert_array_equal(out, x + 3)
    partial = simulate(_row_per_program[2])(x)  # row 2 belongs to no program of a grid of 2
    np.testing.assert_array_equal(partial[:2], x[:2] + 2)
    assert np.isnan(partial[2]).all()


def test_a_placeholder_nki_package_is_refused(monkeypatch):
    """PyPI's `nki` is an empty placeholder: importable, but without nki.jit / nki.isa."""
    import sys
    import types

    from trainbench.kernels.nki import _api

    monkeypatch.setitem(sys.modules, "nki", types.ModuleType("nki"))
    found = _api.real_nki()
    assert isinstance(found, str) and "placeholder" in found
