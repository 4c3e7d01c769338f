"""Each CUDA kernel against the NumPy reference: the recurrence (both forward paths, backward) of
one layer, and the GEMM / column sums of phases 1 and 3. Tiny shapes: the simulator runs one
Python thread per GPU thread."""
from __future__ import annotations

import numpy as np
import pytest

from fastlstm import reference
from fastlstm.testing import assert_close

F32 = np.float32


def _layer(rng, T, B, H, P, D, lengths):
    G = 4 * H
    prob = dict(
        xg=(0.6 * rng.standard_normal((T, B, D * G))).astype(F32),
        w_hh=(0.4 * rng.standard_normal((D, G, P))).astype(F32),
        w_hr=(0.4 * rng.standard_normal((D, P, H))).astype(F32) if P != H else None,
        h0=rng.standard_normal((D, B, P)).astype(F32),
        c0=rng.standard_normal((D, B, H)).astype(F32),
        lengths=np.asarray(lengths, np.int64),
    )
    return prob


def _ref_forward(pr, d, G):
    f64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    return reference.recurrence_forward(
        f64(pr["xg"][:, :, d * G:(d + 1) * G]), f64(pr["w_hh"][d]),
        None if pr["w_hr"] is None else f64(pr["w_hr"][d]), f64(pr["h0"][d]), f64(pr["c0"][d]),
        pr["lengths"], reverse=(d == 1))


CASES = [  # T, B, H, P, D, lengths
    pytest.param(4, 3, 4, 4, 2, [4, 2, 1], id="bi-lengths"),
    pytest.param(3, 2, 5, 3, 2, [1, 3], id="bi-proj-lengths"),
    pytest.param(3, 2, 3, 3, 1, [3, 3], id="uni"),
]


@pytest.mark.parametrize("path", ["multi", "persistent"])
@pytest.mark.parametrize("T, B, H, P, D, lengths", CASES)
def test_recurrence_forward(T, B, H, P, D, lengths, path):
    from numba import cuda

    from fastlstm.kernels.cuda import recurrence as rec
    rng = np.random.default_rng(10 + T * B + H + P + D)
    pr = _layer(rng, T, B, H, P, D, lengths)
    G = 4 * H
    before = {k: v.copy() for k, v in pr.items() if v is not None}
    dev = {k: cuda.to_device(v) for k, v in pr.items() if v is not None}
    w_hh_t = cuda.to_device(np.ascontiguousarray(pr["w_hh"].transpose(0, 2, 1)))
    w_hr_t = (cuda.to_device(np.ascontiguousarray(pr["w_hr"].transpose(0, 2, 1)))
              if P != H else cuda.device_array((1, 1, 1), F32))
    nan = np.float32(np.nan)
    poison = lambda shape: cuda.to_device(np.full(shape, nan, F32))  # noqa: E731
    y, h_n, c_n = poison((T, B, D * P)), poison((D, B, P)), poison((D, B, H))
    gates, cs = poison((T, B, D * G)), poison((T, B, D * H))
    hh = poison((D, B, H)) if P != H else cuda.device_array((1, 1, 1), F32)
    ran = rec.recurrence_forward(dev["xg"], w_hh_t, w_hr_t, dev["h0"], dev["c0"], dev["lengths"],
                                 y, h_n, c_n, gates, cs, hh, True, path)
    assert ran == path
    y, h_n, c_n, gates, cs = (a.copy_to_host() for a in (y, h_n, c_n, gates, cs))
    for d in range(D):
        hs, h, c, g, cc = _ref_forward(pr, d, G)
        what = f"{path} d={d}"
        assert_close(y[:, :, d * P:(d + 1) * P], hs, F32, "forward", what + " y")
        assert_close(h_n[d], h, F32, "forward", what + " h_n")
        assert_close(c_n[d], c, F32, "forward", what + " c_n")
        assert_close(gates[:, :, d * G:(d + 1) * G], g, F32, "forward", what + " gates")
        assert_close(cs[:, :, d * H:(d + 1) * H], cc, F32, "forward", what + " cells")
        pad = np.arange(T)[:, None] >= pr["lengths"][None, :]
        assert np.all(y[:, :, d * P:(d + 1) * P][pad] == 0.0), "outputs past the end must be exactly 0"
    for k, v in before.items():
        np.testing.assert_array_equal(dev[k].copy_to_host(), v, err_msg=f"{k} was modified")


@pytest.mark.parametrize("T, B, H, P, D, lengths", CASES[:2])
def test_recurrence_backward(T, B, H, P, D, lengths):
    from numba import cuda

    from fastlstm.kernels.cuda import recurrence as rec
    rng = np.random.default_rng(20 + T * B + H + P + D)
    pr = _layer(rng, T, B, H, P, D, lengths)
    G = 4 * H
    refs = [_ref_forward(pr, d, G) for d in range(D)]
    gates = np.concatenate([r[3] for r in refs], axis=2).astype(F32)
    cs = np.concatenate([r[4] for r in refs], axis=2).astype(F32)
    dy = rng.standard_normal((T, B, D * P)).astype(F32)
    dh_n = rng.standard_normal((D, B, P)).astype(F32)
    dc_n = rng.standard_normal((D, B, H)).astype(F32)
    ins = dict(dy=dy, gates=gates, cs=cs, c0=pr["c0"], dh_n=dh_n, dc_n=dc_n, w_hh=pr["w_hh"],
               lengths=pr["lengths"])
    if P != H:
        ins["w_hr"] = pr["w_hr"]
    before = {k: v.copy() for k, v in ins.items()}
    dev = {k: cuda.to_device(v) for k, v in ins.items()}
    w_hr = dev.get("w_hr", cuda.device_array((1, 1, 1), F32))
    nan = np.float32(np.nan)
    dgates = cuda.to_device(np.full((T, B, D * G), nan, F32))
    dhp = cuda.to_device(np.full((T, B, D * P), nan, F32)) if P != H else cuda.device_array((1, 1, 1), F32)
    dh0 = cuda.to_device(np.full((D, B, P), nan, F32))
    dc0 = cuda.to_device(np.full((D, B, H), nan, F32))
    rec.recurrence_backward(dev["dy"], dev["gates"], dev["cs"], dev["c0"], dev["dh_n"], dev["dc_n"],
                            dev["w_hh"], w_hr, dev["lengths"], dgates, dhp, dh0, dc0)
    dgates, dh0, dc0 = dgates.copy_to_host(), dh0.copy_to_host(), dc0.copy_to_host()
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    for d in range(D):
        hs = refs[d][0]
        rg, rdh, rdc, _, _ = reference.recurrence_backward(
            f64(dy[:, :, d * P:(d + 1) * P]), f64(dh_n[d]), f64(dc_n[d]), f64(gates[:, :, d * G:(d + 1) * G]),
            f64(cs[:, :, d * H:(d + 1) * H]), f64(pr["h0"][d]), f64(pr["c0"][d]), hs, f64(pr["w_hh"][d]),
            None if P == H else f64(pr["w_hr"][d]), pr["lengths"], reverse=(d == 1))
        assert_close(dgates[:, :, d * G:(d + 1) * G], rg, F32, "grad", f"d={d} dgates")
        assert_close(dh0[d], rdh, F32, "grad", f"d={d} dh0")
        assert_close(dc0[d], rdc, F32, "grad", f"d={d} dc0")
    for k, v in before.items():
        np.testing.assert_array_equal(dev[k].copy_to_host(), v, err_msg=f"{k} was modified")


@pytest.mark.parametrize("trans_a, trans_b, bias, accumulate, M, N, K", [
    (False, True, True, False, 9, 10, 7), (True, False, False, False, 9, 10, 7),
    (False, False, False, True, 9, 10, 7), (True, True, True, True, 9, 10, 7),
    (False, True, True, False, 37, 3, 5),  # tall and thin, like x W_ih^T: many row tiles
])
def test_gemm_numba(trans_a, trans_b, bias, accumulate, M, N, K):
    from numba import cuda

    from fastlstm.kernels.cuda import gemm
    rng = np.random.default_rng(3)
    # M, N, K not multiples of the tile sizes
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(F32)
    wide = rng.standard_normal((K + 3, N + 5) if not trans_b else (N + 3, K + 5)).astype(F32)
    b = wide[:K, 2:N + 2] if not trans_b else wide[:N, 2:K + 2]  # a strided view of a wider matrix
    c0 = rng.standard_normal((M, N)).astype(F32)
    bv = rng.standard_normal(N).astype(F32)
    da, dwide, dc = cuda.to_device(a), cuda.to_device(wide), cuda.to_device(c0)
    db = dwide[:K, 2:N + 2] if not trans_b else dwide[:N, 2:K + 2]
    gemm.matmul(da, db, dc, trans_a=trans_a, trans_b=trans_b,
                bias=cuda.to_device(bv) if bias else None, accumulate=accumulate, backend="numba")
    A = (a.T if trans_a else a).astype(np.float64)
    Bm = (b.T if trans_b else b).astype(np.float64)
    want = A @ Bm + (bv if bias else 0.0) + (c0 if accumulate else 0.0)
    assert_close(dc.copy_to_host(), want, F32, "forward", "gemm")
    np.testing.assert_array_equal(da.copy_to_host(), a)
    np.testing.assert_array_equal(dwide.copy_to_host(), wide)


def test_gemm_rejects_mismatched_shapes():
    from numba import cuda

    from fastlstm.kernels.cuda import gemm
    with pytest.raises(ValueError, match="shapes do not match"):
        gemm.matmul(cuda.device_array((3, 4), F32), cuda.device_array((5, 2), F32),
                    cuda.device_array((3, 2), F32))


def test_column_sums():
    from numba import cuda

    from fastlstm.kernels.cuda import gemm
    a = np.random.default_rng(4).standard_normal((7, 5)).astype(F32)
    got = gemm.column_sums(cuda.to_device(a)).copy_to_host()
    assert_close(got, a.astype(np.float64).sum(axis=0), F32, "forward", "column sums")


def test_gemm_backend_switch(simulating):
    from fastlstm import config
    from fastlstm.kernels.cuda import gemm
    assert gemm.resolve("numba") == "numba"
    with pytest.raises(ValueError, match="GEMM backend"):
        gemm.resolve("blas")
    with pytest.raises(ValueError, match="gemm must be"):
        with config.options("cuda", gemm="blas"):
            pass
    if simulating:
        assert gemm.resolve("auto") == "numba"
        with pytest.raises(RuntimeError, match="real GPU"):
            gemm.resolve("cupy")


def test_gemm_grid_y_limit_is_checked():
    """Row tiles go on grid x (T*B rows can be millions); column tiles on y, whose CUDA limit
    (65535 blocks) matmul must check instead of failing the launch."""
    from numba import cuda

    from fastlstm.kernels.cuda import gemm
    _, _, (bm, bn) = gemm._gemm_kernel(gemm._simulating())  # this target's tile width
    N = gemm._MAX_GRID_Y * bn + 1
    with pytest.raises(ValueError, match="columns"):
        gemm.matmul(cuda.device_array((1, 1), F32), cuda.device_array((1, N), F32),
                    cuda.device_array((1, N), F32), backend="numba")


@pytest.mark.parametrize("nx, ny", [(1, 1), (5, 3), (33, 7), (100, 1), (1024, 10**6),
                                    (4096, 8 * 65535 + 3)])
def test_step_grid_within_cuda_limits(nx, ny, monkeypatch):
    """The real-GPU launch configuration of the step kernels: at most 1024 threads per block,
    gridDim.y <= 65535 whatever the batch (the kernels stride over sequences), x covers nx."""
    from fastlstm.kernels.cuda import recurrence as rec
    monkeypatch.setattr(rec, "_simulating", lambda: False)
    (gx, gy, gz), (bx, by, bz) = rec._grid(nx, ny, 2)
    assert bx * by * bz <= 1024 and bz == 1 and gz == 2
    assert 1 <= gy <= 65535 and gx >= 1
    assert gx * bx >= nx
    assert gy * by >= min(ny, 65535 * by)
