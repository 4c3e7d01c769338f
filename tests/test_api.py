"""The public API: parameters, the LSTM module, layouts, dropout, determinism, every error path."""
import contextlib
import threading

import numpy as np
import pytest

import fastlstm
from fastlstm import LSTM, LSTMParams
from fastlstm.testing import assert_close

from helpers import Config, assert_unchanged, compare, make_problem, run, snapshot, torch


# ---------------------------------------------------------------------------- LSTMParams
def test_init_matches_torch_names_shapes_and_distribution():
    p = LSTMParams.init(5, 16, 2, bidirectional=True, proj_size=4, dtype=np.float64, seed=0)
    assert (p.input_size, p.hidden_size, p.num_layers, p.bidirectional, p.proj_size, p.bias) == \
        (5, 16, 2, True, 4, True)
    assert p.dtype == np.float64
    names = list(p.keys())
    assert names[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0"]
    assert p["weight_ih_l1_reverse"].shape == (64, 8)
    assert p["weight_hh_l0"].shape == (64, 4)
    assert p["weight_hr_l1"].shape == (4, 16)
    allv = np.concatenate([a.ravel() for a in p.state_dict().values()])
    k = 1 / np.sqrt(16)
    assert allv.min() >= -k and allv.max() <= k and allv.std() > k / 3
    if torch is not None:
        m = torch.nn.LSTM(5, 16, 2, bidirectional=True, proj_size=4)
        assert list(m.state_dict()) == names
        assert all(tuple(v.shape) == p[k2].shape for k2, v in m.state_dict().items())


def test_init_seed_is_reproducible_and_params_are_read_only():
    a = LSTMParams.init(3, 4, seed=1)
    b = LSTMParams.init(3, 4, seed=1)
    c = LSTMParams.init(3, 4, seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["weight_hh_l0"], c["weight_hh_l0"])
    with pytest.raises(ValueError):
        a["weight_hh_l0"][0, 0] = 1.0
    sd = a.state_dict()
    sd["weight_hh_l0"][0, 0] = 123.0  # a copy: the params are unchanged
    assert a["weight_hh_l0"][0, 0] != 123.0


def test_state_dict_round_trip_and_save_load(tmp_path):
    p = LSTMParams.init(3, 6, 2, bias=False, bidirectional=True, proj_size=2, dtype=np.float64, seed=3)
    q = LSTMParams.from_state_dict(p.state_dict())
    assert q.config() == p.config()
    path = tmp_path / "w.npz"
    p.save(path)
    r = LSTMParams.load(path)
    assert r.config() == p.config()
    assert all(np.array_equal(p[k], r[k]) for k in p)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a file written by LSTMParams.save"):
        LSTMParams.load(tmp_path / "other.npz")


def test_from_state_dict_errors():
    sd = LSTMParams.init(3, 4, 2, seed=0).state_dict()
    with pytest.raises(KeyError, match="missing keys"):
        LSTMParams.from_state_dict({k: v for k, v in sd.items() if k != "bias_hh_l1"})
    with pytest.raises(KeyError, match="unexpected keys"):
        LSTMParams.from_state_dict({**sd, "weight_xx_l0": np.zeros(3)})
    with pytest.raises(ValueError, match="weight_hh_l1 must have shape"):
        LSTMParams.from_state_dict({**sd, "weight_hh_l1": np.zeros((16, 5))})
    with pytest.raises(TypeError, match="floating-point"):
        LSTMParams.from_state_dict({**sd, "bias_ih_l0": np.zeros(16, dtype=np.int64)})
    with pytest.raises(KeyError, match="not an LSTM state dict"):
        LSTMParams.from_state_dict({"foo": np.zeros(3)})
    with pytest.raises(TypeError, match="mapping"):
        LSTMParams.from_state_dict([1, 2])


@pytest.mark.parametrize("kwargs, exc", [
    (dict(input_size=0, hidden_size=4), ValueError),
    (dict(input_size=3, hidden_size=-1), ValueError),
    (dict(input_size=3.5, hidden_size=4), TypeError),
    (dict(input_size=3, hidden_size=4, num_layers=0), ValueError),
    (dict(input_size=3, hidden_size=4, proj_size=4), ValueError),
    (dict(input_size=3, hidden_size=4, dtype=np.int32), TypeError),
    (dict(input_size=3, hidden_size=4, dtype=np.float16), TypeError),
    (dict(input_size=10**6, hidden_size=10**6), MemoryError),
])
def test_init_rejects_bad_configuration(kwargs, exc):
    with pytest.raises(exc):
        LSTMParams.init(**kwargs)


# ---------------------------------------------------------------------------- forward errors
@pytest.fixture(scope="module")
def prob():
    return make_problem(Config(T=5, B=3, I=4, H=6, L=2, bidirectional=True), np.float32, seed=0)


def _fwd(p, **kw):
    args = dict(x=p.x, params=p.params, h0=p.h0, c0=p.c0, lengths=p.lengths, device="cpu")
    args.update(kw)
    return fastlstm.forward(args.pop("x"), args.pop("params"), args.pop("h0"), args.pop("c0"), **args)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(x=np.zeros((5, 3, 4, 1), np.float32)), ValueError, "2-D"),
    (dict(x=np.zeros(5, np.float32)), ValueError, "2-D"),
    (dict(x=np.zeros((5, 3, 7), np.float32)), ValueError, "input_size"),
    (dict(x=np.zeros((0, 3, 4), np.float32)), ValueError, "at least one step"),
    (dict(x=np.ones((5, 3, 4), np.int64)), TypeError, "floating-point"),
    (dict(x=np.ones((5, 3, 4), bool)), TypeError, "floating-point"),
    (dict(x=np.ones((5, 3, 4), np.complex64)), TypeError, "floating-point"),
    (dict(x="hello"), TypeError, "floating-point"),
    (dict(h0=np.zeros((4, 3, 5), np.float32)), ValueError, "h0 must have shape"),
    (dict(c0=np.zeros((2, 3, 6), np.float32)), ValueError, "c0 must have shape"),
    (dict(h0=None), ValueError, "c0 was given without h0"),
    (dict(h0=np.zeros((4, 3, 6), np.int32)), TypeError, "floating-point"),
    (dict(lengths=[5, 5]), ValueError, "lengths must have shape"),
    (dict(lengths=[5, 0, 2]), ValueError, "lengths must lie in 1..5"),
    (dict(lengths=[5, 6, 2]), ValueError, "lengths must lie in 1..5"),
    (dict(lengths=[5.0, 4.0, 2.0]), TypeError, "integers"),
    (dict(lengths=[5.5, 4.0, 2.0]), TypeError, "integer"),
    (dict(device="tpu"), ValueError, "unknown device"),
    (dict(device=None), ValueError, "unknown device"),
    (dict(params={"weight_ih_l0": 1}), TypeError, "LSTMParams"),
    (dict(dropout=1.5, training=True), ValueError, "dropout"),
    (dict(dropout=-0.1, training=True), ValueError, "dropout"),
    (dict(dropout=float("nan"), training=True), ValueError, "dropout"),
    (dict(training="yes"), TypeError, "training"),
])
def test_forward_rejects_bad_input(prob, kw, exc, match):
    with pytest.raises(exc, match=match):
        _fwd(prob, **kw)


def test_absurd_sizes_refused_before_allocating(prob):
    # A zero-stride view: a (10^6, 10^5, I) "array" that occupies 4 bytes.
    x = np.broadcast_to(np.float32(1.0), (10**6, 10**5, prob.cfg.I))
    with pytest.raises(MemoryError, match="GiB"):
        fastlstm.forward(x, prob.params, device="cpu")


def test_cuda_device_is_a_clear_error_or_runs():
    """With no usable GPU, device='cuda' names what is missing (and never a crash)."""
    reason = fastlstm.dispatch.cuda_unavailable_reason()
    if reason is None:
        import os
        why = ("the CUDA simulator is on in this process (NUMBA_ENABLE_CUDASIM=1)"
               if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else "a CUDA GPU is usable here")
        pytest.skip(f"{why}; tests/cuda/test_cuda_nogpu.py checks the error in a subprocess")
    p = LSTMParams.init(3, 4, seed=0)
    with pytest.raises(RuntimeError, match="device='cuda' is not available"):
        fastlstm.forward(np.ones((2, 1, 3), np.float32), p, device="cuda")
    assert "cuda" not in fastlstm.available_devices()


# ---------------------------------------------------------------------------- backward errors
def test_backward_errors(prob):
    inf = _fwd(prob)
    with pytest.raises(TypeError, match="training=True"):
        fastlstm.backward(inf.cache)
    with pytest.raises(TypeError, match="training=True"):
        fastlstm.backward("cache")
    tr = _fwd(prob, training=True)
    with pytest.raises(ValueError, match="dy must have shape"):
        fastlstm.backward(tr.cache, np.zeros((5, 3, 7), np.float32))
    with pytest.raises(ValueError, match="dh must have shape"):
        fastlstm.backward(tr.cache, None, np.zeros((4, 3, 7), np.float32))
    with pytest.raises(ValueError, match="dc must have shape"):
        fastlstm.backward(tr.cache, None, None, np.zeros((3, 3, 6), np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        fastlstm.backward(tr.cache, np.zeros(tr.y.shape, np.int32))


def test_backward_none_gradients_are_zero(prob):
    tr = _fwd(prob, training=True)
    g_none = fastlstm.backward(tr.cache, dy=prob.dy)
    g_zero = fastlstm.backward(tr.cache, prob.dy, np.zeros_like(prob.dh), np.zeros_like(prob.dc))
    np.testing.assert_array_equal(g_none.dx, g_zero.dx)
    for k in g_zero.dparams:
        np.testing.assert_array_equal(g_none.dparams[k], g_zero.dparams[k])
    g_all_none = fastlstm.backward(tr.cache)
    assert not np.any(g_all_none.dx) and not np.any(g_all_none.dparams["weight_ih_l0"])


def test_backward_twice_gives_the_same_result_and_cache_is_unchanged(prob):
    tr = _fwd(prob, training=True)
    a = fastlstm.backward(tr.cache, prob.dy, prob.dh, prob.dc)
    b = fastlstm.backward(tr.cache, prob.dy, prob.dh, prob.dc)
    np.testing.assert_array_equal(a.dx, b.dx)
    for k in a.dparams:
        np.testing.assert_array_equal(a.dparams[k], b.dparams[k])


def test_cache_owns_its_data(prob):
    """Mutating x, h0, c0 or the returned y after forward does not change backward."""
    p = prob
    x, h0, c0 = p.x.copy(), p.h0.copy(), p.c0.copy()
    tr = fastlstm.forward(x, p.params, h0, c0, training=True, device="cpu")
    expect = fastlstm.backward(tr.cache, p.dy, p.dh, p.dc)
    x[:] = 7.0
    h0[:] = -3.0
    c0[:] = 2.0
    tr.y[:] = 9.0
    got = fastlstm.backward(tr.cache, p.dy, p.dh, p.dc)
    np.testing.assert_array_equal(got.dx, expect.dx)
    for k in got.dparams:
        np.testing.assert_array_equal(got.dparams[k], expect.dparams[k])


# ---------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_non_contiguous_fortran_and_mixed_dtype_inputs(device):
    p = make_problem(Config(T=6, B=3, I=5, H=4, bidirectional=True, lengths=True), np.float32, seed=2)
    base = fastlstm.forward(p.x, p.params, p.h0, p.c0, lengths=p.lengths, device=device)
    variants = {
        "fortran": np.asfortranarray(p.x),
        "strided": np.repeat(p.x, 2, axis=2)[:, :, ::2],
        "float64": p.x.astype(np.float64),
        "reversed-view": p.x[::-1][::-1],
    }
    for name, x in variants.items():
        before = snapshot(x)
        r = fastlstm.forward(x, p.params, np.asfortranarray(p.h0), p.c0.astype(np.float64),
                             lengths=list(p.lengths), device=device)
        assert r.y.dtype == np.float32, name
        assert_close(r.y, base.y, np.float32, "forward", name)
        assert_close(r.h, base.h, np.float32, "forward", name)
        assert_unchanged(before, x)


def test_read_only_inputs_are_accepted(prob):
    p = prob
    arrays = [a.copy() for a in (p.x, p.h0, p.c0, p.dy, p.dh, p.dc)]
    for a in arrays:
        a.setflags(write=False)
    x, h0, c0, dy, dh, dc = arrays
    f, b = run(make_problem(p.cfg, np.float32, seed=0), "cpu")
    tr = fastlstm.forward(x, p.params, h0, c0, training=True, device="cpu")
    g = fastlstm.backward(tr.cache, dy, dh, dc)
    np.testing.assert_array_equal(tr.y, f.y)
    np.testing.assert_array_equal(g.dx, b.dx)


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_batch_first_equals_time_major(device):
    p = make_problem(Config(T=5, B=4, I=3, H=5, L=2, bidirectional=True, lengths=True), np.float64, seed=1)
    a = fastlstm.forward(p.x, p.params, p.h0, p.c0, lengths=p.lengths, training=True, device=device)
    ga = fastlstm.backward(a.cache, p.dy, p.dh, p.dc)
    xb = np.ascontiguousarray(p.x.transpose(1, 0, 2))
    b = fastlstm.forward(xb, p.params, p.h0, p.c0, lengths=p.lengths, batch_first=True,
                         training=True, device=device)
    assert b.y.shape == (4, 5, 10)
    gb = fastlstm.backward(b.cache, np.ascontiguousarray(p.dy.transpose(1, 0, 2)), p.dh, p.dc)
    np.testing.assert_allclose(b.y.transpose(1, 0, 2), a.y, rtol=0, atol=0)
    np.testing.assert_allclose(gb.dx.transpose(1, 0, 2), ga.dx, rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError, match="dy must have shape"):
        fastlstm.backward(b.cache, p.dy)  # time-major dy for a batch_first forward


def test_unbatched_equals_batch_of_one():
    p = make_problem(Config(T=5, B=1, I=3, H=5, L=2, proj=2), np.float64, seed=1)
    a = fastlstm.forward(p.x, p.params, p.h0, p.c0, training=True)
    ga = fastlstm.backward(a.cache, p.dy, p.dh, p.dc)
    u = fastlstm.forward(p.x[:, 0], p.params, p.h0[:, 0], p.c0[:, 0], training=True)
    gu = fastlstm.backward(u.cache, p.dy[:, 0], p.dh[:, 0], p.dc[:, 0])
    np.testing.assert_array_equal(u.y, a.y[:, 0])
    np.testing.assert_array_equal(u.h, a.h[:, 0])
    np.testing.assert_array_equal(gu.dx, ga.dx[:, 0])
    np.testing.assert_array_equal(gu.dh0, ga.dh0[:, 0])
    with pytest.raises(ValueError, match="h0 must have shape"):
        fastlstm.forward(p.x[:, 0], p.params, p.h0, p.c0)  # batched state for unbatched x


def test_h0_alone_means_zero_c0():
    p = make_problem(Config(T=4, B=2, I=3, H=4), np.float64, seed=1)
    a = fastlstm.forward(p.x, p.params, p.h0)
    b = fastlstm.forward(p.x, p.params, p.h0, np.zeros_like(p.c0))
    np.testing.assert_array_equal(a.y, b.y)


# ---------------------------------------------------------------------------- dropout
def test_dropout_same_mask_on_both_backends_and_seeded():
    cfg = Config(T=6, B=3, I=4, H=5, L=3, bidirectional=True, lengths=True)
    p = make_problem(cfg, np.float64, seed=6)
    f1, b1 = run(p, "cpu", dropout=0.5, seed=42)
    f2, b2 = run(p, "reference", dropout=0.5, seed=42)
    compare(f1, b1, f2, b2, np.float64, "dropout")
    f3, _ = run(p, "cpu", dropout=0.5, seed=42)
    np.testing.assert_array_equal(f1.y, f3.y)
    f4, _ = run(p, "cpu", dropout=0.5, seed=43)
    assert not np.allclose(f1.y, f4.y)
    f0, _ = run(p, "cpu")
    assert not np.allclose(f1.y, f0.y)
    # Inference ignores dropout; dropout=1 zeroes every layer's input after the first.
    inf = fastlstm.forward(p.x, p.params, p.h0, p.c0, lengths=p.lengths, dropout=0.5, seed=1)
    np.testing.assert_array_equal(inf.y, f0.y)
    # dropout=1 feeds zeros to every layer after the first: the same as running the deeper
    # layers alone on a zero input.
    p2 = make_problem(Config(T=6, B=3, I=4, H=5, L=2, bidirectional=True, lengths=True), np.float64)
    full, _ = run(p2, "cpu", dropout=1.0, seed=0)
    layer1 = {k.replace("_l1", "_l0"): v for k, v in p2.params.state_dict().items() if "_l1" in k}
    alone = fastlstm.forward(np.zeros((6, 3, 10)), LSTMParams.from_state_dict(layer1),
                             p2.h0[2:], p2.c0[2:], lengths=p2.lengths, device="cpu")
    np.testing.assert_allclose(full.y, alone.y, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(full.h[2:], alone.h, rtol=1e-13, atol=1e-15)
    assert np.any(full.y)


# ---------------------------------------------------------------------------- determinism, threads
def test_same_input_bitwise_same_output_and_thread_safety():
    p = make_problem(Config(T=30, B=5, I=8, H=16, L=2, bidirectional=True, lengths=True), np.float32, seed=5)
    f0, b0 = run(p, "cpu")
    results = [None] * 6
    errors = []

    def work(i):
        try:
            results[i] = run(p, "cpu")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for f, b in results:
        np.testing.assert_array_equal(f.y, f0.y)
        np.testing.assert_array_equal(f.h, f0.h)
        np.testing.assert_array_equal(b.dx, b0.dx)
        for k in b0.dparams:
            np.testing.assert_array_equal(b.dparams[k], b0.dparams[k])


# ---------------------------------------------------------------------------- LSTM module
def test_lstm_module_training_eval_and_backward():
    m = LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True, dtype=np.float64, seed=0)
    assert m.training
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4))
    h0 = rng.standard_normal((4, 3, 6))
    c0 = rng.standard_normal((4, 3, 6))
    y, (h, c) = m(x, (h0, c0), lengths=[5, 2, 4])
    assert y.shape == (3, 5, 12) and h.shape == (4, 3, 6)
    dy = rng.standard_normal(y.shape)
    g = m.backward(dy)
    ref = fastlstm.forward(x, m.params, h0, c0, lengths=[5, 2, 4], batch_first=True, training=True,
                           device="reference")
    gr = fastlstm.backward(ref.cache, dy)
    assert_close(y, ref.y, np.float64, "forward")
    assert_close(g.dx, gr.dx, np.float64, "grad")
    m.eval()
    y2, _ = m(x, (h0, c0), lengths=[5, 2, 4])
    np.testing.assert_array_equal(y2, y)
    with pytest.raises(RuntimeError, match="training mode"):
        m.backward(dy)
    with pytest.raises(TypeError, match="tuple"):
        m(x, h0)


def test_lstm_module_state_dict_round_trip():
    a = LSTM(3, 5, proj_size=2, seed=1)
    b = LSTM(3, 5, proj_size=2, seed=2)
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(a.eval()(x)[0], b.eval()(x)[0])
    with pytest.raises(ValueError, match="does not match"):
        LSTM(3, 6).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="unknown device"):
        LSTM(3, 5, device="gpu")
    for bad in (True, 1.5, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="dropout"):
            LSTM(3, 5, dropout=bad)
    assert "LSTM(3, 5" in repr(a)


def test_workspace_is_per_thread_and_releasable():
    from fastlstm.backends import cpu as cpu_lstm
    p = make_problem(Config(T=4, B=2, I=3, H=4), np.float32, seed=0)
    a = fastlstm.forward(p.x, p.params, device="cpu")
    cpu_lstm.release_workspace()
    b = fastlstm.forward(p.x, p.params, device="cpu")  # re-allocates after a release
    np.testing.assert_array_equal(a.y, b.y)
    seen = []
    t = threading.Thread(target=lambda: seen.append(cpu_lstm.workspace("xg", (3,), np.float32)))
    t.start()
    t.join()
    mine = cpu_lstm.workspace("xg", (3,), np.float32)
    assert not np.shares_memory(seen[0], mine)


def test_cache_owns_lengths():
    """Reusing the lengths array after a training forward does not change backward."""
    p = make_problem(Config(T=5, B=3, I=3, H=4, lengths=True), np.float64, seed=0)
    lens = np.array(p.lengths, dtype=np.int64)  # int64, C-contiguous: no conversion copy
    tr = fastlstm.forward(p.x, p.params, lengths=lens, training=True, device="cpu")
    g1 = fastlstm.backward(tr.cache, p.dy)
    lens[:] = 1
    g2 = fastlstm.backward(tr.cache, p.dy)
    np.testing.assert_array_equal(g1.dx, g2.dx)


@pytest.mark.parametrize("device,parallel", [("reference", False), ("cpu", False), ("cpu", True)],
                         ids=["reference", "cpu-serial", "cpu-parallel"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tbi", "bti"])
@pytest.mark.parametrize("layers", [1, 2])
def test_values_in_padding_are_ignored(device, parallel, batch_first, layers, request):
    """Steps past a sequence's length take no part (packed-sequence semantics): NaN and inf
    there give the same outputs and gradients as zeros, and the caller's x keeps them."""
    if parallel:
        stack = contextlib.ExitStack()
        stack.enter_context(fastlstm.config.options("cpu", parallel_min_flop=0.0, threads=2))
        request.addfinalizer(stack.close)
    p = make_problem(Config(T=6, B=8, I=5, H=7, L=layers, lengths=True), np.float64, seed=3)
    assert (p.lengths < 6).any()
    clean, dirty = p.x.copy(), p.x.copy()
    for b, n in enumerate(p.lengths):
        clean[n:, b] = 0.0
        dirty[n:, b] = np.nan
        dirty[n::2, b, 0] = np.inf
    if batch_first:
        clean, dirty = clean.transpose(1, 0, 2).copy(), dirty.transpose(1, 0, 2).copy()
    before = dirty.copy()
    res = []
    for x in (clean, dirty):
        tr = fastlstm.forward(x, p.params, p.h0, p.c0, lengths=p.lengths, training=True,
                              batch_first=batch_first, device=device)
        dy = np.ones_like(tr.y)
        res.append((tr, fastlstm.backward(tr.cache, dy, p.dh, p.dc)))
    np.testing.assert_array_equal(dirty, before)  # the caller's x untouched
    (f0, g0), (f1, g1) = res
    for a, b in [(f0.y, f1.y), (f0.h, f1.h), (f0.c, f1.c), (g0.dh0, g1.dh0), (g0.dc0, g1.dc0)]:
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(g0.dx, g1.dx)  # 0 on padded steps either way
    for k in g0.dparams:
        assert np.all(np.isfinite(g1.dparams[k])), k
        np.testing.assert_array_equal(g0.dparams[k], g1.dparams[k])


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_states_as_tensors_requiring_grad_in_training():
    p = make_problem(Config(T=4, B=2, I=3, H=4), np.float32, seed=0)
    h0 = torch.tensor(p.h0, requires_grad=True)
    c0 = torch.tensor(p.c0, requires_grad=True)
    a = fastlstm.forward(p.x, p.params, h0, c0, training=True)
    b = fastlstm.forward(p.x, p.params, p.h0, p.c0, training=True)
    np.testing.assert_array_equal(a.y, b.y)
    m = LSTM(3, 4, seed=0)
    y, _ = m(p.x, (h0, c0))  # training mode by default
    assert y.shape == (4, 2, 4)


def test_save_load_round_trip_without_suffix(tmp_path):
    p = LSTMParams.init(3, 5, proj_size=2, seed=0)
    path = tmp_path / "model"  # no ".npz": written and read under exactly this name
    p.save(path)
    q = LSTMParams.load(path)
    assert all(np.array_equal(p[k], q[k]) for k in p)
    p.save(str(tmp_path / "m.npz"))
    assert LSTMParams.load(str(tmp_path / "m.npz")).config() == p.config()


def test_malformed_projection_weight_is_a_value_error():
    sd = LSTMParams.init(3, 5, proj_size=2, seed=0).state_dict()
    for bad in (np.float32(1.0), np.zeros(2, np.float32), np.zeros((2, 4), np.float32)):
        with pytest.raises(ValueError, match="weight_hr_l0 must have shape"):
            LSTMParams.from_state_dict({**sd, "weight_hr_l0": bad})


# ---------------------------------------------------------------------------- thin inference path
def _general(x, p, h0=None, c0=None, **kw):
    """The same call on the whole-sequence path (the step kernel's row limit set to 0)."""
    with fastlstm.config.options("cpu", stepper_kernel_max_rows=0):
        res = fastlstm.forward(x, p, h0, c0, **kw)
    assert "step" not in res.paths
    return res


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T, B, L, proj, given", [(1, 1, 1, 0, "none"), (7, 3, 2, 3, "both"),
                                                   (1, 5, 2, 0, "h0"), (16, 4, 1, 2, "both")])
def test_small_inference_runs_the_step_kernel_and_matches(dtype, T, B, L, proj, given):
    rng = np.random.default_rng(T * 100 + B)
    p = LSTMParams.init(6, 8, L, proj_size=proj, dtype=dtype, seed=T + B)
    P = proj or 8
    x = rng.standard_normal((T, B, 6)).astype(dtype)
    h0 = rng.standard_normal((L, B, P)).astype(dtype) if given != "none" else None
    c0 = rng.standard_normal((L, B, 8)).astype(dtype) if given == "both" else None
    before = snapshot(x, h0, c0)
    res = fastlstm.forward(x, p, h0, c0)
    assert res.paths == ("step",) * L and res.cache is None
    assert_unchanged(before, x, h0, c0)
    ref = fastlstm.forward(x, p, h0, c0, device="reference")
    gen = _general(x, p, h0, c0)
    for got, want, other in ((res.y, ref.y, gen.y), (res.h, ref.h, gen.h), (res.c, ref.c, gen.c)):
        assert got.shape == want.shape and got.dtype == np.dtype(dtype)
        assert_close(got, want, np.dtype(dtype), "forward")
        assert_close(got, other, np.dtype(dtype), "forward")
    # the results are the caller's: a second call does not overwrite them
    y0, h0_out = res.y.copy(), res.h.copy()
    fastlstm.forward(rng.standard_normal((T, B, 6)).astype(dtype), p)
    assert np.array_equal(res.y, y0) and np.array_equal(res.h, h0_out)


def test_small_inference_batch_first_read_only_and_fallbacks():
    rng = np.random.default_rng(5)
    p = LSTMParams.init(4, 6, seed=1)
    x = rng.standard_normal((3, 1, 4)).astype(np.float32)  # (B=3, T=1, I)
    res = fastlstm.forward(x, p, batch_first=True)
    assert res.paths == ("step",) and res.y.shape == (3, 1, 6)
    assert_close(res.y, _general(x, p, batch_first=True).y, np.float32, "forward")
    x.flags.writeable = False
    assert np.array_equal(fastlstm.forward(x, p, batch_first=True).y, res.y)
    # what the step kernel does not take goes the general way, with its conversions and checks
    x2 = rng.standard_normal((4, 2, 4))
    assert fastlstm.forward(x2, p).paths == ("serial",)                       # float64 x
    assert fastlstm.forward(x2.astype(np.float32), p, lengths=[4, 2]).paths == ("serial",)
    assert fastlstm.forward(x2.astype(np.float32), p, batch_first=True).paths == ("serial",)
    pb = LSTMParams.init(4, 6, bidirectional=True, seed=1)
    assert fastlstm.forward(x2.astype(np.float32), pb).paths == ("serial",)
    with pytest.raises(ValueError, match="c0 needs h0|c0"):
        fastlstm.forward(x2.astype(np.float32), p, None, np.zeros((1, 2, 6), np.float32))
    with pytest.raises(ValueError, match="h0"):
        fastlstm.forward(x2.astype(np.float32), p, np.zeros((1, 3, 6), np.float32))
    with fastlstm.config.options("cpu", parallel_min_flop=0, threads=2, parallel_min_rows=1):
        paths = fastlstm.forward(x2.astype(np.float32), p).paths
    assert paths == (("parallel",) if fastlstm.backends.cpu.can_pin() else ("serial",))


def test_small_inference_sees_in_place_updates_and_concurrent_callers():
    rng = np.random.default_rng(9)
    p = LSTMParams.init(5, 7, 2, seed=3)
    x = rng.standard_normal((2, 2, 5)).astype(np.float32)
    first = fastlstm.forward(x, p).y
    grads = {k: rng.standard_normal(p[k].shape).astype(np.float32) for k in p.keys()}
    p.update_(grads, 0.1)
    after = fastlstm.forward(x, p)
    assert after.paths == ("step", "step") and not np.allclose(after.y, first)
    assert_close(after.y, fastlstm.forward(x, p, device="reference").y, np.float32, "forward")

    xs = [rng.standard_normal((3, 2, 5)).astype(np.float32) for _ in range(4)]
    want = [fastlstm.forward(xi, p, device="reference").y for xi in xs]
    errors = []

    def work(i):
        try:
            for _ in range(200):
                assert_close(fastlstm.forward(xs[i], p).y, want[i], np.float32, "forward")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_small_inference_buffers_of_ended_threads_are_dropped():
    p = LSTMParams.init(3, 4, seed=2)
    x = np.random.default_rng(3).standard_normal((2, 1, 3)).astype(np.float32)

    def thin_keys():
        return [k for k in p._derived if k[:2] == ("cpu", "thin")]

    for _ in range(5):  # one short-lived thread after another
        t = threading.Thread(target=fastlstm.forward, args=(x, p))
        t.start()
        t.join()
    assert len(thin_keys()) <= 1  # each new thread's buffers replace the ended one's
    fastlstm.forward(x, p)
    assert [k[3] for k in thin_keys()] == [threading.get_ident()]
