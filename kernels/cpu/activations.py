"""Scalar activations for the CPU kernels, inlined into the fused loops and chosen by dtype.

float32: a rational approximation of tanh (odd degree-13 numerator, even degree-6
denominator in x, argument clamped to |x| <= 7.9053, where float32 tanh rounds to +-1).
It is pure arithmetic, so LLVM vectorises the loops that call it (~1 ns per element,
against ~10 ns for a scalar libm call: llvmlite ships without a vector math library).
Measured bound against float64 ``np.tanh`` on a dense grid of [-12, 12]
(tests/test_activations.py):

    |tanh_f32(x) - tanh(x)| <= 4e-7   (absolute and relative; about 3 ulp at 1)
    |sigmoid_f32(x) - sigmoid(x)| <= 2.5e-7

float64: full precision, vectorised, over whole rows (``tanh_row``): for |x| < 0.625 the odd
rational of Cephes' ``tanh``; otherwise ``1 - 2 / (exp(2|x|) + 1)`` with ``exp`` by Cody-Waite
reduction, a degree-13 polynomial and 2^n built in an int64 view of a scratch row.
Measured: max relative error 4e-16 (< 2 ulp) against ``np.tanh`` on [-25, 25] and
[1e-300, 1]; ~2 ns per element against ~9 ns for libm's scalar ``tanh``. The scalar
``tanh`` below is libm's in float64.

NaN propagates in both dtypes (as in torch); +-inf give +-1.

``sigmoid(z) = 0.5 * tanh(z / 2) + 0.5`` (exact algebra, never overflows) in both dtypes,
the same formula as the NumPy reference.

Choices inside the inlined loops go through ``_select`` (one LLVM ``select``) rather than
``a if c else b``: a conditional expression leaves phi variables in an ``inline="always"``
overload's IR, and Numba's SSA check reports them (``NumbaIRAssumptionWarning``, "variable
... is not in scope") when the overload is inlined twice into one function, as
``tanh_row`` is into the recurrence's cell update. The results are bitwise the same and the
loops still vectorise.

Called from Python, ``tanh``, ``sigmoid`` and ``tanh_row`` run the compiled code (the tests
check it through them). With ``NUMBA_DISABLE_JIT=1`` (set when the kernels are imported)
they compute with NumPy instead, so the kernels run, slowly, as plain Python: float32
evaluates the same rational approximation in float32 (equal to the compiled results up to
rounding), float64 uses ``np.tanh``. ``half_like`` and ``one_like`` are NumPy in both cases.
"""
import math

import numpy as np
from numba import types
from numba.extending import intrinsic, is_jitted, overload

from .jit import jit

__all__ = ["tanh", "sigmoid", "tanh_row", "half_like", "one_like", "TANH_F32_MAX_ERR", "SIGMOID_F32_MAX_ERR",
           "TANH_F64_MAX_REL_ERR"]

TANH_F32_MAX_ERR = 4e-7
SIGMOID_F32_MAX_ERR = 2.5e-7
TANH_F64_MAX_REL_ERR = 1e-15

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
_ONE32 = np.float32(1.0)
_SAT = np.float32(9.011)


def tanh(x):
    """tanh in the kernels' dtype (see module docstring), elementwise, as an array shaped
    like ``x``; callable from Python for tests."""
    if _PYTHON:
        return _numpy_apply(x, _tanh_np32, np.tanh)
    return _apply(_tanh_array, x)


def sigmoid(x):
    if _PYTHON:
        return _numpy_apply(x, _sigmoid_np32, _sigmoid_np64)
    return _apply(_sigmoid_array, x)


@intrinsic
def _select(typingctx, cond, a, b):
    """``a if cond else b`` for an already computed ``a`` and ``b``, as one LLVM ``select``:
    no branch in Numba's IR (see the module docstring)."""
    if not isinstance(cond, types.Boolean):
        return None
    ty = typingctx.unify_types(a, b)
    if ty is None:
        return None

    def codegen(context, builder, sig, args):
        c, x, y = args
        x = context.cast(builder, x, sig.args[1], ty)
        y = context.cast(builder, y, sig.args[2], ty)
        return builder.select(c, x, y)
    return ty(cond, a, b), codegen


@overload(tanh, inline="always")
def _tanh_ol(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        def impl(x):
            x0 = x
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
            r = x * p / q
            # exactly +-1 where correctly rounded float32 tanh is (|x| >= 9.011): saturated
            # gates get a derivative of exactly 0, as in torch
            r = _select(abs(x0) < _SAT, r, _select(x0 > 0, _ONE32, -_ONE32))
            return _select(x0 == x0, r, x0)  # NaN in, NaN out
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


_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # low 21 bits zero: k * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_P0, _P1, _P2 = -9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3
_Q0, _Q1, _Q2 = 1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3
_E = [1.0 / math.factorial(k) for k in range(14)]
(_E0, _E1, _E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11, _E12, _E13) = _E


def half_like(x):
    """0.5 in the dtype of ``x`` (a bare ``0.5`` literal would promote float32 math to float64)."""
    return np.asarray(x).dtype.type(0.5)


def one_like(x):
    return np.asarray(x).dtype.type(1.0)


@overload(half_like, inline="always")
def _half_like_ol(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _HALF32
    return lambda x: 0.5


@overload(one_like, inline="always")
def _one_like_ol(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _ONE32
    return lambda x: 1.0


def tanh_row(x, out, scratch):
    """``out[i] = tanh(x[i])`` over 1-D rows (``out`` may be ``x``; ``scratch`` as long, distinct)."""
    if _PYTHON:
        if x.dtype == np.float32:
            out[:] = _tanh_np32(x)
        else:
            np.tanh(x, out=out)
        return
    _tanh_row_array(x, out, scratch)


@overload(tanh_row, inline="always")
def _tanh_row_ol(x, out, scratch):
    if isinstance(x.dtype, types.Float) and x.dtype.bitwidth == 32:
        def impl(x, out, scratch):
            for i in range(x.size):
                out[i] = tanh(x[i])
        return impl

    def impl64(x, out, scratch):
        n = x.size
        bits = scratch.view(np.int64)
        # exp(2|x|) = 2^k * exp(r). Pass 1 builds 2^k in scratch's bits; pass 2 reads x[i]
        # before writing out[i], so out may be x.
        for i in range(n):
            k = np.floor(2.0 * min(abs(x[i]), 20.0) * _LOG2E + 0.5)  # tanh(20) rounds to 1
            bits[i] = (np.int64(k) + 1023) << 52
        for i in range(n):
            xi = x[i]
            ax = abs(xi)
            y = 2.0 * min(ax, 20.0)
            k = np.floor(y * _LOG2E + 0.5)
            r = (y - k * _LN2_HI) - k * _LN2_LO
            p = _E13
            p = p * r + _E12
            p = p * r + _E11
            p = p * r + _E10
            p = p * r + _E9
            p = p * r + _E8
            p = p * r + _E7
            p = p * r + _E6
            p = p * r + _E5
            p = p * r + _E4
            p = p * r + _E3
            p = p * r + _E2
            p = p * r + _E1
            p = p * r + _E0
            big = 1.0 - 2.0 / (p * scratch[i] + 1.0)
            z = xi * xi
            small = ax + ax * z * (((_P0 * z + _P1) * z + _P2) / (((z + _Q0) * z + _Q1) * z + _Q2))
            t = _select(ax < 0.625, small, big)
            t = _select(xi >= 0.0, t, -t)
            out[i] = _select(xi == xi, t, xi)  # NaN in, NaN out
    return impl64


_OPTS = dict(cache=True, error_model="numpy")


@jit(**_OPTS)
def _tanh_row_array(x, out, scratch):
    tanh_row(x, out, scratch)


@jit(**_OPTS)
def _tanh_array(x, out):
    for i in range(x.size):
        out[i] = tanh(x[i])


@jit(**_OPTS)
def _sigmoid_array(x, out):
    for i in range(x.size):
        out[i] = sigmoid(x[i])


def _apply(kernel, x):
    a = np.ascontiguousarray(np.atleast_1d(x))
    out = np.empty_like(a)
    kernel(a.ravel(), out.ravel())
    return out.reshape(np.shape(x))


# With NUMBA_DISABLE_JIT=1 the helpers above are the plain Python functions, which call back
# into the Python-level ones: those then compute with NumPy instead.
_PYTHON = not is_jitted(_tanh_array)


def _tanh_np32(x):
    """The float32 approximation evaluated in float32 NumPy (``x`` a float32 array)."""
    x0 = x
    x = np.minimum(np.maximum(x, -_CLAMP), _CLAMP)
    x2 = x * x
    p = _A13
    for a in (_A11, _A9, _A7, _A5, _A3, _A1):
        p = p * x2 + a
    q = _B6
    for b in (_B4, _B2, _B0):
        q = q * x2 + b
    r = x * p / q
    r = np.where(np.abs(x0) < _SAT, r, np.where(x0 > 0, _ONE32, -_ONE32))
    return np.where(x0 == x0, r, x0)


def _sigmoid_np32(x):
    return _HALF32 * _tanh_np32(_HALF32 * x) + _HALF32


def _sigmoid_np64(x):
    return 0.5 * np.tanh(0.5 * x) + 0.5


def _numpy_apply(x, f32, f64):
    a = np.asarray(x)
    out = np.empty_like(a)
    if a.dtype == np.float32:
        out[...] = f32(a)
    else:
        out[...] = f64(a)
    return out
