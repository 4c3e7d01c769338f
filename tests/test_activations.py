"""The CPU kernels' activations: stated error bounds against float64, NaN/inf handling."""
import warnings

import numpy as np
import pytest
from numba import njit
from numba.core.errors import NumbaIRAssumptionWarning

import fastlstm
from fastlstm.kernels.cpu import activations as act

GRID = np.concatenate([np.linspace(-30, 30, 600_001), np.geomspace(1e-30, 1, 10_000),
                       -np.geomspace(1e-30, 1, 10_000), [0.0, 0.625, -0.625, 7.9, 20.0, 1e30]])


def test_tanh_float32_bound():
    x = GRID.astype(np.float32)
    got = act.tanh(x).astype(np.float64)
    exact = np.tanh(x.astype(np.float64))
    err = np.abs(got - exact)
    assert err.max() <= act.TANH_F32_MAX_ERR
    # relative bound too, away from the denormal range
    big = np.abs(exact) > 1e-30
    assert (err[big] / np.abs(exact[big])).max() <= act.TANH_F32_MAX_ERR
    assert np.all(np.abs(got) <= 1.0)


def test_sigmoid_float32_bound():
    x = GRID.astype(np.float32)
    got = act.sigmoid(x).astype(np.float64)
    exact = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    assert np.abs(got - exact).max() <= act.SIGMOID_F32_MAX_ERR
    assert got.min() >= 0.0 and got.max() <= 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_row_matches_numpy_in_place_and_out_of_place(dtype):
    x = GRID.astype(dtype)
    out = np.empty_like(x)
    act.tanh_row(x, out, np.empty_like(x))
    exact = np.tanh(x.astype(np.float64))
    if dtype == np.float64:
        rel = np.abs(out - exact) / np.maximum(np.abs(exact), np.finfo(np.float64).tiny)
        assert rel.max() <= act.TANH_F64_MAX_REL_ERR
    else:
        assert np.abs(out - exact).max() <= act.TANH_F32_MAX_ERR
    inplace = x.copy()
    act.tanh_row(inplace, inplace, np.empty_like(x))
    np.testing.assert_array_equal(inplace, out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_propagates_and_infinities_saturate(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype)
    out = np.empty_like(x)
    act.tanh_row(x, out, np.empty_like(x))
    assert np.isnan(out[0])
    np.testing.assert_array_equal(out[1:], [1.0, -1.0, 0.0, 0.0])
    assert np.isnan(act.tanh(x)[0]) and np.isnan(act.sigmoid(x)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_propagates_nan_like_torch(dtype):
    p = fastlstm.LSTMParams.init(3, 4, dtype=dtype, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(dtype)
    x[2, 1, 0] = np.nan
    ref = fastlstm.forward(x, p, device="reference")
    cpu = fastlstm.forward(x, p, device="cpu")
    np.testing.assert_array_equal(np.isnan(cpu.y), np.isnan(ref.y))
    assert np.all(np.isnan(cpu.y[2:, 1])) and not np.any(np.isnan(cpu.y[:, 0]))


def test_float32_saturation_is_exact_like_torch():
    """Where correctly rounded float32 tanh is +-1, so is ours: saturated gates get an exactly
    zero derivative (sigmoid(z) = 0.5 tanh(z/2) + 0.5 saturates for |z| >= 18.03)."""
    x = np.array([9.02, 12.0, 1e4, -9.02, -1e4], np.float32)
    np.testing.assert_array_equal(act.tanh(x), [1, 1, 1, -1, -1])
    np.testing.assert_array_equal(np.tanh(x.astype(np.float64)).astype(np.float32), [1, 1, 1, -1, -1])
    s = act.sigmoid(np.array([18.1, 1e4, -18.1, -1e4], np.float32))
    np.testing.assert_array_equal(s, [1, 1, 0, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inlined_twice_into_one_function_compiles_cleanly(dtype):
    """The cell updates inline ``tanh_row`` at two call sites: no branch of the inlined code
    trips Numba's pedantic IR check, and each site computes what the kernel alone does."""
    @njit
    def twice(x, a, b, scratch):
        act.tanh_row(x, a, scratch)
        act.tanh_row(a, b, scratch)
        return act.tanh(x[0]) + act.tanh(x[1]) + act.sigmoid(x[0]) + act.sigmoid(x[1])

    x = GRID[::97].astype(dtype)
    a, b = np.empty_like(x), np.empty_like(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumbaIRAssumptionWarning)
        s = twice(x, a, b, np.empty_like(x))
    ra, rb = np.empty_like(x), np.empty_like(x)
    act.tanh_row(x, ra, np.empty_like(x))
    act.tanh_row(ra, rb, np.empty_like(x))
    np.testing.assert_array_equal(a, ra)
    np.testing.assert_array_equal(b, rb)
    assert s == act.tanh(x[0]) + act.tanh(x[1]) + act.sigmoid(x[0]) + act.sigmoid(x[1])
