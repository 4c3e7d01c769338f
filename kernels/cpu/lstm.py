"""CPU backend: the three phases of each layer (input GEMM, compiled recurrence, gradient GEMMs).

Takes and returns normalised, time-major, C-contiguous arrays of the compute dtype (the API
layer in ``fastlstm.api`` does all validation and layout conversion)::

    x (T, B, I)  h0 (L*D, B, H_out)  c0 (L*D, B, H)  lengths (B,) int64
    masks: None or L-1 arrays (T, B, D*H_out), inter-layer dropout already scaled

Phase 1 (per layer): one GEMM ``(T*B, I) x (I, D*4H)`` for both directions (the biases are
added inside the recurrence's fused loop, saving a pass over the projection).
Phase 2 (per direction): ``recurrence_forward`` / ``recurrence_backward``, compiled loops over time.
Phase 3 (backward, per direction): ``dW_ih = dgates^T x``, ``dW_hh = dgates^T h_prev`` (the
recurrence's outputs, shifted), ``dW_hr`` and ``dx`` as whole-sequence GEMMs; ``db`` is summed
inside the backward recurrence while each step's gate gradients are in cache.

Layers large enough to gain (``plan_tasks``) run as parallel tasks instead: each direction and
batch slice does its own phases 1 and 2 on a worker thread (``kernels/cpu/parallel.py``), phase 1
inside the recurrence: each step's ``x_t @ W_ih^T`` in OpenBLAS's small-matrix blocks, like the
recurrent product (``FUSE_INPUT``). In backward, every task (the serial path's too: one per
direction) runs its recurrence and then its own rows' phase 3, and the partial weight
gradients are summed; a parallel task's recurrence also computes each step's ``dx`` rows while
that step's gate gradients are in cache (``_fuse_dx``), and its ``dW_ih`` and ``dW_hh`` come
from one GEMM over ``[x | h_prev]`` (``stack_x_hprev``), which reads the gate gradients once.
For one layer and one direction the forward kernels write those ``[x | h_prev]`` rows
themselves, and the training cache keeps them instead of the layer's input and output.
Every BLAS call goes to SciPy's OpenBLAS (Numba's ``np.dot``), never NumPy's: two libraries'
idle thread pools would fight over the cores.
"""
from __future__ import annotations

import threading
import weakref

import numpy as np

from .parallel import (add_split, can_pin, grad_gemms, matmul_into, matmul_tn_into, num_threads,
                       run_tasks, single_threaded_blas, split_rows)
from .recurrence import recurrence_backward, recurrence_forward, stack_x_hprev

__all__ = ["lstm_forward", "lstm_backward", "col_blocks", "block_shape", "SMALL_GEMM_MNK",
           "workspace", "release_workspace", "plan_tasks"]

#: OpenBLAS runs products with M*N*K at most this without packing (its small-matrix kernel);
#: the recurrence splits its per-step products into column blocks under it (bench/NOTES.md).
SMALL_GEMM_MNK = 1_000_000


_tls = threading.local()
_all_pools = weakref.WeakSet()  # every live thread's scratch, for release_workspace()


class _Pool:
    """One thread's scratch buffers; the registry holds it weakly, so it goes with its thread."""
    __slots__ = ("bufs", "__weakref__")

    def __init__(self):
        self.bufs = {}


def workspace(key: str, shape: tuple, dtype) -> np.ndarray:
    """A scratch array reused across calls by the same thread (contents undefined).

    Only for arrays no result or cache keeps. A fresh large array costs first-touch page
    faults on every call (50 ms for the 42 MB input projection at T=20, B=128, H=1024:
    bench/NOTES.md); one buffer per key and thread avoids that. Threads never share one.
    Keys: ``xg`` (input projection), ``xw`` (a task's batch slice of the layer input),
    ``dgates`` and ``dhp`` (a task's gate / projected-output gradients), ``dx_part`` (a batch
    slice's input gradient before it goes to its rows), ``xh`` (a task's ``[x | h_prev]``
    rows for its weight-gradient GEMM).
    """
    pool = getattr(_tls, "pool", None)
    if pool is None:
        pool = _tls.pool = _Pool()
        _all_pools.add(pool)
    size = int(np.prod(shape))
    buf = pool.bufs.get(key)
    if buf is None or buf.dtype != np.dtype(dtype) or buf.size < size:
        buf = np.empty(size, dtype)
        pool.bufs[key] = buf
    return buf[:size].reshape(shape)


def release_workspace() -> None:
    """Free the scratch buffers of every thread, fastlstm's worker threads included.

    Safe while other threads compute: a buffer in use stays alive until its call is done."""
    for pool in list(_all_pools):
        pool.bufs.clear()


#: Per-step products larger than this (M*N*K) run as one BLAS call: long enough to amortise
#: waking OpenBLAS's threads. Below it, the blocks run on OpenBLAS's single-threaded
#: small-matrix kernel (measured in the recurrence at 2 threads: bench/NOTES.md).
SPLIT_MAX_MNK = 1 << 26


#: Fewest rows per chunk worth a wider block when no block fits whole rows (measured on one
#: core, bench/NOTES.md item 11: 32 x 30 rows at K = 1024 run at ~108 GFLOP/s, 16 x 61 at ~91).
CHUNK_MIN_ROWS = 24


def block_shape(M: int, K: int, N: int, threaded: bool = True) -> tuple[int, int]:
    """(columns per block, rows per chunk) for the per-step product (M, K) x (K, N).

    One call (N, M) when the product is already under the small-matrix threshold, or over
    SPLIT_MAX_MNK when BLAS may thread it (``threaded``; a parallel task's BLAS is pinned to
    one thread, where blocks always win); else the widest multiple of 16 dividing N with
    M*K*width under the threshold; if even 16 columns are over it, chunks of rows under the
    threshold, in the widest of 64, 32, 16 columns that still gives CHUNK_MIN_ROWS rows (32 or
    16 when none does; N when N has no such divisor).
    """
    if M * K * N <= SMALL_GEMM_MNK or (threaded and M * K * N > SPLIT_MAX_MNK):
        return N, M
    best = 0
    for w in range(16, N, 16):
        if N % w == 0 and M * K * w <= SMALL_GEMM_MNK:
            best = w
    if best:
        return best, M
    widths = [w for w in (64, 32, 16) if N % w == 0 and N > w]
    if not widths:
        return N, max(1, min(M, SMALL_GEMM_MNK // (K * N)))
    w = next((w for w in widths if SMALL_GEMM_MNK // (K * w) >= CHUNK_MIN_ROWS),
             32 if 32 in widths else widths[-1])
    return w, max(1, min(M, SMALL_GEMM_MNK // (K * w)))


def block_width(M: int, K: int, N: int) -> int:
    return block_shape(M, K, N)[0]


def col_blocks(params, key, w, M, threaded=True):
    """``w`` (K, N) as contiguous column blocks (n, K, N/n) for products with M rows, and the
    rows per chunk (``block_shape``); memoised on the (immutable) params. A single block is a
    view of a writable ``w`` (a read-only one, e.g. a parameter, is copied once: the kernels
    are compiled for writable arrays)."""
    K, N = w.shape
    if K == 0:
        return np.empty((0, 0, 0), w.dtype), max(M, 1)
    nb, mb = block_shape(M, K, N, threaded)
    if nb == N and w.flags.writeable:
        return w.reshape(1, K, N), mb
    memo = params.__dict__.setdefault("_cpu_blocks", {})
    mk = (key, nb)
    if mk not in memo:
        memo[mk] = w.reshape(K, N // nb, nb).transpose(1, 0, 2).copy()
    return memo[mk], mb


def _prepare(params, layer):
    """Per layer: stacked, transposed weights in the layouts the kernels walk contiguously.

    LSTMParams holds read-only arrays, so the result is memoised on the params object.
    """
    memo = params.__dict__.setdefault("_cpu_prepared", {})
    if layer not in memo:
        memo[layer] = _prepare_uncached(params, layer)
    return memo[layer]


def _prepare_uncached(params, layer):
    D = params.num_directions
    dt = params.dtype
    w_ih, w_hh, w_hh_t, w_hr, w_hr_t, bias = [], [], [], [], [], []
    for d in range(D):
        wi, wh, bi, bh, wr = params.layer_weights(layer, d)
        w_ih.append(wi)
        w_hh.append(wh.copy())  # writable copies: one Numba specialisation per dtype
        w_hh_t.append(np.ascontiguousarray(wh.T))
        w_hr.append(wr.copy() if wr is not None else np.empty((0, 0), dt))
        w_hr_t.append(np.ascontiguousarray(wr.T) if wr is not None else np.empty((0, 0), dt))
        # b_ih + b_hh, added inside the recurrence's fused loop (zeros without biases)
        bias.append(bi + bh if bi is not None else np.zeros(wh.shape[0], dt))
    w_ih_cat_t = np.ascontiguousarray(np.concatenate(w_ih, axis=0).T)  # (I, D*4H)
    # per direction, for the parallel path's own phase 1 (kernels/cpu/parallel.py); with one
    # direction that is the stacked array itself
    w_ih_t = [w_ih_cat_t] if D == 1 else [np.ascontiguousarray(w.T) for w in w_ih]
    return dict(w_ih_cat_t=w_ih_cat_t, w_ih_t=w_ih_t, bias=bias, w_hh_t=w_hh_t, w_hr_t=w_hr_t,
                w_hh=w_hh,
                w_hr=w_hr)


#: Useful FLOPs of one layer below which it runs serially: a task hand-off costs tens of
#: microseconds, and small calls gain little from a second core (bench/NOTES.md, item 9).
PARALLEL_MIN_FLOP = 20e6
#: Fewest batch rows per task: each core reads the whole weight matrix every step, so very
#: thin slices add weight traffic without saving much arithmetic.
PARALLEL_MIN_ROWS = 4


def plan_tasks(D, B, flop):
    """The independent recurrences of one layer as ``(direction, b0, b1)`` tasks, or None to run
    the layer serially (one thread, or a call too small to gain, or SciPy's BLAS not pinnable:
    ``kernels/cpu/parallel.py``). Directions first, then batch slices for the cores left."""
    n = num_threads()
    if n < 2 or flop < PARALLEL_MIN_FLOP or not can_pin():
        return None
    parts = max(1, min(n // D, B // PARALLEL_MIN_ROWS))
    if parts * D < 2:
        return None
    return [(d, b0, b1) for d in range(D) for b0, b1 in split_rows(B, parts)]


#: Whether a parallel task runs its input projection inside the recurrence, one small product
#: per step, instead of one GEMM over all steps first (bench/NOTES.md, item 14); and, where
#: ``_fuse_dx`` allows, its backward the input gradient per step too (item 17).
FUSE_INPUT = True


def _fuse_dx(Bw, G, I):
    """Whether a task's backward computes dx per step: when that product's blocks keep at least
    CHUNK_MIN_ROWS rows (or all of them); thinner row chunks run slower than one GEMM
    (bench/NOTES.md, item 17)."""
    return block_shape(Bw, G, I, False)[1] >= min(Bw, CHUNK_MIN_ROWS)


def _layer_flop(T, B, I, H, P, D, proj):
    return 2.0 * T * B * D * (4 * H * (I + P) + (H * P if proj else 0))


def _run(fn, tasks, parallel):
    if parallel:
        with single_threaded_blas():
            run_tasks(fn, tasks)
    else:
        for t in tasks:
            fn(*t)


def _sum(arrays):
    """The sum of the tasks' partial gradients (C-contiguous, or None); adds into the first."""
    total = arrays[0]
    if total is None:
        return None
    for a in arrays[1:]:
        total += a
    return total


def _sum_split(arrays, n):
    """The tasks' partial ``[dW_ih | dW_hh]`` (G, n + m) summed and split into the two
    gradients, C-contiguous."""
    total = arrays[0]
    for a in arrays[1:-1]:
        total += a
    if len(arrays) == 1:
        return np.ascontiguousarray(total[:, :n]), np.ascontiguousarray(total[:, n:])
    out1 = np.empty((total.shape[0], n), total.dtype)
    out2 = np.empty((total.shape[0], total.shape[1] - n), total.dtype)
    add_split(total, arrays[-1], out1, out2)
    return out1, out2


def lstm_forward(x, params, h0, c0, lengths, masks=None, training=False):
    """Multi-layer forward. Returns ``y, h_n, c_n, state`` (``state`` is None unless training)."""
    T, B, _ = x.shape
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    dt = params.dtype
    h_n = np.empty((L * D, B, P), dt)
    c_n = np.empty((L * D, B, H), dt)
    empty3 = np.empty((0, 0, 0), dt)
    layer_in = x
    saved = []
    for layer in range(L):
        prep = _prepare(params, layer)
        I = layer_in.shape[2]
        tasks = plan_tasks(D, B, _layer_flop(T, B, I, H, P, D, params.proj_size))
        parallel = tasks is not None
        if not parallel:
            tasks = [(d, 0, B) for d in range(D)]
            # Phase 1 for both directions at once (OpenBLAS threads it when large). Every BLAS
            # call of this backend goes to SciPy's OpenBLAS: two libraries' idle thread pools
            # spinning at once would fight over the cores (bench/NOTES.md, item 9).
            xg_all = workspace("xg", (T * B, D * 4 * H), dt)
            matmul_into(layer_in.reshape(T * B, -1), prep["w_ih_cat_t"], xg_all)
            xg_all = xg_all.reshape(T, B, D * 4 * H)
        y = np.empty((T, B, D * P), dt)
        dirs = [(np.empty((T, B, 4 * H), dt), np.empty((T, B, H), dt)) if training
                else (empty3, empty3) for _ in range(D)]
        # One layer, one direction, per-step input projection: the kernels write the backward's
        # [x | h_prev] rows themselves, and the cache keeps them instead of x and y (item 19)
        own_xh = training and parallel and FUSE_INPUT and L == 1 and D == 1
        xhs = [np.empty((T, b1 - b0, I + P), dt) if own_xh else empty3 for _, b0, b1 in tasks]

        def task(d, b0, b1, xh_out, layer=layer, layer_in=layer_in, prep=prep, y=y, dirs=dirs):
            k = layer * D + d
            Bw = b1 - b0
            x_in, w_ih_tb, mb_ih = empty3, empty3, 1
            if parallel and FUSE_INPUT:
                # phase 1 inside the recurrence: each step's x_t @ W_ih^T in small blocks
                x_in, xg, xg_off, xb0 = layer_in, empty3, 0, b0
                w_ih_tb, mb_ih = col_blocks(params, ("w_ih_t", layer, d), prep["w_ih_t"][d], Bw,
                                            False)
            elif parallel:  # this slice's own phase 1, on this thread
                if Bw == B:
                    xw = layer_in.reshape(T * B, -1)
                else:
                    xw = workspace("xw", (T, Bw, layer_in.shape[2]), dt)
                    np.copyto(xw, layer_in[:, b0:b1])
                    xw = xw.reshape(T * Bw, -1)
                xg = workspace("xg", (T * Bw, 4 * H), dt)
                matmul_into(xw, prep["w_ih_t"][d], xg)
                xg, xg_off, xb0 = xg.reshape(T, Bw, 4 * H), 0, 0
            else:
                xg, xg_off, xb0 = xg_all, d * 4 * H, b0
            w_hh_tb, mb_hh = col_blocks(params, ("w_hh_t", layer, d), prep["w_hh_t"][d], Bw,
                                        not parallel)
            w_hr_tb, mb_hr = col_blocks(params, ("w_hr_t", layer, d), prep["w_hr_t"][d], Bw,
                                        not parallel)
            gates, cs = dirs[d]
            recurrence_forward(xg, xg_off, xb0, prep["bias"][d], w_hh_tb, w_hr_tb,
                               h0[k, b0:b1], c0[k, b0:b1], lengths[b0:b1], d == 1, y, d * P, b0,
                               h_n[k, b0:b1], c_n[k, b0:b1], gates, cs, training, mb_hh, mb_hr,
                               x_in, w_ih_tb, mb_ih, xh_out)

        _run(task, [t + (xh,) for t, xh in zip(tasks, xhs)], parallel)
        if own_xh:
            saved.append(dict(x=None, y=None, xh=xhs, tasks=tasks, dirs=dirs))
        elif training:
            saved.append(dict(x=layer_in, y=y, dirs=dirs))
        layer_in = y * masks[layer] if (masks is not None and layer < L - 1) else y
    state = None
    if training:
        state = dict(params=params, layers=saved, h0=h0, c0=c0, lengths=lengths, masks=masks)
    return layer_in, h_n, c_n, state


def lstm_backward(state, dy, dh_n, dc_n):
    """Full backward from a training ``state``. Returns ``dx, dh0, dc0, dparams``."""
    params = state["params"]
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    dt = params.dtype
    lengths, masks, h0, c0 = state["lengths"], state["masks"], state["h0"], state["c0"]
    T, B = dy.shape[0], dy.shape[1]
    G = 4 * H
    dh0 = np.empty_like(dh_n)
    dc0 = np.empty_like(dc_n)
    dparams = {}
    dy_layer = np.ascontiguousarray(dy)
    has_proj = params.proj_size > 0
    empty3 = np.empty((0, 0, 0), dt)
    empty2 = np.empty((0, 0), dt)
    for layer in reversed(range(L)):
        saved = state["layers"][layer]
        x_l, y_l, xhs = saved["x"], saved["y"], saved.get("xh")
        I_l = x_l.shape[2] if xhs is None else xhs[0].shape[2] - P
        prep = _prepare(params, layer)
        if xhs is not None:  # the forward's tasks, whose [x | h_prev] rows it kept
            tasks, parallel = saved["tasks"], True
            threads = num_threads() > 1 and can_pin()  # one at a time if cores were taken away
        else:
            tasks = plan_tasks(D, B, _layer_flop(T, B, I_l, H, P, D, params.proj_size))
            parallel = tasks is not None
            if not parallel:
                tasks = [(d, 0, B) for d in range(D)]
            threads = parallel
        dx = np.empty((T, B, I_l), dt)
        dx_rev = np.empty((T, B, I_l), dt) if D > 1 else None  # the reverse direction's share
        parts = [None] * len(tasks)

        def task(i, layer=layer, saved=saved, prep=prep, dy_layer=dy_layer, x_l=x_l, y_l=y_l,
                 xhs=xhs, dx=dx, dx_rev=dx_rev, parts=parts, tasks=tasks, parallel=parallel):
            # Phase 2 for this direction and row range, then its phase 3 while its gate
            # gradients are fresh: no wait between the two, nothing shared with other tasks.
            d, b0, b1 = tasks[i]
            k = layer * D + d
            Bw = b1 - b0
            rows = T * Bw
            whole = Bw == B
            gates, cs = saved["dirs"][d]
            dg = workspace("dgates", (T, Bw, G), dt)
            dhp = workspace("dhp", (T, Bw, P), dt) if has_proj else empty3
            w_hh_b, mb_hh = col_blocks(params, ("w_hh", layer, d), prep["w_hh"][d], Bw,
                                       not parallel)
            w_hr_b, mb_hr = col_blocks(params, ("w_hr", layer, d), prep["w_hr"][d], Bw,
                                       not parallel)
            w_ih = params.layer_weights(layer, d)[0]
            target = dx if d == 0 else dx_rev
            fuse = parallel and FUSE_INPUT and _fuse_dx(Bw, G, I_l)
            if fuse:  # dx per step, inside the recurrence (the forward's projection mirrored)
                w_ih_b, mb_ih = col_blocks(params, ("w_ih", layer, d), w_ih, Bw, False)
                dx_step, dx2 = target, empty2
            else:
                w_ih_b, mb_ih, dx_step = empty3, 1, empty3
                dx2 = (target.reshape(rows, I_l) if whole
                       else workspace("dx_part", (rows, I_l), dt))
            db = np.empty(G, dt)
            recurrence_backward(dy_layer, d * P, b0, gates, cs, c0[k, b0:b1], dh_n[k, b0:b1],
                                dc_n[k, b0:b1], w_hh_b, w_hr_b, lengths[b0:b1], d == 1, dg, dhp,
                                0, dh0[k, b0:b1], dc0[k, b0:b1], mb_hh, mb_hr, w_ih_b, mb_ih,
                                dx_step, db)
            hk = h0[k, b0:b1]
            if parallel:
                # [dW_ih | dW_hh] as one GEMM over [x | h_prev]: the gate gradients are read
                # once (item 18); the operand is the forward's (item 19) or built here, without
                # the GIL
                if xhs is not None:
                    xh = xhs[i]
                else:
                    xh = workspace("xh", (T, Bw, I_l + P), dt)
                    stack_x_hprev(x_l, b0, y_l, d * P, hk, lengths[b0:b1], d == 1, xh)
                dw = np.empty((G, I_l + P), dt)
                grad_gemms(dg.reshape(rows, G), xh.reshape(rows, I_l + P), empty2, w_ih, dx2, dw,
                           empty2)
                dw_ih, dw_hh = dw, None  # split when the tasks' parts are summed
            else:  # one task per direction, the whole batch: x as it is, h_prev alone
                hp = np.empty((T, B, P), dt)
                stack_x_hprev(np.empty((T, B, 0), dt), 0, y_l, d * P, hk, lengths, d == 1, hp)
                dw_ih, dw_hh = np.empty((G, I_l), dt), np.empty((G, P), dt)
                grad_gemms(dg.reshape(rows, G), x_l.reshape(rows, I_l), hp.reshape(rows, P), w_ih,
                           dx2, dw_ih, dw_hh)
            if not (whole or fuse):
                target[:, b0:b1] = dx2.reshape(T, Bw, I_l)
            dw_hr = None
            if has_proj:
                hh = gates[:, b0:b1, 3 * H:] * np.tanh(cs[:, b0:b1])  # o * tanh(c); 0 padded
                dw_hr = np.empty((P, H), dt)
                matmul_tn_into(dhp.reshape(rows, P), hh.reshape(rows, H), dw_hr)
            parts[i] = (dw_ih, dw_hh, db, dw_hr)

        _run(task, [(i,) for i in range(len(tasks))], threads)
        if dx_rev is not None:
            dx += dx_rev
        for d in range(D):
            s = f"_l{layer}{params.suffix(d)}"
            mine = [parts[i] for i, t in enumerate(tasks) if t[0] == d]
            if mine[0][1] is None:
                dw_ih, dw_hh = _sum_split([p[0] for p in mine], I_l)
            else:
                dw_ih, dw_hh = (_sum([p[j] for p in mine]) for j in (0, 1))
            db, dw_hr = (_sum([p[j] for p in mine]) for j in (2, 3))
            dparams["weight_ih" + s] = dw_ih
            dparams["weight_hh" + s] = dw_hh
            if params.bias:
                dparams["bias_ih" + s] = db
                dparams["bias_hh" + s] = db.copy()
            if has_proj:
                dparams["weight_hr" + s] = dw_hr
        if layer > 0 and masks is not None:
            dx *= masks[layer - 1]
        dy_layer = dx
    ordered = {name: dparams[name] for name in params.keys()}
    return dy_layer, dh0, dc0, ordered
