"""tests/cuda: the GPU backend's tests. With no real GPU they run in the numba CUDA simulator.

The mode is fixed here, at collection, before anything imports ``numba.cuda`` (which reads
``NUMBA_ENABLE_CUDASIM`` once, at its import):

* ``NUMBA_ENABLE_CUDASIM`` set by the caller: respected (``1`` simulator, ``0`` real GPU).
* otherwise: a real GPU is looked for through the driver (``libcuda``, without importing numba);
  with none, ``NUMBA_ENABLE_CUDASIM=1`` is set for this process.

If ``numba.cuda`` was already imported in the other mode (a plugin or module imported it at
collection), it cannot be switched in this process: the simulator tests then fail with a message
saying to run ``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda`` on its own.

Tests marked ``gpu`` need a real GPU and are skipped in the simulator.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

import pytest


def _real_gpu_present() -> bool:
    """A CUDA device visible through the driver API (no numba import)."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return False
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return False
            return count.value > 0
        except AttributeError:
            return False
    return False


HAVE_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
REAL_GPU = _real_gpu_present()

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not REAL_GPU:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
WANT_SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _mode_problem() -> str | None:
    """Why the CUDA tests cannot run as configured here (None when they can)."""
    if not HAVE_NUMBA_CUDA:
        return None  # handled as a skip: the optional extra is not installed
    if "numba.cuda" in sys.modules:
        try:
            from numba.cuda.core import config
        except ImportError:  # pragma: no cover - older numba-cuda layouts
            from numba.core import config
        if bool(config.ENABLE_CUDASIM) != WANT_SIM:
            return ("numba.cuda was imported in the other mode before tests/cuda/conftest.py could "
                    "set NUMBA_ENABLE_CUDASIM; run `NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda` "
                    "in its own process")
    return None


MODE_PROBLEM = _mode_problem()


def pytest_configure(config):
    config.addinivalue_line("markers", "no_numba_cuda_ok: runs without numba-cuda installed")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if not str(item.fspath).startswith(here):
            continue
        if not HAVE_NUMBA_CUDA and "no_numba_cuda_ok" not in item.keywords:
            item.add_marker(pytest.mark.skip(
                reason="numba-cuda is not installed (pip install -e '.[cuda]')"))
        elif not WANT_SIM and not REAL_GPU and "no_numba_cuda_ok" not in item.keywords:
            item.add_marker(pytest.mark.skip(
                reason="NUMBA_ENABLE_CUDASIM=0 and no CUDA GPU: nothing to run the kernels on"))
        elif "gpu" in item.keywords and (WANT_SIM or not REAL_GPU):
            item.add_marker(pytest.mark.skip(reason="needs a real CUDA GPU"))


@pytest.fixture(autouse=True)
def _cuda_mode():
    if MODE_PROBLEM is not None:
        pytest.fail(MODE_PROBLEM)
    yield


@pytest.fixture
def real_gpu() -> bool:
    """A CUDA device is visible through the driver (whatever mode the tests run in)."""
    return REAL_GPU


@pytest.fixture
def simulating() -> bool:
    return WANT_SIM


@pytest.fixture
def cuda_options():
    """``cuda_options(recurrence=..., gemm=...)`` sets CUDA knobs (``fastlstm.config``) for the
    rest of the test; restored after it."""
    from contextlib import ExitStack

    from fastlstm import config
    with ExitStack() as stack:
        yield lambda **kw: stack.enter_context(config.options("cuda", **kw))
