"""One LSTM cell step with its gradient: ``torch.nn.LSTMCell``'s training call.

A cell call in training (one step, ``B`` rows) is too small for the whole-sequence machinery:
at B = 1, H = 64 its arithmetic takes ~1 us and a sequence call's planning, state and
gradient bookkeeping tens of microseconds. These two kernels are the whole call, each one
compiled function reading the weights as torch stores them (no transposed copies, so an
optimizer step costs nothing here):

    forward:  z = x W_ih^T + h0 W_hh^T (+ b_ih + b_hh); i, f, g, o activated in place;
              c1 = f * c0 + i * g;  h1 = o * tanh(c1)
    backward: dz from dh1, dc1 (``recurrence._cell_backward``); dc0 = dc * f;
              dx = dz W_ih,  dh0 = dz W_hh,  dW_ih = dz^T x,  dW_hh = dz^T h0,  db = sum_b dz

The cell update is the recurrence's (``_cell_forward``, ``_cell_backward``); the products are
BLAS calls (Numba's ``np.dot``: SciPy's OpenBLAS). A caller with faster products of its own
(``fastlstm/torch_ops.py``: torch's, for large calls) makes them and calls only the pointwise
parts: :func:`cell_update` after the forward's, :func:`cell_dz` before the backward's.
"""
import numpy as np

from .jit import jit
from .recurrence import _cell_backward, _cell_forward

__all__ = ["cell_forward", "cell_backward", "cell_update", "cell_dz", "bias_grad"]

_OPTS = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})


@jit(**_OPTS)
def cell_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, gates, c1, h1):
    """``x`` (B, I), ``h0``, ``c0`` (B, H), ``w_ih`` (4H, I), ``w_hh`` (4H, H), ``b_ih``,
    ``b_hh`` (4H,) or both empty (no bias); writes ``gates`` (B, 4H: the activated i, f, g, o,
    what the backward reads), ``c1`` and ``h1`` (B, H). All C-contiguous."""
    B, G = gates.shape[0], gates.shape[1]
    zx = np.empty((1, B, G), dtype=gates.dtype)
    zh = np.empty((1, B, G), dtype=gates.dtype)
    np.dot(x, w_ih.T, zx[0])
    np.dot(h0, w_hh.T, zh[0])
    cell_update(zx, zh, b_ih, b_hh, c0, gates, c1, h1)


@jit(**_OPTS)
def cell_backward(x, h0, c0, gates, c1, dh1, dc1, w_ih, w_hh, dx, dh0, dc0, dw_ih, dw_hh, db):
    """Gradients of one :func:`cell_forward` call from ``dh1``, ``dc1`` (B, H): ``dx`` (B, I),
    ``dh0``, ``dc0`` (B, H), ``dw_ih`` (4H, I), ``dw_hh`` (4H, H), ``db`` (4H,: the gradient of
    each bias vector). ``dx``, ``dh0``, ``dw_ih``, ``dw_hh`` of no rows are not computed."""
    dz = np.empty(gates.shape, dtype=gates.dtype)
    cell_dz(gates, c0, c1, dh1, dc1, dz, dc0, db)
    if dx.shape[0] > 0:  # an output of no rows: nobody needs that gradient
        np.dot(dz, w_ih, dx)
    if dh0.shape[0] > 0:
        np.dot(dz, w_hh, dh0)
    if dw_ih.shape[0] > 0:
        np.dot(dz.T, x, dw_ih)
    if dw_hh.shape[0] > 0:
        np.dot(dz.T, h0, dw_hh)


@jit(**_OPTS)
def cell_update(zx, zh, b_ih, b_hh, c0, gates, c1, h1):
    """:func:`cell_forward` after its products: ``zx`` and ``zh`` (n, B, 4H / n) hold
    ``x W_ih^T`` and ``h0 W_hh^T`` in n column blocks."""
    n, B, w = zx.shape[0], zx.shape[1], zx.shape[2]
    H = c0.shape[1]
    G = 4 * H
    bias = np.zeros(G, dtype=gates.dtype)
    if b_ih.shape[0] > 0:
        for g in range(G):
            bias[g] = b_ih[g] + b_hh[g]
    row = np.empty(G, dtype=gates.dtype)
    s1 = np.empty(G, dtype=gates.dtype)
    s2 = np.empty(G, dtype=gates.dtype)
    for b in range(B):
        gb = gates[b]
        for k in range(n):
            for j in range(w):
                gb[k * w + j] = zx[k, b, j]
                row[k * w + j] = zh[k, b, j]
        cb = c1[b]
        for j in range(H):
            cb[j] = c0[b, j]
        _cell_forward(gb, row, bias, cb, h1[b], H, s1, s2)


@jit(**_OPTS)
def cell_dz(gates, c0, c1, dh1, dc1, dz, dc0, db):
    """:func:`cell_backward` before its products: the gate gradients ``dz`` (B, 4H), ``dc0``
    and ``db``."""
    B, H = c0.shape[0], c0.shape[1]
    G = 4 * H
    s1 = np.empty(G, dtype=gates.dtype)
    s2 = np.empty(G, dtype=gates.dtype)
    for b in range(B):
        dcb = dc0[b]
        for j in range(H):
            dcb[j] = dc1[b, j]
        _cell_backward(dz[b], gates[b], c1[b], c0[b], dh1[b], dcb, H, s1, s2)
    bias_grad(dz, db)


@jit(**_OPTS)
def bias_grad(dz, db):
    """``db = sum_b dz[b]``."""
    for g in range(dz.shape[1]):
        db[g] = 0.0
    for b in range(dz.shape[0]):
        for g in range(dz.shape[1]):
            db[g] += dz[b, g]

