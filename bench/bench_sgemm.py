"""The machine's BLAS: float32 (2048 x 2048) @ (2048 x 2048), the practical ceiling of every
GEMM-bound phase. Its own group, in the same run as the LSTM benchmarks."""
from __future__ import annotations

import numpy as np
import pytest

N = 2048


@pytest.mark.quick
def test_sgemm(benchmark, bench_timer):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((N, N)).astype(np.float32)
    b = rng.standard_normal((N, N)).astype(np.float32)
    c = np.empty((N, N), np.float32)
    np.testing.assert_allclose(np.matmul(a[:64], b[:, :64]), a[:64].astype(np.float64) @ b[:, :64],
                               rtol=1e-4, atol=1e-3)
    gflop = 2.0 * N ** 3 / 1e9
    benchmark.group = "sgemm"
    benchmark.extra_info.update(case=f"sgemm_{N}", mode="sgemm", backend="numpy", dtype="float32",
                                T=0, B=0, I=N, H=N, gflops=gflop)
    bench_timer.run(benchmark, lambda: np.matmul(a, b, out=c), gflop)
