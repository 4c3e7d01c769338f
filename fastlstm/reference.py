"""Plain NumPy LSTM: the oracle every kernel is checked and benchmarked against.

Written for clarity, one time step at a time, with the exact semantics of ``torch.nn.LSTM``:

    gates = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh        (order i, f, g, o)
    i, f, o = sigmoid(.), g = tanh(.)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)               (then h_t = h_t W_hr^T when proj_size > 0)

Shapes (time-major, batched; the API layer handles batch_first and unbatched input)::

    x  (T, B, I)      y  (T, B, D*H_out)
    h0 (L*D, B, H_out)   c0 (L*D, B, H)     index layer*D + direction
    lengths (B,) int  valid steps of each sequence; outputs past a sequence's end are 0,
                      its final state is the state at its last valid step, and the
                      reverse direction starts at its last valid step.
    masks  list of L-1 arrays (T, B, D*H_out) or None: inter-layer dropout, already scaled.
"""
from __future__ import annotations

import numpy as np

from .backends.state import LayerState, TrainingState

__all__ = ["sigmoid", "recurrence_forward", "recurrence_backward", "lstm_forward", "lstm_backward"]


def sigmoid(z):
    # 0.5 * (1 + tanh(z/2)) is exact algebra, never overflows, and is accurate in both tails.
    return 0.5 * np.tanh(0.5 * z) + 0.5


def _step_order(T: int, reverse: bool):
    return range(T - 1, -1, -1) if reverse else range(T)


def recurrence_forward(xg, w_hh, w_hr, h0, c0, lengths, reverse):
    """One direction of one layer, given the input projection ``xg`` (T, B, 4H) (biases included).

    Returns ``hs`` (T, B, H_out) (0 past each sequence's end), ``h_n`` (B, H_out),
    ``c_n`` (B, H), the activated gates (T, B, 4H) and cell states (T, B, H) (0 on padded steps).
    """
    T, B, G = xg.shape
    H = G // 4
    h, c = h0.copy(), c0.copy()
    hs = np.zeros((T, B, h0.shape[1]), xg.dtype)
    gates = np.zeros((T, B, G), xg.dtype)
    cs = np.zeros((T, B, H), xg.dtype)
    for t in _step_order(T, reverse):
        valid = (t < lengths)[:, None]
        z = xg[t] + h @ w_hh.T
        i = sigmoid(z[:, :H])
        f = sigmoid(z[:, H:2 * H])
        g = np.tanh(z[:, 2 * H:3 * H])
        o = sigmoid(z[:, 3 * H:])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        if w_hr is not None:
            h_new = h_new @ w_hr.T
        h = np.where(valid, h_new, h)
        c = np.where(valid, c_new, c)
        hs[t] = np.where(valid, h_new, 0)
        gates[t] = np.where(valid, np.concatenate([i, f, g, o], axis=1), 0)
        cs[t] = np.where(valid, c_new, 0)
    return hs, h, c, gates, cs


def recurrence_backward(dhs, dh_n, dc_n, gates, cs, h0, c0, hs, w_hh, w_hr, lengths, reverse):
    """Backward through one direction of one layer.

    ``dhs`` (T, B, H_out) is the gradient of this direction's outputs. Returns the gradient of
    the pre-activation gates (T, B, 4H), ``dh0``, ``dc0``, ``dW_hh`` and ``dW_hr`` (or None).
    """
    T, B, G = gates.shape
    H = G // 4
    dh, dc = dh_n.copy(), dc_n.copy()
    dgates = np.zeros_like(gates)
    dw_hh = np.zeros_like(w_hh)
    dw_hr = None if w_hr is None else np.zeros_like(w_hr)
    # The steps in the order backward visits them: the forward order reversed.
    for t in reversed(list(_step_order(T, reverse))):
        valid = (t < lengths)[:, None]
        # Does this step read h0/c0? Forward: t == 0; reverse: each sequence's last valid step.
        first = (lengths - 1 == t) if reverse else np.full(B, t == 0)
        prev = t + 1 if reverse else t - 1
        if 0 <= prev < T:
            h_prev = np.where(first[:, None], h0, hs[prev])
            c_prev = np.where(first[:, None], c0, cs[prev])
        else:
            h_prev, c_prev = h0, c0
        i, f, g, o = (gates[t, :, k * H:(k + 1) * H] for k in range(4))
        tc = np.tanh(cs[t])
        dh_t = np.where(valid, dhs[t] + dh, 0)
        if w_hr is not None:
            dw_hr += dh_t.T @ (o * tc)
            dh_t = dh_t @ w_hr
        do = dh_t * tc
        dct = np.where(valid, dc + dh_t * o * (1 - tc * tc), 0)
        dz = np.concatenate([dct * g * i * (1 - i), dct * c_prev * f * (1 - f),
                             dct * i * (1 - g * g), do * o * (1 - o)], axis=1)
        dz = np.where(valid, dz, 0)
        dgates[t] = dz
        dw_hh += dz.T @ h_prev
        dh = np.where(valid, dz @ w_hh, dh)
        dc = np.where(valid, dct * f, dc)
    return dgates, dh, dc, dw_hh, dw_hr


def lstm_forward(x, params, h0, c0, lengths, masks=None, training=False):
    """Full multi-layer forward: ``y, h_n, c_n, state, paths`` (the backend contract of
    ``fastlstm.backends``; ``state`` is None unless training)."""
    L, D = params.num_layers, params.num_directions
    layer_in = x
    h_n, c_n = np.empty_like(h0), np.empty_like(c0)
    saved = []
    for layer in range(L):
        outs, gates_d, cells_d = [], [], []
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh, w_hr = params.layer_weights(layer, d)
            xg = layer_in @ w_ih.T
            if b_ih is not None:
                xg = xg + b_ih + b_hh
            k = layer * D + d
            hs, h_n[k], c_n[k], gates, cs = recurrence_forward(
                xg, w_hh, w_hr, h0[k], c0[k], lengths, reverse=(d == 1))
            outs.append(hs)
            gates_d.append(gates)
            cells_d.append(cs)
        y = np.concatenate(outs, axis=2)
        saved.append(LayerState(x=layer_in, y=y, gates=tuple(gates_d), cells=tuple(cells_d)))
        layer_in = y * masks[layer] if (masks is not None and layer < L - 1) else y
    paths = ("reference",) * L
    state = None
    if training:
        state = TrainingState("reference", params, params.version, tuple(saved), h0, c0, lengths,
                              tuple(masks) if masks is not None else (), paths)
    return layer_in, h_n, c_n, state, paths


def lstm_backward(state, dy, dh_n, dc_n):
    """Full backward from the ``state`` of a training forward: ``dx, dh0, dc0, dparams``."""
    params = state.params
    L, D, P = params.num_layers, params.num_directions, params.output_size
    lengths, masks = state.lengths, state.masks
    dh0, dc0 = np.empty_like(dh_n), np.empty_like(dc_n)
    per_layer = [None] * L
    dy_layer = dy
    for layer in reversed(range(L)):
        saved = state.layers[layer]
        dx_layer = np.zeros_like(saved.x)
        dirs = []
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh, w_hr = params.layer_weights(layer, d)
            k = layer * D + d
            hs = saved.y[:, :, d * P:(d + 1) * P]
            dgates, dh0[k], dc0[k], dw_hh, dw_hr = recurrence_backward(
                dy_layer[:, :, d * P:(d + 1) * P], dh_n[k], dc_n[k], saved.gates[d],
                saved.cells[d], state.h0[k], state.c0[k], hs, w_hh, w_hr, lengths,
                reverse=(d == 1))
            dw_ih = np.einsum("tbg,tbi->gi", dgates, saved.x)
            db = dgates.sum(axis=(0, 1)) if b_ih is not None else None
            dirs.append((dw_ih, dw_hh, db, dw_hr))
            dx_layer += dgates @ w_ih
        per_layer[layer] = dirs
        if layer > 0 and masks:
            dx_layer = dx_layer * masks[layer - 1]
        dy_layer = dx_layer
    return dy_layer, dh0, dc0, params.named_grads(per_layer)
