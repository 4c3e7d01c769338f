"""The whole CUDA backend through the public API (``fastlstm.forward(..., device="cuda")`` and
``fastlstm.backward``) against the NumPy reference, both recurrence paths, host and device
inputs, and the error paths. Tiny shapes (the simulator is slow)."""
from __future__ import annotations

import numpy as np
import pytest

import fastlstm
from fastlstm import LSTMParams, layout, reference
from fastlstm.testing import assert_close

F32 = np.float32


def _problem(seed, T, B, I, H, L=1, D=1, P=0, bias=True, lengths=None, state=True):
    rng = np.random.default_rng(seed)
    params = LSTMParams.init(I, H, L, bidirectional=D == 2, proj_size=P, bias=bias, seed=seed,
                             dtype=F32)
    Po = params.output_size
    x = rng.standard_normal((T, B, I)).astype(F32)
    h0 = rng.standard_normal((L * D, B, Po)).astype(F32) if state else None
    c0 = rng.standard_normal((L * D, B, H)).astype(F32) if state else None
    lens = None if lengths is None else np.asarray(lengths, np.int64)
    dy = rng.standard_normal((T, B, D * Po)).astype(F32)
    dh = rng.standard_normal((L * D, B, Po)).astype(F32)
    dc = rng.standard_normal((L * D, B, H)).astype(F32)
    return params, x, h0, c0, lens, dy, dh, dc


def _reference(params, x, h0, c0, lens, dy, dh, dc, masks=None):
    T, B, _ = x.shape
    L, D, H, Po = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    f = lambda a: a.astype(np.float64)  # noqa: E731
    p64 = params.astype(np.float64)
    h0 = np.zeros((L * D, B, Po)) if h0 is None else f(h0)
    c0 = np.zeros((L * D, B, H)) if c0 is None else f(c0)
    lens = np.full(B, T, np.int64) if lens is None else lens
    y, h, c, st, _ = reference.lstm_forward(f(x), p64, h0, c0, lens, masks, True)
    dx, dh0, dc0, dp = reference.lstm_backward(st, f(dy), f(dh), f(dc))
    return dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, **{"d_" + k: v for k, v in dp.items()})


def _check(res, grads, ref, what):
    for k, v in (("y", res.y), ("h", res.h), ("c", res.c)):
        assert_close(v, ref[k], F32, "forward", f"{what} {k}")
    for k, v in (("dx", grads.dx), ("dh0", grads.dh0), ("dc0", grads.dc0)):
        assert_close(v, ref[k], F32, "grad", f"{what} {k}")
    names = [k[2:] for k in ref if k.startswith("d_")]
    assert list(grads.dparams) == names, "dparams must carry PyTorch's names in its order"
    for name in names:
        assert isinstance(grads.dparams[name], np.ndarray)
        assert_close(grads.dparams[name], ref["d_" + name], F32, "grad", f"{what} {name}")


CONFIGS = {  # seed, T, B, I, H, L, D, P, bias, lengths
    "lengths": (1, 4, 3, 5, 6, 1, 1, 0, True, [4, 2, 1]),
    "2layer-bi-proj-lengths": (2, 3, 3, 4, 5, 2, 2, 3, True, [3, 1, 2]),
    "bi-nobias-lengths": (3, 4, 2, 3, 4, 1, 2, 0, False, [2, 4]),
    "proj-zerostate": (4, 3, 2, 4, 6, 1, 1, 2, True, None),
}
RUNS = [(name, "multi") for name in CONFIGS] + [
    ("2layer-bi-proj-lengths", "persistent"), ("bi-nobias-lengths", "persistent")]


@pytest.mark.parametrize("name, path", RUNS, ids=[f"{n}-{p}" for n, p in RUNS])
def test_host_inputs_match_reference(name, path, cuda_options):
    seed, T, B, I, H, L, D, P, bias, lengths = CONFIGS[name]
    cuda_options(recurrence=path)
    params, x, h0, c0, lens, dy, dh, dc = _problem(seed, T, B, I, H, L, D, P, bias, lengths,
                                                   state=name != "proj-zerostate")
    ins = [a for a in (x, h0, c0, lens, dy, dh, dc) if a is not None]
    before = [a.copy() for a in ins]
    res = fastlstm.forward(x, params, h0, c0, lengths=lens, training=True, device="cuda")
    assert res.paths == (path,) * L
    assert isinstance(res.y, np.ndarray) and res.y.dtype == F32
    grads = fastlstm.backward(res.cache, dy, dh, dc)
    assert isinstance(grads.dx, np.ndarray)
    _check(res, grads, _reference(params, x, h0, c0, lens, dy, dh, dc), f"{name}/{path}")
    if lens is not None:
        pad = np.arange(T)[:, None] >= lens[None, :]
        assert np.all(res.y[pad] == 0.0), "outputs past a sequence's end must be exactly 0"
    for a, b in zip(ins, before):
        np.testing.assert_array_equal(a, b, err_msg="an input was modified")
    if name == "lengths":  # the cache is reusable: a second backward gives the same gradients
        again = fastlstm.backward(res.cache, dy, dh, dc)
        np.testing.assert_array_equal(again.dx, grads.dx)


def test_inference_matches_training_forward_and_picks_persistent(cuda_options, simulating):
    params, x, h0, c0, lens, *_ = _problem(5, 3, 2, 4, 5, 1, 2, 0, True, [3, 2])
    cuda_options(recurrence="auto")
    inf = fastlstm.forward(x, params, h0, c0, lengths=lens, device="cuda")
    assert inf.cache is None
    if simulating:  # the simulator can always run the one-block persistent grid
        assert inf.paths == ("persistent",)
    tr = fastlstm.forward(x, params, h0, c0, lengths=lens, training=True, device="cuda")
    assert tr.paths == ("multi",)  # auto: training uses the multi-launch path
    ref = _reference(params, x, h0, c0, lens, *_)
    for r in (inf, tr):
        assert_close(r.y, ref["y"], F32, "forward", "y")
        assert_close(r.h, ref["h"], F32, "forward", "h")
        assert_close(r.c, ref["c"], F32, "forward", "c")


@pytest.mark.parametrize("path", ["multi", "persistent"])
def test_device_arrays_in_device_arrays_out(path, cuda_options):
    """numba device arrays in (batch_first x, h0, c0, lengths) -> device arrays out, zero host copies of x."""
    from numba import cuda
    cuda_options(recurrence=path)
    params, x, h0, c0, lens, dy, dh, dc = _problem(6, 3, 2, 4, 4, 1, 2, 0, True, [2, 3])
    x_bf = np.ascontiguousarray(x.transpose(1, 0, 2))
    dy_bf = np.ascontiguousarray(dy.transpose(1, 0, 2))
    dev = [cuda.to_device(a) for a in (x_bf, h0, c0, lens, dy_bf, dh, dc)]
    res = fastlstm.forward(dev[0], params, dev[1], dev[2], lengths=dev[3], batch_first=True,
                           training=True, device="cuda")
    for a in (res.y, res.h, res.c):
        assert not isinstance(a, np.ndarray) and hasattr(a, "copy_to_host")
    assert tuple(res.y.shape) == (2, 3, 8)
    grads = fastlstm.backward(res.cache, dev[4], dev[5], dev[6])
    for a in (grads.dx, grads.dh0, grads.dc0):
        assert not isinstance(a, np.ndarray) and hasattr(a, "copy_to_host")
    ref = _reference(params, x, h0, c0, lens, dy, dh, dc)
    host = lambda a: a.copy_to_host()  # noqa: E731
    assert_close(host(res.y), ref["y"].transpose(1, 0, 2), F32, "forward", "y")
    assert_close(host(res.h), ref["h"], F32, "forward", "h")
    assert_close(host(res.c), ref["c"], F32, "forward", "c")
    assert_close(host(grads.dx), ref["dx"].transpose(1, 0, 2), F32, "grad", "dx")
    assert_close(host(grads.dh0), ref["dh0"], F32, "grad", "dh0")
    assert_close(host(grads.dc0), ref["dc0"], F32, "grad", "dc0")
    for name, g in grads.dparams.items():
        assert_close(g, ref["d_" + name], F32, "grad", name)
    for d, a in zip(dev, (x_bf, h0, c0, lens, dy_bf, dh, dc)):
        np.testing.assert_array_equal(d.copy_to_host(), a, err_msg="a device input was modified")


@pytest.mark.parametrize("on_device", [False, True], ids=["host-x", "device-x"])
def test_nan_in_padding_is_ignored(on_device, cuda_options):
    """Values past each sequence's length (NaN here) take no part: results match the
    reference on the same x with zeros there, and the caller's x keeps its NaN."""
    from numba import cuda
    cuda_options(recurrence="multi")
    params, x, h0, c0, lens, dy, dh, dc = _problem(1, 4, 3, 5, 6, 1, 1, 0, True, [4, 2, 1])
    dirty = x.copy()
    for b, n in enumerate(lens):
        x[n:, b] = 0.0
        dirty[n:, b] = np.nan
    xin = cuda.to_device(dirty) if on_device else dirty
    res = fastlstm.forward(xin, params, h0, c0, lengths=lens, training=True, device="cuda")
    grads = fastlstm.backward(res.cache, dy, dh, dc)
    host = lambda a: a if isinstance(a, np.ndarray) else a.copy_to_host()  # noqa: E731
    back = host(xin)
    assert np.isnan(back).sum() == np.isnan(dirty).sum() > 0  # the caller's x untouched
    ref = _reference(params, x, h0, c0, lens, dy, dh, dc)
    res = layout.ForwardResult(host(res.y), host(res.h), host(res.c), None)
    grads = layout.BackwardResult(host(grads.dx), host(grads.dh0), host(grads.dc0), grads.dparams)
    _check(res, grads, ref, "nan padding")


def test_unbatched_device_input_float64_x(cuda_options):
    """Unbatched (T, I) device x of another float dtype: converted on the device."""
    from numba import cuda
    cuda_options(recurrence="multi")
    params, x, h0, c0, _, dy, dh, dc = _problem(7, 3, 1, 3, 4, 1, 1, 0, True, None)
    x64 = x[:, 0, :].astype(np.float64)
    res = fastlstm.forward(cuda.to_device(x64), params, cuda.to_device(h0[:, 0]), c0[:, 0],
                           training=True, device="cuda")
    assert tuple(res.y.shape) == (3, 4) and tuple(res.h.shape) == (1, 4)
    grads = fastlstm.backward(res.cache, cuda.to_device(dy[:, 0]), dh[:, 0], cuda.to_device(dc[:, 0]))
    assert tuple(grads.dx.shape) == (3, 3)
    ref = _reference(params, x, h0, c0, None, dy, dh, dc)
    assert_close(res.y.copy_to_host(), ref["y"][:, 0], F32, "forward", "y")
    assert_close(res.h.copy_to_host(), ref["h"][:, 0], F32, "forward", "h")
    assert_close(grads.dx.copy_to_host(), ref["dx"][:, 0], F32, "grad", "dx")
    assert_close(grads.dc0.copy_to_host(), ref["dc0"][:, 0], F32, "grad", "dc0")


def test_dropout_masks_match_cpu_backend(cuda_options):
    cuda_options(recurrence="multi")
    params, x, h0, c0, lens, dy, dh, dc = _problem(8, 3, 2, 3, 4, 2, 1, 0, True, [3, 2])
    masks = layout.dropout_masks(params.astype(np.float64), 3, 2, 0.5, 11)
    assert masks is not None and any(np.any(m == 0) for m in masks)
    res = fastlstm.forward(x, params, h0, c0, lengths=lens, training=True, dropout=0.5, seed=11,
                           device="cuda")
    grads = fastlstm.backward(res.cache, dy, dh, dc)
    _check(res, grads, _reference(params, x, h0, c0, lens, dy, dh, dc, masks=masks), "dropout")


def test_backend_contract_functions(cuda_options):
    """``lstm_forward`` / ``lstm_backward`` on normalised device arrays (the backend contract),
    and the training state flattened to arrays and ints and rebuilt in between."""
    from numba import cuda

    from fastlstm.backends import cuda as backend
    from fastlstm.backends.state import TrainingState
    cuda_options(recurrence="multi")
    params, x, h0, c0, lens, dy, dh, dc = _problem(9, 3, 2, 3, 4, 1, 1, 0, True, [3, 1])
    d = lambda a: cuda.to_device(np.ascontiguousarray(a, dtype=F32))  # noqa: E731
    y, h, c, state, paths = backend.lstm_forward(d(x), params, d(h0), d(c0),
                                                 cuda.to_device(np.asarray(lens, np.int64)),
                                                 None, True)
    assert paths == ("multi",)
    arrays, ints = state.flatten()
    state = TrainingState.unflatten(arrays, ints, params)
    dx, dh0, dc0, dp = backend.lstm_backward(state, d(dy), d(dh), d(dc))
    y, h, c, dx, dh0, dc0 = (a.copy_to_host() for a in (y, h, c, dx, dh0, dc0))
    ref = _reference(params, x, h0, c0, lens, dy, dh, dc)
    for name, a in (("y", y), ("h", h), ("c", c)):
        assert_close(a, ref[name], F32, "forward", name)
    for name, a in (("dx", dx), ("dh0", dh0), ("dc0", dc0)):
        assert_close(a, ref[name], F32, "grad", name)
    for name, g in dp.items():
        assert_close(g, ref["d_" + name], F32, "grad", name)


# ---------------------------------------------------------------------------- errors
def test_float64_params_are_refused():
    from numba import cuda
    p64 = LSTMParams.init(3, 4, dtype=np.float64, seed=0)
    x = np.ones((2, 1, 3), F32)
    with pytest.raises(TypeError, match=r"float32.*astype\(np.float32\)"):
        fastlstm.forward(x, p64, device="cuda")
    with pytest.raises(TypeError, match="float32"):
        fastlstm.forward(cuda.to_device(x), p64, device="cuda")


def _gpu_call(**kw):
    from numba import cuda
    params = LSTMParams.init(3, 4, seed=0)
    args = dict(x=np.ones((2, 2, 3), F32), h0=None, c0=None, lengths=None, training=False)
    args.update(kw)
    dev = lambda a: cuda.to_device(a) if isinstance(a, np.ndarray) else a  # noqa: E731
    return fastlstm.forward(dev(args["x"]), params, dev(args["h0"]), dev(args["c0"]),
                            lengths=dev(args["lengths"]), training=args["training"], device="cuda")


@pytest.mark.parametrize("kw, exc, match", [
    (dict(x=np.ones((2, 2, 2, 3), F32)), ValueError, "2-D .* or 3-D"),
    (dict(x=np.ones((2, 2, 5), F32)), ValueError, "params.input_size is 3"),
    (dict(x=np.ones((0, 2, 3), F32)), ValueError, "at least one step"),
    (dict(x=np.ones((2, 2, 3), np.int32)), TypeError, "floating-point"),
    (dict(h0=np.ones((1, 3, 4), F32)), ValueError, r"h0 must have shape \(1, 2, 4\)"),
    (dict(h0=np.ones((1, 2, 4), F32), c0=np.ones((2, 2, 4), F32)), ValueError, "c0 must have shape"),
    (dict(c0=np.ones((1, 2, 4), F32)), ValueError, "c0 was given without h0"),
    (dict(lengths=np.array([1, 3])), ValueError, r"lengths must lie in 1\.\.2"),
    (dict(lengths=np.array([1, 2, 2])), ValueError, r"lengths must have shape \(2,\)"),
    (dict(lengths=np.array([1.0, 2.0])), TypeError, "integers"),
    (dict(training="yes"), TypeError, "training must be a bool"),
])
def test_gpu_input_errors(kw, exc, match):
    with pytest.raises(exc, match=match):
        _gpu_call(**kw)


def test_backward_gradient_errors():
    from numba import cuda
    params = LSTMParams.init(3, 4, seed=0)
    x = cuda.to_device(np.random.default_rng(0).standard_normal((2, 2, 3)).astype(F32))
    res = fastlstm.forward(x, params, training=True, device="cuda")
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 2, 4\)"):
        fastlstm.backward(res.cache, cuda.to_device(np.ones((2, 2, 5), F32)))
    with pytest.raises(ValueError, match="dh must have shape"):
        fastlstm.backward(res.cache, dh=np.ones((1, 2, 5), F32))
    with pytest.raises(TypeError, match="floating-point"):
        fastlstm.backward(res.cache, dc=cuda.to_device(np.ones((1, 2, 4), np.int64)))
    inf = fastlstm.forward(x, params, device="cuda")
    with pytest.raises(TypeError, match="training=True"):
        fastlstm.backward(inf.cache)
