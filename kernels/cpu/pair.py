"""Two independent lists of compiled calls on two cores, handed over without a thread pool.

A parallel layer on two cores runs two independent tasks (directions, or halves of the
batch). Handed to a thread pool, a task reaches the other core 70-100 us after it is
submitted on a 2-vCPU VM (a queue, a condition variable, the woken thread's wait for the GIL
while the caller prepares its own task), and the caller then sleeps until the pool's thread
is done: a fixed cost of ~0.1-0.2 ms per layer and call, a third of a call at
(50, 8, 32, 128) (bench/NOTES.md, "Parallel layers without the pool").

Here the caller builds both tasks' arguments itself, then posts the second task to the
partner thread of the two-core path (``duo.Partner``, spinning without the GIL for a while
after each job), runs the first, and spins for the second's end. The second task goes to
whichever thread claims it first (a compare-and-swap on ``ctrl[CLAIM]``), so a partner that
is late or descheduled before it starts only leaves the task to the caller. Nothing the
tasks compute depends on which thread ran them.

Control words (int64, one cache line each): ``ctrl[CLAIM]`` 0 while unclaimed, then 1
(the partner) or 2 (the caller); ``ctrl[DONE]`` 1 once the partner has finished the task it
claimed and let go of the GIL (``duo.Partner``: it sets the word from its compiled wait for
the next job, so the caller, spinning without the GIL, takes it at once; the partner also lets
the caller reach its own compiled call before it asks for the GIL).
"""
from __future__ import annotations

import resource
import time

import numpy as np

from .atomics import atomic_cas, atomic_load, spin_pause, yield_cpu
from .duo import DONE_WORD as DONE
from .jit import jit

__all__ = ["Pair", "run_pair"]

CLAIM = 0
CTRL_SIZE = 16
#: Pause loops the caller may wait for the partner's task before the second core counts as
#: busy (a task of a few steps takes ~10^3; a descheduled thread, a scheduler tick: ~10^5).
PAIR_WAIT = 20_000

_OPTS = dict(cache=True, nogil=True, error_model="numpy")


@jit(**_OPTS)
def _claim(ctrl, who):
    return atomic_cas(ctrl, CLAIM, 0, who)


@jit(**_OPTS)
def _await_finish(ctrl):
    """Spin until the partner has finished its task (yielding the core every 256 pause loops,
    so a partner descheduled on this core gets it back); the pause loops it took."""
    spins = 0
    while atomic_load(ctrl, DONE) == 0:
        spin_pause()
        spins += 1
        if spins % 256 == 0:
            yield_cpu()
    return spins


def _preempted() -> int:
    """This thread's involuntary context switches so far (another runnable thread took its core)."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw


def _run_calls(calls):
    for fn, args in calls:
        fn(*args)


class Pair:
    """The second task of a pair: ``calls`` (``[(fn, args), ...]``, run in order), claimed by
    the partner or the caller, whichever comes first."""
    __slots__ = ("ctrl", "calls", "error")

    def __init__(self, calls):
        self.ctrl = np.zeros(CTRL_SIZE, np.int64)
        self.calls = calls
        self.error = None

    def partner_side(self):
        """The partner thread's job: the task, if the caller has not taken it. Returns the
        control array, whose ``DONE`` the partner thread sets once it has let go of the GIL
        (``duo.Partner._loop``); None when the caller took the task."""
        if not _claim(self.ctrl, 1):
            return None
        try:
            _run_calls(self.calls)
        except BaseException as exc:  # raised again on the caller's thread
            self.error = exc
        return self.ctrl


def run_pair(partner, first, second) -> bool:
    """Runs the call lists ``first`` (on this thread) and ``second`` (on ``partner``'s thread,
    or here when it comes late) concurrently; every call is compiled and runs without the GIL.
    False, having run nothing, when the partner is taken by another call or backing off after
    finding the second core busy (``duo.Partner.offer``): the caller then runs them its own way.
    The partner backs off after a pair it did not start within ``JOIN_WITHIN`` of the caller's
    start, one whose end the caller waited ``PAIR_WAIT`` pause loops for, or the second in a
    row in which the caller was preempted (another runnable thread took its core: the
    partner's spinning then costs the caller its core; the share of a core the caller got
    would not tell, as its waits for the GIL count against it)."""
    pair = Pair(second)
    switched = _preempted()
    if not partner.offer(Pair.partner_side, (pair,)):
        return False
    start = time.perf_counter()  # then straight into the first compiled call (see SETTLE)
    busy = False
    try:
        _run_calls(first)
    finally:
        try:
            if _claim(pair.ctrl, 2):  # not started: the partner is late or away
                busy = time.perf_counter() - start > partner.JOIN_WITHIN
                _run_calls(second)
            else:
                busy = _await_finish(pair.ctrl) > PAIR_WAIT
        finally:
            partner.release(busy or partner.in_a_row("preempted", _preempted() > switched))
    if pair.error is not None:
        raise pair.error
    return True
