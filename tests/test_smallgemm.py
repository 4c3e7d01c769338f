"""The register-blocked few-rows product (``kernels/cpu/smallgemm.py``) against float64 NumPy,
and the recurrence taking it (or BLAS) with the same results."""
import numpy as np
import pytest

import fastlstm
import fastlstm.backends.cpu
from fastlstm.kernels.cpu.smallgemm import micro_dot, tile_columns

from helpers import Config, compare, make_problem, run


def _tol(dtype, K):
    eps = np.finfo(dtype).eps
    return 4 * eps * max(K, 1) ** 0.5


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_micro_dot_against_numpy(dtype):
    """Every row count 0..9 (tiles of 4, 3, 2, 1 rows), column counts that need every vector
    count of a tile and a scalar tail, K from 1; the columns around the target are untouched
    and the inputs unchanged."""
    rng = np.random.default_rng(5)
    lanes = tile_columns(np.dtype(dtype).itemsize) // 4
    for M in range(10):
        for K, N in [(1, 1), (3, 5), (64, 4 * lanes), (33, 5 * lanes + 3), (7, 3 * lanes),
                     (96, 2 * lanes), (5, lanes - 1), (130, 9 * lanes), (20, 15 * lanes + 1)]:
            a = rng.standard_normal((M, K)).astype(dtype)
            w = rng.standard_normal((K, N)).astype(dtype)
            y = rng.standard_normal((M, N + 7)).astype(dtype)
            a0, w0, y0 = a.copy(), w.copy(), y.copy()
            micro_dot(a, w, y, 3)
            exact = a.astype(np.float64) @ w.astype(np.float64)
            scale = np.abs(a).astype(np.float64) @ np.abs(w).astype(np.float64)
            assert np.all(np.abs(y[:, 3:3 + N] - exact) <= _tol(dtype, K) * scale + 1e-300), \
                (M, K, N)
            np.testing.assert_array_equal(y[:, :3], y0[:, :3])
            np.testing.assert_array_equal(y[:, 3 + N:], y0[:, 3 + N:])
            np.testing.assert_array_equal(a, a0)
            np.testing.assert_array_equal(w, w0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_micro_dot_accumulates_split_products_exactly(dtype):
    """``acc``: a product split over two ranges of K equals the one call bitwise (the same
    FMAs in the same order), and adds to what ``y`` held."""
    rng = np.random.default_rng(9)
    for M, K, N, k in [(1, 64, 256, 32), (3, 40, 200, 7), (2, 9, 35, 4), (4, 33, 64, 30)]:
        a = rng.standard_normal((M, K)).astype(dtype)
        w = rng.standard_normal((K, N)).astype(dtype)
        one = np.empty((M, N), dtype)
        micro_dot(a, w, one, 0)
        two = np.empty((M, N), dtype)
        micro_dot(a[:, :k], w[:k], two, 0)
        micro_dot(a[:, k:], w[k:], two, 0, True)
        np.testing.assert_array_equal(two, one)
        y0 = rng.standard_normal((M, N)).astype(dtype)
        y = y0.copy()
        micro_dot(a, w, y, 0, True)
        exact = y0.astype(np.float64) + a.astype(np.float64) @ w.astype(np.float64)
        np.testing.assert_allclose(y, exact, rtol=0, atol=_tol(dtype, K) * (
            np.abs(y0) + np.abs(a) @ np.abs(w)).max())


def test_micro_dot_on_strided_views():
    """Row-strided views of all three operands (slices of larger arrays), as the kernels pass."""
    rng = np.random.default_rng(6)
    big_a = rng.standard_normal((12, 300)).astype(np.float32)
    big_w = rng.standard_normal((200, 520)).astype(np.float32)
    y = np.zeros((9, 600), np.float32)
    a, w = big_a[2:8, 10:110], big_w[50:150, 64:320]
    micro_dot(a, w, y[1:7], 10)
    exact = a.astype(np.float64) @ w.astype(np.float64)
    np.testing.assert_allclose(y[1:7, 10:266], exact, rtol=1e-4, atol=1e-4)
    assert not y[0].any() and not y[7:].any() and not y[1:7, :10].any()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cfg", [
    Config(T=7, B=3, I=5, H=20, L=2, bidirectional=True, lengths=True),   # 80 gate columns
    Config(T=5, B=4, I=4, H=33, proj=9, lengths=True),                    # 132: a scalar tail
    Config(T=4, B=2, I=16, H=64),
    Config(T=6, B=1, I=3, H=16, lengths=False),                           # the default's case
], ids=str)
def test_recurrence_on_few_rows_kernel_and_blas_agree(cfg, dtype):
    """The same problem with the few-rows kernel (on for up to 4 rows here; by default for 1)
    and with BLAS (``micro_max_rows=0``): both match the reference, and the kernel's weights
    are in tile-wide blocks."""
    p = make_problem(cfg, dtype, seed=21)
    f_ref, b_ref = run(p, "reference")
    with fastlstm.config.options("cpu", micro_max_rows=4):
        f_cpu, b_cpu = run(p, "cpu")
        # the forward's W_hh^T in the blocks block_shape picks for these rows, 0 rows per chunk
        cols, mb = fastlstm.backends.cpu.block_shape(cfg.B, cfg.P or cfg.H, 4 * cfg.H,
                                                      itemsize=np.dtype(dtype).itemsize)
    compare(f_cpu, b_cpu, f_ref, b_ref, dtype, str(cfg))
    assert mb == 0 and (cols <= tile_columns(np.dtype(dtype).itemsize, cfg.B) or cols == 4 * cfg.H)
    assert ("cpu", "blocks", ("w_hh_t", 0, 0), cols) in p.params._derived or cols == 4 * cfg.H
    q = make_problem(cfg, dtype, seed=21)
    with fastlstm.config.options("cpu", micro_max_rows=0):
        f_blas, b_blas = run(q, "cpu")
    compare(f_blas, b_blas, f_ref, b_ref, dtype, str(cfg) + " blas")
