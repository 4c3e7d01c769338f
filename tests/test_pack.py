"""kernels/cpu/pack.py: the tiled transpose that packs weights, against NumPy's ``.T``."""
import numpy as np
import pytest

from fastlstm.kernels.cpu.pack import TILE, transpose_into


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
