"""fastlstm.Stepper(device="cuda") (``kernels/cuda/step.py``: one fused launch per layer and step)
against the NumPy reference: host and device inputs and outputs, chunks, reset, in-place
parameter updates, and the errors. Tiny shapes: the simulator runs one Python thread per GPU
thread."""
from __future__ import annotations

import numpy as np
import pytest

import fastlstm
from fastlstm import LSTMParams, Stepper
from fastlstm.testing import assert_close

F32 = np.float32


def _problem(I, H, L, P, B, bias=True, T=3, seed=0):
    rng = np.random.default_rng(seed)
    params = LSTMParams.init(I, H, L, proj_size=P, bias=bias, seed=seed)
    params = LSTMParams.from_state_dict({k: 1.5 * v for k, v in params.state_dict().items()})
    Po = params.output_size
    x = rng.standard_normal((T, B, I)).astype(F32)
    h0 = rng.standard_normal((L, B, Po)).astype(F32)
    c0 = rng.standard_normal((L, B, H)).astype(F32)
    return params, x, h0, c0


def _reference(params, x, h0, c0):
    f = lambda a: a.astype(np.float64)  # noqa: E731
    return fastlstm.forward(f(x), params.astype(np.float64), f(h0), f(c0), device="reference")


def _check(y, s, ref, what):
    assert_close(y, ref.y, F32, "forward", f"{what} y")
    assert_close(s.h, ref.h, F32, "forward", f"{what} h")
    assert_close(s.c, ref.c, F32, "forward", f"{what} c")


@pytest.mark.parametrize("I, H, L, P, B, bias", [
    pytest.param(3, 5, 2, 2, 2, True, id="2layer-proj-B2"),
    pytest.param(6, 6, 1, 0, 1, False, id="nobias-B1"),
])
def test_host_steps_match_reference(I, H, L, P, B, bias):
    params, x, h0, c0 = _problem(I, H, L, P, B, bias)
    before = [a.copy() for a in (x, h0, c0)]
    s = Stepper(params, B, h0, c0, device="cuda")
    ys = []
    for xt in x:
        y = s.step(xt)
        assert isinstance(y, np.ndarray) and y.shape == (B, params.output_size)
        ys.append(y)
    _check(np.stack(ys), s, _reference(params, x, h0, c0), "host steps")
    for a, b in zip((x, h0, c0), before):
        np.testing.assert_array_equal(a, b)


def test_device_inputs_outputs_and_chunks():
    from numba import cuda
    params, x, h0, c0 = _problem(3, 4, 2, 0, 2, T=4)
    ref = _reference(params, x, h0, c0)
    s = Stepper(params, 2, cuda.to_device(h0), cuda.to_device(c0), device="cuda")
    xd = cuda.to_device(x)
    y0 = s.step(xd[0])  # a device input gives a device result
    assert not isinstance(y0, np.ndarray) and tuple(y0.shape) == (2, 4)
    out = cuda.device_array((2, 4), F32)
    assert s.step(xd[1], out=out) is out
    host_out = np.full((2, 4), np.nan, F32)
    assert s.step(x[2], out=host_out) is host_out
    y3 = s.steps(xd[3:])  # a device chunk
    ys = np.stack([y0.copy_to_host(), out.copy_to_host(), host_out, y3.copy_to_host()[0]])
    _check(ys, s, ref, "device in/out")
    s.reset(h0, c0)  # host chunks hand the state over
    y = np.concatenate([s.steps(x[:1]), s.steps(x[1:1]), s.steps(x[1:])])
    assert isinstance(y, np.ndarray)
    _check(y, s, ref, "host chunks")


def test_reset_update_and_errors():
    params, x, h0, c0 = _problem(3, 4, 1, 2, 2)
    s = Stepper(params, 2, h0, c0, device="cuda")
    s.step(x[0])
    h, c = s.h, s.c
    for bad, exc, match in [(np.zeros((2, 4), F32), ValueError, r"x_t must have shape \(2, 3\)"),
                            (np.zeros((2, 3)), TypeError, "x_t must have dtype float32"),
                            (np.zeros((2, 6), F32)[:, ::2], ValueError, "C-contiguous")]:
        with pytest.raises(exc, match=match):
            s.step(bad)
    np.testing.assert_array_equal(s.h, h)
    np.testing.assert_array_equal(s.c, c)
    s.reset()
    np.testing.assert_array_equal(s.h, 0.0)
    s.reset(h0, c0)
    grads = {k: np.full(v.shape, 0.5, F32) for k, v in params.state_dict().items()}
    params.update_(grads, lr=0.2)
    y = np.stack([s.step(xt) for xt in x])
    _check(y, s, _reference(params, x, h0, c0), "after update_")
    with pytest.raises(TypeError, match="float32 only"):
        Stepper(params.astype(np.float64), 2, device="cuda")
    with pytest.raises(ValueError, match="unidirectional"):
        Stepper(LSTMParams.init(3, 4, bidirectional=True, seed=0), device="cuda")
