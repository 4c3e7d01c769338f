"""Real-GPU checks (marked ``gpu``; skipped in the simulator and without a GPU).

* parity with the NumPy reference at real sizes, both recurrence paths, forward and backward;
* the persistent kernel (which the simulator only runs as a one-block grid) against the
  multi-launch path on many blocks, and that ``auto`` really picks it for small-batch inference;
* the numba GEMM against the CuPy (cuBLAS) GEMM when CuPy is installed;
* zero-copy GPU inputs of other libraries (torch CUDA tensors, CuPy arrays) with ``device="auto"``.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastlstm
from fastlstm import LSTMParams, reference
from fastlstm.testing import assert_close, rel_err

pytestmark = pytest.mark.gpu
F32 = np.float32


def _inputs(seed, T, B, I, H, L=1, D=1, P=0, lengths=True):
    rng = np.random.default_rng(seed)
    params = LSTMParams.init(I, H, L, bidirectional=D == 2, proj_size=P, seed=seed)
    Po = params.output_size
    x = rng.standard_normal((T, B, I)).astype(F32)
    h0 = (0.5 * rng.standard_normal((L * D, B, Po))).astype(F32)
    c0 = (0.5 * rng.standard_normal((L * D, B, H))).astype(F32)
    lens = None
    if lengths and B > 1:
        lens = rng.integers(1, T + 1, size=B).astype(np.int64)
        lens[0] = T
    return params, x, h0, c0, lens


@pytest.mark.parametrize("path", ["multi", "persistent"])
@pytest.mark.parametrize("T, B, I, H, L, D, P", [
    (64, 1, 128, 256, 1, 1, 0), (64, 8, 256, 512, 2, 2, 0), (32, 64, 128, 256, 1, 2, 128),
    (16, 4, 256, 1024, 1, 1, 0),
])
def test_parity_real_sizes(T, B, I, H, L, D, P, path, cuda_options):
    cuda_options(recurrence=path)
    params, x, h0, c0, lens = _inputs(1, T, B, I, H, L, D, P)
    rng = np.random.default_rng(2)
    res = fastlstm.forward(x, params, h0, c0, lengths=lens, training=True, device="cuda")
    assert res.paths == (path,) * L
    dy = rng.standard_normal(res.y.shape).astype(F32)
    dh = rng.standard_normal(res.h.shape).astype(F32)
    dc = rng.standard_normal(res.c.shape).astype(F32)
    g = fastlstm.backward(res.cache, dy, dh, dc)
    f = lambda a: a.astype(np.float64)  # noqa: E731
    lens_r = np.full(B, T, np.int64) if lens is None else lens
    y, h, c, st, _ = reference.lstm_forward(f(x), params.astype(np.float64), f(h0), f(c0), lens_r,
                                         None, True)
    dx, dh0, dc0, dp = reference.lstm_backward(st, f(dy), f(dh), f(dc))
    for name, a, b, kind in (("y", res.y, y, "forward"), ("h", res.h, h, "forward"),
                             ("c", res.c, c, "forward"), ("dx", g.dx, dx, "grad"),
                             ("dh0", g.dh0, dh0, "grad"), ("dc0", g.dc0, dc0, "grad")):
        assert_close(a, b, F32, kind, f"{path} {name}")
    for name in dp:
        assert_close(g.dparams[name], dp[name], F32, "grad", f"{path} {name}")


@pytest.mark.parametrize("B", [1, 8, 16])
@pytest.mark.parametrize("H, D, P", [(256, 1, 0), (512, 2, 0), (1024, 1, 0), (1024, 2, 0), (512, 1, 128)])
def test_persistent_matches_multi_launch(B, H, D, P, cuda_options):
    """Inference at benchmark sizes: ``auto`` must pick the persistent kernel (where it fits) and
    agree with the multi-launch path."""
    from fastlstm.kernels.cuda import recurrence
    params, x, h0, c0, lens = _inputs(3, 128, B, H, H, 1, D, P)
    cuda_options(recurrence="multi")
    ref = fastlstm.forward(x, params, h0, c0, lengths=lens, device="cuda")
    cuda_options(recurrence="auto")
    got = fastlstm.forward(x, params, h0, c0, lengths=lens, device="cuda")
    if (H, D) in ((256, 1), (512, 1)):
        assert got.paths == ("persistent",), "small-batch inference should run persistent"
    if got.paths != ("persistent",):
        pytest.skip(f"the persistent kernel does not fit here (H={H}, D={D}); "
                    f"shared-memory limit {recurrence.PERSISTENT_SMEM_LIMIT} B per block")
    for a, b, name in ((got.y, ref.y, "y"), (got.h, ref.h, "h"), (got.c, ref.c, "c")):
        assert_close(a, b, F32, "forward", f"persistent vs multi {name}")


def test_numba_gemm_matches_cupy():
    cp = pytest.importorskip("cupy")
    from numba import cuda

    from fastlstm.kernels.cuda import gemm
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 517)).astype(F32)
    b = rng.standard_normal((517, 200)).astype(F32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    out = {}
    for be in ("numba", "cupy"):
        c = cuda.device_array((300, 200), F32)
        gemm.matmul(cuda.to_device(a), cuda.to_device(b), c, backend=be)
        out[be] = c.copy_to_host()
        assert_close(out[be], want, F32, "forward", be)
    assert cp is not None


def test_torch_cuda_tensors_zero_copy_auto():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    params, x, h0, c0, _ = _inputs(4, 16, 4, 32, 64, lengths=False)
    xt = torch.from_numpy(x).cuda()
    res = fastlstm.forward(xt, params, torch.from_numpy(h0).cuda(), torch.from_numpy(c0).cuda())
    assert hasattr(res.y, "__cuda_array_interface__")
    ref = fastlstm.forward(x, params, h0, c0, device="cpu")
    assert rel_err(res.y.copy_to_host(), ref.y) < 2e-5
    yt = torch.as_tensor(res.y, device="cuda")  # and back to torch without a copy
    assert yt.shape == (16, 4, 64)


def test_cupy_arrays_zero_copy_auto():
    cp = pytest.importorskip("cupy")
    params, x, h0, c0, _ = _inputs(5, 16, 4, 32, 64, lengths=False)
    res = fastlstm.forward(cp.asarray(x), params, cp.asarray(h0), cp.asarray(c0), training=True)
    assert hasattr(res.y, "__cuda_array_interface__")
    g = fastlstm.backward(res.cache, cp.ones(res.y.shape, dtype=cp.float32))
    assert hasattr(g.dx, "__cuda_array_interface__")
    ref = fastlstm.forward(x, params, h0, c0, device="cpu")
    assert rel_err(res.y.copy_to_host(), ref.y) < 2e-5
