"""``python -m fastlstm info``: versions, BLAS, Numba threading and compile cache, CPU, GPU."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

from .. import __version__, harness
from .common import EXIT_OK


def add_parser(sub) -> None:
    i = sub.add_parser("info", help="versions, BLAS, threading, compile cache, CPU and GPU",
                       description="Print versions of fastlstm and its dependencies, the BLAS "
                                   "NumPy uses, Numba's threading layer and thread count, the "
                                   "compile-cache location, the CPU and the GPU (if any).")
    i.add_argument("--json", action="store_true", help="print as JSON")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                        if f in flags]
    except OSError:
        pass
    return []


def _dist_version(name: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _blas_info() -> list[str]:
    lines = []
    try:
        cfg = np.show_config(mode="dicts")
        deps = cfg.get("Build Dependencies", {})
        for key in ("blas", "lapack"):
            d = deps.get(key, {})
            if d:
                extra = d.get("openblas configuration") or ""
                lines.append(f"numpy {key}: {d.get('name')} {d.get('version', '')} {extra}".rstrip())
    except Exception:  # older numpy: no mode="dicts"
        lines.append("numpy BLAS: see numpy.show_config()")
    try:
        from threadpoolctl import threadpool_info
        for p in threadpool_info():
            lines.append(f"threadpool: {p.get('internal_api')} {p.get('version', '')} "
                         f"threads={p.get('num_threads')} arch={p.get('architecture', '-')} "
                         f"({Path(p.get('filepath', '')).name})")
    except ImportError:
        lines.append("threadpool: threadpoolctl not installed (runtime BLAS threads not shown)")
    return lines


def _numba_threading() -> tuple[str, int]:
    import numba
    try:
        return numba.threading_layer(), numba.get_num_threads()
    except ValueError:  # no parallel region has run yet: run a tiny one
        pass
    try:
        @numba.njit(parallel=True, cache=False)
        def _touch(n):
            s = 0
            for i in numba.prange(n):
                s += i
            return s

        _touch(4)
        return numba.threading_layer(), numba.get_num_threads()
    except Exception as exc:
        return f"unavailable ({type(exc).__name__}: {exc})", numba.get_num_threads()


def _cache_location() -> str:
    import numba
    from ..kernels import cpu as kcpu
    configured = numba.config.CACHE_DIR
    if configured:
        base = Path(configured)
        where = f"{base} (NUMBA_CACHE_DIR)"
    else:
        base = Path(kcpu.__file__).resolve().parent / "__pycache__"
        where = f"{base} (beside the kernels; set NUMBA_CACHE_DIR to move it)"
    if base.exists():
        n = len(list(base.rglob("*.nbi")))
        state = "writable" if os.access(base, os.W_OK) else "read-only: Numba falls back to a per-user cache"
        return f"{where}; {n} cached kernel index file(s), {state}"
    parent_ok = os.access(base.parent if base.parent.exists() else Path.cwd(), os.W_OK)
    return f"{where}; empty (created on first compile){'' if parent_ok else ', parent not writable'}"


def _cpu_tasks(nthreads: int) -> str:
    from ..kernels.cpu import parallel as cpu_parallel
    return (f"up to {nthreads} threads per layer" if cpu_parallel.can_pin() else
            "one thread per layer (SciPy's OpenBLAS not found, so it cannot be pinned)")


def _gpu() -> str:
    from ..dispatch import cuda_unavailable_reason
    reason = cuda_unavailable_reason()
    if reason is None and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct but slow, not a GPU"
    if reason is not None:
        return f"none: {reason}"
    try:
        from numba import cuda
        dev = cuda.get_current_device()
        cc = ".".join(map(str, dev.compute_capability))
        name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
        free, total = cuda.current_context().get_memory_info()
        return f"{name}, compute capability {cc}, {total / 2**30:.1f} GiB"
    except Exception as exc:
        return f"usable, but details unavailable ({exc})"


def gather_info() -> list[tuple[str, str]]:
    import numba

    import fastlstm
    info: list[tuple[str, str]] = []
    add = lambda k, v: info.append((k, str(v)))  # noqa: E731
    add("fastlstm", f"{__version__} ({Path(fastlstm.__file__).resolve().parent})")
    add("python", f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})")
    add("platform", platform.platform())
    for name in ("numpy", "scipy", "numba", "llvmlite", "torch", "numba-cuda", "cupy",
                 "pytest-benchmark", "matplotlib"):
        v = _dist_version(name)
        if v is not None or name in ("numpy", "scipy", "numba", "llvmlite"):
            add(name, v or "not installed")
    for line in _blas_info():
        add("BLAS", line)
    layer, nthreads = _numba_threading()
    add("numba threading", f"layer {layer}, {nthreads} threads (NUMBA_NUM_THREADS default "
        f"{numba.config.NUMBA_DEFAULT_NUM_THREADS})")
    add("cpu tasks", _cpu_tasks(nthreads))
    add("numba cache", _cache_location())
    add("cpu", f"{cpu_name()}; {os.cpu_count()} logical CPUs"
        + (f", {len(os.sched_getaffinity(0))} usable" if hasattr(os, "sched_getaffinity") else ""))
    try:
        import llvmlite.binding as llvm
        add("cpu (llvm target)", llvm.get_host_cpu_name())
    except Exception:
        pass
    flags = _cpu_flags()
    if flags:
        add("cpu features", " ".join(flags))
    add("gpu", _gpu())
    add("backends", ", ".join(harness.available_backends()))
    env = [f"{k}={os.environ[k]}" for k in ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER",
                                           "NUMBA_CACHE_DIR", "NUMBA_ENABLE_CUDASIM",
                                           "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                           "MKL_NUM_THREADS") if k in os.environ]
    add("environment", " ".join(env) if env else "(no thread/cache variables set)")
    return info


def main(args) -> int:
    info = gather_info()
    if args.json:
        out: dict = {}
        for k, v in info:
            out.setdefault(k, []).append(v)
        print(json.dumps({k: v[0] if len(v) == 1 else v for k, v in out.items()}, indent=1))
        return EXIT_OK
    width = max(len(k) for k, _ in info)
    for k, v in info:
        print(f"{k.ljust(width)}  {v}")
    return EXIT_OK
