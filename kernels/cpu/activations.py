"""Scalar activations for the CPU kernels, inlined into the fused loops and chosen by dtype.

float32: a rational approximation of tanh (odd degree-13 numerator, even degree-6
denominator in x, argument clamped to |x| <= 7.9053, where float32 tanh rounds to +-1).
It is pure arithmetic, so LLVM vectorises the loops that call it (~1 ns per element,
against ~10 ns for a scalar libm call: llvmlite ships without a vector math library).
Measured bound against float64 ``np.tanh`` on a dense grid of [-12, 12]
(tests/test_activations.py):

    |tanh_f32(x) - tanh(x)| <= 4e-7   (absolute and relative; about 3 ulp at 1)
    |sigmoid_f32(x) - sigmoid(x)| <= 2.5e-7

float64: ``math.tanh`` (libm, correctly rounded to ~1 ulp) — float64 users ask for precision.

``sigmoid(z) = 0.5 * tanh(z / 2) + 0.5`` (exact algebra, never overflows) in both dtypes,
the same formula as the NumPy reference.
"""
import math

import numpy as np
from numba import njit, types
from numba.extending import overload

__all__ = ["tanh", "sigmoid", "TANH_F32_MAX_ERR", "SIGMOID_F32_MAX_ERR"]

TANH_F32_MAX_ERR = 4e-7
SIGMOID_F32_MAX_ERR = 2.5e-7

_CLAMP = np.float32(7.90531110763549805)
_A1 = np.float32(4.89352455891786e-03)
_A3 = np.float32(6.37261928875436e-04)
_A5 = np.float32(1.48572235717979e-05)
_A7 = np.float32(5.12229709037114e-08)
_A9 = np.float32(-8.60467152213735e-11)
_A11 = np.float32(2.00018790482477e-13)
_A13 = np.float32(-2.76076847742355e-16)
_B0 = np.float32(4.89352518554385e-03)
_B2 = np.float32(2.26843463243900e-03)
_B4 = np.float32(1.18534705686654e-04)
_B6 = np.float32(1.19825839466702e-06)
_HALF32 = np.float32(0.5)


def tanh(x):
    """tanh in the kernels' dtype (see module docstring); callable from Python for tests."""
    return _tanh_py(x)


def sigmoid(x):
    return _sigmoid_py(x)


@overload(tanh, inline="always")
def _tanh_ol(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        def impl(x):
            x = min(max(x, -_CLAMP), _CLAMP)
            x2 = x * x
            p = _A13
            p = p * x2 + _A11
            p = p * x2 + _A9
            p = p * x2 + _A7
            p = p * x2 + _A5
            p = p * x2 + _A3
            p = p * x2 + _A1
            q = _B6
            q = q * x2 + _B4
            q = q * x2 + _B2
            q = q * x2 + _B0
            return x * p / q
        return impl

    def impl64(x):
        return math.tanh(x)
    return impl64


@overload(sigmoid, inline="always")
def _sigmoid_ol(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        def impl(x):
            return _HALF32 * tanh(_HALF32 * x) + _HALF32
        return impl

    def impl64(x):
        return 0.5 * math.tanh(0.5 * x) + 0.5
    return impl64


@njit(cache=True, error_model="numpy")
def _tanh_array(x, out):
    for i in range(x.size):
        out[i] = tanh(x[i])


@njit(cache=True, error_model="numpy")
def _sigmoid_array(x, out):
    for i in range(x.size):
        out[i] = sigmoid(x[i])


def _tanh_py(x):
    a = np.ascontiguousarray(np.atleast_1d(x))
    out = np.empty_like(a)
    _tanh_array(a.ravel(), out.ravel())
    return out.reshape(np.shape(x))


def _sigmoid_py(x):
    a = np.ascontiguousarray(np.atleast_1d(x))
    out = np.empty_like(a)
    _sigmoid_array(a.ravel(), out.ravel())
    return out.reshape(np.shape(x))
