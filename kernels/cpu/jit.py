"""``jit``: the CPU kernels' decorator, ``numba.njit`` that still works without a disk cache.

``numba.njit(cache=True)`` looks for a writable cache directory when it decorates
(``NUMBA_CACHE_DIR``, the source's ``__pycache__``, a user-wide directory) and raises
``RuntimeError: cannot cache function ...: no locator available for file ...`` when there is
none: a read-only install with no writable home directory could not even import the kernels.
``jit`` takes the same arguments and gives the same dispatcher; where caching is impossible it
compiles without the disk cache (every process then compiles on first use) and says so once
per process on stderr::

    from .jit import jit

    @jit(cache=True, nogil=True, error_model="numpy")
    def kernel(...):
        ...

With ``NUMBA_DISABLE_JIT=1`` it returns the Python function, as ``numba.njit`` does.
"""
from __future__ import annotations

import inspect
import sys
import threading

import numba

__all__ = ["jit", "NO_CACHE_NOTICE", "disk_cache_disabled"]

NO_CACHE_NOTICE = ("fastlstm: no writable Numba cache directory (set NUMBA_CACHE_DIR to one); "
                   "compiling without the disk cache")

_lock = threading.Lock()
_noticed = [False]


def _notice() -> None:
    with _lock:
        if _noticed[0]:
            return
        _noticed[0] = True
    stream = sys.stderr
    if stream is not None:  # None under pythonw
        try:
            stream.write(NO_CACHE_NOTICE + "\n")
            stream.flush()
        except (OSError, ValueError):  # closed or broken stream: the notice is best effort
            pass


def disk_cache_disabled() -> bool:
    """Whether some kernel of this process compiles without the disk cache."""
    return _noticed[0]


def _no_cache_location(exc: RuntimeError) -> bool:
    return str(exc).startswith("cannot cache function")


def jit(signature_or_function=None, **options):
    """``numba.njit(signature_or_function, **options)``, except that ``cache=True`` falls back to
    compiling without the disk cache (one notice per process on stderr) when Numba finds no
    writable cache directory for the function's source file."""
    if inspect.isfunction(signature_or_function):  # bare @jit
        return jit(**options)(signature_or_function)
    sigs = () if signature_or_function is None else (signature_or_function,)

    def decorate(func):
        if not options.get("cache"):
            return numba.njit(*sigs, **options)(func)
        try:
            # Numba picks the cache directory when it enables caching, before any eager
            # compilation of ``sigs``: the failure comes before any work is done.
            return numba.njit(*sigs, **options)(func)
        except RuntimeError as exc:
            if not _no_cache_location(exc):
                raise
        _notice()
        return numba.njit(*sigs, **dict(options, cache=False))(func)

    return decorate
