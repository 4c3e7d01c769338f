"""The GPU output head (kernels/cuda/head.py) against the CPU head and torch's math, on tiny
shapes (the numba CUDA simulator when there is no GPU)."""
from __future__ import annotations

import numpy as np
import pytest

from fastlstm import head
from fastlstm.testing import assert_close


def _inputs(T=3, B=4, H=5, V=7, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((T, B, H)).astype(np.float32)
    W = rng.standard_normal((V, H)).astype(np.float32)
    b = rng.standard_normal(V).astype(np.float32)
    t = rng.integers(0, V, (T, B))
    return y, W, b, t


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("lengths", [None, np.array([3, 1, 0, 2])])
def test_cuda_xent_matches_cpu(reduction, lengths):
    y, W, b, t = _inputs()
    copies = [a.copy() for a in (y, W, b, t)]
    ref = head.dense_softmax_xent(y, W, b, t, lengths=lengths, reduction=reduction, device="reference")
    got = head.dense_softmax_xent(y, W, b, t, lengths=lengths, reduction=reduction, device="cuda")
    assert abs(got.loss - ref.loss) <= 2e-5 * max(1.0, abs(ref.loss))
    gref = head.dense_softmax_xent_backward(ref.cache)
    g = head.dense_softmax_xent_backward(got.cache)
    for name, a, r in zip(("dy", "dW", "db"), g, gref):
        assert isinstance(a, np.ndarray) and a.shape == r.shape
        assert_close(a, r, np.float32, "grad", what=name)
    for a, c in zip((y, W, b, t), copies):
        np.testing.assert_array_equal(a, c)


def test_cuda_xent_device_arrays_stay_on_device():
    from numba import cuda
    y, W, b, t = _inputs(T=2, B=2, H=3, V=5, seed=1)
    res = head.dense_softmax_xent(cuda.to_device(y), cuda.to_device(W), cuda.to_device(b), t)
    assert res.cache.device == "cuda"
    dy, dW, db = head.dense_softmax_xent_backward(res.cache)
    assert hasattr(dy, "copy_to_host") and dy.shape == y.shape
    ref = head.dense_softmax_xent(y, W, b, t, device="reference")
    assert abs(res.loss - ref.loss) <= 2e-5 * max(1.0, abs(ref.loss))
    assert_close(dW.copy_to_host(), head.dense_softmax_xent_backward(ref.cache)[1], np.float32, "grad")


def test_cuda_xent_rejects_float64():
    y, W, b, t = _inputs()
    with pytest.raises(TypeError, match="float32"):
        head.dense_softmax_xent(y.astype(np.float64), W, b, t, device="cuda")
