"""The LSTM recurrence on the CPU: one compiled loop over time per layer and direction.

Gate order ``i, f, g, o`` (PyTorch's). Shapes, for one layer and one direction::

    xg       (T, B, D*4H)  input projection of all steps, biases included; this direction's
                           gates are columns [xg_off, xg_off + 4H)
    w_hh_t   (H_out, 4H)   W_hh transposed, so the step's product h @ w_hh_t walks rows contiguously
    w_hr_t   (H, P)        W_hr transposed (shape (0, 0) when there is no projection)
    h0, c0   (B, H_out), (B, H)
    lengths  (B,) int64    valid steps per sequence (1..T)
    y        (T, B, D*H_out) layer output; this direction writes columns [y_off, y_off + H_out)

Each step: ``z = h @ W_hh^T`` (one small GEMM for the whole batch), then one fused pass over
``(b, j)`` adds the input projection, applies the activations and updates c and h in place.
Steps past a sequence's end leave its state unchanged and write 0 to ``y``, which gives
packed-sequence semantics for both directions with one shared time loop.

Training mode saves, per step and sequence, the activated gates (4H) and the cell state (H):
everything backward needs besides the layer's input and output (which the caller keeps).
"""
import numpy as np
from numba import njit

from .activations import sigmoid, tanh

_OPTS = dict(cache=True, nogil=True, error_model="numpy")


@njit(**_OPTS)
def recurrence_forward(xg, xg_off, w_hh_t, w_hr_t, h0, c0, lengths, reverse,
                       y, y_off, h_n, c_n, gates_out, c_out, training):
    T, B = xg.shape[0], xg.shape[1]
    H = c0.shape[1]
    P = h0.shape[1]
    has_proj = w_hr_t.shape[0] > 0
    h = h0.copy()
    c = c0.copy()
    z = np.empty((B, 4 * H), dtype=xg.dtype)
    hh = np.empty((B, H), dtype=xg.dtype)  # o * tanh(c) before the projection
    hp = np.empty((B, P), dtype=xg.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        np.dot(h, w_hh_t, z)
        for b in range(B):
            if t < lengths[b]:
                for j in range(H):
                    gi = sigmoid(z[b, j] + xg[t, b, xg_off + j])
                    gf = sigmoid(z[b, H + j] + xg[t, b, xg_off + H + j])
                    gg = tanh(z[b, 2 * H + j] + xg[t, b, xg_off + 2 * H + j])
                    go = sigmoid(z[b, 3 * H + j] + xg[t, b, xg_off + 3 * H + j])
                    cn = gf * c[b, j] + gi * gg
                    c[b, j] = cn
                    hh[b, j] = go * tanh(cn)
                    if training:
                        gates_out[t, b, j] = gi
                        gates_out[t, b, H + j] = gf
                        gates_out[t, b, 2 * H + j] = gg
                        gates_out[t, b, 3 * H + j] = go
                        c_out[t, b, j] = cn
            else:
                hh[b, :] = 0.0
                if training:
                    gates_out[t, b, :] = 0.0
                    c_out[t, b, :] = 0.0
        if has_proj:
            np.dot(hh, w_hr_t, hp)
            src = hp
        else:
            src = hh
        for b in range(B):
            if t < lengths[b]:
                for k in range(P):
                    h[b, k] = src[b, k]
                    y[t, b, y_off + k] = src[b, k]
            else:
                for k in range(P):
                    y[t, b, y_off + k] = 0.0
    h_n[:, :] = h
    c_n[:, :] = c


@njit(**_OPTS)
def recurrence_backward(dy, dy_off, gates, cs, c0, dh_n, dc_n, w_hh, w_hr, lengths, reverse,
                        dgates, dhp_out, dh0, dc0):
    """Backward through one direction of one layer.

    ``dy`` (T, B, D*H_out) is the gradient of the layer output (this direction's columns start
    at ``dy_off``); ``w_hh`` (4H, H_out) and ``w_hr`` (P, H) are untransposed. Writes
    ``dgates`` (T, B, 4H), the gradient of the pre-activation gates (0 on padded steps),
    ``dhp_out`` (T, B, P), the gradient of each step's projected output (only with a
    projection; else shape (0, 0, 0)), and ``dh0``, ``dc0``. The weight gradients and dx are
    whole-sequence GEMMs done by the caller.
    """
    T, B = gates.shape[0], gates.shape[1]
    H = cs.shape[2]
    P = dh_n.shape[1]
    has_proj = w_hr.shape[0] > 0
    dh = dh_n.copy()
    dc = dc_n.copy()
    dhp = np.empty((B, P), dtype=gates.dtype)
    dhh = np.empty((B, H), dtype=gates.dtype)
    dh_new = np.empty((B, P), dtype=gates.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        for b in range(B):
            if t < lengths[b]:
                for k in range(P):
                    dhp[b, k] = dy[t, b, dy_off + k] + dh[b, k]
            else:
                dhp[b, :] = 0.0
        if has_proj:
            dhp_out[t, :, :] = dhp
            np.dot(dhp, w_hr, dhh)
            src = dhh
        else:
            src = dhp
        for b in range(B):
            if t < lengths[b]:
                first = (t == lengths[b] - 1) if reverse else (t == 0)
                prev = t + 1 if reverse else t - 1
                for j in range(H):
                    gi = gates[t, b, j]
                    gf = gates[t, b, H + j]
                    gg = gates[t, b, 2 * H + j]
                    go = gates[t, b, 3 * H + j]
                    tc = tanh(cs[t, b, j])
                    c_prev = c0[b, j] if first else cs[prev, b, j]
                    d_h = src[b, j]
                    dct = dc[b, j] + d_h * go * (1.0 - tc * tc)
                    dgates[t, b, j] = dct * gg * gi * (1.0 - gi)
                    dgates[t, b, H + j] = dct * c_prev * gf * (1.0 - gf)
                    dgates[t, b, 2 * H + j] = dct * gi * (1.0 - gg * gg)
                    dgates[t, b, 3 * H + j] = d_h * tc * go * (1.0 - go)
                    dc[b, j] = dct * gf
            else:
                dgates[t, b, :] = 0.0
        np.dot(dgates[t], w_hh, dh_new)
        for b in range(B):
            if t < lengths[b]:
                for k in range(P):
                    dh[b, k] = dh_new[b, k]
    dh0[:, :] = dh
    dc0[:, :] = dc
