"""CPU backend: the three phases of each layer (input GEMM, compiled recurrence, gradient GEMMs).

Takes and returns normalised, time-major, C-contiguous arrays of the compute dtype (the rules
of ``fastlstm.layout`` do all validation and layout conversion; see ``fastlstm.backends`` for
the contract)::

    x (T, B, I)  h0 (L*D, B, H_out)  c0 (L*D, B, H)  lengths (B,) int64
    masks: None or L-1 arrays (T, B, D*H_out), inter-layer dropout already scaled

Phase 1 (per layer): one GEMM ``(T*B, I) x (I, D*4H)`` for both directions (the biases are
added inside the recurrence's fused loop, saving a pass over the projection).
Phase 2 (per direction): ``recurrence_forward`` / ``recurrence_backward``, compiled loops over time.
Phase 3 (backward, per direction): ``dW_ih = dgates^T x``, ``dW_hh = dgates^T h_prev`` (the
recurrence's outputs, shifted), ``dW_hr`` and ``dx`` as whole-sequence GEMMs; ``db`` is summed
inside the backward recurrence while each step's gate gradients are in cache.

Layers large enough to gain (``plan_tasks``) run as parallel tasks instead: each direction and
batch slice does its own phases 1 and 2 on its own core, phase 1 inside the recurrence: each
step's ``x_t @ W_ih^T`` in OpenBLAS's small-matrix blocks, like the recurrent product
(``CPUConfig.fuse_input``). The calling thread builds every task's compiled calls; two tasks
run on it and the partner thread (``kernels/cpu/pair.py``), more on a pool
(``kernels/cpu/parallel.py``). In backward, every task (the serial path's too: one per
direction) runs its recurrence and then its own rows' phase 3, and the partial weight
gradients are summed; a parallel task's recurrence also computes each step's ``dx`` rows while
that step's gate gradients are in cache (``fuse_dx``), and its ``dW_ih`` and ``dW_hh`` come
from one GEMM over ``[x | h_prev]`` (``stack_x_hprev``), which reads the gate gradients once.
For one layer and one direction the forward kernels write those ``[x | h_prev]`` rows
themselves, and the training cache keeps them instead of the layer's input and output.
Every BLAS call goes to SciPy's OpenBLAS (Numba's ``np.dot``), never NumPy's: two libraries'
idle thread pools would fight over the cores. Small-batch inference layers may instead run on
two cores split by hidden units (``fastlstm/backends/cpu_duo.py``), and batch-1 per-step
products take the register-blocked kernel (``kernels/cpu/smallgemm.py``; ``block_shape``).

Tuning knobs: :class:`fastlstm.config.CPUConfig`, read once per call. Weight layouts derived
from the parameters (``fastlstm/backends/cpu_layouts.py``) are memoised on them
(``LSTMParams.derived``); an in-place update (``LSTMParams.update_``) has them refilled.
"""
from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from .. import config
from ..kernels.cpu.parallel import (add_split, can_pin, copy_rows, grad_gemms, matmul_into,
                                    matmul_tn_into, put_rows, run_tasks, runner_set,
                                    single_threaded_blas, split_rows)
from ..kernels.cpu import duo, smallgemm
from ..kernels.cpu.pair import run_pair
from ..kernels.cpu.recurrence import (NO_PROGRESS, BackwardOut, BackwardWeights, Blocks,
                                      ForwardOut, ForwardWeights, Saved, StepInput, no_feed,
                                      projection_grad, recurrence_backward, recurrence_forward,
                                      stack_x_hprev)
from .compile_notice import announce_compiles
from .cpu_layouts import _Prepared, _prepare, block_shape, col_blocks
from .state import LayerState, TrainingState

__all__ = ["lstm_forward", "lstm_backward", "col_blocks", "block_shape", "workspace",
           "release_workspace", "plan_tasks", "fuse_dx", "num_threads", "serial_plan"]

announce_compiles()

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
    Keys: ``xg`` (input projection; ``xg1`` the second half's on the two-core path), ``xw`` (a
    task's batch slice of the layer input), ``dgates`` and ``dhp`` (gate / projected-output
    gradients), ``dx_part`` (a batch slice's input gradient before it goes to its rows), ``xh``
    (a task's ``[x | h_prev]`` rows for its weight-gradient GEMM). A parallel layer's tasks
    are prepared on the calling thread: their keys end in ``#`` and the task's number.
    """
    pool = getattr(_tls, "pool", None)
    if pool is None:
        pool = _tls.pool = _Pool()
        _all_pools.add(pool)
    size = math.prod(shape)
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


# ---------------------------------------------------------------------------- planning
def num_threads(cfg: config.CPUConfig | None = None) -> int:
    """Cores a call may use: ``CPUConfig.threads``, else Numba's thread count
    (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``), the figure the benchmarks give torch."""
    cfg = cfg or config.current("cpu")
    return cfg.threads if cfg.threads is not None else numba.get_num_threads()


def plan_tasks(D, B, flop, cfg=None):
    """The independent recurrences of one layer as ``(direction, b0, b1)`` tasks, or None to run
    the layer serially (one thread, or a call too small to gain, or SciPy's BLAS not pinnable:
    ``kernels/cpu/parallel.py``). Directions first, then batch slices for the cores
    left."""
    cfg = cfg or config.current("cpu")
    if flop < cfg.parallel_min_flop:
        return None
    n = num_threads(cfg)
    if n < 2 or not can_pin():
        return None
    parts = max(1, min(n // D, B // cfg.parallel_min_rows))
    if parts * D < 2:
        return None
    return [(d, b0, b1) for d in range(D) for b0, b1 in split_rows(B, parts)]


def fuse_dx(Bw, G, I, cfg=None):
    """Whether a parallel task's backward computes dx per step: ``CPUConfig.fuse_dx`` when set,
    else when that product's blocks keep at least ``chunk_min_rows`` rows (or all of them);
    thinner row chunks run slower than one GEMM (bench/NOTES.md, item 17)."""
    cfg = cfg or config.current("cpu")
    if cfg.fuse_dx is not None:
        return cfg.fuse_dx
    return block_shape(Bw, G, I, False, cfg)[1] >= min(Bw, cfg.chunk_min_rows)


def _layer_flop(T, B, I, H, P, D, proj):
    return 2.0 * T * B * D * (4 * H * (I + P) + (H * P if proj else 0))


def _run(fn, ctx, tasks, parallel):
    """``fn(ctx, *t)`` for each task; on the parallel path each returns its compiled calls
    (built here, on the calling thread), which then run on the cores at once."""
    calls = [fn(ctx, *t) for t in tasks]  # a serial task runs in fn and gives None
    if not parallel:
        for c in calls:
            if c:
                _calls(c)
        return
    run_call_lists(calls, ctx.cfg)


def run_call_lists(calls, cfg) -> None:
    """Independent lists of compiled calls (``[(fn, args), ...]`` each, run in order) on the
    cores at once, SciPy's BLAS pinned to one thread: two lists on the calling thread and the
    partner (``kernels/cpu/pair.py``), more (or the partner taken) on the pool, or on the
    framework's threads inside ``parallel.tasks_on``."""
    with single_threaded_blas():
        if not (len(calls) == 2 and cfg.pair_tasks and not runner_set()
                and not numba.config.DISABLE_JIT
                and run_pair(duo.partner(cfg.duo_spins), calls[0], calls[1])):
            run_tasks(_calls, [(c,) for c in calls])


def _calls(calls):
    for fn, args in calls:
        fn(*args)


def _pin_serial(flop, cfg) -> bool:
    """Whether a layer run serially keeps BLAS on the calling thread (``serial_blas_min_flop``)."""
    return flop < cfg.serial_blas_min_flop or num_threads(cfg) < 2


class _NoPin:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_PIN = _NoPin()


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


# ---------------------------------------------------------------------------- forward
@dataclass
class _ForwardLayer:
    """What the tasks of one layer's forward share (read-only for them; each task writes only
    its own rows and columns)."""
    cfg: config.CPUConfig
    params: Any
    layer: int
    prep: _Prepared
    layer_in: np.ndarray     # (T, B, I_l)
    xg_all: np.ndarray       # serial path: (T, B, D*4H) projection of both directions
    parallel: bool
    h0: np.ndarray           # (L*D, B, H_out) all layers' initial states
    c0: np.ndarray
    lengths: np.ndarray
    y: np.ndarray            # (T, B, D*H_out)
    h_n: np.ndarray
    c_n: np.ndarray
    dirs: list               # per direction (gates, cells), (0, 0, 0) arrays in inference
    training: bool
    feed: Any = None         # serial path: the blocks xg_all is computed in as steps reach it


def _forward_task(L: _ForwardLayer, i, d, b0, b1, xh_out):
    """One direction and row range of a layer's forward (phases 1 and 2). On the parallel path
    (task ``i``) the compiled calls to make, as ``[(fn, args), ...]``: the calling thread
    builds every task's arguments and :func:`_run` hands them to the cores; otherwise it runs."""
    params, prep, cfg = L.params, L.prep, L.cfg
    T, B = L.layer_in.shape[0], L.layer_in.shape[1]
    H, P = params.hidden_size, params.output_size
    dt = params.dtype
    k = L.layer * params.num_directions + d
    Bw = b1 - b0
    empty3 = np.empty((0, 0, 0), dt)
    x_in, w_ih_tb, mb_ih = empty3, empty3, 1
    calls = []
    if L.parallel and cfg.fuse_input:
        # phase 1 inside the recurrence: each step's x_t @ W_ih^T in small blocks
        xg, xg_off, row0, x_in = empty3, 0, b0, L.layer_in
        w_ih_tb, mb_ih = col_blocks(params, ("w_ih_t", L.layer, d), prep.w_ih_t[d], Bw, False, cfg)
    elif L.parallel:  # this slice's own phase 1, on its core
        if Bw == B:
            xw = L.layer_in.reshape(T * B, -1)
        else:
            xw = workspace(f"xw#{i}", (T, Bw, L.layer_in.shape[2]), dt)
            calls.append((copy_rows, (L.layer_in, b0, xw)))
            xw = xw.reshape(T * Bw, -1)
        xg = workspace(f"xg#{i}", (T * Bw, 4 * H), dt)
        calls.append((matmul_into, (xw, prep.w_ih_t[d], xg)))
        xg, xg_off, row0 = xg.reshape(T, Bw, 4 * H), 0, 0
    else:
        xg, xg_off, row0 = L.xg_all, d * 4 * H, b0
    threaded = not L.parallel
    w_hh_tb, mb_hh = col_blocks(params, ("w_hh_t", L.layer, d), prep.w_hh_t[d], Bw, threaded, cfg)
    w_hr_tb, mb_hr = col_blocks(params, ("w_hr_t", L.layer, d), prep.w_hr_t[d], Bw, threaded, cfg)
    gates, cells = L.dirs[d]
    # plain tuples at the call: Numba types them in C (a namedtuple goes through Python's
    # typeof, ~60 us per call)
    args = (tuple(StepInput(xg, xg_off, x_in, w_ih_tb, row0)),
            tuple(ForwardWeights(prep.bias[d], w_hh_tb, w_hr_tb)),
            L.h0[k, b0:b1], L.c0[k, b0:b1], L.lengths[b0:b1], d == 1,
            tuple(ForwardOut(L.y, d * P, b0, L.h_n[k, b0:b1], L.c_n[k, b0:b1])),
            tuple(Saved(gates, cells, xh_out)), L.training, tuple(Blocks(mb_hh, mb_hr, mb_ih)))
    if L.parallel:
        calls.append((recurrence_forward, args + (no_feed(dt),)))
        return calls
    if L.feed is None:
        recurrence_forward(*args, no_feed(dt))
    else:
        cpu_overlap.recurrence_fed(lambda feed: recurrence_forward(*args, feed), L.feed, params,
                                   L.layer, L.layer_in.reshape(T * B, -1), prep.w_ih_cat_t,
                                   L.xg_all.reshape(T * B, -1), B, cfg)
    return None


def lstm_forward(x, params, h0, c0, lengths, masks=None, training=False, *, alloc=None):
    """Multi-layer forward: ``y, h_n, c_n, state, paths`` (``state`` None unless training).

    ``alloc(name, shape)``, optional, supplies the arrays the call keeps (C-contiguous, the
    compute dtype, contents undefined), e.g. views of one caller-owned buffer: ``"y{l}"``
    (T, B, D*H_out) the output of layer l, and in training ``"gates{l}.{d}"`` (T, B, 4H) and
    ``"cells{l}.{d}"`` (T, B, H)."""
    cfg = config.current("cpu")
    T, B, _ = x.shape
    if alloc is None and B > 0:
        plan = cpu_serial.serial_plan(params, T, B, training, cfg)
        if plan is not None:  # every layer serial: the same kernels, decided once per shape
            y, h_n, c_n, state = plan.forward(x, h0, c0, lengths, masks, training)
            return y, h_n, c_n, state, ("serial",) * params.num_layers
    new = alloc or (lambda name, shape: smallgemm.aligned_empty(shape, params.dtype))
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    dt = params.dtype
    h_n = np.empty((L * D, B, P), dt)
    c_n = np.empty((L * D, B, H), dt)
    empty3 = np.empty((0, 0, 0), dt)
    layer_in = x
    saved, paths = [], []
    for layer in range(L):
        prep = _prepare(params, layer)
        I = layer_in.shape[2]
        flop = _layer_flop(T, B, I, H, P, D, params.proj_size)
        tasks = plan_tasks(D, B, flop, cfg)
        parallel = tasks is not None
        pin = _NO_PIN
        xg_all, feed = empty3, None
        if not parallel:
            tasks = [(d, 0, B) for d in range(D)]
            pin = single_threaded_blas() if _pin_serial(flop, cfg) else _NO_PIN
            if cpu_duo.eligible(params, T, B, I, lengths, training, cfg):
                y = new(f"y{layer}", (T, B, P))
                g, cs = ((new(f"gates{layer}.0", (T, B, 4 * H)), new(f"cells{layer}.0", (T, B, H)))
                         if training else (empty3, empty3))
                cpu_duo.layer_forward(params, layer, layer_in, h0, c0, y, h_n, c_n, cfg, pin, g,
                                      cs)
                if training:
                    saved.append(LayerState(x=layer_in, y=y, gates=(g,), cells=(cs,)))
                paths.append("duo")
                layer_in = y * masks[layer] if (masks is not None and layer < L - 1) else y
                continue
            # Phase 1 for both directions at once (OpenBLAS threads it when large). Every BLAS
            # call of this backend goes to SciPy's OpenBLAS: two libraries' idle thread pools
            # spinning at once would fight over the cores (bench/NOTES.md, item 9).
            xg_all = workspace("xg", (T * B, D * 4 * H), dt)
            feed = cpu_overlap.forward_edges(T, B, I, H, D, pin is not _NO_PIN, cfg)
            if feed is None:  # else computed as the recurrence reaches it
                with pin:
                    matmul_into(layer_in.reshape(T * B, -1), prep.w_ih_cat_t, xg_all)
            xg_all = xg_all.reshape(T, B, D * 4 * H)
        y = new(f"y{layer}", (T, B, D * P))
        dirs = [(new(f"gates{layer}.{d}", (T, B, 4 * H)), new(f"cells{layer}.{d}", (T, B, H)))
                if training else (empty3, empty3) for d in range(D)]
        # One layer, one direction, per-step input projection: the kernels write the backward's
        # [x | h_prev] rows themselves, and the state keeps them instead of x and y (item 19)
        own_xh = (training and parallel and cfg.fuse_input and cfg.kernel_xh and L == 1
                  and D == 1)
        xhs = [np.empty((T, b1 - b0, I + P), dt) if own_xh else empty3 for _, b0, b1 in tasks]
        ctx = _ForwardLayer(cfg, params, layer, prep, layer_in, xg_all, parallel, h0, c0,
                            lengths, y, h_n, c_n, dirs, training, feed)
        with pin:
            _run(_forward_task, ctx,
                 [(i,) + t + (xh,) for i, (t, xh) in enumerate(zip(tasks, xhs))], parallel)
        paths.append("parallel" if parallel else "serial")
        if own_xh:
            saved.append(LayerState(gates=tuple(g for g, _ in dirs), cells=tuple(c for _, c in dirs),
                                    xh=tuple(xhs), tasks=tuple(tuple(t) for t in tasks)))
        elif training:
            saved.append(LayerState(x=layer_in, y=y, gates=tuple(g for g, _ in dirs),
                                    cells=tuple(c for _, c in dirs)))
        layer_in = y * masks[layer] if (masks is not None and layer < L - 1) else y
    state = None
    if training:
        state = TrainingState("cpu", params, params.version, tuple(saved), h0, c0, lengths,
                              tuple(masks) if masks is not None else (), tuple(paths))
    return layer_in, h_n, c_n, state, tuple(paths)


# ---------------------------------------------------------------------------- backward
@dataclass
class _BackwardLayer:
    """What the tasks of one layer's backward share; each task writes only its own rows and
    its own entry of ``parts``."""
    cfg: config.CPUConfig
    params: Any
    layer: int
    prep: _Prepared
    saved: LayerState
    tasks: list
    parallel: bool
    dy: np.ndarray           # (T, B, D*H_out) gradient of the layer output
    h0: np.ndarray
    c0: np.ndarray
    dh_n: np.ndarray
    dc_n: np.ndarray
    lengths: np.ndarray
    dx: np.ndarray           # (T, B, I_l): direction 0's share of the input gradient
    dx_rev: np.ndarray       # the reverse direction's share, or None
    dh0: np.ndarray
    dc0: np.ndarray
    I: int
    parts: list = field(default_factory=list)


def _backward_task(L: _BackwardLayer, i):
    """Phase 2 for one direction and row range, then its phase 3 while its gate gradients are
    fresh: no wait between the two, nothing shared with other tasks. On the parallel path the
    compiled calls to make (as :func:`_forward_task`)."""
    params, prep, cfg, sv = L.params, L.prep, L.cfg, L.saved
    H, P = params.hidden_size, params.output_size
    G = 4 * H
    dt = params.dtype
    T, B = L.dy.shape[0], L.dy.shape[1]
    d, b0, b1 = L.tasks[i]
    k = L.layer * params.num_directions + d
    Bw = b1 - b0
    rows = T * Bw
    whole = Bw == B
    I_l = L.I
    has_proj = params.proj_size > 0
    empty2, empty3 = np.empty((0, 0), dt), np.empty((0, 0, 0), dt)
    gates, cells = sv.gates[d], sv.cells[d]
    # a parallel layer's scratch is the calling thread's, one set per task
    tag = f"#{i}" if L.parallel else ""
    dg = workspace("dgates" + tag, (T, Bw, G), dt)
    dhp = workspace("dhp" + tag, (T, Bw, P), dt) if has_proj else empty3
    threaded = not L.parallel
    w_hh_b, mb_hh = col_blocks(params, ("w_hh", L.layer, d), prep.w_hh[d], Bw, threaded, cfg)
    w_hr_b, mb_hr = col_blocks(params, ("w_hr", L.layer, d), prep.w_hr[d], Bw, threaded, cfg)
    w_ih = prep.w_ih[d]
    target = L.dx if d == 0 else L.dx_rev
    fuse = L.parallel and cfg.fuse_input and fuse_dx(Bw, G, I_l, cfg)
    if fuse:  # dx per step, inside the recurrence (the forward's projection mirrored)
        w_ih_b, mb_ih = col_blocks(params, ("w_ih", L.layer, d), w_ih, Bw, False, cfg)
        dx_step, dx2 = target, empty2
    else:
        w_ih_b, mb_ih, dx_step = empty3, 1, empty3
        dx2 = target.reshape(rows, I_l) if whole else workspace("dx_part" + tag, (rows, I_l), dt)
    db = np.empty(G, dt)
    rec_args = (L.dy, d * P, b0, tuple(Saved(gates, cells, empty3)), L.c0[k, b0:b1],
                L.dh_n[k, b0:b1], L.dc_n[k, b0:b1], L.lengths[b0:b1], d == 1,
                tuple(BackwardWeights(w_hh_b, w_hr_b, w_ih_b)),
                tuple(BackwardOut(dg, dhp, 0, L.dh0[k, b0:b1], L.dc0[k, b0:b1], dx_step, db)),
                tuple(Blocks(mb_hh, mb_hr, mb_ih)))
    hk = L.h0[k, b0:b1]
    if L.parallel:
        calls = [(recurrence_backward, rec_args + (NO_PROGRESS,))]
        # [dW_ih | dW_hh] as one GEMM over [x | h_prev]: the gate gradients are read once
        # (item 18); the operand is the forward's (item 19) or built here, without the GIL
        if sv.xh:
            xh = sv.xh[i]
        else:
            xh = workspace("xh" + tag, (T, Bw, I_l + P), dt)
            calls.append((stack_x_hprev, (sv.x, b0, sv.y, d * P, hk, L.lengths[b0:b1], d == 1,
                                          xh)))
        dw = np.empty((G, I_l + P), dt)
        calls.append((grad_gemms, (dg.reshape(rows, G), xh.reshape(rows, I_l + P), empty2, w_ih,
                                   dx2, dw, empty2)))
        if not (whole or fuse):
            calls.append((put_rows, (dx2.reshape(T, Bw, I_l), b0, target)))
        dw_hr = None
        if has_proj:
            dw_hr = np.empty((P, H), dt)
            calls.append((projection_grad, (gates, cells, b0, dhp, dw_hr)))
        L.parts[i] = (dw, None, db, dw_hr)  # dW_ih and dW_hh split when the parts are summed
        return calls
    # one task per direction, the whole batch: x as it is, h_prev alone
    hp = np.empty((T, B, P), dt)
    stack_x_hprev(np.empty((T, B, 0), dt), 0, sv.y, d * P, hk, L.lengths, d == 1, hp)
    dw_ih, dw_hh = np.empty((G, I_l), dt), np.empty((G, P), dt)
    edges = cpu_overlap.backward_edges(T, B, I_l, H, P, params.num_directions, has_proj, cfg)
    cpu_overlap.recurrence_then_grads(lambda progress: recurrence_backward(*rec_args, progress),
                                      edges, params, L.layer, d, B, dg.reshape(rows, G),
                                      sv.x.reshape(rows, I_l), hp.reshape(rows, P), w_ih, dx2,
                                      dw_ih, dw_hh, cfg)
    dw_hr = None
    if has_proj:
        hh = gates[:, :, 3 * H:] * np.tanh(cells)  # o * tanh(c); 0 padded
        dw_hr = np.empty((P, H), dt)
        matmul_tn_into(dhp.reshape(rows, P), hh.reshape(rows, H), dw_hr)
    L.parts[i] = (dw_ih, dw_hh, db, dw_hr)
    return None


def lstm_backward(state: TrainingState, dy, dh_n, dc_n):
    """Full backward from a training ``state``: ``dx, dh0, dc0, dparams``."""
    cfg = config.current("cpu")
    params = state.params
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    dt = params.dtype
    T, B = dy.shape[0], dy.shape[1]
    if B > 0 and not any(sv.xh for sv in state.layers):
        plan = cpu_serial.serial_plan(params, T, B, True, cfg)
        if plan is not None:
            return plan.backward(state, dy, dh_n, dc_n)
    dh0 = np.empty_like(dh_n)
    dc0 = np.empty_like(dc_n)
    per_layer = [None] * L
    dy_layer = np.ascontiguousarray(dy)
    for layer in reversed(range(L)):
        sv = state.layers[layer]
        I_l = sv.x.shape[2] if not sv.xh else sv.xh[0].shape[2] - P
        if sv.xh:  # the forward's tasks, whose [x | h_prev] rows it kept
            tasks, parallel = list(sv.tasks), True
            threads = num_threads(cfg) > 1 and can_pin()  # one at a time if cores were taken
        else:
            flop = _layer_flop(T, B, I_l, H, P, D, params.proj_size)
            tasks = plan_tasks(D, B, flop, cfg)
            parallel = tasks is not None
            if not parallel:
                tasks = [(d, 0, B) for d in range(D)]
            threads = parallel
        dx = np.empty((T, B, I_l), dt)
        dx_rev = np.empty((T, B, I_l), dt) if D > 1 else None
        ctx = _BackwardLayer(cfg, params, layer, _prepare(params, layer), sv, tasks, parallel,
                             dy_layer, state.h0, state.c0, dh_n, dc_n, state.lengths, dx, dx_rev,
                             dh0, dc0, I_l, [None] * len(tasks))
        pin = single_threaded_blas() if not threads and (sv.xh or _pin_serial(flop, cfg)) \
            else _NO_PIN
        with pin:
            _run(_backward_task, ctx, [(i,) for i in range(len(tasks))], threads)
        if dx_rev is not None:
            dx += dx_rev
        dirs = []
        for d in range(D):
            mine = [ctx.parts[i] for i, t in enumerate(tasks) if t[0] == d]
            if mine[0][1] is None:
                dw_ih, dw_hh = _sum_split([p[0] for p in mine], I_l)
            else:
                dw_ih, dw_hh = (_sum([p[j] for p in mine]) for j in (0, 1))
            db, dw_hr = (_sum([p[j] for p in mine]) for j in (2, 3))
            dirs.append((dw_ih, dw_hh, db if params.bias else None, dw_hr))
        per_layer[layer] = dirs
        if layer > 0 and state.masks:
            dx *= state.masks[layer - 1]
        dy_layer = dx
    return dy_layer, dh0, dc0, params.named_grads(per_layer)


def serial_plan(params, T, B, training, cfg):
    """The serial path's plan for this call shape, or None (``cpu_serial.serial_plan``)."""
    return cpu_serial.serial_plan(params, T, B, training, cfg)


# the two-core paths and the serial plans use the helpers above
from . import cpu_duo, cpu_overlap, cpu_serial  # noqa: E402
