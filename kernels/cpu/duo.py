"""One small-batch recurrence on two cores: each core holds half of the hidden units.

At batch 1-4 a step reads all of W_hh (and the step's gates) on one core, from its L2 cache:
~1 us per step at H = 64 and ~5 us at H = 128 in float32. Split by hidden units, each core
reads half of the weights (for H = 64 that half fits its L1) and computes its units' gates,
cell and hidden values; the only exchange is h, once per step. The halves are

    half 0: units [0, H0),  half 1: units [H0, H)

with each half's gate columns contiguous (``[i f g o]`` of its units): the caller permutes the
columns of W_ih^T, W_hh^T and the bias once (``fastlstm/backends/cpu.py``). h is double-buffered
(``hbuf[t % 2]`` is read by step t, ``hbuf[(t + 1) % 2]`` written), so one flag per half and step
is the whole barrier: a half of step t starts once both halves of step t - 1 are done.

The calling thread runs half 0 and a partner thread half 1. The partner never holds up the
call: half 1 of each step goes to whichever thread claims it first (a compare-and-swap on the
next step's number), and the calling thread claims it when it has finished its own half and
the partner has not started. A partner that is late, busy or descheduled just leaves the call
to run on one core (what it costs then: the claims, ~20 ns a step). Measured in bench/NOTES.md
("Two cores at batch 1-4").

The control words (int64, one cache line each): ``ctrl[P0]``, ``ctrl[P1]`` the steps done of
each half, ``ctrl[CLAIM]`` the next step whose half 1 nobody has claimed, ``ctrl[JOIN]`` the
partner's part in job ``s``: 4s posted, 4s + 1 joined, 4s + 2 closed unjoined, 4s + 3 left;
``ctrl[SEQ]`` the newest job posted; ``ctrl[DONE]`` the halves the partner did in the last job,
``ctrl[WAITS]``, ``ctrl[PWAITS]`` the spin-wait loops of the calling thread and of the partner
in it; ``ctrl[XG1]`` half 1's input projection: 0 to do, 1 being done, 2 done.

Numba has no CPU atomics: the loads, stores and compare-and-swap below are LLVM atomic
instructions emitted by intrinsics (acquire / release ordering), and the spin-wait hint is x86's
``pause``.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

from .atomics import atomic_cas as _cas, atomic_load as _load, atomic_store as _store, \
    spin_pause as _relax
from .jit import jit
from .parallel import run_tasks, runner_set
from .recurrence import _cell_forward
from .smallgemm import micro_dot

__all__ = ["Partner", "duo_forward", "CTRL_SIZE"]

P0, P1, CLAIM, JOIN, SEQ, DONE, WAITS, PWAITS, XG1 = 0, 8, 16, 24, 32, 40, 48, 56, 64
CTRL_SIZE = 72

_OPTS = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})


@jit(**_OPTS)
def _product(a, wb, z):
    """``z += a @ W`` where ``wb`` (n, K, width) holds W's column blocks."""
    nb = wb.shape[2]
    av = a[:, :a.shape[1]]  # one layout for every caller (and bdot's): the tiles compile once
    for i in range(wb.shape[0]):
        micro_dot(av, wb[i], z, i * nb, i >= 0)  # True, as a runtime bool (not a literal)


@jit(**_OPTS)
def _start(t, xg, z):
    """``z = xg[t]``: a half's gates start from its input projection (bias included)."""
    B, G = z.shape
    for b in range(B):
        zb = z[b]
        xb = xg[t * B + b]
        for g in range(G):
            zb[g] = xb[g]


@jit(**_OPTS)
def _finish(q, t, hbuf, c, out, H0, z, zero, s1, s2):
    """Half ``q`` of step ``t`` from its complete gate pre-activations ``z``: the cell and
    hidden values of q's units into ``c``, ``hbuf[(t + 1) % 2]`` and ``y[t]`` (``out`` = (y,
    gates, cells)); in training (``gates`` has steps) also q's activated gates and cell
    values into ``gates[t]`` ([i f g o] of all units, as the one-core path saves them) and
    ``cells[t]``."""
    y, gates, cells = out
    B, H = c.shape
    j0 = 0 if q == 0 else H0
    Hq = H0 if q == 0 else H - H0
    nxt = hbuf[(t + 1) % 2]
    training = gates.shape[0] > 0
    for b in range(B):
        hb = nxt[b, j0:j0 + Hq]
        _cell_forward(z[b], zero, zero, c[b, j0:j0 + Hq], hb, Hq, s1, s2)
        yb = y[t, b]
        for j in range(Hq):
            yb[j0 + j] = hb[j]
        if training:
            zb, gb, cb = z[b], gates[t, b], cells[t, b]
            for g in range(4):
                for j in range(Hq):
                    gb[g * H + j0 + j] = zb[g * Hq + j]
            for j in range(Hq):
                cb[j0 + j] = c[b, j0 + j]


@jit(**_OPTS)
def _own_part(q, t, xg, wo, hbuf, H0, z):
    """Half ``q`` of step ``t``, the part that needs only q's own units' h of step t - 1:
    ``z = xg_q[t] + h_q @ W_hh^T[q's rows, q's columns]`` (``xg`` (T*B, 4Hq) q's input
    projection with the bias; ``wo``: those rows of W_hh^T in column blocks)."""
    H = hbuf.shape[2]
    j0 = 0 if q == 0 else H0
    Hq = H0 if q == 0 else H - H0
    _start(t, xg, z)
    _product(hbuf[t % 2, :, j0:j0 + Hq], wo, z)


@jit(**_OPTS)
def _other_part(q, t, wx, hbuf, c, out, H0, z, zero, s1, s2):
    """The rest of half ``q`` of step ``t``, once the other half of step t - 1 is done: the
    product over the other half's units added (``wx``: W_hh^T rows of those units, q's
    columns), then q's cell and hidden values into ``c``, ``hbuf[(t + 1) % 2]`` and ``y[t]``."""
    H = c.shape[1]
    k0 = H0 if q == 0 else 0
    Hq = H0 if q == 0 else H - H0
    _product(hbuf[t % 2, :, k0:k0 + (H - Hq)], wx, z)
    _finish(q, t, hbuf, c, out, H0, z, zero, s1, s2)


@jit(**_OPTS)
def _half(q, t, xg, wo, wx, hbuf, c, out, H0, z, zero, s1, s2, ctrl, other, waits, mine):
    """Half ``q`` of step ``t`` in its two parts, waiting between them until the other half of
    step t - 1 is done (``ctrl[other]`` >= t; spin loops counted in ``ctrl[waits]``), then
    marking this half of step t done (``ctrl[mine]`` = t + 1)."""
    _own_part(q, t, xg, wo, hbuf, H0, z)
    while _load(ctrl, other) < t:
        _relax()
        ctrl[waits] += 1
    _other_part(q, t, wx, hbuf, c, out, H0, z, zero, s1, s2)
    _store(ctrl, mine, t + 1)


@jit(**_OPTS)
def _whole(q, t, xg, ws, hbuf, c, out, H0, z, hs, zero, s1, s2):
    """Half ``q`` of step ``t`` in one product (both halves of step t - 1 done): ``ws`` holds
    the rows of ``wo_q`` then those of ``wx_q``, so with ``hs`` = q's units' h then the other
    half's, the FMAs are those of :func:`_own_part` and :func:`_other_part`, in one call per
    block. What the calling thread does while the partner has not joined."""
    B, H = c.shape
    Hq = H0 if q == 0 else H - H0
    hcur = hbuf[t % 2]
    _start(t, xg, z)
    if q == 1:
        for b in range(B):
            hb = hs[b]
            for k in range(Hq):
                hb[k] = hcur[b, H0 + k]
            for k in range(H0):
                hb[Hq + k] = hcur[b, k]
    _product(hcur if q == 0 else hs, ws, z)
    _finish(q, t, hbuf, c, out, H0, z, zero, s1, s2)


@jit(**_OPTS)
def _projection(x2, wih, bias, xg):
    """``xg = x W_ih^T[:, half] + bias[half]`` (one GEMM on the calling thread)."""
    np.dot(x2, wih, xg)
    for r in range(xg.shape[0]):
        xr = xg[r]
        for g in range(xg.shape[1]):
            xr[g] += bias[g]


@jit(**_OPTS)
def _projection_1(x2, wih1, bias1, xg1, ctrl, waits):
    """Half 1's input projection: computed by whichever thread claims it first, awaited by the
    other (``waits``: the word that counts its spin loops)."""
    if _cas(ctrl, XG1, 0, 1):
        _projection(x2, wih1, bias1, xg1)
        _store(ctrl, XG1, 2)
    else:
        while _load(ctrl, XG1) != 2:
            _relax()
            ctrl[waits] += 1


@jit(**_OPTS)
def duo_forward(part, seq, x2, w, buf, H0, ctrl):
    """One layer's T steps, as ``part`` 0 (the calling thread: returns when
    all is done) or 1 (the partner: joins job ``seq`` if it is still open and claims halves 1
    until none is left).

    ``x2`` (T*B, I) the layer input (C-contiguous); ``w`` = (wih0, wih1, wo0, wx0, wo1, wx1,
    ws0, ws1, bias): per half q, ``wih_q`` (I, 4Hq) the columns of W_ih^T for q's gates,
    ``wo_q`` and ``wx_q`` the W_hh^T rows of q's own units and of the other half's, q's
    columns, in column blocks (n, rows, width), ``ws_q`` both stacked (own rows first);
    ``bias`` (4H,) in the halves' column order. ``buf`` = (xg0, xg1, hbuf, c, y, gates,
    cells): the halves' input projections (T*B, 4Hq) (filled here), ``hbuf`` (2, B, H) with
    ``hbuf[0]`` = h0, ``c`` (B, H) = c0 (updated), ``y`` (T, B, H), and in training ``gates``
    (T, B, 4H) and ``cells`` (T, B, H), what the one-core path saves ((0, 0, 0) arrays in
    inference). The final h is ``hbuf[T % 2]``.

    Each half's input projection is one GEMM, bias added (half 1's by whichever thread claims
    it first);
    each half of a step starts with the product over its own units' h, which it (or whoever
    did its half of the step before) wrote, and waits for the other half's flag only after
    that: the flag and the other half's h cross between the cores meanwhile. The arithmetic of
    every half is the same whichever thread does it, so results do not depend on the
    partner."""
    wih0, wih1, wo0, wx0, wo1, wx1, ws0, ws1, bias = w
    xg0, xg1, hbuf, c, y, gates, cells = buf
    out = (y, gates, cells)
    T = y.shape[0]
    B, H = c.shape
    dt = y.dtype
    H1 = H - H0
    z0 = np.empty((B, 4 * H0), dtype=dt)
    z1 = np.empty((B, 4 * H1), dtype=dt)
    zero = np.zeros(4 * H, dtype=dt)
    s1 = np.empty(4 * H, dtype=dt)
    s2 = np.empty(4 * H, dtype=dt)
    hs = np.empty((B, H), dtype=dt)
    bias1 = bias[4 * H0:]
    if part == 0:
        _projection(x2, wih0, bias[:4 * H0], xg0)
        _projection_1(x2, wih1, bias1, xg1, ctrl, WAITS)
        for t in range(T):
            if _load(ctrl, JOIN) == 4 * seq and _cas(ctrl, CLAIM, t, t + 1):
                # the partner has not joined (yet): the whole step here, at one core's speed
                _whole(0, t, xg0, ws0, hbuf, c, out, H0, z0, hs, zero, s1, s2)
                _whole(1, t, xg1, ws1, hbuf, c, out, H0, z1, hs, zero, s1, s2)
                _store(ctrl, P0, t + 1)
                _store(ctrl, P1, t + 1)
                continue
            _half(0, t, xg0, wo0, wx0, hbuf, c, out, H0, z0, zero, s1, s2, ctrl, P1, WAITS, P0)
            if _cas(ctrl, CLAIM, t, t + 1):  # the partner has not started this step: do it
                _half(1, t, xg1, wo1, wx1, hbuf, c, out, H0, z1, zero, s1, s2, ctrl, P0, WAITS, P1)
        while _load(ctrl, P1) < T:
            _relax()
            ctrl[WAITS] += 1
        if not _cas(ctrl, JOIN, 4 * seq, 4 * seq + 2):  # it joined: wait until it has left
            while _load(ctrl, JOIN) != 4 * seq + 3:
                _relax()
        return
    if not _cas(ctrl, JOIN, 4 * seq, 4 * seq + 1):
        return  # closed before it got here
    _projection_1(x2, wih1, bias1, xg1, ctrl, PWAITS)
    while True:
        t = _load(ctrl, CLAIM)
        if t >= T:
            break
        ready = False
        while _load(ctrl, CLAIM) == t:
            if _load(ctrl, P1) >= t:  # half 1 of step t - 1 is done (by whichever thread)
                ready = True
                break
            _relax()
        if ready and _cas(ctrl, CLAIM, t, t + 1):
            _half(1, t, xg1, wo1, wx1, hbuf, c, out, H0, z1, zero, s1, s2, ctrl, P0, PWAITS, P1)
            ctrl[DONE] += 1
    _store(ctrl, JOIN, 4 * seq + 3)


@jit(**_OPTS)
def _await_job(ctrl, seen, spins, done, done_word, settle):
    """Spin (``spins`` pause loops at most) until a job newer than ``seen`` is posted; the
    newest job's number (``seen`` when none came).

    First, ``done[done_word] = 1`` when ``done`` has entries: the last job's end, signalled
    only now that this thread has let go of the GIL, so the caller waiting for it takes the GIL
    at once (signalled while this thread still held it, the caller would sleep until it was
    let go: ~25 us on a VM). After a new job is seen, ``settle`` more pause loops: the caller
    that posted it still holds the GIL for a few microseconds, until its own compiled call
    starts, and asking for it sooner means the same sleep."""
    if done.shape[0] > 0:
        _store(done, done_word, 1)
    for _ in range(spins):
        s = _load(ctrl, SEQ)
        if s != seen:
            for _ in range(settle):
                _relax()
            return s
        _relax()
    return _load(ctrl, SEQ)


class Partner:
    """The partner thread of :func:`duo_forward` (and of :meth:`offer`'s jobs: the backward's
    GEMMs, ``kernels/cpu/overlap.py``): a daemon that runs half 1 of each job posted
    with :meth:`run`, spinning (without the GIL) for ``spins`` pause loops after each job for
    the next one, then sleeping until one is posted. One caller at a time: :meth:`run` returns
    False without doing anything when another thread's call holds the partner.

    A job that the partner did not join within ``JOIN_WITHIN`` seconds, or in which the two
    threads waited for each other more than ``WAIT_PER_STEP`` pause loops a step on average
    (normal waits are 50-250 in all; a thread descheduled for a scheduler tick makes
    thousands), means the second core is busy (another process, or this one's
    other threads): :meth:`usable` then says False for 50 ms, doubling up to 1 s while it
    persists, and :meth:`run` does its jobs on the calling thread meanwhile."""

    WAIT_PER_STEP = 1000
    JOIN_WITHIN = 2e-3

    def __init__(self, spins: int):
        self.spins = spins
        self.ctrl = np.zeros(CTRL_SIZE, np.int64)
        self._seq = 0
        self._slot = None
        #: The share of the last job's steps whose half 1 the partner computed.
        self.last_share = 0.0
        self._until = 0.0
        self._backoff = 0.05
        self._in_a_row = {}
        self._busy = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fastlstm-partner", daemon=True)
        self._thread.start()

    #: Pause loops the partner lets pass after seeing a job before it asks for the GIL
    #: (:func:`_await_job`): ~5-10 us.
    SETTLE = 400

    def _loop(self):
        seen = 0
        done = _NOTHING_DONE
        while True:
            s = _await_job(self.ctrl, seen, self.spins, done, DONE_WORD, self.SETTLE)
            done = _NOTHING_DONE
            if s == seen:
                self._wake.wait()
                self._wake.clear()
                continue
            seen = s
            job = self._slot
            if job is not None and job[0] == s:
                # a job may return a control array: its DONE_WORD is set once the GIL is free
                ended = job[1](*job[2])
                if type(ended) is np.ndarray:
                    done = ended

    def _post(self, s, fn, args):
        """Hands job ``s``, ``fn(*args)``, to the partner thread (the caller holds ``_busy``)."""
        self._seq = s
        self._slot = (s, fn, args)
        self.ctrl[SEQ] = s
        self._wake.set()

    def _judge(self, busy: bool):
        """After a job: back off (50 ms, doubling up to 1 s) when it found the second core
        busy, else stop backing off."""
        if busy:
            self._until = time.monotonic() + self._backoff
            self._backoff = min(2 * self._backoff, 1.0)
        else:
            self._until, self._backoff = 0.0, 0.05

    def offer(self, fn, args) -> bool:
        """Posts ``fn(*args)`` to the partner thread, unless another call holds it or it is
        backing off (False: nothing posted). After True, the caller does its own part (``fn``
        must let the caller finish the job alone when the partner comes late or never) and
        then calls :meth:`release`."""
        if not (self.usable() and self._busy.acquire(blocking=False)):
            return False
        self._post(self._seq + 1, fn, args)
        return True

    def release(self, busy: bool):
        """Ends an :meth:`offer`'s job; ``busy``: the caller found the second core busy."""
        self._slot = None
        self._judge(busy)
        self._busy.release()

    def in_a_row(self, sign: str, seen: bool) -> bool:
        """Whether the calling threads' :meth:`offer` jobs showed ``sign`` (a name: each is
        counted apart) ``seen`` now and in the job before: one job is often a coincidence,
        two in a row mean another process is taking turns with the call (a race between
        callers only miscounts one job)."""
        n = self._in_a_row.get(sign, 0) + 1 if seen else 0
        self._in_a_row[sign] = n
        return n >= 2

    def usable(self) -> bool:
        """False while backing off after a job that found the second core busy."""
        return self._until == 0.0 or time.monotonic() >= self._until

    def run(self, x2, w, buf, H0) -> bool:
        """:func:`duo_forward` on the calling thread (half 0) and the partner (inside a
        framework's operators, ``parallel.tasks_on``: its worker). While the partner is taken
        by another call or backing off, the calling thread does every step itself, with the
        same arithmetic (the results never depend on who did which half); returns whether a
        second thread was asked."""
        if runner_set():  # a framework's thread team: its worker takes half 1
            ctrl = np.zeros(CTRL_SIZE, np.int64)
            ctrl[JOIN] = 4
            run_tasks(lambda part: duo_forward(part, 1, x2, w, buf, H0, ctrl), [(0,), (1,)])
            return True
        if not (self.usable() and self._busy.acquire(blocking=False)):
            ctrl = np.zeros(CTRL_SIZE, np.int64)  # a job nobody else sees: JOIN 0, never joined
            duo_forward(0, 0, x2, w, buf, H0, ctrl)
            return False
        try:
            s = self._seq + 1
            ctrl = self.ctrl
            for word in (P0, P1, CLAIM, DONE, WAITS, PWAITS, XG1):
                ctrl[word] = 0
            ctrl[JOIN] = 4 * s
            args = (x2, w, buf, H0, ctrl)
            self._post(s, duo_forward, (1, s) + args)
            start = time.perf_counter()
            duo_forward(0, s, *args)
            took = time.perf_counter() - start
            self._slot = None
            T = max(buf[4].shape[0], 1)
            self.last_share = ctrl[DONE] / T
            absent = ctrl[JOIN] == 4 * s + 2 and took > self.JOIN_WITHIN
            self._judge(absent or ctrl[WAITS] + ctrl[PWAITS] > self.WAIT_PER_STEP * T)
        finally:
            self._busy.release()
        return True


#: The word of a job's control array that :meth:`Partner._loop` sets when a job that returned
#: the array has ended (``kernels/cpu/pair.py``'s ``DONE``).
DONE_WORD = 8
_NOTHING_DONE = np.zeros(0, np.int64)

_partner_lock = threading.Lock()
_partner: list = [None]


def partner(spins: int) -> Partner:
    """The process's partner thread (started on first use, again in a forked child)."""
    p = _partner[0]
    if p is None:
        with _partner_lock:
            p = _partner[0]
            if p is None:
                p = _partner[0] = Partner(spins)
    p.spins = spins
    return p


def _forget_partner():
    _partner[0] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_partner)
