"""The LSTM recurrence on the CPU: one compiled loop over time per layer and direction.

Gate order ``i, f, g, o`` (PyTorch's). Shapes, for one layer and one direction::

    xg       (T, B, D*4H)  input projection of all steps, biases included; this direction's
                           gates are columns [xg_off, xg_off + 4H)
    w_hh_tb  (n, H_out, 4H/n)  W_hh transposed, split into n column blocks (see below)
    w_hr_tb  (m, H, P/m)       W_hr transposed, in m column blocks ((0, 0, 0) without projection)
    h0, c0   (B, H_out), (B, H)
    lengths  (B,) int64    valid steps per sequence (1..T)
    y        (T, B, D*H_out) layer output; this direction writes columns [y_off, y_off + H_out)

Each step: ``z = h @ W_hh^T`` for the whole batch (BLAS: measured faster than hand-written
loops at every batch size, even B = 1 — see bench/NOTES.md). The product is issued as n
column blocks, each small enough (M*K*N <= 1e6) for OpenBLAS's small-matrix kernel, which
skips packing the weights on every call: ~110 GFLOP/s on one core against 36-95 for one
call at B = 8..128 (measured; ``fastlstm/backends/cpu.py::block_shape`` picks the blocks, also
splitting rows when even 16 columns are over the threshold). Then one fused, branch-free,
vectorised pass over each sequence's row adds the input projection and the bias, applies the
activations and updates c and h in place. Steps past a sequence's end leave its state
unchanged and write 0 to ``y``, which gives packed-sequence semantics for both directions
with one shared time loop.

Training mode saves, per step and sequence, the activated gates (4H) and the cell state (H):
everything backward needs besides the layer's input and output (which the caller keeps), or
besides the ``[x_t | h_prev]`` rows, which the forward writes itself when asked (``xh_out``).
"""
from collections import namedtuple

import numpy as np
from .jit import jit

from .activations import half_like, one_like, tanh_row
from .atomics import atomic_store
from .overlap import WAITS, need_block
from .smallgemm import bdot as _bdot

_OPTS = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})

#: ``recurrence_backward``'s ``progress`` when nobody reads it.
NO_PROGRESS = np.zeros(0, np.int64)

#: ``recurrence_forward``'s input projection fed in blocks as the steps reach them
#: (``kernels/cpu/overlap.py``, ``feed_blocks``): the control words and flags, the blocks'
#: edges (steps), ``x`` (T*B, I), ``wb`` (n, I, 4H/n) the column blocks of ``W_ih^T`` for a
#: block's rows in chunks of ``mb`` (as ``_bdot`` takes them: small products, no packing of
#: the weights per block) and ``xg`` (T*B, 4H), the memory of ``StepInput.xg``. Off: ``ctrl``
#: has no entries.
Feed = namedtuple("Feed", ["ctrl", "flags", "edges", "x", "wb", "mb", "xg"])

_no_feed = {}


def no_feed(dtype):
    """The :data:`Feed` that is off, for kernels of ``dtype`` (a plain tuple)."""
    dtype = np.dtype(dtype)
    f = _no_feed.get(dtype)
    if f is None:
        e2 = np.zeros((0, 0), dtype)
        f = _no_feed[dtype] = (NO_PROGRESS, NO_PROGRESS, NO_PROGRESS, e2,
                               np.zeros((0, 0, 0), dtype), 1, e2)
    return f

# The kernels' grouped arguments, passed as plain tuples in these layouts (Numba types a plain
# tuple in C; a namedtuple would cost a Python-level typeof on every call). An optional part
# that is off is an empty (0, 0, 0) array: the kernels are compiled once per dtype for every
# combination.

#: Rows per chunk of the three per-step products ``h @ W_hh^T``, ``(o*tanh c) @ W_hr^T`` and
#: ``x_t @ W_ih^T`` (forward; in backward the same products transposed); >= B: unchunked.
Blocks = namedtuple("Blocks", ["hh", "hr", "ih"])

#: A forward task's input projection. Either ``xg`` (T, B', D*4H), precomputed for all steps
#: (this direction's gates are columns ``[xg_off, xg_off + 4H)``), or, when ``x`` has steps,
#: per step: ``x`` (T, B', I) is the layer input and ``w_ih_tb`` (n, I, 4H/n) the column
#: blocks of W_ih^T. ``row0``: the first row of the task's sequences in ``xg`` / ``x``.
StepInput = namedtuple("StepInput", ["xg", "xg_off", "x", "w_ih_tb", "row0"])

#: ``bias`` (4H,) = b_ih + b_hh (zeros without biases); ``w_hh_tb`` (n, H_out, 4H/n) and
#: ``w_hr_tb`` (m, H, P/m): column blocks of W_hh^T and W_hr^T ((0, 0, 0) without projection).
ForwardWeights = namedtuple("ForwardWeights", ["bias", "w_hh_tb", "w_hr_tb"])

#: ``y`` (T, B, D*H_out): the layer output, this direction's columns from ``y_off``, the
#: task's rows from ``b0``; ``h_n`` (B', H_out), ``c_n`` (B', H): the task's final states.
ForwardOut = namedtuple("ForwardOut", ["y", "y_off", "b0", "h_n", "c_n"])

#: What training saves: ``gates`` (T, B, 4H) activated gates and ``cells`` (T, B, H) cell
#: states (rows from the task's ``b0``; (0, 0, 0) in inference), and ``xh`` (T, B', I + H_out),
#: the task's ``[x_t | h_prev]`` rows (rows from 0; (0, 0, 0): not written).
Saved = namedtuple("Saved", ["gates", "cells", "xh"])

#: Backward: column blocks of the untransposed ``w_hh_b`` (n, 4H, H_out/n), ``w_hr_b``
#: (m, P, H/m) ((0, 0, 0) without projection) and ``w_ih_b`` (k, 4H, I/k) ((0, 0, 0): the
#: caller computes dx).
BackwardWeights = namedtuple("BackwardWeights", ["w_hh_b", "w_hr_b", "w_ih_b"])

#: Backward results: ``dgates`` (T, ., 4H) pre-activation gate gradients (rows from ``g0``),
#: ``dhp`` (T, ., P) projected-output gradients (rows from ``g0``; (0, 0, 0) without
#: projection), ``dh0``, ``dc0`` (B', .), ``dx`` (T, B, I) (rows from the task's ``b0``; only
#: with ``w_ih_b``), ``db`` (4H,) (shape (0,): not computed).
BackwardOut = namedtuple("BackwardOut", ["dgates", "dhp", "g0", "dh0", "dc0", "dx", "db"])

@jit(**_OPTS)
def _cell_forward(zb, xb, bias, cb, hhb, H, s1, s2):
    """One sequence's step, row-wise so every loop vectorises.

    Gates ``zb + xb + bias`` (4H each) are activated in place in ``zb``; c (``cb``) and
    ``o * tanh(c)`` (``hhb``) are updated. ``s1`` (4H) and ``s2`` (>= H) are scratch rows.
    sigmoid(a) = 0.5 * tanh(a / 2) + 0.5, so one tanh pass over the row serves all four gates.
    """
    half = half_like(zb[0])
    G = 4 * H
    for g in range(G):
        zb[g] = zb[g] + xb[g] + bias[g]
    for g in range(2 * H):
        zb[g] = half * zb[g]
    for g in range(3 * H, G):
        zb[g] = half * zb[g]
    tanh_row(zb, zb, s1)
    for j in range(H):
        gi = half * zb[j] + half
        gf = half * zb[H + j] + half
        go = half * zb[3 * H + j] + half
        zb[j] = gi
        zb[H + j] = gf
        zb[3 * H + j] = go
        cb[j] = gf * cb[j] + gi * zb[2 * H + j]
    tc = s2[:H]
    tanh_row(cb, tc, s1)
    for j in range(H):
        hhb[j] = zb[3 * H + j] * tc[j]


@jit(**_OPTS)
def _by_length(lengths):
    """Rows in order of decreasing length (stable), the sorted lengths, and whether the order
    is the identity. At any step the sequences still running are a prefix of this order."""
    order = np.argsort(-lengths, kind="mergesort")
    sorted_len = lengths[order]
    identity = True
    for i in range(order.shape[0]):
        if order[i] != i:
            identity = False
    return order, sorted_len, identity


@jit(**_OPTS)
def _scatter_rows(src, dst, off, order, n_act):
    """``dst[off + order[i]] = src[i]`` for the ``n_act`` running sequences (sorted rows back
    to row order), 0 for the finished rest."""
    for i in range(n_act):
        dst[off + order[i], :] = src[i]
    for i in range(n_act, order.shape[0]):
        dst[off + order[i], :] = 0.0


@jit(**_OPTS)
def _active_rows(sorted_len, n_act, t):
    """How many sequences (a prefix of the sorted rows) are still running at step t."""
    B = sorted_len.shape[0]
    while n_act > 0 and sorted_len[n_act - 1] <= t:
        n_act -= 1
    while n_act < B and sorted_len[n_act] > t:
        n_act += 1
    return n_act


@jit(**_OPTS)
def recurrence_forward(inp, w, h0, c0, lengths, reverse, out, saved, training, blocks, feed):
    """Forward through one direction of one layer for B = ``h0.shape[0]`` sequences.

    ``inp`` (:data:`StepInput`): the input projection, precomputed or per step (each step
    multiplies the running sequences' rows of ``inp.x`` by ``W_ih^T``, like ``W_hh^T``).
    ``w`` (:data:`ForwardWeights`), ``out`` (:data:`ForwardOut`), ``saved`` (:data:`Saved`),
    ``blocks`` (:data:`Blocks`). ``h0``, ``c0`` (B, .), ``lengths`` (B,) hold just the task's
    rows. Disjoint row ranges can run concurrently (the CPU backend's tasks).

    The state is kept with its rows sorted by decreasing length, so the per-step products run
    over the sequences still running only (a prefix): finished sequences cost nothing.

    With the input projection per step, ``xh_out`` (T, B, I + H_out) instead of an empty
    (0, 0, 0) array receives each step's ``[x_t | h_prev]`` rows (rows from 0): the operand of
    the weight-gradient GEMM (``stack_x_hprev``'s layout), written while the rows are in cache.
    On padded steps the x part is 0 and the h part the state held then (the final state
    going forward, h0 in reverse): finite, and their gate gradients are 0.

    With a ``feed`` (:data:`Feed`; forward in time only), ``xg`` is written block by block as
    the steps reach it, here or by another thread (the pause loops waited for it are added to
    ``feed.ctrl[WAITS]``)."""
    xg, xg_off, x_in, w_ih_tb, xb0 = inp
    f_ctrl, f_flags, f_edges, f_x, f_wb, f_mb, f_xg = feed
    feeding = f_ctrl.shape[0] > 0
    fk = 0  # the next block of the feed not yet known to be written
    bias, w_hh_tb, w_hr_tb = w
    y, y_off, b0, h_n, c_n = out
    gates_out, c_out, xh_out = saved
    mb_hh, mb_hr, mb_ih = blocks
    T, B = y.shape[0], h0.shape[0]
    H = c0.shape[1]
    P = h0.shape[1]
    G = 4 * H
    I = x_in.shape[2] if x_in.shape[0] > 0 else 0  # 0 unless the projection runs per step
    has_proj = w_hr_tb.shape[0] > 0
    order, sorted_len, identity = _by_length(lengths)
    zp = np.empty((w_hh_tb.shape[0], B, w_hh_tb.shape[2]), dtype=y.dtype)
    hpp = np.empty((w_hr_tb.shape[0], B, w_hr_tb.shape[2]), dtype=y.dtype)
    zpx = np.empty((w_ih_tb.shape[0], B, w_ih_tb.shape[2]), dtype=y.dtype)
    xs = np.empty((B, I), dtype=y.dtype)  # row i: sequence order[i], as for h and c
    xz = np.empty((B, G if I else 0), dtype=y.dtype)
    h = np.empty((B, P), dtype=y.dtype)
    c = np.empty((B, H), dtype=y.dtype)
    for i in range(B):
        h[i, :] = h0[order[i]]
        c[i, :] = c0[order[i]]
    z_work = np.empty((B, G), dtype=y.dtype)
    hh = np.empty((B, H), dtype=y.dtype)  # o * tanh(c) before the projection
    hp = np.empty((B, P), dtype=y.dtype)
    s1 = np.empty(G, dtype=y.dtype)
    s2 = np.empty(G, dtype=y.dtype)
    direct = training and identity
    save_xh = I > 0 and xh_out.shape[0] > 0
    n_act = 0
    for s in range(T):
        t = T - 1 - s if reverse else s
        n_act = _active_rows(sorted_len, n_act, t)
        # Training in sorted order: the gates are activated in place in the saved buffer.
        z = gates_out[t, b0:b0 + B] if direct else z_work
        if n_act > 0:
            _bdot(h[:n_act], w_hh_tb, zp, z[:n_act], mb_hh)
            if I > 0:
                for i in range(n_act):
                    xs[i, :] = x_in[t, xb0 + order[i]]
                _bdot(xs[:n_act], w_ih_tb, zpx, xz[:n_act], mb_ih)
        if save_xh:
            for i in range(B):
                row = xh_out[t, order[i]]
                if i < n_act:
                    row[:I] = xs[i]
                else:
                    row[:I] = 0.0
                row[I:] = h[i]  # the state this step reads
        while feeding and fk < f_edges.shape[0] - 1 and f_edges[fk] <= t:
            f_ctrl[WAITS] += need_block(f_ctrl, f_flags, f_edges, B, f_x, f_wb, f_mb, f_xg, fk)
            fk += 1
        for i in range(n_act):
            b = order[i]
            xb = xz[i] if I else xg[t, xb0 + b, xg_off:xg_off + G]
            _cell_forward(z[i], xb, bias, c[i], hh[i], H, s1, s2)
            if training:
                if not direct:
                    gates_out[t, b0 + b, :] = z[i]
                c_out[t, b0 + b, :] = c[i]
        for i in range(n_act, B):
            b = order[i]
            y[t, b0 + b, y_off:y_off + P] = 0.0
            if training:
                gates_out[t, b0 + b, :] = 0.0
                c_out[t, b0 + b, :] = 0.0
        if has_proj:
            if n_act > 0:
                _bdot(hh[:n_act], w_hr_tb, hpp, hp[:n_act], mb_hr)
            src = hp
        else:
            src = hh
        for i in range(n_act):
            yb = y[t, b0 + order[i], y_off:y_off + P]
            sb = src[i]
            hb = h[i]
            for k in range(P):
                hb[k] = sb[k]
                yb[k] = sb[k]
    for i in range(B):
        h_n[order[i], :] = h[i]
        c_n[order[i], :] = c[i]


@jit(**_OPTS)
def _cell_backward(dzb, gb, cb, cpb, dhb, dcb, H, s1, s2):
    """One sequence's step: gate gradients (dzb: 4H) from d(h) (dhb) and the carried dc (dcb).

    ``gb`` holds the activated gates, ``cb`` / ``cpb`` this and the previous cell state;
    ``s1`` (4H) and ``s2`` (>= H) are scratch rows.
    """
    one = one_like(gb[0])
    tc = s2[:H]
    tanh_row(cb, tc, s1)
    for j in range(H):
        gi = gb[j]
        gf = gb[H + j]
        gg = gb[2 * H + j]
        go = gb[3 * H + j]
        t = tc[j]
        d_h = dhb[j]
        dct = dcb[j] + d_h * go * (one - t * t)
        dzb[j] = dct * gg * gi * (one - gi)
        dzb[H + j] = dct * cpb[j] * gf * (one - gf)
        dzb[2 * H + j] = dct * gi * (one - gg * gg)
        dzb[3 * H + j] = d_h * t * go * (one - go)
        dcb[j] = dct * gf


@jit(**_OPTS)
def recurrence_backward(dy, dy_off, b0, saved, c0, dh_n, dc_n, lengths, reverse, w, out, blocks,
                        progress):
    """Backward through one direction of one layer for B = ``c0.shape[0]`` sequences.

    ``dy`` (T, B, D*H_out) is the gradient of the layer output (this direction's columns start
    at ``dy_off``, the task's rows at ``b0``, as in ``saved`` (:data:`Saved`: the forward's
    gates and cells)). ``c0``, ``dh_n``, ``dc_n`` (B, .) and ``lengths`` hold just the task's
    rows. ``w`` (:data:`BackwardWeights`), ``out`` (:data:`BackwardOut`), ``blocks``
    (:data:`Blocks`).

    Writes the gate gradients (0 on padded steps; a task may keep its own, contiguous array:
    rows from ``out.g0``), the projected-output gradients (with a projection), ``dh0``,
    ``dc0``; with ``w.w_ih_b``, each step's ``dx[t]`` = that step's gate gradients @ W_ih
    (0 for finished sequences) while they are still in cache; with ``out.db`` of 4H
    entries, the bias gradient (the sum of the gate gradients) likewise. The weight
    gradients are whole-sequence GEMMs done by the caller. With a ``progress`` word (int64, one
    entry; none: no entries), the number of steps done is stored there after each step (a
    release store), so another thread may read each step's gate gradients (and ``dx`` rows)
    while the loop goes on.
    """
    gates, cs, _ = saved
    track = progress.shape[0] > 0
    w_hh_b, w_hr_b, w_ih_b = w
    dgates, dhp_out, g0, dh0, dc0, dx, db = out
    mb_hh, mb_hr, mb_ih = blocks
    T, B = gates.shape[0], c0.shape[0]
    H = cs.shape[2]
    P = dh_n.shape[1]
    has_proj = w_hr_b.shape[0] > 0
    order, sorted_len, identity = _by_length(lengths)
    dh = np.empty((B, P), dtype=gates.dtype)  # row i: sequence order[i], as in the forward
    dc = np.empty((B, H), dtype=gates.dtype)
    for i in range(B):
        dh[i, :] = dh_n[order[i]]
        dc[i, :] = dc_n[order[i]]
    dhp = np.empty((B, P), dtype=gates.dtype)
    dhh = np.empty((B, H), dtype=gates.dtype)
    dh_new = np.empty((B, P), dtype=gates.dtype)
    dg_work = np.empty((B, 4 * H), dtype=gates.dtype)
    zp = np.empty((w_hh_b.shape[0], B, w_hh_b.shape[2]), dtype=gates.dtype)
    zpp = np.empty((w_hr_b.shape[0], B, w_hr_b.shape[2]), dtype=gates.dtype)
    s1 = np.empty(4 * H, dtype=gates.dtype)
    s2 = np.empty(4 * H, dtype=gates.dtype)
    I = dx.shape[2] if w_ih_b.shape[0] > 0 else 0
    zpx = np.empty((w_ih_b.shape[0], B, w_ih_b.shape[2]), dtype=gates.dtype)
    dxs = np.empty((B if I and not identity else 0, I), dtype=gates.dtype)  # sorted rows
    want_db = db.shape[0] > 0
    if want_db:
        db[:] = 0.0
    n_act = 0
    for s in range(T):
        t = s if reverse else T - 1 - s
        n_act = _active_rows(sorted_len, n_act, t)
        for i in range(n_act):
            dyb = dy[t, b0 + order[i], dy_off:dy_off + P]
            dpb = dhp[i]
            dhb = dh[i]
            for k in range(P):
                dpb[k] = dyb[k] + dhb[k]
        if has_proj:
            _scatter_rows(dhp, dhp_out[t], g0, order, n_act)
            if n_act > 0:
                _bdot(dhp[:n_act], w_hr_b, zpp, dhh[:n_act], mb_hr)
            src = dhh
        else:
            src = dhp
        dgt = dgates[t, g0:g0 + B] if identity else dg_work
        for i in range(n_act):
            b = order[i]
            first = (t == lengths[b] - 1) if reverse else (t == 0)
            cprev = c0[b] if first else (cs[t + 1, b0 + b] if reverse else cs[t - 1, b0 + b])
            _cell_backward(dgt[i], gates[t, b0 + b], cs[t, b0 + b], cprev, src[i], dc[i], H,
                           s1, s2)
            if not identity:
                dgates[t, g0 + b, :] = dgt[i]
        for i in range(n_act, B):
            dgates[t, g0 + order[i], :] = 0.0
        if want_db:
            for i in range(n_act):
                db += dgt[i]
        if I > 0:
            if identity:  # sorted order is row order: straight into this step's rows
                if n_act > 0:
                    _bdot(dgt[:n_act], w_ih_b, zpx, dx[t, b0:b0 + n_act], mb_ih)
                dx[t, b0 + n_act:b0 + B] = 0.0
            else:
                if n_act > 0:
                    _bdot(dgt[:n_act], w_ih_b, zpx, dxs[:n_act], mb_ih)
                _scatter_rows(dxs, dx[t], b0, order, n_act)
        if n_act > 0:
            _bdot(dgt[:n_act], w_hh_b, zp, dh_new[:n_act], mb_hh)
            for i in range(n_act):
                dh[i, :] = dh_new[i]
        if track:
            atomic_store(progress, 0, s + 1)
    for i in range(B):
        dh0[order[i], :] = dh[i]
        dc0[order[i], :] = dc[i]


@jit(**_OPTS)
def stack_x_hprev(x, b0, y, y_off, h0, lengths, reverse, out):
    """The operand of a direction's weight-gradient GEMM, ``dW = dgates^T out``.

    ``out`` (T, B, I + P), row (t, b) = ``[x[t, b0 + b] | h_prev]``, where h_prev is the state
    step t of this direction read: ``h0[b]`` at its first step (forward: t = 0; reverse: the
    sequence's last valid step), else the output of the step before it (``y`` rows from
    ``b0``, columns from ``y_off``). Outputs are exactly 0 past each sequence's end, so padded
    steps get finite values (their gate gradients are 0). Compiled so the tasks copy without
    the GIL."""
    T, B = out.shape[0], out.shape[1]
    I = x.shape[2]
    P = h0.shape[1]
    for t in range(T):
        for b in range(B):
            o = out[t, b]
            o[:I] = x[t, b0 + b]
            hp = o[I:]
            if reverse:
                if t == lengths[b] - 1:
                    hp[:] = h0[b]
                elif t + 1 < T:
                    hp[:] = y[t + 1, b0 + b, y_off:y_off + P]
                else:
                    hp[:] = 0.0
            elif t == 0:
                hp[:] = h0[b]
            else:
                hp[:] = y[t - 1, b0 + b, y_off:y_off + P]


@jit(**_OPTS)
def projection_grad(gates, cells, b0, dhp, out):
    """``dW_hr = dhp^T (o * tanh(c))`` over a task's rows: ``gates`` (T, B, 4H) and ``cells``
    (T, B, H) the forward's (rows from ``b0``), ``dhp`` (T, Bw, P) the projected-output
    gradients, ``out`` (P, H). Padded steps have ``o = 0``, so they add nothing. Compiled so a
    parallel layer's tasks each do their own without the GIL."""
    T, Bw, P = dhp.shape[0], dhp.shape[1], dhp.shape[2]
    H = cells.shape[2]
    hh = np.empty((T * Bw, H), dtype=out.dtype)
    s = np.empty(H, dtype=out.dtype)
    for t in range(T):
        for b in range(Bw):
            row = hh[t * Bw + b]
            tanh_row(cells[t, b0 + b], row, s)
            g = gates[t, b0 + b]
            for j in range(H):
                row[j] = g[3 * H + j] * row[j]
    np.dot(dhp.reshape(T * Bw, P).T, hh, out)
