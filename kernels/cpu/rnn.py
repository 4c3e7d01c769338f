"""The Elman (tanh) RNN on the CPU: ``torch.nn.RNN(nonlinearity="tanh")``'s math.

One layer, one direction::

    h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)

Shapes (all C-contiguous, one float dtype)::

    x        (T, B, I)   layer input
    w_ih_t   (I, H)      W_ih transposed
    w_hh_t   (H, H)      W_hh transposed
    w_ih     (H, I), w_hh (H, H)   as stored (backward's products)
    bias     (H,)        b_ih + b_hh (zeros without bias)
    h0       (B, H)
    y        (T, B, H)   outputs h_1..h_T; h_T is the final state

Forward: the input projection of every step is one GEMM, then one compiled loop over time:
per step ``h_{t-1} @ W_hh^T`` (BLAS) written into this step's output rows, and a fused
pass over each row adding the projection and the bias and applying ``tanh_row`` in place.

Backward through time: ``dz_t = (dy_t + dh_t) * (1 - h_t^2)``, ``dh_{t-1} = dz_t W_hh``, one
step at a time; then the weight gradients and ``dx`` as whole-sequence GEMMs.
"""
import numpy as np

from .jit import jit
from .activations import tanh_row

__all__ = ["rnn_layer_forward", "rnn_layer_backward"]

_OPTS = dict(cache=True, nogil=True, error_model="numpy")


@jit(**_OPTS)
def rnn_layer_forward(x, w_ih_t, w_hh_t, bias, h0, y):
    """Fill ``y`` (T, B, H) with the layer's outputs; returns nothing (``y[T-1]`` is h_n)."""
    T, B, I = x.shape
    H = w_hh_t.shape[0]
    xp = np.dot(x.reshape((T * B, I)), w_ih_t)  # (T*B, H): every step's input projection
    scratch = np.empty(H, dtype=y.dtype)
    for t in range(T):
        zt = y[t]
        if t == 0:
            np.dot(h0, w_hh_t, zt)
        else:
            np.dot(y[t - 1], w_hh_t, zt)
        for b in range(B):
            row = zt[b]
            p = xp[t * B + b]
            for j in range(H):
                row[j] += p[j] + bias[j]
            tanh_row(row, row, scratch)


@jit(**_OPTS)
def rnn_layer_backward(x, y, h0, w_ih, w_hh, dy, dh_n, want_dx, dx, dw_ih, dw_hh, db):
    """Backward through one layer.

    ``dy`` (T, B, H) gradient of the outputs, ``dh_n`` (B, H) of the final state. Writes
    ``dx`` (T, B, I) when ``want_dx``, ``dw_ih`` (H, I), ``dw_hh`` (H, H), ``db`` (H,) (the
    gradient of each bias); returns ``dh0`` (B, H)."""
    T, B, I = x.shape
    H = w_hh.shape[0]
    dz = np.empty((T, B, H), dtype=y.dtype)
    dh = dh_n.copy()
    for t in range(T - 1, -1, -1):
        yt = y[t]
        dyt = dy[t]
        dzt = dz[t]
        for b in range(B):
            for j in range(H):
                v = yt[b, j]
                g = dyt[b, j] + dh[b, j]
                dzt[b, j] = g - g * (v * v)  # g * (1 - h_t^2), in the arrays' dtype
        np.dot(dzt, w_hh, dh)
    dz2 = dz.reshape((T * B, H))
    np.dot(dz2.T, x.reshape((T * B, I)), dw_ih)
    np.dot(dz[0].T, h0, dw_hh)  # step 0 read h0; step t > 0 read y[t-1]
    if T > 1:
        dw_hh += np.dot(dz[1:].reshape(((T - 1) * B, H)).T, y[:T - 1].reshape(((T - 1) * B, H)))
    for j in range(H):
        db[j] = 0.0
    for r in range(T * B):
        for j in range(H):
            db[j] += dz2[r, j]
    if want_dx:
        np.dot(dz2, w_ih, dx.reshape((T * B, I)))
    return dh
