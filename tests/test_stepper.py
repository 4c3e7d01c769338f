"""fastlstm.Stepper on the CPU: stepping a sequence reproduces fastlstm.forward (and the NumPy
reference in float64), chunks hand the state over exactly, reset, bad input refused with the
state unchanged, in-place parameter updates picked up, inputs never modified."""
from __future__ import annotations

import numpy as np
import pytest

import fastlstm
from fastlstm import LSTMParams, Stepper
from fastlstm import config
from fastlstm.testing import assert_close

F32, F64 = np.float32, np.float64


def _configs():
    """Random sizes for each combination of layers, projection, dtype, batch and bias."""
    rng = np.random.default_rng(7)
    combos = [  # L, projection, dtype, B, bias
        (1, False, F32, 1, True), (2, True, F32, 3, True), (3, False, F64, 1, False),
        (3, True, F64, 4, True), (1, True, F64, 1, False), (2, False, F32, 2, False),
    ]
    out = []
    for L, proj, dt, B, bias in combos:
        I, H = int(rng.integers(1, 13)), int(rng.integers(2, 13))
        P = int(rng.integers(1, H)) if proj else 0
        out.append(pytest.param(I, H, L, P, B, dt, bias,
                                id=f"I{I}H{H}L{L}P{P}B{B}-{np.dtype(dt).name}"
                                   + ("" if bias else "-nobias")))
    # products in column blocks (4H = 1024 columns at B = 16; W_hr^T 160 columns at B = 40)
    out.append(pytest.param(16, 256, 1, 0, 16, F32, True, id="blocked-I16H256B16"))
    out.append(pytest.param(12, 200, 2, 160, 40, F64, True, id="blocked-I12H200P160B40"))
    return out


CONFIGS = _configs()


def _problem(I, H, L, P, B, dt, bias, T=6, seed=0):
    rng = np.random.default_rng(seed)
    params = LSTMParams.init(I, H, L, proj_size=P, bias=bias, dtype=dt, seed=seed)
    # larger than init: the gates leave their linear regime
    params = LSTMParams.from_state_dict({k: 1.5 * v for k, v in params.state_dict().items()},
                                        dtype=dt)
    Po = params.output_size
    x = rng.standard_normal((T, B, I)).astype(dt)
    h0 = rng.standard_normal((L, B, Po)).astype(dt)
    c0 = rng.standard_normal((L, B, H)).astype(dt)
    return params, x, h0, c0


def _reference(params, x, h0, c0):
    """The NumPy reference in float64."""
    f = lambda a: None if a is None else a.astype(F64)  # noqa: E731
    return fastlstm.forward(f(x), params.astype(F64), f(h0), f(c0), device="reference")


def _forward(x, params, h0=None, c0=None):
    """``fastlstm.forward`` on the CPU backend for float32 params; for float64 ones on the
    reference (the CPU backend's float64 kernels are tested elsewhere: compiling them here
    would double this file's first-run time)."""
    device = "cpu" if params.dtype == F32 else "reference"
    return fastlstm.forward(x, params, h0, c0, device=device)


def _check(y, h, c, ref, dt, what):
    assert_close(y, ref.y, dt, "forward", f"{what} y")
    assert_close(h, ref.h, dt, "forward", f"{what} h")
    assert_close(c, ref.c, dt, "forward", f"{what} c")


@pytest.mark.parametrize("I, H, L, P, B, dt, bias", CONFIGS)
def test_stepping_reproduces_forward_and_reference(I, H, L, P, B, dt, bias):
    params, x, h0, c0 = _problem(I, H, L, P, B, dt, bias)
    before = [a.copy() for a in (x, h0, c0)]
    s = Stepper(params, B, h0, c0)
    ys = []
    for t in range(x.shape[0]):
        y = s.step(x[t])
        assert y.shape == (B, params.output_size) and y.dtype == dt
        ys.append(y)
    ys = np.stack(ys)
    res = _forward(x, params, h0, c0)
    _check(ys, s.h, s.c, res, dt, "vs forward")
    _check(ys, s.h, s.c, _reference(params, x, h0, c0), dt, "vs reference")
    for a, b in zip((x, h0, c0), before):
        np.testing.assert_array_equal(a, b)  # inputs never modified


@pytest.mark.parametrize("I, H, L, P, B, dt, bias", [CONFIGS[1], CONFIGS[5]])
def test_chunks_hand_over_the_state(I, H, L, P, B, dt, bias):
    """Two chunks == one forward, on both paths of steps() (the step kernel for short chunks,
    the whole-sequence backend for long ones), and mixed with single steps."""
    T = 40
    params, x, h0, c0 = _problem(I, H, L, P, B, dt, bias, T=T)
    x.setflags(write=False)  # read-only chunks are fine on both paths
    max_rows = config.current("cpu").stepper_kernel_max_rows
    assert 3 * B <= max_rows < (T - 3) * B  # cut at 3: both paths
    res = fastlstm.forward(x, params, h0, c0)
    ref = _reference(params, x, h0, c0)
    for cut in (3, 30):  # a short first chunk (step kernel), a long one (backend)
        s = Stepper(params, B, h0, c0)
        y = np.concatenate([s.steps(x[:cut]), s.steps(x[cut:])])
        _check(y, s.h, s.c, res, dt, f"chunks cut at {cut} vs forward")
        _check(y, s.h, s.c, ref, dt, f"chunks cut at {cut} vs reference")
    s = Stepper(params, B, h0, c0)
    y = np.concatenate([s.steps(x[:2]), s.step(x[2])[None], s.steps(x[3:5]),
                        s.steps(x[5:5]), s.steps(x[5:])])
    _check(y, s.h, s.c, res, dt, "steps, step, empty chunk, steps")


def test_step_and_short_chunks_agree_bitwise():
    params, x, h0, c0 = _problem(5, 7, 2, 3, 2, F32, True)
    a, b = Stepper(params, 2, h0, c0), Stepper(params, 2, h0, c0)
    ya = np.stack([a.step(xt) for xt in x])
    yb = b.steps(x)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(a.h, b.h)
    np.testing.assert_array_equal(a.c, b.c)


def test_products_in_column_blocks_and_row_chunks():
    """Tiny thresholds force the blocked products (several column blocks, one row per chunk)."""
    params, x, h0, c0 = _problem(10, 8, 2, 5, 5, F64, True)
    res = _forward(x, params, h0, c0)
    with fastlstm.config.options("cpu", small_gemm_mnk=300, micro_max_rows=0):
        s = Stepper(params, 5, h0, c0)
    assert any(layer[2] > 1 and layer[3] < 5 for layer in s._wlayout)  # blocks, row chunks
    ys = np.stack([s.step(xt) for xt in x])
    _check(ys, s.h, s.c, res, F64, "blocked")


def test_zero_initial_state_and_reset():
    params, x, h0, c0 = _problem(4, 6, 2, 0, 3, F64, True)
    s = Stepper(params, 3)
    np.testing.assert_array_equal(s.h, 0.0)
    np.testing.assert_array_equal(s.c, 0.0)
    y0 = np.stack([s.step(xt) for xt in x])
    _check(y0, s.h, s.c, _forward(x, params), F64, "zero state")
    s.reset()
    np.testing.assert_array_equal(s.h, 0.0)
    np.testing.assert_array_equal(s.c, 0.0)
    np.testing.assert_array_equal(np.stack([s.step(xt) for xt in x]), y0)
    s.reset(h0, c0)
    np.testing.assert_array_equal(s.h, h0)
    np.testing.assert_array_equal(s.c, c0)
    ys = np.stack([s.step(xt) for xt in x])
    _check(ys, s.h, s.c, _forward(x, params, h0, c0), F64, "after reset(h0, c0)")
    s.reset(h0)  # h0 alone: c0 = 0, as in forward
    np.testing.assert_array_equal(s.c, 0.0)
    s.reset(h0.astype(F32), c0.astype(F32))  # other float dtypes are converted for states
    assert s.h.dtype == F64
    np.testing.assert_array_equal(s.h, h0.astype(F32))


def test_state_properties_are_copies_and_results_are_owned():
    params, x, h0, c0 = _problem(4, 6, 1, 0, 2, F32, True)
    s = Stepper(params, 2, h0, c0)
    y1 = s.step(x[0])
    h = s.h
    assert not np.shares_memory(y1, h)
    h[...] = 99.0
    s.c[...] = 99.0
    assert not np.any(s.h == 99.0) and not np.any(s.c == 99.0)
    y2 = s.step(x[1])
    assert y2 is not y1 and not np.shares_memory(y1, y2)
    np.testing.assert_array_equal(y2, s.h[-1])
    y1_before = y1.copy()
    s.step(x[2])
    np.testing.assert_array_equal(y1, y1_before)  # a later step never writes to it


def test_out_argument():
    params, x, h0, c0 = _problem(4, 6, 2, 3, 2, F32, True)
    a, b = Stepper(params, 2, h0, c0), Stepper(params, 2, h0, c0)
    out = np.full((2, 3), np.nan, F32)
    for xt in x:
        r = b.step(xt, out=out)
        assert r is out
        np.testing.assert_array_equal(out, a.step(xt))


def _bad_inputs(B, I):
    wide = np.zeros((B, 2 * I), F32)
    bad = [
        (np.zeros((B, I + 1), F32), ValueError, r"x_t must have shape \(%d, %d\)" % (B, I)),
        (np.zeros((B + 1, I), F32), ValueError, r"batch_size=%d" % B),
        (np.zeros(I, F32), ValueError, "x_t must have shape"),
        (np.zeros((1, B, I), F32), ValueError, "x_t must have shape"),
        (np.zeros((B, I), F64), TypeError, r"x_t must have dtype float32.*astype\(np\.float32\)"),
        (np.zeros((B, I), np.int32), TypeError, "x_t must have dtype float32"),
        (np.zeros((B, I), ">f4"), TypeError, "x_t must have dtype float32"),
        (wide[:, ::2], ValueError, "x_t must be C-contiguous"),
        (np.asfortranarray(np.zeros((B, I), F32)), ValueError, "C-contiguous"),
        ([[0.0] * I] * B, TypeError, "float64"),  # a list: float64 after conversion
        ("abc", ValueError, "x_t must have shape"),
    ]
    return bad


def test_bad_step_input_raises_and_leaves_the_state_unchanged():
    B, I = 3, 4
    params, x, h0, c0 = _problem(I, 6, 2, 0, B, F32, True)
    s = Stepper(params, B, h0, c0)
    ref = Stepper(params, B, h0, c0)
    s.step(x[0]), ref.step(x[0])
    for bad, exc, match in _bad_inputs(B, I):
        h, c = s.h, s.c
        with pytest.raises(exc, match=match):
            s.step(bad)
        np.testing.assert_array_equal(s.h, h)
        np.testing.assert_array_equal(s.c, c)
    P = params.output_size
    read_only = np.zeros((B, P), F32)
    read_only.setflags(write=False)
    for out, exc, match in [(np.zeros((B, P + 1), F32), ValueError, r"out must have shape"),
                            (np.zeros((B, P), F64), TypeError, "out must have dtype float32"),
                            (np.zeros((B, 2 * P), F32)[:, ::2], ValueError, "C-contiguous"),
                            (read_only, ValueError, "out must be writeable")]:
        h, c = s.h, s.c
        with pytest.raises(exc, match=match):
            s.step(x[1], out=out)
        np.testing.assert_array_equal(s.h, h)
        np.testing.assert_array_equal(s.c, c)
    # after all that, the stream goes on as if nothing happened
    for t in range(1, x.shape[0]):
        np.testing.assert_array_equal(s.step(x[t]), ref.step(x[t]))


def test_bad_chunk_input_raises_and_leaves_the_state_unchanged():
    params, x, h0, c0 = _problem(4, 5, 1, 0, 2, F32, True)
    s = Stepper(params, 2, h0, c0)
    for bad, exc, match in [(np.zeros((3, 2, 5), F32), ValueError, r"\(T, 2, 4\)"),
                            (np.zeros((2, 4), F32), ValueError, r"\(T, 2, 4\)"),
                            (np.zeros((3, 2, 4), F64), TypeError, "x must have dtype float32")]:
        with pytest.raises(exc, match=match):
            s.steps(bad)
        np.testing.assert_array_equal(s.h, h0)
        np.testing.assert_array_equal(s.c, c0)


def test_accepted_layouts_and_read_only_inputs():
    """Read-only and ndarray-subclass steps, any strides for chunks; nothing is modified."""
    params, x, h0, c0 = _problem(4, 6, 2, 2, 3, F32, True)
    expected = fastlstm.forward(x, params, h0, c0).y
    s = Stepper(params, 3, h0, c0)
    xr = x.copy()
    xr.setflags(write=False)
    class Sub(np.ndarray):
        pass

    ys = [s.step(xr[0]), s.step(xr[1].view(Sub))]
    ys += list(s.steps(np.asfortranarray(xr[2:4])))
    wide = np.zeros(x.shape[:2] + (2 * x.shape[2],), F32)
    wide[..., ::2] = x
    wide.setflags(write=False)
    ys += list(s.steps(wide[4:, :, ::2]))
    np.testing.assert_array_equal(xr, x)
    assert_close(np.stack(ys), expected, F32, "forward", "mixed layouts")


def test_constructor_errors():
    p = LSTMParams.init(3, 4, 2, proj_size=2, seed=0)
    with pytest.raises(TypeError, match="params must be an LSTMParams"):
        Stepper(p.state_dict())
    with pytest.raises(ValueError, match="unidirectional"):
        Stepper(LSTMParams.init(3, 4, bidirectional=True, seed=0))
    for bs, exc in [(0, ValueError), (-1, ValueError), (1.0, TypeError), (True, TypeError)]:
        with pytest.raises(exc, match="batch_size"):
            Stepper(p, bs)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        Stepper(p, device="gpu")
    h0, c0 = np.zeros((2, 3, 2), F32), np.zeros((2, 3, 4), F32)
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 3, 2\)"):
        Stepper(p, 3, np.zeros((2, 3, 4), F32), c0)
    with pytest.raises(ValueError, match=r"c0 must have shape \(2, 3, 4\)"):
        Stepper(p, 3, h0, np.zeros((2, 3, 2), F32))
    with pytest.raises(ValueError, match="c0 was given without h0"):
        Stepper(p, 3, c0=c0)
    s = Stepper(p, 3, h0 + 1.0, c0 + 1.0)
    with pytest.raises(ValueError, match="h0 must have shape"):
        s.reset(np.zeros((1, 3, 2), F32))
    with pytest.raises(ValueError, match="c0 was given without h0"):
        s.reset(c0=c0)
    np.testing.assert_array_equal(s.h, 1.0)  # a failed reset changes nothing
    np.testing.assert_array_equal(s.c, 1.0)
    assert "Stepper(input_size=3, hidden_size=4, num_layers=2, proj_size=2" in repr(s)


def test_in_place_parameter_updates_are_picked_up():
    params, x, h0, c0 = _problem(4, 6, 2, 3, 2, F64, True)
    s = Stepper(params, 2, h0, c0)
    other = Stepper(params, 2, h0, c0)  # shares the params (and their packed weights)
    mid = 3
    y1 = np.stack([s.step(xt) for xt in x[:mid]])
    other.steps(x[:mid])
    assert_close(y1, _forward(x[:mid], params, h0, c0).y, F64, "forward", "before")
    h_mid, c_mid = s.h, s.c
    rng = np.random.default_rng(1)
    grads = {k: rng.standard_normal(v.shape) for k, v in params.state_dict().items()}
    version = params.version
    params.update_(grads, lr=0.1)
    assert params.version == version + 1
    y2 = np.stack([s.step(xt) for xt in x[mid:]])
    y2_chunk = other.steps(x[mid:])
    new = _forward(x[mid:], params, h_mid, c_mid)
    assert_close(y2, new.y, F64, "forward", "after update_")
    assert_close(y2_chunk, new.y, F64, "forward", "after update_, chunk")
    stale = _forward(x[:mid], params, h0, c0).y  # the update changed the results
    assert not np.allclose(y1, stale)
    params.copy_({"weight_hh_l0": np.zeros_like(params["weight_hh_l0"])})
    y3 = s.step(x[0], out=np.empty((2, 3)))  # the checked path re-packs too
    assert_close(y3, _forward(x[:1], params, new.h, new.c).y[0], F64, "forward",
                 "after copy_")
