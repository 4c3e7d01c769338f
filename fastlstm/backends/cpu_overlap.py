"""A serial layer on both cores (``kernels/cpu/overlap.py``).

A serial layer (one direction, a few sequences) runs its recurrences on the calling thread.
Its whole-sequence GEMMs need not wait for them: the forward's input projection is computed
in blocks of steps, the second core working ahead of the recurrence, which computes any block
nobody has taken when it gets there (:func:`recurrence_fed`); the backward's ``dx``, ``dW_ih``
and ``dW_hh`` of each chunk of steps run on the second core as soon as the recurrence has
passed the chunk (:func:`recurrence_then_grads`).

The second core is the partner thread of the two-core inference path (``kernels/cpu/duo.py``),
or, inside ``fastlstm.torch``'s operators, the framework's own worker (``tasks_on``). Jobs are
claimed, so a late or busy second core leaves them to the calling thread, and a call that found
it busy makes it back off as the two-core path does (:func:`_share`). The blocks and chunks
depend only on the shape: which thread did which job never changes a result (bitwise).
"""
from __future__ import annotations

import time

import numba
import numpy as np

from ..kernels.cpu import duo, overlap
from ..kernels.cpu.parallel import can_pin, grad_gemms, run_tasks, runner_set, single_threaded_blas
from ..kernels.cpu.recurrence import NO_PROGRESS
from . import cpu
from .cpu_layouts import col_blocks

__all__ = ["backward_edges", "recurrence_then_grads", "forward_edges", "recurrence_fed"]

#: Pause loops the calling thread may wait for the other's jobs before the partner counts as
#: busy (a job takes ~10^3-10^4; a descheduled thread, a scheduler tick: ~10^5).
OVERLAP_WAIT = 10_000
#: The share of a core below which the calling thread counts as starved over a call (idle:
#: 0.99 and more, now and then 0.8-0.9; beside one busy process 0.35-0.85); two such calls in
#: a row back the partner off.
STARVED = 0.8


def _two_cores(cfg) -> bool:
    """Overlap on, two threads, SciPy's BLAS pinnable, and the kernels compiled (their
    atomics are compiled instructions: under ``NUMBA_DISABLE_JIT`` one core does it all)."""
    return (cfg.overlap_chunks > 0 and cpu.num_threads(cfg) >= 2 and can_pin()
            and not numba.config.DISABLE_JIT)


def _edges(T, B, flop, cfg):
    """``overlap_chunks`` (or fewer) near-equal spans of the T steps, of at least
    ``overlap_min_rows`` rows each, as edges; None for fewer than two, GEMMs under
    ``overlap_min_flop`` or no second core."""
    n = min(cfg.overlap_chunks, T * B // max(1, cfg.overlap_min_rows), T)
    if n < 2 or flop < cfg.overlap_min_flop or not _two_cores(cfg):
        return None
    return np.array([T * j // n for j in range(n + 1)], np.int64)


def backward_edges(T, B, I, H, P, D, proj, cfg):
    """The chunks (recurrence steps) of a serial layer's backward whose GEMMs run beside its
    recurrence (``CPUConfig.overlap_*``), or None: one direction, BLAS kept on the calling
    thread (``cpu._pin_serial``), at least two chunks and GEMMs large enough to gain."""
    if D != 1 or not cpu._pin_serial(cpu._layer_flop(T, B, I, H, P, D, proj), cfg):
        return None
    return _edges(T, B, 2.0 * T * B * 4 * H * (2 * I + P), cfg)


def _share(kernel, args, jobs, cfg, first=None, late_ok=False):
    """``kernel(*args, helper)`` on the calling thread (``helper`` False, after ``first()``)
    and on the second core (True), then wait until all ``jobs`` are done (``ctrl[DONE]``).

    The partner backs off (``duo.Partner.release``) after a call in which the calling thread
    waited long for it, after the second call in a row in which the calling thread got less
    than ``STARVED`` of a core (another process took turns with it: the partner's work then
    costs the calling thread its core), or, unless ``late_ok``, after a call in which the
    partner found no job left to do."""
    ctrl = args[0]

    def task(i):
        if i == 0 and first is not None:
            try:
                first()
            except BaseException:
                ctrl[overlap.PROGRESS] = 1 << 62  # release the other thread, then raise
                raise
        return kernel(*args, i == 1) + overlap.await_jobs(ctrl, jobs)

    with single_threaded_blas():
        if runner_set():  # a framework's thread team (fastlstm.torch): its worker helps
            run_tasks(task, [(0,), (1,)])
            return
        partner = duo.partner(cfg.duo_spins)
        posted = partner.offer(kernel, args + (True,))
        spins, wall, cpu_time = 0, time.perf_counter(), time.thread_time()
        try:
            spins = task(0) + int(ctrl[overlap.WAITS])
        finally:
            if posted:
                starved = time.thread_time() - cpu_time < STARVED * (time.perf_counter() - wall)
                partner.release(spins > OVERLAP_WAIT or partner.in_a_row("starved", starved)
                                or (not late_ok and ctrl[overlap.HELPED] == 0))


def recurrence_then_grads(run_rec, edges, params, layer, d, B, dg, x, hp, w_ih, dx, dw_ih,
                          dw_hh, cfg):
    """A serial direction's backward (layer ``layer``, direction ``d``): ``run_rec(progress)``
    runs its recurrence, and ``dx = dg W_ih``, ``dw_ih = dg^T x``, ``dw_hh = dg^T hp`` (2-D,
    rows (step, sequence)) follow it; with ``edges`` (:func:`backward_edges`) they run chunk by
    chunk on both cores while the recurrence goes on."""
    if edges is None:
        run_rec(NO_PROGRESS)
        grad_gemms(dg, x, hp, w_ih, dx, dw_ih, dw_hh)
        return
    wb, mb = col_blocks(params, ("w_ih", layer, d), w_ih, int(np.max(np.diff(edges))) * B,
                        False, cfg)
    ctrl = np.zeros(overlap.CTRL_SIZE, np.int64)
    _share(overlap.grad_chunks, (ctrl, edges, d == 1, B, dg, x, hp, wb, mb, dx, dw_ih, dw_hh),
           3 * (len(edges) - 1), cfg,
           first=lambda: run_rec(ctrl[overlap.PROGRESS:overlap.PROGRESS + 1]))


def forward_edges(T, B, I, H, D, pinned, cfg):
    """The blocks (steps) in which a serial layer's forward computes its input projection as
    its recurrence reaches them, one core computing ahead (``CPUConfig.overlap_*``), or None:
    one direction, BLAS kept on the calling thread (``pinned``), at least two blocks and a
    projection large enough to gain."""
    if D != 1 or not pinned:
        return None
    return _edges(T, B, 2.0 * T * B * I * 4 * H, cfg)


def recurrence_fed(run_rec, edges, params, layer, x, w, xg, B, cfg):
    """A serial direction's forward: ``run_rec(feed)`` runs its recurrence, which takes the
    input projection ``xg = x @ w`` (2-D, rows (step, sequence); ``w`` layer ``layer``'s
    ``W_ih^T``) block by block (``edges``, :func:`forward_edges`) as it reaches them, while the
    second core computes the blocks ahead (a partner that comes late costs nothing: the
    recurrence computes what is left)."""
    rows = int(np.max(np.diff(edges))) * B
    wb, mb = col_blocks(params, ("w_ih_t", layer, 0), w, rows, False, cfg)
    ctrl = np.zeros(overlap.CTRL_SIZE, np.int64)
    flags = np.zeros((len(edges) - 1) * overlap.FLAG_STRIDE, np.int64)
    _share(overlap.feed_blocks, (ctrl, flags, edges, B, x, wb, mb, xg), len(edges) - 1, cfg,
           first=lambda: run_rec((ctrl, flags, edges, x, wb, mb, xg)), late_ok=True)
