"""One LSTM step of one layer on the GPU: the twin of ``kernels/cpu/step.py``.

Gate order ``i, f, g, o`` (PyTorch's). One launch of ``step_layer`` per layer and step, the
state updated in place on the device. Shapes::

    x        (B, I_l)         the layer's input: the step's input, or the layer below's new h
    h, c     (L, B, H_out), (L, B, H)   the state of every layer (this one: ``h[layer]``)
    wcat_t   (I_l + H_out, 4H)  [W_ih^T ; W_hh^T]: threads of consecutive hidden units read
                              consecutive addresses (coalesced)
    bias     (4H,)            b_ih + b_hh (zeros without biases)
    whr_t    (H, P)           W_hr^T (a (1, 1) placeholder without projection)
    y        (B, H_out)       the step's output (written by the top layer only)

Block ``b`` runs sequence ``b``; its threads stride over the hidden units (one thread per unit
and sequence when the block is as wide as H). The block first copies the sequence's
``[x | h_prev]`` row to shared memory (every thread reads all of it), then each thread forms its
unit's four gate pre-activations, the input and the recurrent product fused (one pass over
``[x | h_prev]``), and updates ``c`` and ``h`` (with a projection, ``o * tanh(c)`` goes to shared
memory and, after a barrier, each thread computes projected outputs ``hh . W_hr[p, :]``: still one
launch). h is updated in place: every read of the old h happened before the first barrier.

Dynamic shared memory: ``I_max + H_out + H`` float32 (``shared_bytes``).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from .recurrence import _simulating

__all__ = ["step_layer", "launch_config", "shared_bytes"]

_HALF = np.float32(0.5)
_ZERO = np.float32(0.0)


@cuda.jit(device=True, inline=True)
def _sigmoid(z):
    # 0.5 * (1 + tanh(z/2)): the reference's formula; never overflows.
    return _HALF * math.tanh(_HALF * z) + _HALF


@cuda.jit
def step_layer(x, h, c, layer, wcat_t, bias, whr_t, y, has_proj, write_y):
    """One step of layer ``layer`` for sequence ``blockIdx.x`` (see the module docstring)."""
    sm = cuda.shared.array(0, dtype=float32)
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    I = x.shape[1]
    H = c.shape[2]
    P = h.shape[2]
    K = I + P
    for k in range(tid, I, nt):
        sm[k] = x[b, k]
    for k in range(tid, P, nt):
        sm[I + k] = h[layer, b, k]
    cuda.syncthreads()
    for j in range(tid, H, nt):
        zi = bias[j]
        zf = bias[H + j]
        zg = bias[2 * H + j]
        zo = bias[3 * H + j]
        for k in range(K):
            v = sm[k]
            zi += v * wcat_t[k, j]
            zf += v * wcat_t[k, H + j]
            zg += v * wcat_t[k, 2 * H + j]
            zo += v * wcat_t[k, 3 * H + j]
        gi = _sigmoid(zi)
        gf = _sigmoid(zf)
        gg = math.tanh(zg)
        go = _sigmoid(zo)
        cn = gf * c[layer, b, j] + gi * gg
        c[layer, b, j] = cn
        hv = go * math.tanh(cn)
        if has_proj:
            sm[K + j] = hv
        else:
            h[layer, b, j] = hv
            if write_y:
                y[b, j] = hv
    if has_proj:
        cuda.syncthreads()
        for p in range(tid, P, nt):
            acc = _ZERO
            for j in range(H):
                acc += sm[K + j] * whr_t[j, p]
            h[layer, b, p] = acc
            if write_y:
                y[b, p] = acc


def shared_bytes(I_max: int, H: int, P: int) -> int:
    """Dynamic shared memory of one ``step_layer`` block: ``[x | h_prev]`` and ``o*tanh(c)``."""
    return 4 * (I_max + P + H)


def launch_config(B: int, H: int, P: int, I_max: int):
    """``(grid, block, shared_bytes)`` of ``step_layer``: one block per sequence, one thread
    per hidden unit up to 256 (a multiple of 32); 4 threads in the simulator (so its threads
    stride over the units, as a wide layer's do on a GPU)."""
    if _simulating():
        threads = 4
    else:
        threads = min(256, max(32, -(-max(H, P) // 32) * 32))
    return B, threads, shared_bytes(I_max, H, P)
