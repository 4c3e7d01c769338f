"""kernels/cpu/pack.py: the tiled transpose that packs weights, against NumPy's ``.T``."""
import numpy as np
import pytest

from fastlstm.kernels.cpu.pack import TILE, block_columns_into, transpose_into


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 70), (TILE, TILE), (TILE + 1, 2 * TILE - 1),
                                   (256, 64), (65, 1)])
def test_transpose_matches_numpy(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    w = rng.standard_normal(shape).astype(dtype)
    w.setflags(write=False)  # parameters are read-only views
    before = w.copy()
    out = np.full(shape[::-1], np.nan, dtype)
    transpose_into(w, out)
    np.testing.assert_array_equal(out, w.T)
    np.testing.assert_array_equal(w, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K, N, nb", [(1, 1, 1), (5, 12, 4), (64, 256, 128), (33, 96, 96)])
def test_column_blocks_match_numpy(dtype, K, N, nb):
    rng = np.random.default_rng(K * N)
    w = rng.standard_normal((K, N)).astype(dtype)
    w.setflags(write=False)
    out = np.full((N // nb, K, nb), np.nan, dtype)
    block_columns_into(w, out)
    np.testing.assert_array_equal(out, w.reshape(K, N // nb, nb).transpose(1, 0, 2))
    # a strided source (a column range of a wider array), as the two-core path passes
    wide = rng.standard_normal((K, N + 7)).astype(dtype)
    block_columns_into(wide[:, 3:3 + N], out)
    np.testing.assert_array_equal(out, wide[:, 3:3 + N].reshape(K, N // nb, nb).transpose(1, 0, 2))
