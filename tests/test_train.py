"""fastlstm.train: Adam and SGD against torch.optim on the same gradients, clipping against
torch.nn.utils.clip_grad_norm_, and the truncated-BPTT chunks."""
from __future__ import annotations

import numpy as np
import pytest

import fastlstm
from fastlstm import train


def _setup(seed=0):
    params = fastlstm.LSTMParams.init(3, 4, num_layers=2, dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((5, 4))
    b = rng.standard_normal(5)
    grads = [[{k: rng.standard_normal(v.shape) for k, v in params.state_dict().items()},
              rng.standard_normal(W.shape), rng.standard_normal(b.shape)] for _ in range(4)]
    return params, W, b, grads


def _torch_run(opt_cls, params, W, b, grads, **kw):
    torch = pytest.importorskip("torch")
    names = list(params.state_dict())
    tensors = [torch.tensor(v, requires_grad=True) for v in params.state_dict().values()]
    tensors += [torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True)]
    opt = opt_cls(tensors, **kw)
    for g in grads:
        flat = [g[0][n] for n in names] + [g[1], g[2]]
        for t, a in zip(tensors, flat):
            t.grad = torch.from_numpy(a.copy())
        opt.step()
    return {n: t.detach().numpy() for n, t in zip(names + ["W", "b"], tensors)}


def _ours(params, W, b):
    return {**params.state_dict(), "W": W, "b": b}


def test_adam_matches_torch():
    torch = pytest.importorskip("torch")
    params, W, b, grads = _setup()
    want = _torch_run(torch.optim.Adam, params, W, b, grads, lr=0.01, betas=(0.8, 0.99), eps=1e-7)
    v0 = params.version
    opt = train.Adam([params, W, b], lr=0.01, betas=(0.8, 0.99), eps=1e-7)
    for g in grads:
        opt.step(g)
    assert params.version == v0 + len(grads)
    for k, v in _ours(params, W, b).items():
        np.testing.assert_allclose(v, want[k], rtol=1e-12, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_matches_torch(momentum):
    torch = pytest.importorskip("torch")
    params, W, b, grads = _setup(1)
    want = _torch_run(torch.optim.SGD, params, W, b, grads, lr=0.05, momentum=momentum)
    opt = train.SGD([params, W, b], lr=0.05, momentum=momentum)
    for g in grads:
        opt.step(g)
    for k, v in _ours(params, W, b).items():
        np.testing.assert_allclose(v, want[k], rtol=1e-12, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_matches_torch(max_norm):
    torch = pytest.importorskip("torch")
    _, _, _, grads = _setup(2)
    g = grads[0]
    flat = list(g[0].values()) + [g[1], g[2]]
    ts = [torch.zeros(a.shape, dtype=torch.float64, requires_grad=True) for a in flat]
    for t, a in zip(ts, flat):
        t.grad = torch.from_numpy(a.copy())
    want = torch.nn.utils.clip_grad_norm_(ts, max_norm).item()
    total = train.clip_grad_norm(g, max_norm)
    assert abs(total - want) <= 1e-12 * want
    for t, a in zip(ts, list(g[0].values()) + [g[1], g[2]]):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-13)


def test_step_checks_structure():
    params, W, b, grads = _setup()
    opt = train.Adam([params, W, b])
    with pytest.raises(ValueError, match="one gradient entry per parameter"):
        opt.step(grads[0][:2])
    with pytest.raises(ValueError, match="shape"):
        opt.step([grads[0][0], grads[0][2], grads[0][1]])


def test_tbptt_carries_state():
    """Chunked forward with carried (h, c) equals one forward over the whole stream."""
    params = fastlstm.LSTMParams.init(3, 5, num_layers=2, dtype=np.float64, seed=3)
    x = np.random.default_rng(3).standard_normal((23, 2, 3))
    whole = fastlstm.forward(x, params)
    h = c = None
    ys = []
    for t0, xc in train.tbptt_chunks(x, 5):
        out = fastlstm.forward(xc, params, h, c)
        h, c = out.h, out.c
        ys.append(out.y)
    np.testing.assert_allclose(np.concatenate(ys), whole.y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h, whole.h, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="chunk"):
        next(train.tbptt_chunks(x, 0))
