"""The backends' tuning knobs, one small frozen object per backend, read once per call.

Defaults are the measured choices (``bench/NOTES.md``). Change them for a block of code with
:func:`options`, never by assigning module attributes::

    with fastlstm.config.options("cpu", parallel_min_flop=0, threads=2):
        fastlstm.forward(x, params)          # every layer on the parallel path

The setting is per thread and per ``asyncio`` task (a :class:`contextvars.ContextVar`); a
call reads it once, in the calling thread, and hands it to its worker threads.
"""
from __future__ import annotations

import contextvars
import os
from dataclasses import dataclass, fields, replace

__all__ = ["CPUConfig", "CUDAConfig", "current", "options"]


@dataclass(frozen=True)
class CPUConfig:
    """Knobs of the CPU backend (``fastlstm/backends/cpu.py``)."""
    #: OpenBLAS runs products with M*N*K at most this without packing (its small-matrix
    #: kernel); per-step products are split into column blocks under it (NOTES item 4).
    small_gemm_mnk: int = 1_000_000
    #: Per-step products larger than this run as one BLAS call that BLAS may thread.
    split_max_mnk: int = 1 << 26
    #: Fewest rows per chunk worth a wider block when no block fits whole rows (item 11).
    chunk_min_rows: int = 24
    #: Per-step products of at most this many rows, whose weights take at most
    #: ``micro_max_bytes``, run the register-blocked kernel (``kernels/cpu/smallgemm.py``) on
    #: weights in tile-wide column blocks instead of BLAS (bench/NOTES.md, "Few rows": 1.1-1.2x
    #: at batch 1; at 2-4 OpenBLAS on the same aligned weights is as fast or 5% faster). 0: never.
    micro_max_rows: int = 1
    micro_max_bytes: int = 1 << 20
    #: Inference layers of at most this many sequences (one direction, no projection, equal
    #: lengths, at least ``duo_min_steps`` steps, ``duo_min_hidden`` units per sequence and at
    #: most ``duo_max_bytes`` of weights) run on two cores split by hidden units, the second
    #: core claiming its half of each step (``kernels/cpu/duo.py``; bench/NOTES.md, "Two cores
    #: at batch 1-4": the per-step exchange costs ~0.4 us, more than a half step saves below
    #: H = 128; "Both cores on the serial path": from 2 sequences at H = 128 the serial path
    #: with its input projection computed ahead on the other core is as fast or faster).
    #: 0: never.
    duo_max_rows: int = 4
    duo_min_steps: int = 16
    duo_min_hidden: int = 128
    duo_max_bytes: int = 3 << 19
    #: Pause loops (~30-150 ns each) the partner thread spins for the next job before sleeping.
    duo_spins: int = 20_000
    #: Useful FLOPs of one layer below which it runs on one thread (item 9).
    parallel_min_flop: float = 20e6
    #: A layer run on one thread with fewer useful FLOPs than this keeps its BLAS calls on the
    #: calling thread too (SciPy's OpenBLAS pinned): threading a small GEMM gains microseconds on
    #: an idle machine and costs milliseconds when another process holds the other core
    #: (bench/NOTES.md, "Small calls on a busy machine"). With ``threads=1`` always.
    serial_blas_min_flop: float = 200e6
    #: Fewest batch rows per parallel task.
    parallel_min_rows: int = 4
    #: A parallel layer of two tasks hands the second to the two-core path's partner thread
    #: (``kernels/cpu/pair.py``) instead of a thread pool (bench/NOTES.md, "Parallel layers
    #: without the pool"). False: the pool.
    pair_tasks: bool = True
    #: A serial layer (one direction, its BLAS on the calling thread) uses a second core beside
    #: its recurrences (``kernels/cpu/overlap.py``): the forward's input projection is computed
    #: in blocks ahead of the recurrence, the backward's dx and weight-gradient GEMMs in chunks
    #: behind it. At most ``overlap_chunks`` blocks / chunks of at least ``overlap_min_rows``
    #: rows (steps x sequences), when those GEMMs take at least ``overlap_min_flop``
    #: (bench/NOTES.md, "Both cores on the serial path"). ``overlap_chunks=0``: never.
    overlap_chunks: int = 8
    overlap_min_rows: int = 16
    overlap_min_flop: float = 10e6
    #: Calls whose every layer runs serially take a plan kept per params and batch size
    #: (``fastlstm/backends/cpu_serial.py``): the same kernels and arguments, decided once.
    #: False: every call decides again (the results are bitwise the same).
    serial_plans: bool = True
    #: A parallel task runs its input projection per step inside the recurrence (item 14).
    fuse_input: bool = True
    #: One layer, one direction, parallel path: the forward's kernels write the backward's
    #: ``[x | h_prev]`` rows and the training state keeps them instead of x and y (item 19).
    #: Off, the state has the same layout on every path (what a framework's reserve needs).
    kernel_xh: bool = True
    #: A parallel task's backward computes dx per step: None = the measured rule (item 17),
    #: True / False = always / never.
    fuse_dx: bool | None = None
    #: ``Stepper.steps``: chunks of at most this many rows (steps x sequences) run the step
    #: kernel; longer ones the whole-sequence path. Measured (I = 32, H = 64-256, float32): the
    #: step kernel is 2-12x faster for chunks of 1-16 rows, about as fast at 64; from ~128 rows
    #: on the whole-sequence path can gain (1.2x at B = 64, T = 16).
    stepper_kernel_max_rows: int = 64
    #: Inside ``fastlstm.torch``'s operators a parallel layer's tasks run on torch's own OpenMP
    #: threads where torch uses libgomp (False: on fastlstm's pool; bench/NOTES.md,
    #: "fastlstm.torch").
    framework_threads: bool = True
    #: Threads a call may use; None = Numba's thread count (``numba.get_num_threads()``).
    threads: int | None = None


@dataclass(frozen=True)
class CUDAConfig:
    """Knobs of the CUDA backend (``fastlstm/backends/cuda.py``)."""
    #: "auto" (persistent kernel for small-batch inference where it fits, else one launch
    #: per step), "multi" or "persistent" (forced, also in training).
    recurrence: str = os.environ.get("FASTLSTM_CUDA_RECURRENCE", "auto")
    #: Largest batch the "auto" choice runs on the persistent kernel.
    persistent_max_batch: int = 16
    #: Dynamic shared memory a persistent plan may use per block (bytes).
    persistent_smem_limit: int = 48 * 1024
    #: "auto" (cuBLAS through CuPy when importable), "numba" or "cupy".
    gemm: str = os.environ.get("FASTLSTM_CUDA_GEMM", "auto")

    def __post_init__(self):
        if self.recurrence not in ("auto", "multi", "persistent"):
            raise ValueError(f"recurrence must be 'auto', 'multi' or 'persistent', got {self.recurrence!r}")
        if self.gemm not in ("auto", "numba", "cupy"):
            raise ValueError(f"gemm must be 'auto', 'numba' or 'cupy', got {self.gemm!r}")


_VARS = {
    "cpu": contextvars.ContextVar("fastlstm_cpu_config", default=CPUConfig()),
    "cuda": contextvars.ContextVar("fastlstm_cuda_config", default=None),
}


def current(backend: str):
    """The configuration in effect for ``backend`` ("cpu" or "cuda")."""
    var = _VARS[backend]
    cfg = var.get()
    if cfg is None:  # built on first use, so a bad environment variable fails there
        cfg = CUDAConfig()
    return cfg


class options:
    """Run a block with some of ``backend``'s knobs changed (unknown names raise TypeError)::

        with fastlstm.config.options("cpu", threads=1) as cfg:
            ...

    Cheap enough to enter on every call (the changed configurations are memoised)."""

    __slots__ = ("_var", "_cfg", "_token")

    def __init__(self, backend: str, **changes):
        if backend not in _VARS:
            raise ValueError(f"backend must be one of {sorted(_VARS)}, got {backend!r}")
        self._var = _VARS[backend]
        base = current(backend)
        key = (base, tuple(sorted(changes.items())))
        cfg = _derived.get(key)
        if cfg is None:
            known = {f.name for f in fields(base)}
            unknown = sorted(set(changes) - known)
            if unknown:
                raise TypeError(f"unknown {backend} option(s) {unknown}; known: {sorted(known)}")
            cfg = replace(base, **changes)
            if len(_derived) > 64:
                _derived.clear()
            _derived[key] = cfg
        self._cfg = cfg

    def __enter__(self):
        self._token = self._var.set(self._cfg)
        return self._cfg

    def __exit__(self, *exc):
        self._var.reset(self._token)
        return False


_derived: dict = {}
