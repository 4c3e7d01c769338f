"""The output head on the CPU: dense layer + softmax cross-entropy (or squared error), fused.

Shapes (rows are the flattened time-major ``(T, B)`` positions, ``N = T*B``)::

    y        (N, H)   the LSTM's output rows, C-contiguous
    w        (V, H)   the dense layer's weight (``torch.nn.Linear``'s layout), C-contiguous
    b        (V,)     its bias
    targets  (N,)     int64 class indices (cross-entropy) / (N, V) values (squared error)
    scale    (N,)     each row's weight in the loss: 1/count ("mean") or 1 ("sum") for a
                      valid row, 0 for a row past its sequence's end (it contributes nothing)
    logits   (N, V)   the one (N, V) buffer: logits, then the loss's gradient with respect to them

Forward (``xent_forward``, on any block of rows, so that ``fastlstm.head`` can run blocks on
several threads): one BLAS GEMM ``logits = y @ w^T``, then one compiled pass per row
(``xent_rows``) while the row is in cache: add the bias and take the row's max; ``e = exp(z -
max)`` over the row (the vectorised exp, below) and its sum; ``loss_row = max + log(sum) -
z[target]``; then the row becomes the gradient ``G = (e / sum - onehot(target)) * scale`` and is
added into ``acc`` (``db``, accumulated in float64). The backward is then only the two GEMMs
``dy = G @ w`` and ``dw = G^T @ y`` (``grad_gemms``, on blocks of rows: ``fastlstm.head`` runs
the blocks on its threads and adds their shares of ``dw``).

The exp: ``exp(x)`` for ``x <= 0`` by Cody-Waite reduction ``x = n ln2 + r``,
``|r| <= ln2/2``, a Taylor polynomial of ``exp(r)`` (degree 13 in float64, 7 in float32) and
``2^n`` built by writing ``n`` into the float's exponent bits (a bit cast): pure arithmetic on
one element, so the loops that call it vectorise (libm's scalar ``exp`` costs ~5-10 ns per
element inside ``@njit``). It is compiled with FMA contraction only: reassociation would undo
the Cody-Waite reduction. Arguments below -708 (float64) / -87 (float32) are clamped there:
their exp is under 1e-307 / 2e-38 of the row's largest term. Relative error against float64
``np.exp``, the bounds tests/test_head.py checks: <= 4.5e-16 (2 ulp) in float64 on [-708, 0]
(measured 2.2e-16, with or without FMA), <= 2e-7 in float32 on [-87, 0] (measured 7.4e-8
with FMA, 9.6e-8 without).

Vectorisation notes (checked in the assembly; bench/bench_head.py measures the result): a row's
max is ``llvm.maximum`` (NaN-propagating; numba's ``max`` is a compare-and-select that LLVM does
not vectorise as a reduction); loops index from 0 (a loop starting at a variable index keeps
Numba's negative-index wraparound and does not vectorise); the exp's sum accumulates in the
row's dtype over blocks of ``_BLK`` elements (vector lanes of partial sums) and in float64
across blocks.
"""
import math

import numpy as np
from llvmlite import ir

from numba import types
from numba.extending import intrinsic, overload

from .jit import jit

__all__ = ["xent_forward", "xent_rows", "grad_gemms", "softmax_rows", "mse_forward",
           "mse_backward", "exp_nonpos"]

_OPTS = dict(cache=True, nogil=True, error_model="numpy")
#: The row passes around the exp: sums and maxima reassociated (vectorised). The exp itself
#: is compiled with contraction (FMA) only: reassociation would undo its Cody-Waite reduction.
_FAST = dict(_OPTS, fastmath={"reassoc", "contract", "nsz"})
_EXPM = dict(_OPTS, fastmath={"contract"})

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125
_LN2_LO = 1.4286068203094173e-06
_F32 = np.float32
#: Elements of a row summed in the row's dtype before the float64 running sum.
_BLK = 256


def _bits_as(ret, ity):
    @intrinsic
    def bits_as(typingctx, i):
        if not isinstance(i, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            v = context.cast(builder, args[0], sig.args[0], ity)
            return builder.bitcast(v, context.get_value_type(ret))
        return ret(i), codegen
    return bits_as


#: An integer's low 32 / 64 bits read as a float32 / float64.
_f32_bits = _bits_as(types.float32, types.int32)
_f64_bits = _bits_as(types.float64, types.int64)


@intrinsic
def _maximum(typingctx, a, b):
    """``llvm.maximum``: the larger, NaN if either is NaN; vectorises as a reduction."""
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, sig, args):
        t = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maximum", [t], ir.FunctionType(t, [t, t]))
        return builder.call(fn, args)
    return a(a, b), codegen


@jit(**_EXPM)
def _exp64(x):
    v = max(x, -708.0)
    n = np.floor(v * _LOG2E + 0.5)
    r = (v - n * _LN2_HI) - n * _LN2_LO
    p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
        1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (
            1.0 / 3628800 + r * (1.0 / 39916800 + r * (1.0 / 479001600 + r * (
                1.0 / 6227020800)))))))))))))
    return p * _f64_bits((np.int64(n) + np.int64(1023)) << np.int64(52))


@jit(**_EXPM)
def _exp32(x):
    v = max(x, _F32(-87.0))
    n = np.floor(v * _F32(_LOG2E) + _F32(0.5))
    r = (v - n * _F32(0.693359375)) - n * _F32(-2.12194440e-4)
    p = _F32(1.0) + r * (_F32(1.0) + r * (_F32(0.5) + r * (_F32(1.0 / 6) + r * (
        _F32(1.0 / 24) + r * (_F32(1.0 / 120) + r * (_F32(1.0 / 720) + r * _F32(1.0 / 5040)))))))
    return p * _f32_bits((np.int32(n) + np.int32(127)) << np.int32(23))


def _exp(x):
    """``exp(x)`` for a float ``x <= 0`` in its own precision (compiled only: see the overload)."""
    raise NotImplementedError


@overload(_exp)
def _exp_ol(x):
    if x == types.float64:
        return lambda x: _exp64(x)
    if x == types.float32:
        return lambda x: _exp32(x)
    return None


def _like(v, x):
    """``v`` converted to ``x``'s float type (compiled only)."""
    raise NotImplementedError


@overload(_like)
def _like_ol(v, x):
    if x == types.float64:
        return lambda v, x: np.float64(v)
    return lambda v, x: np.float32(v)


@jit(**_FAST)
def _exp_sum_row(row, m):
    """``row[j] = exp(row[j] - m)`` in place (``row <= m``); returns the sum (float64)."""
    V = row.shape[0]
    if V <= _BLK:
        s = _like(0.0, m)
        for j in range(V):
            e = _exp(row[j] - m)
            row[j] = e
            s += e
        return np.float64(s)
    s = 0.0
    for k in range((V + _BLK - 1) // _BLK):
        blk = row[k * _BLK:(k + 1) * _BLK]
        sb = _like(0.0, m)
        for j in range(blk.shape[0]):
            e = _exp(blk[j] - m)
            blk[j] = e
            sb += e
        s += sb
    return s


@jit(**_OPTS)
def exp_nonpos(x, out):
    """``out = exp(x)`` for a 1-D ``x <= 0`` (the head's exp, exposed for its accuracy test)."""
    for j in range(x.shape[0]):
        out[j] = _exp(x[j])


@jit(**_FAST)
def xent_rows(logits, b, targets, scale, acc):
    """Turns each row of ``logits`` (the products ``y w^T``) into the loss's gradient
    ``(softmax(z) - onehot(target)) * scale`` in place (``z = row + b``; rows with scale 0
    become zero), adds the rows into ``acc`` (V,) float64. Returns ``(loss, bad)``: ``loss =
    sum_n scale[n] * (logsumexp(z_n) - z_n[targets[n]])`` (float64) and the number of rows
    with scale > 0 whose target is outside 0..V-1 (those rows are left as they were)."""
    N, V = logits.shape
    total = 0.0
    bad = 0
    for n in range(N):
        sc = scale[n]
        if sc == 0:
            for j in range(V):
                logits[n, j] = 0
            continue
        t = targets[n]
        if t < 0 or t >= V:
            bad += 1
            continue
        m = logits[n, 0] + b[0]
        for j in range(V):
            z = logits[n, j] + b[j]
            logits[n, j] = z
            m = _maximum(m, z)
        zt = logits[n, t]
        s = _exp_sum_row(logits[n], m)
        total += (m + math.log(s) - zt) * sc
        f = _like(sc / s, m)
        for j in range(V):
            g = logits[n, j] * f
            logits[n, j] = g
            acc[j] += g
        logits[n, t] -= sc
        acc[t] -= sc
    return total, bad


@jit(**_FAST)
def xent_forward(y, w, b, targets, scale, logits, acc):
    """A block of rows: ``logits = y w^T`` (BLAS), then :func:`xent_rows`. Returns the block's
    ``(loss, bad)``; ``logits`` holds its gradient rows, ``acc`` (V,) float64 their sum."""
    np.dot(y, w.T, logits)
    return xent_rows(logits, b, targets, scale, acc)


@jit(**_OPTS)
def grad_gemms(g, w, y, dy, dw):
    """A block of rows of the backward: ``dy = g w``, and the block's share of the weight
    gradient: ``dw = g^T y`` for a (V, H) ``dw``, ``dw = y^T g`` (its transpose) for an (H, V)
    one (OpenBLAS runs the two forms at different rates: ``fastlstm.head`` picks; a square
    ``dw``, V = H, is taken as (V, H))."""
    np.dot(g, w, dy)
    if dw.shape[0] == g.shape[1]:
        np.dot(g.T, y, dw)
    else:
        np.dot(y.T, g, dw)


@jit(**_FAST)
def softmax_rows(y, w, b, probs, temperature):
    """``probs = softmax((y w^T + b) / temperature)`` row by row (N, V)."""
    np.dot(y, w.T, probs)
    N, V = probs.shape
    inv_t = _like(1.0 / temperature, b[0])
    for n in range(N):
        row = probs[n]
        m = (row[0] + b[0]) * inv_t
        for j in range(V):
            z = (row[j] + b[j]) * inv_t
            row[j] = z
            m = _maximum(m, z)
        s = _exp_sum_row(row, m)
        f = _like(1.0 / s, m)
        for j in range(V):
            row[j] = row[j] * f


@jit(**_FAST)
def mse_forward(y, w, b, targets, scale, pred):
    """``pred = y w^T + b`` (N, V); returns ``sum_n scale[n] * sum_j (pred - targets)^2``."""
    np.dot(y, w.T, pred)
    N, V = pred.shape
    total = 0.0
    for n in range(N):
        row = pred[n]
        t = targets[n]
        s = 0.0
        for j in range(V):
            z = row[j] + b[j]
            row[j] = z
            d = z - t[j]
            s += d * d
        total += s * scale[n]
    return total


@jit(**_FAST)
def mse_backward(pred, targets, scale, w, y, g, dy, dw, db):
    """``g = 2 (pred - targets) * scale`` (rows), ``dy = g w``, ``dw = g^T y``, ``db = sum g``."""
    N, V = pred.shape
    acc = np.zeros(V, np.float64)
    for n in range(N):
        f = 2.0 * scale[n]
        for j in range(V):
            v = (pred[n, j] - targets[n, j]) * f
            g[n, j] = v
            acc[j] += v
    for j in range(V):
        db[j] = acc[j]
    np.dot(g, w, dy)
    np.dot(g.T, y, dw)
