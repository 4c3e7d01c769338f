"""The per-step product of a few rows, ``z = h @ W`` (``kernels/cpu/smallgemm.py``), against the
same product through OpenBLAS (Numba's ``np.dot``), each in a compiled loop of ``STEPS``
dependent products (every product reads the last one's output, as the recurrence does), so
the time is the kernel's, not the call's. Backends: ``tiles`` (the register-blocked kernel on
64-byte aligned, tile-wide column blocks: the recurrence's layout) and ``blas`` (one call on
the row-major W). Checked against float64 NumPy before timing. See bench/NOTES.md, "Few rows".
"""
from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from fastlstm.backends.cpu_layouts import _blocked, _tile_width
from fastlstm.kernels.cpu.smallgemm import bdot as _bdot
from fastlstm.kernels.cpu.smallgemm import aligned_empty

STEPS = 200
#: (rows, K, N): the recurrent products at H = 64 and 128 (N = 4H), batch 1 and 4
SHAPES = [(1, 64, 256), (1, 128, 512), (4, 128, 512)]


@njit(cache=True, nogil=True)
def _tiles_loop(h, wb, z, steps):
    for _ in range(steps):
        _bdot(h, wb, wb, z, 0)
        h[0, 0] = z[0, 1] * 1e-30  # the next product depends on this one


@njit(cache=True, nogil=True)
def _blas_loop(h, w, z, steps):
    for _ in range(steps):
        np.dot(h, w, z)
        h[0, 0] = z[0, 1] * 1e-30


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", ["tiles", "blas"])
def test_small_product(benchmark, bench_timer, shape, backend):
    M, K, N = shape
    rng = np.random.default_rng(1)
    w = aligned_empty((K, N), np.float32)
    w[...] = rng.standard_normal((K, N)) * 0.1
    h = rng.standard_normal((M, K)).astype(np.float32)
    z = np.empty((M, N), np.float32)
    if backend == "tiles":
        wb = _blocked(w, _tile_width(M, N, 4))
        run = lambda steps: _tiles_loop(h, wb, z, steps)  # noqa: E731
    else:
        run = lambda steps: _blas_loop(h, w, z, steps)  # noqa: E731
    h0 = h.copy()
    run(1)
    h[...] = h0  # one product from the original rows, against float64
    np.testing.assert_allclose(z, h.astype(np.float64) @ w.astype(np.float64), rtol=1e-4,
                               atol=1e-4)
    gflop = 2.0 * M * K * N * STEPS / 1e9
    benchmark.group = f"smallgemm-{M}x{K}x{N}"
    benchmark.extra_info.update(case=f"smallgemm_{M}x{K}x{N}", mode="product", backend=backend,
                                dtype="float32", T=STEPS, B=M, I=K, H=N // 4, gflops=gflop)
    bench_timer.run(benchmark, lambda: run(STEPS), gflop)
