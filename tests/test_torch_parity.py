"""Parity with torch.nn.LSTM: forward and autograd, packed sequences, every feature mixed."""
import zlib

import numpy as np
import pytest

import fastlstm
from fastlstm.testing import assert_close

from helpers import Config, make_problem, torch, torch_run

pytestmark = pytest.mark.skipif(torch is None, reason="torch is not installed")

CONFIGS = [
    Config(T=8, B=3, I=5, H=7),
    Config(T=9, B=4, I=5, H=7, lengths=True),
    Config(T=7, B=4, I=6, H=8, bidirectional=True, lengths=True),
    Config(T=6, B=3, I=5, H=8, proj=3),
    Config(T=7, B=5, I=4, H=9, proj=4, bidirectional=True, lengths=True),
    Config(T=6, B=3, I=5, H=6, L=3, bidirectional=True, lengths=True),
    Config(T=6, B=3, I=5, H=6, L=2, proj=2, bias=False, lengths=True),
    Config(T=6, B=2, I=5, H=6, L=2, bidirectional=True, given_state=False),
    Config(T=30, B=6, I=24, H=40, L=2, bidirectional=True, proj=16, lengths=True),
]


def _random_configs(n, seed=1234):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        H = int(rng.integers(2, 12))
        out.append(Config(T=int(rng.integers(1, 10)), B=int(rng.integers(1, 6)),
                          I=int(rng.integers(1, 8)), H=H, L=int(rng.integers(1, 4)),
                          bidirectional=bool(rng.integers(2)),
                          proj=int(rng.integers(0, H)) if rng.integers(2) else 0,
                          bias=bool(rng.integers(2)), lengths=bool(rng.integers(2)),
                          given_state=bool(rng.integers(2))))
    return out


def _check(p, dtype, device, batch_first=False):
    # both sides run in the same layout; results are compared time-major
    ref = torch_run(p, dtype, batch_first=batch_first)
    swap = (lambda a: np.ascontiguousarray(a.swapaxes(0, 1))) if batch_first else (lambda a: a)
    fwd = fastlstm.forward(swap(p.x), p.params, p.h0, p.c0, lengths=p.lengths, training=True,
                           batch_first=batch_first, device=device)
    g = fastlstm.backward(fwd.cache, swap(p.dy), p.dh, p.dc)
    what = f"{p.cfg} {device}"
    for name, ours in (("y", swap(fwd.y)), ("h", fwd.h), ("c", fwd.c)):
        assert_close(ours, ref[name], dtype, "forward", f"{what} {name}")
    for name, ours in (("dx", swap(g.dx)), ("dh0", g.dh0), ("dc0", g.dc0)):
        assert_close(ours, ref[name], dtype, "grad", f"{what} {name}")
    assert set(g.dparams) == set(ref["dparams"])
    for name, grad in ref["dparams"].items():
        assert_close(g.dparams[name], grad, dtype, "grad", f"{what} {name}")


@pytest.mark.parametrize("device", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_matches_torch(cfg, dtype, device):
    _check(make_problem(cfg, dtype, seed=21), dtype, device)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cfg", _random_configs(24), ids=str)
def test_matches_torch_random_configs(cfg, dtype):
    # a stable seed (str hashes are randomised per process): the same data in every run
    _check(make_problem(cfg, dtype, seed=zlib.crc32(str(cfg).encode()) % 1000), dtype, "cpu")


@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[4], CONFIGS[5]], ids=str)
def test_matches_torch_batch_first(cfg):
    _check(make_problem(cfg, np.float64, seed=8), np.float64, "cpu", batch_first=True)


def test_matches_torch_unbatched():
    cfg = Config(T=7, B=1, I=4, H=6, L=2, bidirectional=True, proj=3)
    p = make_problem(cfg, np.float64, seed=9)
    ref = torch_run(p, np.float64)
    fwd = fastlstm.forward(p.x[:, 0], p.params, p.h0[:, 0], p.c0[:, 0], training=True)
    g = fastlstm.backward(fwd.cache, p.dy[:, 0], p.dh[:, 0], p.dc[:, 0])
    assert fwd.y.shape == (7, 6) and fwd.h.shape == (4, 3) and g.dx.shape == (7, 4)
    assert_close(fwd.y, ref["y"][:, 0], np.float64, "forward")
    assert_close(fwd.h, ref["h"][:, 0], np.float64, "forward")
    assert_close(g.dx, ref["dx"][:, 0], np.float64, "grad")
    assert_close(g.dh0, ref["dh0"][:, 0], np.float64, "grad")
    for name, grad in ref["dparams"].items():
        assert_close(g.dparams[name], grad, np.float64, "grad", name)


def test_torch_module_weights_load_and_inference_matches():
    m = torch.nn.LSTM(5, 8, 2, bidirectional=True, proj_size=3)
    params = fastlstm.LSTMParams.from_state_dict(m.state_dict())
    assert params.dtype == np.float32 and params.proj_size == 3 and params.num_layers == 2
    x = np.random.default_rng(0).standard_normal((6, 2, 5)).astype(np.float32)
    with torch.no_grad():
        y_t, (h_t, c_t) = m(torch.tensor(x))
    r = fastlstm.forward(torch.tensor(x), params)  # CPU torch tensors are accepted
    assert_close(r.y, y_t.numpy(), np.float32, "forward")
    assert_close(r.h, h_t.numpy(), np.float32, "forward")
    assert_close(r.c, c_t.numpy(), np.float32, "forward")
    # and back: our state dict loads into torch unchanged
    m2 = torch.nn.LSTM(5, 8, 2, bidirectional=True, proj_size=3)
    m2.load_state_dict({k: torch.tensor(v) for k, v in params.state_dict().items()})
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])


def test_harness_torch_runner_layouts_and_forward_only():
    """The one torch runner: batch-first driving gives the same (time-major) results, and a
    forward-only input set (no output gradients) runs the forward modes."""
    from fastlstm.harness import Inputs, TorchRunner
    p = make_problem(Config(T=6, B=4, I=3, H=5, L=2, bidirectional=True, proj=2, lengths=True),
                     np.float64, seed=3)
    inputs = Inputs(p.params, p.x, p.h0, p.c0, p.lengths, p.dy, p.dh, p.dc)
    tm, bf = (TorchRunner("fwd_bwd", inputs, batch_first=b) for b in (False, True))
    a, b = tm.outputs(tm()), bf.outputs(bf())
    assert a.keys() == b.keys() and a["y"].shape == (6, 4, 4) and a["dx"].shape == (6, 4, 3)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-12, err_msg=k)
    fwd_only = Inputs.for_forward(p.params, p.x, p.h0, p.c0, lengths=p.lengths)
    r = TorchRunner("infer", fwd_only)
    np.testing.assert_allclose(r.outputs(r())["y"], a["y"], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="needs inputs with dy"):
        TorchRunner("fwd_bwd", fwd_only)
