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
in it.

Numba has no CPU atomics: the loads, stores and compare-and-swap below are LLVM atomic
instructions emitted by intrinsics (acquire / release ordering), and the spin-wait hint is x86's
``pause``.
"""
from __future__ import annotations

import os
import platform
import threading
import time

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import jit
from .recurrence import _cell_forward
from .smallgemm import micro_dot

__all__ = ["Partner", "duo_forward", "CTRL_SIZE"]

P0, P1, CLAIM, JOIN, SEQ, DONE, WAITS, PWAITS = 0, 8, 16, 24, 32, 40, 48, 56
CTRL_SIZE = 64

_OPTS = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _word(context, builder, aty, arr, idx):
    return builder.gep(context.make_array(aty)(context, builder, arr).data, [idx])


@intrinsic
def _load(typingctx, arr, idx):
    """``arr[idx]`` (int64), an acquire load."""
    sig = types.int64(arr, idx)

    def codegen(context, builder, signature, args):
        return builder.load_atomic(_word(context, builder, signature.args[0], *args),
                                   "acquire", 8)
    return sig, codegen


@intrinsic
def _store(typingctx, arr, idx, val):
    """``arr[idx] = val`` (int64), a release store."""
    sig = types.void(arr, idx, types.int64)

    def codegen(context, builder, signature, args):
        builder.store_atomic(args[2], _word(context, builder, signature.args[0], args[0],
                                            args[1]), "release", 8)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _cas(typingctx, arr, idx, expected, new):
    """``arr[idx] = new`` if it equals ``expected`` (atomically); whether it did."""
    sig = types.boolean(arr, idx, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        ptr = _word(context, builder, signature.args[0], args[0], args[1])
        res = builder.cmpxchg(ptr, args[2], args[3], "acq_rel", "acquire")
        return builder.extract_value(res, 1)
    return sig, codegen


@intrinsic
def _relax(typingctx):
    """A spin-wait hint (``pause`` on x86; nothing elsewhere)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module,
                                                ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return sig, codegen


@jit(**_OPTS)
def _product(a, wb, z):
    """``z = a @ W`` where ``wb`` (n, K, width) holds W's column blocks."""
    nb = wb.shape[2]
    for i in range(wb.shape[0]):
        micro_dot(a, wb[i], z, i * nb)


@jit(**_OPTS)
def _own_part(q, t, x, wa, bias, hbuf, H0, xh, za):
    """Half ``q`` of step ``t``, the part that needs only the input and q's own units' h of
    step t - 1: ``za = [x_t | h_q] @ [W_ih^T ; W_hh^T rows of q's units] + bias``, q's gate
    columns (``wa``: those rows in column blocks; ``xh`` (B, I + Hq) scratch)."""
    B, I = x.shape[1], x.shape[2]
    H = hbuf.shape[2]
    j0 = 0 if q == 0 else H0
    Hq = H0 if q == 0 else H - H0
    G = za.shape[1]
    hcur = hbuf[t % 2]
    for b in range(B):
        row = xh[b]
        xb = x[t, b]
        for k in range(I):
            row[k] = xb[k]
        hb = hcur[b]
        for k in range(Hq):
            row[I + k] = hb[j0 + k]
    _product(xh, wa, za)
    bq = bias[4 * j0:4 * j0 + G]
    for b in range(B):
        zb = za[b]
        for g in range(G):
            zb[g] += bq[g]


@jit(**_OPTS)
def _other_part(q, t, wb, hbuf, c, y, H0, za, zb, zero, s1, s2):
    """The rest of half ``q`` of step ``t``, once the other half of step t - 1 is done: the
    product over the other half's units (``wb``: W_hh^T rows of those units, q's columns),
    then q's cell and hidden values into ``c``, ``hbuf[(t + 1) % 2]`` and ``y[t]``."""
    B, H = c.shape
    j0 = 0 if q == 0 else H0
    Hq = H0 if q == 0 else H - H0
    k0 = H0 if q == 0 else 0
    _product(hbuf[t % 2, :, k0:k0 + (H - Hq)], wb, zb)
    nxt = hbuf[(t + 1) % 2]
    for b in range(B):
        hb = nxt[b, j0:j0 + Hq]
        _cell_forward(zb[b], za[b], zero, c[b, j0:j0 + Hq], hb, Hq, s1, s2)
        yb = y[t, b]
        for j in range(Hq):
            yb[j0 + j] = hb[j]


@jit(**_OPTS)
def duo_forward(part, seq, x, wa0, wb0, wa1, wb1, bias, hbuf, c, y, H0, ctrl):
    """Inference through one layer's T = ``x.shape[0]`` steps, as ``part`` 0 (the calling
    thread: returns when all is done) or 1 (the partner: joins job ``seq`` if it is still
    open and claims halves 1 until none is left).

    ``x`` (T, B, I) the layer input; per half q, ``wa_q`` holds the rows ``[W_ih^T ; W_hh^T of
    q's units]`` and ``wb_q`` the W_hh^T rows of the other half's units, both restricted to
    q's gate columns and in column blocks (n, rows, width); ``bias`` (4H,) in the halves'
    column order; ``hbuf`` (2, B, H) with ``hbuf[0]`` = h0; ``c`` (B, H) = c0, updated; ``y``
    (T, B, H). The final h is ``hbuf[T % 2]``.

    Each half of a step starts with what needs only the input and its own units' h, which it
    (or whoever did its half of the step before) wrote, and waits for the other half's flag
    only after that: the flag and the other half's h cross between the cores meanwhile. Each
    core reads only its own half of the weights and computes its own part of the input
    projection, so nothing but h crosses."""
    T, B, I = x.shape
    H = c.shape[1]
    dt = y.dtype
    H1 = H - H0
    xh0 = np.empty((B, I + H0), dtype=dt)
    xh1 = np.empty((B, I + H1), dtype=dt)
    za0 = np.empty((B, 4 * H0), dtype=dt)
    zb0 = np.empty((B, 4 * H0), dtype=dt)
    za1 = np.empty((B, 4 * H1), dtype=dt)
    zb1 = np.empty((B, 4 * H1), dtype=dt)
    zero = np.zeros(4 * H, dtype=dt)
    s1 = np.empty(4 * H, dtype=dt)
    s2 = np.empty(4 * H, dtype=dt)
    if part == 0:
        for t in range(T):
            _own_part(0, t, x, wa0, bias, hbuf, H0, xh0, za0)
            while _load(ctrl, P1) < t:
                _relax()
                ctrl[WAITS] += 1
            _other_part(0, t, wb0, hbuf, c, y, H0, za0, zb0, zero, s1, s2)
            _store(ctrl, P0, t + 1)
            if _cas(ctrl, CLAIM, t, t + 1):  # the partner has not started this step: do it
                _own_part(1, t, x, wa1, bias, hbuf, H0, xh1, za1)
                _other_part(1, t, wb1, hbuf, c, y, H0, za1, zb1, zero, s1, s2)
                _store(ctrl, P1, t + 1)
        while _load(ctrl, P1) < T:
            _relax()
            ctrl[WAITS] += 1
        if not _cas(ctrl, JOIN, 4 * seq, 4 * seq + 2):  # it joined: wait until it has left
            while _load(ctrl, JOIN) != 4 * seq + 3:
                _relax()
        return
    if not _cas(ctrl, JOIN, 4 * seq, 4 * seq + 1):
        return  # closed before it got here
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
            _own_part(1, t, x, wa1, bias, hbuf, H0, xh1, za1)
            while _load(ctrl, P0) < t:
                _relax()
                ctrl[PWAITS] += 1
            _other_part(1, t, wb1, hbuf, c, y, H0, za1, zb1, zero, s1, s2)
            _store(ctrl, P1, t + 1)
            ctrl[DONE] += 1
    _store(ctrl, JOIN, 4 * seq + 3)


@jit(**_OPTS)
def _await_job(ctrl, seen, spins):
    """Spin (``spins`` pause loops at most) until a job newer than ``seen`` is posted; the
    newest job's number (``seen`` when none came)."""
    for _ in range(spins):
        s = _load(ctrl, SEQ)
        if s != seen:
            return s
        _relax()
    return _load(ctrl, SEQ)


class Partner:
    """The partner thread of :func:`duo_forward`: a daemon that runs half 1 of each job posted
    with :meth:`run`, spinning (without the GIL) for ``spins`` pause loops after each job for
    the next one, then sleeping until one is posted. One caller at a time: :meth:`run` returns
    False without doing anything when another thread's call holds the partner.

    A job that the partner did not join within ``JOIN_WITHIN`` seconds, or in which the two
    threads waited for each other more than ``WAIT_PER_STEP`` pause loops a step on average
    (normal waits are 50-250 in all; a thread descheduled for a scheduler tick makes
    thousands), means the second core is busy (another process, or this one's
    other threads): :meth:`usable` then says False for 50 ms, doubling up to 1 s while it
    persists, and the callers run on one core meanwhile."""

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
        self._busy = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fastlstm-partner", daemon=True)
        self._thread.start()

    def _loop(self):
        seen = 0
        while True:
            s = _await_job(self.ctrl, seen, self.spins)
            if s == seen:
                self._wake.wait()
                self._wake.clear()
                continue
            seen = s
            job = self._slot
            if job is not None and job[0] == s:
                duo_forward(1, s, *job[1])

    def usable(self) -> bool:
        """False while backing off after a job that found the second core busy."""
        return self._until == 0.0 or time.monotonic() >= self._until

    def run(self, x, wa0, wb0, wa1, wb1, bias, hbuf, c, y, H0) -> bool:
        """:func:`duo_forward` on the calling thread (half 0) and the partner; False (nothing
        done) when the partner is taken."""
        if not self._busy.acquire(blocking=False):
            return False
        try:
            self._seq += 1
            s = self._seq
            ctrl = self.ctrl
            ctrl[P0] = ctrl[P1] = ctrl[CLAIM] = ctrl[DONE] = ctrl[WAITS] = ctrl[PWAITS] = 0
            ctrl[JOIN] = 4 * s
            args = (x, wa0, wb0, wa1, wb1, bias, hbuf, c, y, H0, ctrl)
            self._slot = (s, args)
            ctrl[SEQ] = s
            self._wake.set()
            start = time.perf_counter()
            duo_forward(0, s, *args)
            took = time.perf_counter() - start
            self._slot = None
            T = max(y.shape[0], 1)
            self.last_share = ctrl[DONE] / T
            absent = ctrl[JOIN] == 4 * s + 2 and took > self.JOIN_WITHIN
            if absent or ctrl[WAITS] + ctrl[PWAITS] > self.WAIT_PER_STEP * T:
                self._until = time.monotonic() + self._backoff
                self._backoff = min(2 * self._backoff, 1.0)
            else:
                self._until, self._backoff = 0.0, 0.05
        finally:
            self._busy.release()
        return True


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
