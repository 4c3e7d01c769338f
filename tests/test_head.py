"""The fused output head (fastlstm.head, kernels/cpu/head.py) against torch's Linear +
cross_entropy / mse_loss and a plain NumPy reference written here."""
from __future__ import annotations

import numpy as np
import pytest

from fastlstm import head
from fastlstm.kernels.cpu.head import exp_nonpos
from fastlstm.testing import assert_close

DTYPES = [np.float64, np.float32]
LENGTHS = [None, np.array([6, 2, 0, 6, 1])]


def _inputs(dtype, T=6, B=5, H=9, V=13, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((T, B, H)).astype(dtype)
    W = (rng.standard_normal((V, H)) * 0.7).astype(dtype)
    b = rng.standard_normal(V).astype(dtype)
    t = rng.integers(0, V, (T, B))
    return y, W, b, t


def _mask(T, B, lengths):
    if lengths is None:
        return np.ones(T * B, bool)
    return (np.arange(T)[:, None] < lengths[None, :]).reshape(-1)


def _numpy_xent(y, W, b, t, lengths, reduction):
    """Plain NumPy: logits, log-softmax, picked entries, and the gradients by the chain rule."""
    T, B, H = y.shape
    y = y.astype(np.float64).reshape(-1, H)
    W64, b64 = W.astype(np.float64), b.astype(np.float64)
    mask = _mask(T, B, lengths)
    z = y @ W64.T + b64
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    rows = np.arange(len(z))
    tt = t.reshape(-1)
    losses = -logp[rows, np.where(mask, tt, 0)] * mask
    n = max(mask.sum(), 1) if reduction == "mean" else 1
    g = np.exp(logp)
    g[rows, np.where(mask, tt, 0)] -= 1
    g = g * mask[:, None] / n
    return losses.sum() / n, (g @ W64).reshape(T, B, H), g.T @ y, g.sum(axis=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("lengths", LENGTHS, ids=["full", "lengths"])
def test_xent_matches_torch(dtype, reduction, lengths):
    torch = pytest.importorskip("torch")
    y, W, b, t = _inputs(dtype)
    T, B, H = y.shape
    V = W.shape[0]
    copies = [a.copy() for a in (y, W, b, t)]
    res = head.dense_softmax_xent(y, W, b, t, lengths=lengths, reduction=reduction)
    dy, dW, db = head.dense_softmax_xent_backward(res.cache)
    for a, c in zip((y, W, b, t), copies):
        np.testing.assert_array_equal(a, c)

    lin = torch.nn.Linear(H, V).to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W))
        lin.bias.copy_(torch.from_numpy(b))
    yt = torch.tensor(y, requires_grad=True)
    mask = torch.from_numpy(_mask(T, B, lengths))
    logits = lin(yt).reshape(-1, V)[mask]
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(t.reshape(-1))[mask],
                                             reduction=reduction)
    loss.backward()
    tol = 1e-10 if dtype == np.float64 else 2e-5
    assert abs(res.loss - loss.item()) <= tol * max(1.0, abs(loss.item()))
    assert dy.dtype == dW.dtype == db.dtype == np.dtype(dtype)
    assert dy.shape == y.shape and dW.shape == W.shape and db.shape == b.shape
    assert_close(dy, yt.grad.numpy(), dtype, "grad", "dy")
    assert_close(dW, lin.weight.grad.numpy(), dtype, "grad", "dW")
    assert_close(db, lin.bias.grad.numpy(), dtype, "grad", "db")
    if lengths is not None:  # masked steps get exactly zero gradient
        assert np.all(dy[~_mask(T, B, lengths).reshape(T, B)] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("lengths", LENGTHS, ids=["full", "lengths"])
@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_xent_matches_numpy(dtype, reduction, lengths, device):
    y, W, b, t = _inputs(dtype, seed=1)
    loss, gy, gW, gb = _numpy_xent(y, W, b, t, lengths, reduction)
    res = head.dense_softmax_xent(y, W, b, t, lengths=lengths, reduction=reduction, device=device)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    assert abs(res.loss - loss) <= tol * max(1.0, abs(loss))
    for name, a, r in zip(("dy", "dW", "db"), head.dense_softmax_xent_backward(res.cache), (gy, gW, gb)):
        assert_close(a, r, dtype, "grad", name)


def test_xent_flat_rows_and_large_logits():
    """(N, H) input; logits of +-1e4 (a naive softmax overflows) stay finite and exact."""
    y, W, b, t = _inputs(np.float64, T=1, B=8, H=4, V=6, seed=2)
    y = y[0] * 3000.0
    t = t[0]
    loss, gy, gW, gb = _numpy_xent(y[None], W, b, t[None], None, "mean")
    res = head.dense_softmax_xent(y, W, b, t)
    assert np.isfinite(res.loss) and abs(res.loss - loss) <= 1e-10 * abs(loss)
    dy, dW, db = head.dense_softmax_xent_backward(res.cache)
    assert_close(dy, gy[0], np.float64, "grad")
    assert_close(dW, gW, np.float64, "grad")


def test_backward_twice_raises():
    y, W, b, t = _inputs(np.float32)
    res = head.dense_softmax_xent(y, W, b, t)
    head.dense_softmax_xent_backward(res.cache)
    with pytest.raises(RuntimeError, match="already used"):
        head.dense_softmax_xent_backward(res.cache)


def test_errors_name_the_argument():
    y, W, b, t = _inputs(np.float32)
    with pytest.raises(ValueError, match="targets must lie in 0..V-1"):
        head.dense_softmax_xent(y, W, b, t + W.shape[0])
    with pytest.raises(ValueError, match="W must be"):
        head.dense_softmax_xent(y, W.T.copy(), b, t)
    with pytest.raises(ValueError, match="b must be"):
        head.dense_softmax_xent(y, W, b[:-1], t)
    with pytest.raises(TypeError, match="W must have y's dtype"):
        head.dense_softmax_xent(y, W.astype(np.float64), b, t)
    with pytest.raises(TypeError, match="targets must be integer"):
        head.dense_softmax_xent(y, W, b, t.astype(np.float32))
    with pytest.raises(ValueError, match="targets must have shape"):
        head.dense_softmax_xent(y, W, b, t[:-1])
    with pytest.raises(ValueError, match="reduction"):
        head.dense_softmax_xent(y, W, b, t, reduction="none")
    with pytest.raises(ValueError, match="lengths must lie"):
        head.dense_softmax_xent(y, W, b, t, lengths=np.full(y.shape[1], y.shape[0] + 1))
    # padding past a sequence's end is not read
    L = np.array([6, 2, 0, 6, 1])
    t2 = t.copy()
    t2[~_mask(*t.shape, L).reshape(t.shape)] = -1
    head.dense_softmax_xent(y, W, b, t2, lengths=L)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_softmax(dtype):
    y, W, b, _ = _inputs(dtype)
    p = head.dense_softmax(y[0], W, b, temperature=0.7)
    z = (y[0].astype(np.float64) @ W.T.astype(np.float64) + b) / 0.7
    ref = np.exp(z - z.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    assert p.shape == (y.shape[1], W.shape[0]) and p.dtype == np.dtype(dtype)
    assert_close(p, ref, dtype, "forward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths", LENGTHS, ids=["full", "lengths"])
def test_mse_matches_torch(dtype, lengths):
    torch = pytest.importorskip("torch")
    y, W, b, _ = _inputs(dtype, V=3)
    T, B, H = y.shape
    target = np.random.default_rng(5).standard_normal((T, B, 3)).astype(dtype)
    res = head.dense_mse(y, W, b, target, lengths=lengths)
    np.testing.assert_allclose(res.cache.pred, y @ W.T + b, rtol=1e-5)
    dy, dW, db = head.dense_mse_backward(res.cache)
    yt = torch.tensor(y, requires_grad=True)
    Wt = torch.tensor(W, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    mask = torch.from_numpy(_mask(T, B, lengths))
    pred = torch.nn.functional.linear(yt, Wt, bt).reshape(-1, 3)[mask]
    loss = torch.nn.functional.mse_loss(pred, torch.from_numpy(target.reshape(-1, 3))[mask])
    loss.backward()
    tol = 1e-10 if dtype == np.float64 else 2e-5
    assert abs(res.loss - loss.item()) <= tol * max(1.0, loss.item())
    assert_close(dy, yt.grad.numpy(), dtype, "grad", "dy")
    assert_close(dW, Wt.grad.numpy(), dtype, "grad", "dW")
    assert_close(db, bt.grad.numpy(), dtype, "grad", "db")


def test_mse_single_output_targets():
    y, W, b, _ = _inputs(np.float64, V=1)
    target = np.random.default_rng(3).standard_normal(y.shape[:2])
    a = head.dense_mse(y, W, b, target)
    r = head.dense_mse(y, W, b, target, device="reference")
    assert abs(a.loss - r.loss) <= 1e-12
    for x, z in zip(head.dense_mse_backward(a.cache), head.dense_mse_backward(r.cache)):
        assert_close(x, z, np.float64, "grad")


@pytest.mark.parametrize("dtype, lo, bound", [(np.float64, -708.0, 4.5e-16), (np.float64, -30.0, 4.5e-16),
                                               (np.float32, -87.0, 2e-7)])
def test_exp_bound(dtype, lo, bound):
    x = np.linspace(lo, 0.0, 100_001).astype(dtype)
    out = np.empty_like(x)
    exp_nonpos(x, out)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(out - ref) / ref) <= bound


def _check_xent(y, W, b, t, lengths, dtype, reduction="mean"):
    loss, gy, gW, gb = _numpy_xent(y, W, b, t, lengths, reduction)
    res = head.dense_softmax_xent(y, W, b, t, lengths=lengths, reduction=reduction)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    assert abs(res.loss - loss) <= tol * max(1.0, abs(loss))
    dy, dW, db = head.dense_softmax_xent_backward(res.cache)
    assert dy.dtype == dW.dtype == db.dtype == np.dtype(dtype)
    assert dW.shape == W.shape and dW.flags.c_contiguous
    for name, a, r in zip(("dy", "dW", "db"), (dy, dW, db), (gy, gW, gb)):
        assert_close(a, r, dtype, "grad", name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_xent_threaded_blocks(dtype, threads):
    """Products above PARALLEL_MIN_FLOP run as row blocks on the threads (forward: each block's
    GEMM and rows; backward: each block's dy rows and share of dW, the shares added)."""
    from fastlstm import config
    T, B, H, V = 40, 25, 32, 160           # 2 N H V = 10 M flop
    y, W, b, t = _inputs(dtype, T=T, B=B, H=H, V=V, seed=7)
    lengths = np.random.default_rng(8).integers(0, T + 1, B)
    old = head.PARALLEL_MIN_FLOP
    head.PARALLEL_MIN_FLOP = 1e6
    try:
        with config.options("cpu", threads=threads):
            assert head._threads(T * B, H, V) == (threads if threads > 1 and _can_pin() else 1)
            _check_xent(y, W, b, t, lengths, dtype)
            _check_xent(y, W, b, t, None, dtype, "sum")
    finally:
        head.PARALLEL_MIN_FLOP = old


def _can_pin():
    from fastlstm.kernels.cpu.parallel import can_pin
    return can_pin()


@pytest.mark.parametrize("dtype, H, V", [(np.float32, 32, 4), (np.float32, 8, 40),
                                         (np.float64, 8, 40), (np.float64, 32, 4)])
def test_xent_weight_gradient_forms(dtype, H, V):
    """Both forms of the weight gradient (G^T y, and (y^T G)^T where OpenBLAS runs it faster)."""
    assert head._dw_transposed(V, H, np.dtype(dtype)) == ((4 * V <= H) if dtype == np.float32
                                                           else (V >= 4 * H))
    y, W, b, t = _inputs(dtype, T=7, B=3, H=H, V=V, seed=11)
    _check_xent(y, W, b, t, np.array([7, 3, 0]), dtype)


def test_xent_buffer_reuse():
    """The backward hands its (N, V) buffer to the next forward; caches still outstanding keep
    their own (two forwards, then both backwards)."""
    y, W, b, t = _inputs(np.float32, seed=3)
    y2, _, _, t2 = _inputs(np.float32, seed=4)
    want1 = head.dense_softmax_xent_backward(head.dense_softmax_xent(y, W, b, t, device="reference").cache)
    want2 = head.dense_softmax_xent_backward(head.dense_softmax_xent(y2, W, b, t2, device="reference").cache)
    for _ in range(2):
        r1 = head.dense_softmax_xent(y, W, b, t)
        r2 = head.dense_softmax_xent(y2, W, b, t2)
        assert not np.shares_memory(r1.cache.out, r2.cache.out)
        got2 = head.dense_softmax_xent_backward(r2.cache)
        r3 = head.dense_softmax_xent(y2[:3], W, b, t2[:3])      # takes r2's buffer
        got1 = head.dense_softmax_xent_backward(r1.cache)
        for a, r in zip(got1 + got2, want1 + want2):
            assert_close(a, r, np.float32, "grad")
        head.dense_softmax_xent_backward(r3.cache)
    head.release_workspace()
    assert not head._spare


@pytest.mark.parametrize("dtype", DTYPES)
def test_xent_nan_propagates(dtype):
    y, W, b, t = _inputs(dtype, seed=5)
    y[2, 1, 0] = np.nan
    res = head.dense_softmax_xent(y, W, b, t)
    ref = head.dense_softmax_xent(y, W, b, t, device="reference")
    assert np.isnan(res.loss) and np.isnan(ref.loss)
    dy, _, _ = head.dense_softmax_xent_backward(res.cache)
    assert np.all(np.isnan(dy[2, 1])) and np.all(np.isfinite(dy[0]))
