"""The output head on the CPU: dense layer + softmax cross-entropy (or squared error), fused.

Shapes (rows are the flattened time-major ``(T, B)`` positions, ``N = T*B``)::

    y        (N, H)   the LSTM's output rows, C-contiguous
    w        (V, H)   the dense layer's weight (``torch.nn.Linear``'s layout), C-contiguous
    b        (V,)     its bias
    targets  (N,)     int64 class indices (cross-entropy) / (N, V) values (squared error)
    scale    (N,)     each row's weight in the loss: 1/count ("mean") or 1 ("sum") for a
                      valid row, 0 for a row past its sequence's end (it contributes nothing)
    logits   (N, V)   the one (N, V) buffer: logits, then exp(logits - max), then the gradient

Forward (``xent_forward``): one BLAS GEMM ``logits = y @ w^T``, then one compiled pass per row:
add the bias and take the row's max, then ``e = exp(z - max)`` written over the row (a
vectorised exp, below) and summed; ``lse = max + log(sum)``, ``loss_row = lse - z[target]``.
What stays: the row's ``e`` and ``1/sum``.

Backward (``xent_backward``): one pass per row turns ``e`` into ``(softmax - onehot) * scale``
in place (no second (N, V) array) and accumulates ``db``; then ``dy = G @ w`` and
``dw = G^T @ y`` are BLAS GEMMs.

The exp: ``exp(x)`` for ``x <= 0`` by Cody-Waite reduction ``x = n ln2 + r``,
``|r| <= ln2/2``, a Taylor polynomial of ``exp(r)`` (degree 13 in float64, 7 in float32) and
``2^n`` built in an integer view of a scratch row; pure arithmetic, so the loop vectorises
(libm's scalar ``exp`` costs ~5-10 ns per element inside ``@njit``). Arguments below
-708 (float64) / -87 (float32) are clamped there: their exp is under 1e-307 / 2e-38 of the
row's largest term. Measured relative error against float64 ``np.exp`` on [-700, 0]:
<= 2.4e-14 (float64; the error grows with |x|: <= 2e-15, ~9 ulp, on [-30, 0]), <= 2.8e-7
(float32 on [-80, 0]) (tests/test_head.py).
"""
import math

import numpy as np

from numba import types
from numba.extending import overload

from .jit import jit

__all__ = ["xent_forward", "xent_backward", "softmax_rows", "mse_forward", "mse_backward", "exp_nonpos"]

_OPTS = dict(cache=True, nogil=True, error_model="numpy")
#: The row passes around the exp: sums and maxima reassociated (vectorised). The exp itself
#: is compiled without fast-math: reassociation would undo its Cody-Waite reduction.
_FAST = dict(_OPTS, fastmath={"reassoc", "contract", "nsz"})

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125
_LN2_LO = 1.4286068203094173e-06


@jit(**_OPTS)
def _exp_row64(x, scratch):
    V = x.shape[0]
    bits = scratch.view(np.int64)
    for j in range(V):
        v = max(x[j], -708.0)
        n = math.floor(v * _LOG2E + 0.5)
        r = (v - n * _LN2_HI) - n * _LN2_LO
        p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
            1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (
                1.0 / 3628800 + r * (1.0 / 39916800 + r * (1.0 / 479001600 + r * (
                    1.0 / 6227020800)))))))))))))
        x[j] = p
        bits[j] = (np.int64(n) + 1023) << 52
    s = 0.0
    for j in range(V):
        x[j] = x[j] * scratch[j]
        s += x[j]
    return s


_F32 = np.float32


@jit(**_OPTS)
def _exp_row32(x, scratch):
    V = x.shape[0]
    bits = scratch.view(np.int32)
    lo = _F32(-87.0)
    l2e = _F32(_LOG2E)
    hi = _F32(0.693359375)
    lo2 = _F32(-2.12194440e-4)
    half = _F32(0.5)
    one = _F32(1.0)
    c3 = _F32(1.0 / 6)
    c4 = _F32(1.0 / 24)
    c5 = _F32(1.0 / 120)
    c6 = _F32(1.0 / 720)
    c7 = _F32(1.0 / 5040)
    for j in range(V):
        v = max(x[j], lo)
        n = _F32(math.floor(v * l2e + half))
        r = (v - n * hi) - n * lo2
        p = one + r * (one + r * (half + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * c7))))))
        x[j] = p
        bits[j] = (np.int32(n) + np.int32(127)) << np.int32(23)
    s = 0.0
    for j in range(V):
        x[j] = x[j] * scratch[j]
        s += x[j]
    return s


def _exp_row(x, scratch):
    """``x[j] = exp(x[j])`` in place for ``x[j] <= 0``; ``scratch`` a row of ``x``'s length
    and dtype. Returns the sum of the results (accumulated in float64)."""
    raise NotImplementedError  # compiled only: see the overload


@overload(_exp_row)
def _exp_row_ol(x, scratch):
    if x.dtype == types.float64:
        return lambda x, scratch: _exp_row64(x, scratch)
    return lambda x, scratch: _exp_row32(x, scratch)


@jit(**_OPTS)
def exp_nonpos(x, out):
    """``out = exp(x)`` for a 1-D ``x <= 0`` (the head's exp, exposed for its accuracy test)."""
    out[:] = x
    scratch = np.empty_like(x)
    _exp_row(out, scratch)


@jit(**_FAST)
def xent_forward(y, w, b, targets, scale, logits, inv_sum):
    """Fills ``logits`` (N, V) with ``exp(z - max)`` per valid row (``z = y w^T + b``; rows with
    scale 0 are left as raw products), ``inv_sum`` (N,) with ``1 / sum(exp(z - max))``; returns
    ``sum_n scale[n] * (logsumexp(z_n) - z_n[targets[n]])`` (float64)."""
    np.dot(y, w.T, logits)
    N, V = logits.shape
    scratch = np.empty(V, logits.dtype)
    total = 0.0
    for n in range(N):
        sc = scale[n]
        if sc == 0:
            inv_sum[n] = 0
            continue
        row = logits[n]
        m = row[0] + b[0]
        for j in range(V):
            z = row[j] + b[j]
            row[j] = z
            m = max(m, z)
        zt = row[targets[n]]
        for j in range(V):
            row[j] = row[j] - m
        s = _exp_row(row, scratch)
        inv_sum[n] = 1.0 / s
        total += (m + math.log(s) - zt) * sc
    return total


@jit(**_FAST)
def xent_backward(logits, inv_sum, targets, scale, w, y, dy, dw, db):
    """Turns ``logits`` (holding xent_forward's ``exp(z - max)``) into
    ``G = (softmax - onehot(targets)) * scale`` in place, then ``dy = G w``, ``dw = G^T y``,
    ``db = sum_n G[n]``."""
    N, V = logits.shape
    acc = np.zeros(V, np.float64)
    for n in range(N):
        row = logits[n]
        sc = scale[n]
        if sc == 0:
            row[:] = 0
            continue
        f = inv_sum[n] * sc
        for j in range(V):
            row[j] = row[j] * f
        row[targets[n]] -= sc
        for j in range(V):
            acc[j] += row[j]
    for j in range(V):
        db[j] = acc[j]
    np.dot(logits, w, dy)
    np.dot(logits.T, y, dw)


@jit(**_FAST)
def softmax_rows(y, w, b, probs, temperature):
    """``probs = softmax((y w^T + b) / temperature)`` row by row (N, V)."""
    np.dot(y, w.T, probs)
    N, V = probs.shape
    scratch = np.empty(V, probs.dtype)
    inv_t = 1.0 / temperature
    for n in range(N):
        row = probs[n]
        m = (row[0] + b[0]) * inv_t
        for j in range(V):
            z = (row[j] + b[j]) * inv_t
            row[j] = z
            m = max(m, z)
        for j in range(V):
            row[j] = row[j] - m
        s = _exp_row(row, scratch)
        f = 1.0 / s
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
