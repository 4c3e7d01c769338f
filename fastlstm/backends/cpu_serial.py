"""The CPU backend's serial path with a plan per batch size: what a repeated call reads,
looked up once.

A call whose every layer runs serially (one thread per layer: ``plan_tasks`` gives no tasks,
and inference layers would not take the two-core path) does, per layer and direction, one
input GEMM, one recurrence and, in backward, one set of gradient GEMMs. The general code
(``fastlstm/backends/cpu.py``) decides each of those per call: the tasks, the BLAS pinning,
the weight layouts' lookups, the kernels' argument tuples; ~30 us of Python per forward at
(100, 1, 32, 64), a sixth of the call (bench/NOTES.md, "A plan per batch size").

:class:`SerialPlan` makes those decisions once per params, batch size, mode and configuration
(kept as long as the params, across versions; what depends on the number of steps is memoised
per step count inside it) and runs the same kernels with the same arguments, so its results
are bitwise those of the general path. When the params' version has moved (an optimizer step
on shared torch tensors, ``update_``), the plan's weight layouts are recomputed in place by the
compiled copies that built them, with none of the lookups.
"""
from __future__ import annotations

import functools
import os
import threading
import weakref

import numpy as np

from ..kernels.cpu.pack import block_columns_into, transpose_into
from ..kernels.cpu.parallel import matmul_into, matmul_tn_into, single_threaded_blas
from ..kernels.cpu.recurrence import (no_feed, recurrence_backward, recurrence_forward,
                                      stack_x_hprev)
from ..kernels.cpu.smallgemm import aligned_empty
from . import cpu, cpu_duo, cpu_overlap
from .cpu_layouts import _prepare, col_blocks
from .state import LayerState, TrainingState

__all__ = ["SerialPlan", "serial_plan", "plans_of"]

_STEP_COUNTS_KEPT = 256  # per plan: what the number of steps decides, for this many of them


_plans: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # params -> {key: plan}
_plans_lock = threading.Lock()
_PLANS_KEPT = 32  # per params: (batch size, mode, configuration) combinations


def _forget_plans():
    """In a forked child: the parent's plans may be locked by a thread the child does not
    have; the child makes its own."""
    global _plans, _plans_lock
    _plans, _plans_lock = weakref.WeakKeyDictionary(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_plans)


def plans_of(params) -> dict:
    """The plans kept for ``params``: {(batch size, training, CPUConfig): SerialPlan}."""
    return _plans.get(params, {})


def serial_plan(params, T: int, B: int, training: bool, cfg) -> "SerialPlan | None":
    """The plan for a call of ``T`` steps and ``B`` sequences (``B > 0``) with ``cfg``, or None
    when some layer would run on more than one thread (then the general path runs it).

    Plans live as long as their params, across versions: what decides the path depends on
    shapes only, and the layouts are refilled in place when the version has moved."""
    if not cfg.serial_plans:
        return None
    mine = _plans.get(params)
    if mine is None:
        with _plans_lock:
            mine = _plans.setdefault(params, {})
    key = (B, training, cfg)
    plan = mine.get(key)
    if plan is None:
        if len(mine) >= _PLANS_KEPT:
            mine.clear()
        plan = mine.setdefault(key, SerialPlan(params, B, training, cfg))
    steps = plan.per_steps.get(T)
    if steps is None:
        steps = plan.decide(T)
    if steps is False:
        return None
    if plan.version != params.version:
        plan.sync()
    return plan


def _bias_into(b_ih, b_hh, out):
    if b_ih is None:
        out.fill(0)
    else:
        np.add(b_ih, b_hh, out=out)


def _concat_into(parts, out):
    np.concatenate(parts, axis=1, out=out)


class _Layer:
    """One layer's weights and the kernels' fixed arguments, per direction."""
    __slots__ = ("I", "w_ih_cat_t", "w_ih", "forward_w", "forward_blocks", "backward_w")


class SerialPlan:
    """The serial path for calls of one batch size; shared by threads once built (scratch
    comes from each thread's ``workspace``)."""

    def __init__(self, params, B, training, cfg):
        # weakly: the plans' registry is keyed by the params and must not keep them alive
        self._params = weakref.ref(params)
        self.B, self.training, self.cfg = B, training, cfg
        self._e3 = np.empty((0, 0, 0), params.dtype)
        #: the params version the layouts hold (-1: not built)
        self.version = -1
        self._lock = threading.Lock()
        #: per step count: False (not serial) or what :meth:`decide` gives per layer
        self.per_steps = {}
        #: (function, arguments): the copies that recompute the layouts from the parameters
        self._refills = []
        self.layers = None

    @functools.cached_property
    def zeros(self):
        """Zero states for the calls that give none (read by the kernels only, shared by
        calls; writable: the kernels are compiled for writable arrays)."""
        p, B = self.params, self.B
        LD, dt = p.num_layers * p.num_directions, p.dtype
        return np.zeros((LD, B, p.output_size), dt), np.zeros((LD, B, p.hidden_size), dt)

    def build_layouts(self):
        """Each layer's weight layouts and the kernels' fixed arguments."""
        params = self.params
        L, D, P = params.num_layers, params.num_directions, params.output_size
        layers = []
        for layer in range(L):
            prep = _prepare(params, layer)
            lay = _Layer()
            lay.I = params.input_size if layer == 0 else D * P
            lay.w_ih_cat_t, lay.w_ih, lay.backward_w = prep.w_ih_cat_t, prep.w_ih, None
            lay.forward_w, lay.forward_blocks = [], []
            for d in range(D):
                w_ih, w_hh, b_ih, b_hh, _ = params.layer_weights(layer, d)
                self._refills += [(_bias_into, (b_ih, b_hh, prep.bias[d])),
                                  (transpose_into, (w_ih, prep.w_ih_t[d])),
                                  (transpose_into, (w_hh, prep.w_hh_t[d]))]
                if prep.w_hr[d].size:
                    self._refills.append((transpose_into, (prep.w_hr[d], prep.w_hr_t[d])))
                w_hh_tb, mb_hh = self._blocks(("w_hh_t", layer, d), prep.w_hh_t[d])
                w_hr_tb, mb_hr = self._blocks(("w_hr_t", layer, d), prep.w_hr_t[d])
                lay.forward_w.append((prep.bias[d], w_hh_tb, w_hr_tb))
                lay.forward_blocks.append((mb_hh, mb_hr, 1))
            if D > 1:
                self._refills.append((_concat_into, (prep.w_ih_t, prep.w_ih_cat_t)))
            layers.append(lay)
        self.layers = layers

    def _blocks(self, key, w):
        """``col_blocks`` for this plan's products, and the copy that refills them (none for
        a view of ``w``)."""
        blocks, mb = col_blocks(self.params, key, w, self.B, True, self.cfg)
        if blocks.size and not np.may_share_memory(blocks, w):
            self._refills.append((block_columns_into, (w, blocks)))
        return blocks, mb

    def decide(self, T):
        """What the number of steps decides: False when some layer would not run serially
        (the general path's rules), else per layer its BLAS pinning (a context manager's
        class, or None), the forward's feed blocks and the backward's chunks
        (``cpu_overlap``)."""
        params, cfg, B = self.params, self.cfg, self.B
        L, D = params.num_layers, params.num_directions
        H, P = params.hidden_size, params.output_size
        full = np.full(B, T, np.int64)  # the two-core path takes equal lengths only
        steps = []
        for layer in range(L):
            I = params.input_size if layer == 0 else D * P
            flop = cpu._layer_flop(T, B, I, H, P, D, params.proj_size)
            if (cpu.plan_tasks(D, B, flop, cfg) is not None
                    or cpu_duo.eligible(params, T, B, I, full, self.training, cfg)):
                steps = False
                break
            pinned = cpu._pin_serial(flop, cfg)
            steps.append((single_threaded_blas if pinned else None,
                          cpu_overlap.forward_edges(T, B, I, H, D, pinned, cfg),
                          cpu_overlap.backward_edges(T, B, I, H, P, D, params.proj_size > 0,
                                                     cfg)))
        if len(self.per_steps) >= _STEP_COUNTS_KEPT:
            self.per_steps.clear()
        self.per_steps[T] = steps
        return steps

    @property
    def params(self):
        return self._params()

    def sync(self):
        """Bring the layouts to the params' current version: built on the first serial call
        (a batch size whose calls all run in parallel never builds them), afterwards
        recomputed in place from the parameters by the compiled copies that built them."""
        with self._lock:
            version = self.params.version
            if self.version == version:
                return  # another thread did it
            if self.layers is None:
                self.build_layouts()
            else:
                for fn, args in self._refills:
                    fn(*args)
            self.version = version

    def forward(self, x, h0, c0, lengths, masks=None, training=False):
        """``lstm_forward``'s results (``x`` (T, B, I) C-contiguous, the params' dtype;
        ``lengths`` None for all T)."""
        params, B = self.params, self.B
        T = x.shape[0]
        steps = self.per_steps.get(T) or self.decide(T)
        L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, \
            params.output_size
        dt, e3, G = params.dtype, self._e3, 4 * params.hidden_size
        if lengths is None:
            lengths = np.full(B, T, np.int64)
        h_n = np.empty((L * D, B, P), dt)
        c_n = np.empty((L * D, B, H), dt)
        layer_in, saved = x, []
        for layer, lay in enumerate(self.layers):
            y = aligned_empty((T, B, D * P), dt)
            gates, cells = [], []
            pin, feed, _ = steps[layer]
            with pin() if pin else cpu._NO_PIN:
                xg2 = cpu.workspace("xg", (T * B, D * G), dt)
                x2 = layer_in.reshape(T * B, -1)
                if feed is None:  # else computed as the recurrence reaches it
                    matmul_into(x2, lay.w_ih_cat_t, xg2)
                xg = xg2.reshape(T, B, D * G)
                for d in range(D):
                    k = layer * D + d
                    g, c = (aligned_empty((T, B, G), dt), aligned_empty((T, B, H), dt)) \
                        if training else (e3, e3)

                    def rec(fed):
                        recurrence_forward((xg, d * G, e3, e3, 0), lay.forward_w[d], h0[k],
                                           c0[k], lengths, d == 1, (y, d * P, 0, h_n[k], c_n[k]),
                                           (g, c, e3), training, lay.forward_blocks[d], fed)
                    if feed is None:
                        rec(no_feed(dt))
                    else:
                        cpu_overlap.recurrence_fed(rec, feed, params, layer, x2, lay.w_ih_cat_t,
                                                   xg2, B, self.cfg)
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

    def _backward_weights(self, layer):
        """The backward's weight blocks of one layer, built on the first backward (and from
        then on refilled with the others)."""
        lay = self.layers[layer]
        if lay.backward_w is None:
            with self._lock:
                if lay.backward_w is None:
                    prep = _prepare(self.params, layer)
                    per_d = []
                    for d in range(self.params.num_directions):
                        w_hh_b, mb_hh = self._blocks(("w_hh", layer, d), prep.w_hh[d])
                        w_hr_b, mb_hr = self._blocks(("w_hr", layer, d), prep.w_hr[d])
                        per_d.append(((w_hh_b, w_hr_b, self._e3), (mb_hh, mb_hr, 1)))
                    lay.backward_w = per_d
        return lay.backward_w

    def backward(self, state, dy, dh_n, dc_n):
        """``lstm_backward``'s results for a state of this batch size (every layer serial, no
        kernel-written rows)."""
        params, B = self.params, self.B
        T = dy.shape[0]
        steps = self.per_steps.get(T) or self.decide(T)
        L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, \
            params.output_size
        dt, e3, G, rows = params.dtype, self._e3, 4 * H, T * B
        proj = params.proj_size > 0
        dh0, dc0 = np.empty_like(dh_n), np.empty_like(dc_n)
        per_layer = [None] * L
        dy_layer = np.ascontiguousarray(dy)
        for layer in reversed(range(L)):
            sv, lay = state.layers[layer], self.layers[layer]
            weights = self._backward_weights(layer)
            I_l = sv.x.shape[2]
            dxs = [np.empty((T, B, I_l), dt) for _ in range(D)]
            dirs = []
            pin, _, edges = steps[layer]
            with pin() if pin else cpu._NO_PIN:
                for d in range(D):
                    k = layer * D + d
                    w, blocks = weights[d]
                    gates, cells = sv.gates[d], sv.cells[d]
                    dg = cpu.workspace("dgates", (T, B, G), dt)
                    dhp = cpu.workspace("dhp", (T, B, P), dt) if proj else e3
                    db = np.empty(G, dt)
                    hp = np.empty((T, B, P), dt)
                    stack_x_hprev(np.empty((T, B, 0), dt), 0, sv.y, d * P, state.h0[k],
                                  state.lengths, d == 1, hp)
                    dw_ih, dw_hh = np.empty((G, I_l), dt), np.empty((G, P), dt)

                    def rec(progress):
                        recurrence_backward(dy_layer, d * P, 0, (gates, cells, e3), state.c0[k],
                                            dh_n[k], dc_n[k], state.lengths, d == 1, w,
                                            (dg, dhp, 0, dh0[k], dc0[k], e3, db), blocks,
                                            progress)
                    cpu_overlap.recurrence_then_grads(
                        rec, edges, params, layer, d, B, dg.reshape(rows, G),
                        sv.x.reshape(rows, I_l), hp.reshape(rows, P), lay.w_ih[d],
                        dxs[d].reshape(rows, I_l), dw_ih, dw_hh, self.cfg)
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
