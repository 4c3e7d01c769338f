"""The CPU backend's serial path with a plan per call shape: what a repeated call reads,
looked up once.

A call whose every layer runs serially (one thread per layer: ``plan_tasks`` gives no tasks,
and inference layers would not take the two-core path) does, per layer and direction, one
input GEMM, one recurrence and, in backward, one set of gradient GEMMs. The general code
(``fastlstm/backends/cpu.py``) decides each of those per call: the tasks, the BLAS pinning,
the weight layouts' lookups, the kernels' argument tuples. That is ~30 us of Python per
forward at (100, 1, 32, 64), a sixth of the call (bench/NOTES.md, "A plan per call shape").
:class:`SerialPlan` makes those decisions once per params version, shape and configuration
(memoised on the params, ``LSTMParams.derived``) and runs the same kernels with the same
arguments, so its results are bitwise those of the general path.
"""
from __future__ import annotations

import functools

import numpy as np

from ..kernels.cpu.parallel import grad_gemms, matmul_into, matmul_tn_into, single_threaded_blas
from ..kernels.cpu.recurrence import recurrence_backward, recurrence_forward, stack_x_hprev
from ..kernels.cpu.smallgemm import aligned_empty
from . import cpu, cpu_duo
from .cpu_layouts import _prepare, col_blocks
from .state import LayerState, TrainingState

__all__ = ["SerialPlan", "serial_plan"]


def serial_plan(params, T: int, B: int, training: bool, cfg) -> "SerialPlan | None":
    """The plan of a call of ``T`` steps and ``B`` sequences (``B > 0``) with ``cfg``, or None
    when some layer would run on more than one thread (then the general path runs it)."""
    if not cfg.serial_plans:
        return None
    key = ("cpu", "serial", T, B, training, cfg)
    plan = params.derived(key, lambda: _build(params, T, B, training, cfg))
    return plan or None


def _build(params, T, B, training, cfg):
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    pins = []
    for layer in range(L):
        I = params.input_size if layer == 0 else D * P
        flop = cpu._layer_flop(T, B, I, H, P, D, params.proj_size)
        if cpu.plan_tasks(D, B, flop, cfg) is not None:
            return False
        full = np.full(B, T, np.int64)  # the two-core path takes equal lengths only
        if cpu_duo.eligible(params, T, B, I, full, training, cfg):
            return False
        pins.append(cpu._pin_serial(flop, cfg))
    return SerialPlan(params, T, B, cfg, pins)


class _Layer:
    """One layer's weights and the kernels' fixed arguments, per direction."""
    __slots__ = ("w_ih_cat_t", "w_ih", "forward_w", "forward_blocks", "pin")


class SerialPlan:
    """The serial path for calls of one shape; read-only once built (threads may share it:
    scratch comes from each thread's ``workspace``)."""

    def __init__(self, params, T, B, cfg, pins):
        self.params, self.T, self.B, self.cfg = params, T, B, cfg
        dt = params.dtype
        self._e3 = np.empty((0, 0, 0), dt)
        # shared by calls, read by the kernels only (writable: the kernels are compiled for
        # writable arrays); zeros for the states a call does not give
        self.full = np.full(B, T, np.int64)
        L, D = params.num_layers, params.num_directions
        self.zeros = (np.zeros((L * D, B, params.output_size), dt),
                      np.zeros((L * D, B, params.hidden_size), dt))
        self.layers = []
        for layer, pin in enumerate(pins):
            prep = _prepare(params, layer)
            lay = _Layer()
            lay.w_ih_cat_t, lay.w_ih, lay.pin = prep.w_ih_cat_t, prep.w_ih, pin
            lay.forward_w, lay.forward_blocks = [], []
            for d in range(params.num_directions):
                w_hh_tb, mb_hh = col_blocks(params, ("w_hh_t", layer, d), prep.w_hh_t[d], B,
                                            True, cfg)
                w_hr_tb, mb_hr = col_blocks(params, ("w_hr_t", layer, d), prep.w_hr_t[d], B,
                                            True, cfg)
                lay.forward_w.append((prep.bias[d], w_hh_tb, w_hr_tb))
                lay.forward_blocks.append((mb_hh, mb_hr, 1))
            self.layers.append(lay)

    def _pinned(self, lay):
        return single_threaded_blas() if lay.pin else cpu._NO_PIN

    def forward(self, x, h0, c0, lengths, masks=None, training=False):
        """``lstm_forward``'s results for this shape (``x`` (T, B, I) C-contiguous, the
        params' dtype; ``lengths`` None for all T)."""
        params, T, B = self.params, self.T, self.B
        L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, \
            params.output_size
        dt, e3, G = params.dtype, self._e3, 4 * params.hidden_size
        lengths = self.full if lengths is None else lengths
        h_n = np.empty((L * D, B, P), dt)
        c_n = np.empty((L * D, B, H), dt)
        layer_in, saved = x, []
        for layer, lay in enumerate(self.layers):
            y = aligned_empty((T, B, D * P), dt)
            gates, cells = [], []
            with self._pinned(lay):
                xg = cpu.workspace("xg", (T * B, D * G), dt)
                matmul_into(layer_in.reshape(T * B, -1), lay.w_ih_cat_t, xg)
                xg = xg.reshape(T, B, D * G)
                for d in range(D):
                    k = layer * D + d
                    g, c = (aligned_empty((T, B, G), dt), aligned_empty((T, B, H), dt)) \
                        if training else (e3, e3)
                    recurrence_forward((xg, d * G, e3, e3, 0), lay.forward_w[d], h0[k], c0[k],
                                       lengths, d == 1, (y, d * P, 0, h_n[k], c_n[k]),
                                       (g, c, e3), training, lay.forward_blocks[d])
                    gates.append(g)
                    cells.append(c)
            if training:
                saved.append(LayerState(x=layer_in, y=y, gates=tuple(gates), cells=tuple(cells)))
            layer_in = y * masks[layer] if (masks is not None and layer < L - 1) else y
        state = None
        if training:
            state = TrainingState("cpu", params, params.version, tuple(saved), h0, c0, lengths,
                                  tuple(masks) if masks is not None else (), ("serial",) * L)
        return layer_in, h_n, c_n, state

    @functools.cached_property
    def _backward_w(self):
        params, B, cfg = self.params, self.B, self.cfg
        out = []
        for layer in range(params.num_layers):
            prep = _prepare(params, layer)
            per_d = []
            for d in range(params.num_directions):
                w_hh_b, mb_hh = col_blocks(params, ("w_hh", layer, d), prep.w_hh[d], B, True, cfg)
                w_hr_b, mb_hr = col_blocks(params, ("w_hr", layer, d), prep.w_hr[d], B, True, cfg)
                per_d.append(((w_hh_b, w_hr_b, self._e3), (mb_hh, mb_hr, 1)))
            out.append(per_d)
        return out

    def backward(self, state, dy, dh_n, dc_n):
        """``lstm_backward``'s results for a state this plan's shape left (every layer
        serial, no kernel-written rows)."""
        params, T, B = self.params, self.T, self.B
        L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, \
            params.output_size
        dt, e3, G, rows = params.dtype, self._e3, 4 * H, T * B
        e2 = np.empty((0, 0), dt)
        proj = params.proj_size > 0
        dh0, dc0 = np.empty_like(dh_n), np.empty_like(dc_n)
        per_layer = [None] * L
        dy_layer = np.ascontiguousarray(dy)
        for layer in reversed(range(L)):
            sv, lay = state.layers[layer], self.layers[layer]
            I_l = sv.x.shape[2]
            dxs = [np.empty((T, B, I_l), dt) for _ in range(D)]
            dirs = []
            with self._pinned(lay):
                for d in range(D):
                    k = layer * D + d
                    w, blocks = self._backward_w[layer][d]
                    gates, cells = sv.gates[d], sv.cells[d]
                    dg = cpu.workspace("dgates", (T, B, G), dt)
                    dhp = cpu.workspace("dhp", (T, B, P), dt) if proj else e3
                    db = np.empty(G, dt)
                    recurrence_backward(dy_layer, d * P, 0, (gates, cells, e3), state.c0[k],
                                        dh_n[k], dc_n[k], state.lengths, d == 1, w,
                                        (dg, dhp, 0, dh0[k], dc0[k], e3, db), blocks)
                    hp = np.empty((T, B, P), dt)
                    stack_x_hprev(np.empty((T, B, 0), dt), 0, sv.y, d * P, state.h0[k],
                                  state.lengths, d == 1, hp)
                    dw_ih, dw_hh = np.empty((G, I_l), dt), np.empty((G, P), dt)
                    grad_gemms(dg.reshape(rows, G), sv.x.reshape(rows, I_l), hp.reshape(rows, P),
                               lay.w_ih[d], dxs[d].reshape(rows, I_l), dw_ih, dw_hh)
                    dw_hr = None
                    if proj:
                        hh = gates[:, :, 3 * H:] * np.tanh(cells)  # o * tanh(c); 0 padded
                        dw_hr = np.empty((P, H), dt)
                        matmul_tn_into(dhp.reshape(rows, P), hh.reshape(rows, H), dw_hr)
                    dirs.append((dw_ih, dw_hh, db if params.bias else None, dw_hr))
            dx = dxs[0]
            if D > 1:
                dx += dxs[1]
            per_layer[layer] = dirs
            if layer > 0 and state.masks:
                dx *= state.masks[layer - 1]
            dy_layer = dx
        return dy_layer, dh0, dc0, params.named_grads(per_layer)
