"""The tanh RNN (fastlstm.rnn): torch.nn.RNN parity, the NumPy reference's gradients by finite
differences, input rules."""
import numpy as np
import pytest

from fastlstm.rnn import (RNNParams, reference_backward, reference_forward, rnn_backward,
                          rnn_forward)
from fastlstm.testing import assert_close

T, B, I, H = 6, 3, 4, 5


def _inputs(L, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((L, B, H))).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dh = rng.standard_normal((L, B, H)).astype(dtype)
    return x, h0, dy, dh


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_h0", [True, False])
def test_torch_parity(dtype, num_layers, bias, with_h0):
    torch = pytest.importorskip("torch")
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(num_layers + 2 * bias)
    m = torch.nn.RNN(I, H, num_layers=num_layers, bias=bias, nonlinearity="tanh").to(tdt)
    params = RNNParams.from_state_dict(m.state_dict())
    assert params.dtype == dtype and params.bias == bias and params.num_layers == num_layers
    x, h0, dy, dh = _inputs(num_layers, dtype)
    saved = [a.copy() for a in (x, h0, dy, dh)]

    xt = torch.tensor(x, requires_grad=True)
    ht = torch.tensor(h0, requires_grad=True) if with_h0 else None
    yt, hnt = m(xt, ht)
    ((yt * torch.tensor(dy)).sum() + (hnt * torch.tensor(dh)).sum()).backward()

    y, h_n, cache = rnn_forward(x, params, h0 if with_h0 else None, training=True)
    assert_close(y, yt.detach().numpy(), dtype, "forward", "y")
    assert_close(h_n, hnt.detach().numpy(), dtype, "forward", "h_n")
    dx, dh0, dparams = rnn_backward(cache, dy, dh)
    assert_close(dx, xt.grad.numpy(), dtype, "grad", "dx")
    if with_h0:
        assert_close(dh0, ht.grad.numpy(), dtype, "grad", "dh0")
    assert set(dparams) == {n for n, _ in m.named_parameters()}
    for name, p in m.named_parameters():
        assert dparams[name].shape == tuple(p.shape)
        assert_close(dparams[name], p.grad.numpy(), dtype, "grad", name)

    # the reference agrees with the kernels
    ry, rh, rcache = reference_forward(x, params, h0 if with_h0 else None, training=True)
    assert_close(y, ry, dtype, "forward", "y vs reference")
    assert_close(h_n, rh, dtype, "forward", "h_n vs reference")
    rdx, rdh0, rdp = reference_backward(rcache, dy, dh)
    assert_close(dx, rdx, dtype, "grad", "dx vs reference")
    assert_close(dh0, rdh0, dtype, "grad", "dh0 vs reference")
    for name in rdp:
        assert_close(dparams[name], rdp[name], dtype, "grad", f"{name} vs reference")

    for a, b in zip((x, h0, dy, dh), saved):  # inputs unchanged
        np.testing.assert_array_equal(a, b)


def test_state_dict_round_trip():
    torch = pytest.importorskip("torch")
    params = RNNParams.init(I, H, num_layers=2, dtype=np.float32, seed=0)
    m = torch.nn.RNN(I, H, num_layers=2)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in params.state_dict().items()})
    again = RNNParams.from_state_dict(m.state_dict())
    for k, v in params.state_dict().items():
        np.testing.assert_array_equal(again[k], v)
    assert list(params.state_dict()) == list(m.state_dict())


def test_reference_gradients_by_finite_differences():
    rng = np.random.default_rng(7)
    L, t, b, i, h = 2, 4, 2, 3, 3
    params = RNNParams.init(i, h, num_layers=L, dtype=np.float64, seed=3)
    x = rng.standard_normal((t, b, i))
    h0 = 0.5 * rng.standard_normal((L, b, h))
    wy = rng.standard_normal((t, b, h))
    wh = rng.standard_normal((L, b, h))

    def loss(x_, h0_, p_):
        y, hn, _ = reference_forward(x_, p_, h0_)
        return float((y * wy).sum() + (hn * wh).sum())

    _, _, cache = reference_forward(x, params, h0, training=True)
    dx, dh0, dparams = reference_backward(cache, wy, wh)
    eps = 1e-6

    def numeric(arr, f):
        g = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            up = f()
            arr[idx] = old - eps
            down = f()
            arr[idx] = old
            g[idx] = (up - down) / (2 * eps)
        return g

    np.testing.assert_allclose(dx, numeric(x, lambda: loss(x, h0, params)), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dh0, numeric(h0, lambda: loss(x, h0, params)), rtol=1e-6, atol=1e-8)
    sd = params.state_dict()
    for name in sd:
        def f(name=name):
            return loss(x, h0, RNNParams.from_state_dict(sd))
        np.testing.assert_allclose(dparams[name], numeric(sd[name], f), rtol=1e-6, atol=1e-8,
                                   err_msg=name)


def test_no_cache_without_training_and_dtype_conversion():
    params = RNNParams.init(I, H, dtype=np.float64, seed=1)
    x, _, _, _ = _inputs(1, np.float32)
    y, h_n, cache = rnn_forward(x, params)
    assert cache is None and y.dtype == np.float64 and h_n.shape == (1, B, H)
    ry, _, _ = reference_forward(x.astype(np.float64), params)
    assert_close(y, ry, np.float64, "forward", "y")
    np.testing.assert_array_equal(h_n[0], y[-1])


def test_update_step():
    params = RNNParams.init(I, H, dtype=np.float64, seed=1)
    before = params.state_dict()
    x, _, dy, _ = _inputs(1, np.float64)
    _, _, cache = rnn_forward(x, params, training=True)
    _, _, g = rnn_backward(cache, dy)
    params.update_(g, 0.1)
    for k in before:
        np.testing.assert_allclose(params[k], before[k] - 0.1 * g[k], rtol=0, atol=1e-15)


def test_errors_name_the_argument():
    params = RNNParams.init(I, H, num_layers=2, dtype=np.float64, seed=0)
    x, h0, dy, dh = _inputs(2, np.float64)
    with pytest.raises(ValueError, match="x must be 3-D"):
        rnn_forward(x[0], params)
    with pytest.raises(ValueError, match="input_size"):
        rnn_forward(np.zeros((T, B, I + 1)), params)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        rnn_forward(np.zeros((T, B, I), np.int64), params)
    with pytest.raises(ValueError, match="h0 must have shape"):
        rnn_forward(x, params, h0[:1])
    with pytest.raises(TypeError, match="params must be an RNNParams"):
        rnn_forward(x, {"weight_ih_l0": 1})
    with pytest.raises(TypeError, match="training"):
        rnn_forward(x, params, training=1)
    _, _, cache = rnn_forward(x, params, training=True)
    with pytest.raises(ValueError, match="dy must have shape"):
        rnn_backward(cache, dy[:-1])
    with pytest.raises(ValueError, match="dh must have shape"):
        rnn_backward(cache, dy, dh[:1])
    with pytest.raises(TypeError, match="cache"):
        rnn_backward(None, dy)
    sd = params.state_dict()
    sd["weight_hh_l1"] = sd["weight_hh_l1"][:, :-1]
    with pytest.raises(ValueError, match="weight_hh_l1 must have shape"):
        RNNParams.from_state_dict(sd)
    with pytest.raises(KeyError, match="weight_ih_l0_reverse"):
        RNNParams.from_state_dict({**params.state_dict(), "weight_ih_l0_reverse": np.zeros((H, I))})
    with pytest.raises(TypeError, match="dtype"):
        RNNParams.init(I, H, dtype=np.int32)
