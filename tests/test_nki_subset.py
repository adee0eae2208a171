"""The NKI Python-subset check (trainbench.kernels.nki.subset): every kernel of trainbench passes
it, each rule rejects a small kernel that breaks it (in the kernel or in a helper it calls), and
the emulator runs the check before it runs a kernel."""

from __future__ import annotations

import numpy as np
import pytest

from trainbench.kernels.nki import attention, cross_entropy, rmsnorm, subset, swiglu
from trainbench.kernels.nki.emulator import isa as nisa, jit, language as nl
from trainbench.kernels.nki.subset import NkiSubsetError

KERNELS = [rmsnorm.rmsnorm_fwd, rmsnorm.rmsnorm_bwd, swiglu.swiglu_fwd, swiglu.swiglu_bwd,
           cross_entropy.cross_entropy_fwd, cross_entropy.cross_entropy_bwd,
           attention.flash_attention_fwd, attention.flash_attention_bwd]


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.__name__)
def test_trainbench_kernels_are_in_the_subset(kernel):
    subset.check(kernel)


def k_raise(x):
    if x.shape[0] > 128:
        raise ValueError("too many rows")
    return x


def k_list_comp(x):
    return [i for i in range(3)]


def k_gen_exp(x):
    return sum(i for i in range(3))


def k_dict_comp(x):
    return {i: i for i in range(3)}


def k_tuple_target(x):
    for r0, rows in [(0, 1)]:
        x = x[r0:r0 + rows]
    return x


def k_loop_else(x):
    for i in range(2):
        x = x
    else:
        x = x
    return x


def k_lambda(x):
    f = lambda t: t  # noqa: E731
    return f(x)


def k_try(x):
    try:
        return x
    except ValueError:
        return x


def k_with(x):
    with open("/dev/null"):
        return x


def k_is(x):
    return x if x is not None else x


def k_yield(x):
    yield x


_counter = 0


def k_global(x):
    global _counter
    return x


def _bad_helper(x):
    return [x for _ in range(2)]


def k_calls_bad_helper(x):
    return _bad_helper(x)


@pytest.mark.parametrize("fn, rule", [
    (k_raise, "raise"), (k_list_comp, "comprehension"), (k_gen_exp, "comprehension"),
    (k_dict_comp, "comprehension"), (k_tuple_target, "loop-target"), (k_loop_else, "loop-else"),
    (k_lambda, "lambda"), (k_try, "try"), (k_with, "with"), (k_is, "is"),
    (k_yield, "generator"), (k_global, "global"), (k_calls_bad_helper, "comprehension"),
])
def test_each_rule_rejects_a_kernel_that_breaks_it(fn, rule):
    with pytest.raises(NkiSubsetError, match=rf"^\[{rule}\]") as err:
        subset.check(fn)
    assert err.value.rule == rule


def test_the_helper_is_named_in_the_error():
    with pytest.raises(NkiSubsetError, match="_bad_helper line"):
        subset.check(k_calls_bad_helper)


@jit
def _kernel_with_comprehension(x):
    out = nl.ndarray(x.shape, x.dtype, buffer=nl.shared_hbm)
    tiles = [nl.ndarray(x.shape, x.dtype, buffer=nl.sbuf) for _ in range(1)]
    nisa.dma_copy(dst=tiles[0], src=x)
    nisa.dma_copy(dst=out, src=tiles[0])
    return out


def test_the_emulator_checks_before_running():
    with pytest.raises(NkiSubsetError, match=r"^\[comprehension\]"):
        _kernel_with_comprehension(np.zeros((2, 2), np.float32))
