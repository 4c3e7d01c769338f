"""Running the CPU backend's parallel tasks on a host framework's OpenMP threads.

PyTorch runs its intra-op work on a GNU OpenMP (libgomp) thread team whose idle workers spin for
milliseconds after each parallel region. A fastlstm call made between two torch ops would run
its tasks on its own threads while a torch worker spins on the other core: each task then gets
half a core (bench/NOTES.md, "fastlstm.torch"). :func:`gomp_runner` hands the tasks to that team
instead (``GOMP_parallel`` with a callback per thread), so the spinning worker takes one of them
at once. Each thread of the team runs tasks ``i, i + n, ...`` (n its size), so a smaller team
(nested inside another region, a thread limit) still runs every task.

The callback is a ctypes function: it takes the GIL for the Python part of a task, and the
compiled kernels release it while they compute.
"""
from __future__ import annotations

import ctypes
import threading

__all__ = ["gomp_runner"]

_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_lock = threading.Lock()
_found: dict = {}


def _mapped_libgomp(prefer: str | None):
    """Paths of the libgomp files mapped into this process (Linux), ``prefer``'s first."""
    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                name = path.rsplit("/", 1)[-1]
                if name.startswith("libgomp") and ".so" in name and path not in paths:
                    paths.append(path)
    except OSError:  # not Linux
        return []
    if prefer:
        paths.sort(key=lambda p: not p.startswith(prefer))
    return paths


def gomp_runner(prefer: str | None = None):
    """A task runner (``runner(fn, tasks) -> results``, the contract of
    ``fastlstm.kernels.cpu.parallel.run_tasks``) on the libgomp thread team already loaded in
    this process (the one under ``prefer``, a directory, when there are several), or None when
    no libgomp is loaded."""
    with _lock:
        if prefer not in _found:
            _found[prefer] = _load(prefer)
        lib = _found[prefer]
    if lib is None:
        return None
    parallel, thread_num, team_size = lib.GOMP_parallel, lib.omp_get_thread_num, \
        lib.omp_get_num_threads

    def run(fn, tasks):
        n = len(tasks)
        results = [None] * n
        errors = []

        def body(_):
            step = team_size()
            for i in range(thread_num(), n, step):
                try:
                    results[i] = fn(*tasks[i])
                except BaseException as exc:  # a ctypes callback cannot raise: kept for below
                    errors.append(exc)

        callback = _CALLBACK(body)
        parallel(callback, None, n, 0)  # returns when every thread of the team is done
        if errors:
            raise errors[0]
        return results

    return run


def _load(prefer):
    for path in _mapped_libgomp(prefer):
        try:
            lib = ctypes.CDLL(path)  # the mapped library itself (the loader returns its handle)
            fns = lib.GOMP_parallel, lib.omp_get_thread_num, lib.omp_get_num_threads
        except (OSError, AttributeError):
            continue
        fns[0].argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        fns[0].restype = None
        fns[1].restype = fns[2].restype = ctypes.c_int
        fns[1].argtypes = fns[2].argtypes = []
        return lib
    return None
