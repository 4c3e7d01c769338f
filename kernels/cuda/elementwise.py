"""Small elementwise GPU kernels: layout changes with a cast, dropout masks, backward helpers.

All use a grid-stride loop over the flattened output, so any launch size is correct;
:func:`launch_1d` picks one (tiny in the simulator).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .recurrence import _prev_step, _simulating

_ZERO = np.float32(0.0)


def launch_1d(n: int):
    if _simulating():
        return 1, max(1, min(n, 16))
    return max(1, min((n + 255) // 256, 4096)), 256


@cuda.jit(device=True, inline=True)
def _unravel3(idx, n1, n2):
    """``(i, j, k)`` of flat index ``idx`` in a C-ordered (n0, n1, n2) array."""
    k = idx % n2
    j = (idx // n2) % n1
    i = idx // (n1 * n2)
    return i, j, k


@cuda.jit
def copy3(src, dst, swap01):
    """``dst[i, j, k] = src[j, i, k]`` if ``swap01`` else ``src[i, j, k]`` (with a cast)."""
    n0, n1, n2 = dst.shape
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for idx in range(start, n0 * n1 * n2, step):
        i, j, k = _unravel3(idx, n1, n2)
        if swap01:
            dst[i, j, k] = src[j, i, k]
        else:
            dst[i, j, k] = src[i, j, k]


@cuda.jit
def copy2(src, dst):
    n0, n1 = dst.shape
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for idx in range(start, n0 * n1, step):
        dst[idx // n1, idx % n1] = src[idx // n1, idx % n1]


@cuda.jit
def zero_padding(x, lengths):
    """``x[t, b, :] = 0`` for every step t past sequence b's length (in place)."""
    n0, n1, n2 = x.shape
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for idx in range(start, n0 * n1 * n2, step):
        i, j, k = _unravel3(idx, n1, n2)
        if i >= lengths[j]:
            x[i, j, k] = _ZERO


@cuda.jit
def mul3(a, m, out):
    """``out = a * m`` elementwise on (n0, n1, n2) arrays (``out`` may be ``a``)."""
    n0, n1, n2 = out.shape
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for idx in range(start, n0 * n1 * n2, step):
        i, j, k = _unravel3(idx, n1, n2)
        out[i, j, k] = a[i, j, k] * m[i, j, k]


@cuda.jit
def build_hprev(y, h0, lengths, hprev):
    """The hidden state each step read, per direction (for dW_hh as one GEMM).

    ``y`` (T, B, D*P) layer output, ``h0`` (D, B, P), ``hprev`` (T, B, D*P). Forward direction:
    step t read ``y[t-1]`` (h0 at t = 0); reverse: ``y[t+1]`` (h0 at each sequence's last
    valid step). Outputs past a sequence's end are 0, so padded steps read 0 (their gate
    gradients are 0 anyway).
    """
    T, B, DP = hprev.shape
    P = h0.shape[2]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for idx in range(start, T * B * DP, step):
        t, b, col = _unravel3(idx, B, DP)
        d = col // P
        k = col % P
        first, prev = _prev_step(t, b, d, lengths)
        if first:
            v = h0[d, b, k]
        elif 0 <= prev < T:
            v = y[prev, b, col]
        else:
            v = _ZERO
        hprev[t, b, col] = v


@cuda.jit
def out_tanh(gates, cs, H, hh):
    """``hh = o * tanh(c)`` per step (the projection's input), (T, B, D*H), from the saved
    gates (T, B, D*4H) and cells (T, B, D*H); 0 on padded steps (the saved o and c are 0)."""
    T, B, DH = hh.shape
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for idx in range(start, T * B * DH, step):
        t, b, col = _unravel3(idx, B, DH)
        d = col // H
        j = col % H
        hh[t, b, col] = gates[t, b, d * 4 * H + 3 * H + j] * math.tanh(cs[t, b, col])


@cuda.jit
def fill1(a, v):
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for idx in range(start, a.shape[0], step):
        a[idx] = v


def zeros(shape):
    """A float32 device array of zeros, filled on the device."""
    out = cuda.device_array(shape, np.float32)
    n = int(np.prod(shape))
    if n:
        g, b = launch_1d(n)
        fill1[g, b](out.reshape(n), _ZERO)
    return out
