"""Running a layer's independent recurrences on several cores.

A layer's directions, and disjoint slices of its batch, are independent recurrences: each
runs its own input projection and its own loop over time in a worker thread (the compiled
kernels release the GIL), with no synchronisation between them. Two things make that pay
(bench/NOTES.md, item 9):

* every BLAS call inside a task must run on the calling thread. The tasks' products go to
  SciPy's OpenBLAS (Numba's ``np.dot``), which would otherwise spread each large call over
  its own threads and oversubscribe the cores; ``single_threaded_blas`` pins it to one
  thread while tasks run (reference-counted, so concurrent calls nest);
* nothing else may be spinning on the cores meanwhile: OpenBLAS's idle worker threads spin
  for a while after a multi-threaded call, so the tasks also do their layer's input GEMM
  themselves rather than after one threaded call.

Where SciPy's OpenBLAS cannot be found (another BLAS, another platform) ``can_pin()`` is
False and the backend runs serially, as with one thread.
"""
from __future__ import annotations

import contextvars
import ctypes
import glob
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numba
import numpy as np
from .jit import jit

__all__ = ["num_threads", "can_pin", "single_threaded_blas", "run_tasks", "runner_set", "tasks_on",
           "split_rows", "copy_rows", "put_rows", "matmul_into", "matmul_tn_into", "grad_gemms",
           "add_split"]

_lock = threading.Lock()
_state = {"lib": None, "searched": False, "depth": 0, "saved": None, "pool": None, "size": 0}


def _after_fork_in_child():
    """A forked child has none of the parent's pool threads: start afresh (a fork taken in the
    middle of another thread's call also leaves the pin set: undo it)."""
    global _lock
    _lock = threading.Lock()
    lib = _state["lib"]
    if lib is not None and _state["depth"] > 0:
        lib[1](_state["saved"])
    _state.update(depth=0, saved=None, pool=None, size=0)


def _before_fork():
    _lock.acquire()  # no pin or pool change is half done when the process forks


def _after_fork_in_parent():
    _lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


_search_lock = threading.Lock()


def _loaded_openblas_paths(libdir):
    """SciPy's OpenBLAS files: the ones mapped into this process first (Linux), then any in
    ``scipy.libs``."""
    mapped = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if "libscipy_openblas" in os.path.basename(path) and path not in mapped:
                    mapped.append(path)
    except OSError:  # pragma: no cover - not Linux
        pass
    return mapped + sorted(glob.glob(os.path.join(libdir, "libscipy_openblas*.so*")))


def _openblas():
    """SciPy's OpenBLAS (the library behind Numba's ``np.dot``) as ctypes (get, set), or None."""
    with _search_lock:
        if not _state["searched"]:
            _state["lib"] = _find_openblas()
            _state["searched"] = True
    return _state["lib"]


def _find_openblas():
    try:
        import scipy
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library first)
    except ImportError:  # pragma: no cover - scipy is a dependency
        return None
    libdir = os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs")
    for path in _loaded_openblas_paths(libdir):
        try:
            lib = ctypes.CDLL(path)
            get, put = lib.scipy_openblas_get_num_threads, lib.scipy_openblas_set_num_threads
        except (OSError, AttributeError):  # pragma: no cover - other builds
            continue
        get.restype, get.argtypes = ctypes.c_int, []
        put.restype, put.argtypes = None, [ctypes.c_int]
        return get, put
    return None


def can_pin() -> bool:
    """Whether SciPy's OpenBLAS can be pinned to one thread (the parallel path's requirement)."""
    return _openblas() is not None


class single_threaded_blas:
    """Context manager: SciPy's OpenBLAS runs every call on the calling thread inside it.

    Reference-counted: the thread count is saved by the first entrant and restored by the last
    one out, so concurrent fastlstm calls from several threads nest correctly. Meanwhile other
    users of SciPy's BLAS in the process also run single-threaded (NumPy's own BLAS is a
    separate library and is not affected).
    """

    def __enter__(self):
        lib = _openblas()
        with _lock:
            if lib is not None and _state["depth"] == 0:
                _state["saved"] = lib[0]()
                lib[1](1)
            _state["depth"] += 1
        return self

    def __exit__(self, *exc):
        lib = _openblas()
        with _lock:
            _state["depth"] -= 1
            if lib is not None and _state["depth"] == 0:
                lib[1](_state["saved"])
        return False


def num_threads() -> int:
    """Cores the CPU backend may use: Numba's thread count (``NUMBA_NUM_THREADS``,
    ``numba.set_num_threads``), the same figure the benchmarks give torch."""
    return numba.get_num_threads()


#: Another way to run a call's tasks (e.g. on a host framework's own worker threads): a
#: callable ``runner(fn, tasks) -> results`` with :func:`run_tasks`' contract, set for a block
#: of code with :class:`tasks_on`.
_runner: contextvars.ContextVar = contextvars.ContextVar("fastlstm_task_runner", default=None)


class tasks_on:
    """Context manager: :func:`run_tasks` calls ``runner(fn, tasks)`` inside it (this thread
    and task only; ``None`` restores the shared pool)."""

    def __init__(self, runner):
        self.runner = runner

    def __enter__(self):
        self._token = _runner.set(self.runner)
        return self

    def __exit__(self, *exc):
        _runner.reset(self._token)
        return False


def runner_set() -> bool:
    """Whether :class:`tasks_on` has set a runner for this thread (a framework's threads)."""
    return _runner.get() is not None


def run_tasks(fn, tasks) -> list:
    """``[fn(*t) for t in tasks]``, the first on the calling thread, the rest on a shared pool
    (or on the runner :class:`tasks_on` set).

    Tasks never wait on each other, so a busy pool only delays them (no deadlock). The pool
    grows to the largest call's size; tasks are submitted under the same lock, so a growing
    pool never refuses them. Every task has finished before this returns or raises (the first
    error is re-raised).
    """
    if len(tasks) == 1:
        return [fn(*tasks[0])]
    runner = _runner.get()
    if runner is not None:
        return runner(fn, tasks)
    with _lock:
        if _state["size"] < len(tasks) - 1:
            if _state["pool"] is not None:
                _state["pool"].shutdown(wait=False)  # its submitted tasks still run
            _state["pool"] = ThreadPoolExecutor(len(tasks) - 1, thread_name_prefix="fastlstm")
            _state["size"] = len(tasks) - 1
        futures = [_state["pool"].submit(fn, *t) for t in tasks[1:]]
    first = err = None
    try:
        first = fn(*tasks[0])
    except BaseException as exc:  # finish the others before raising
        err = exc
    wait(futures)
    results = []
    for f in futures:
        exc = f.exception()
        if exc is not None:
            err = err or exc
        else:
            results.append(f.result())
    if err is not None:
        raise err
    return [first] + results


def split_rows(B: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous, near-equal row ranges covering ``range(B)``."""
    edges = [B * i // parts for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts) if edges[i + 1] > edges[i]]


@jit(cache=True, nogil=True)
def matmul_into(a, b, out):
    """``out = a @ b`` through SciPy's BLAS without the GIL (``a``, ``b``, ``out`` C-contiguous)."""
    np.dot(a, b, out)


@jit(cache=True, nogil=True)
def copy_rows(src, b0, out):
    """``out = src[:, b0:b0 + out.shape[1]]`` (3-D): a task's batch slice of a layer's input."""
    for t in range(out.shape[0]):
        for b in range(out.shape[1]):
            out[t, b] = src[t, b0 + b]


@jit(cache=True, nogil=True)
def put_rows(src, b0, out):
    """``out[:, b0:b0 + src.shape[1]] = src`` (3-D): a task's batch slice back in place."""
    for t in range(src.shape[0]):
        for b in range(src.shape[1]):
            out[t, b0 + b] = src[t, b]


@jit(cache=True, nogil=True)
def matmul_tn_into(a, b, out):
    """``out = a.T @ b`` (BLAS reads ``a`` transposed in place; no copy)."""
    np.dot(a.T, b, out)


@jit(cache=True, nogil=True)
def grad_gemms(dg, a, b, w_ih, dx, dw_a, dw_b):
    """One block of rows (steps x sequences) of a direction's phase 3: ``dx = dg @ W_ih``
    (skipped when ``dx`` has no rows: the recurrence computed it per step), ``dw_a = dg^T a``
    and ``dw_b = dg^T b`` (skipped when ``b`` has no columns). With ``a = [x | h_prev]`` one
    GEMM gives ``[dW_ih | dW_hh]``; with ``a = x``, ``b = h_prev``, two."""
    if dx.shape[0] > 0:
        np.dot(dg, w_ih, dx)
    np.dot(dg.T, a, dw_a)
    if b.shape[1] > 0:
        np.dot(dg.T, b, dw_b)


@jit(cache=True, nogil=True)
def add_split(a, b, out1, out2):
    """``out1 = a[:, :n] + b[:, :n]`` and ``out2 = a[:, n:] + b[:, n:]`` (``n = out1.shape[1]``;
    all C-contiguous): two tasks' ``[dW_ih | dW_hh]`` summed into the two gradients in one
    pass over the rows. NumPy adds such column ranges ~4x slower (bench/NOTES.md, item 18)."""
    n = out1.shape[1]
    for r in range(a.shape[0]):
        ar, br = a[r], b[r]
        o1, o2 = out1[r], out2[r]
        for j in range(n):
            o1[j] = ar[j] + br[j]
        for j in range(out2.shape[1]):
            o2[j] = ar[n + j] + br[n + j]
