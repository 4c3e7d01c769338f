"""The output head on the GPU (float32): the twin of ``kernels/cpu/head.py``.

Shapes as there: ``y`` (N, H), ``w`` (V, H), ``b`` (V,), ``targets`` (N,) int64, ``scale`` (N,)
float32 (1/count, 1 or 0 per row), ``logits`` (N, V).

Forward: ``logits = y w^T + b`` (:func:`fastlstm.kernels.cuda.gemm.matmul`), then
``_xent_rows``: one block per row (grid-strided over rows), a shared-memory tree reduction for
the row's max and then for ``sum(exp(z - max))``; thread 0 writes ``lse`` and the row's
weighted loss. Backward: ``_xent_grad_rows`` writes ``(exp(z - lse) - onehot) * scale`` over
the logits in place; then ``dy = G w`` and ``dw = G^T y`` (matmul) and ``db`` (column sums).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import cuda, float32

from .gemm import column_sums, matmul
from .recurrence import _simulating

__all__ = ["xent_forward", "xent_backward"]

_TPB_GPU = 256
_TPB_SIM = 8  # the simulator runs a Python thread per GPU thread


@lru_cache(maxsize=None)
def _kernels(tpb: int):
    @cuda.jit
    def xent_rows(logits, targets, scale, lse, loss_rows):
        sm = cuda.shared.array(tpb, float32)
        tid = cuda.threadIdx.x
        N, V = logits.shape
        for n in range(cuda.blockIdx.x, N, cuda.gridDim.x):
            m = -math.inf
            for j in range(tid, V, tpb):
                m = max(m, logits[n, j])
            sm[tid] = m
            cuda.syncthreads()
            s = tpb // 2
            while s > 0:
                if tid < s:
                    sm[tid] = max(sm[tid], sm[tid + s])
                cuda.syncthreads()
                s //= 2
            m = sm[0]
            cuda.syncthreads()
            acc = float32(0.0)
            for j in range(tid, V, tpb):
                acc += math.exp(logits[n, j] - m)
            sm[tid] = acc
            cuda.syncthreads()
            s = tpb // 2
            while s > 0:
                if tid < s:
                    sm[tid] += sm[tid + s]
                cuda.syncthreads()
                s //= 2
            if tid == 0:
                v = m + math.log(sm[0])
                lse[n] = v
                if scale[n] != 0:
                    loss_rows[n] = (v - logits[n, targets[n]]) * scale[n]
                else:
                    loss_rows[n] = 0
            cuda.syncthreads()

    @cuda.jit
    def xent_grad_rows(logits, lse, targets, scale):
        tid = cuda.threadIdx.x
        N, V = logits.shape
        for n in range(cuda.blockIdx.x, N, cuda.gridDim.x):
            sc = scale[n]
            t = targets[n]
            for j in range(tid, V, tpb):
                if sc == 0:
                    logits[n, j] = 0
                else:
                    g = math.exp(logits[n, j] - lse[n]) * sc
                    if j == t:
                        g -= sc
                    logits[n, j] = g

    return xent_rows, xent_grad_rows


def _launch():
    sim = _simulating()
    tpb = _TPB_SIM if sim else _TPB_GPU
    return tpb, (2 if sim else 4096)


def xent_forward(y, w, b, targets, scale, backend="numba"):
    """``(loss, logits, lse)``: the weighted loss (float) and what :func:`xent_backward` reads.
    Device arrays in (float32; ``targets`` int64, ``scale`` float32)."""
    N, V = y.shape[0], w.shape[0]
    logits = cuda.device_array((N, V), np.float32)
    matmul(y, w, logits, trans_b=True, bias=b, backend=backend)
    lse = cuda.device_array(N, np.float32)
    loss_rows = cuda.device_array(N, np.float32)
    tpb, gmax = _launch()
    rows, _ = _kernels(tpb)
    if N:
        rows[min(N, gmax), tpb](logits, targets, scale, lse, loss_rows)
    loss = float(np.sum(loss_rows.copy_to_host(), dtype=np.float64))
    return loss, logits, lse


def xent_backward(logits, lse, targets, scale, w, y, backend="numba"):
    """``(dy (N, H), dw (V, H), db (V,))`` device arrays; overwrites ``logits`` with the
    gradient of the loss with respect to the logits."""
    N, V = logits.shape
    H = y.shape[1]
    tpb, gmax = _launch()
    _, grad = _kernels(tpb)
    if N:
        grad[min(N, gmax), tpb](logits, lse, targets, scale)
    dy = cuda.device_array((N, H), np.float32)
    dw = cuda.device_array((V, H), np.float32)
    matmul(logits, w, dy, backend=backend)
    matmul(logits, y, dw, trans_a=True, backend=backend)
    db = column_sums(logits)
    return dy, dw, db
