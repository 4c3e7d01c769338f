"""Small-batch inference on two cores (``kernels/cpu/duo.py``): against the reference and the
one-core path on odd sizes, with the partner present, absent, taken by another call, with 1,
2 and 3 threads and under concurrent callers."""
import time

import numpy as np
import pytest

import fastlstm
from fastlstm.kernels.cpu import duo

from helpers import assert_unchanged, run_in_threads, snapshot

#: Force the two-core path on small problems (the defaults keep it for H >= 128).
FORCE = dict(duo_min_hidden=0, duo_min_steps=1, duo_max_bytes=1 << 30,
             stepper_kernel_max_rows=0)
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def _problem(T, B, I, H, L, dtype, seed):
    rng = np.random.default_rng(seed)
    params = fastlstm.LSTMParams.init(I, H, L, dtype=dtype, seed=seed)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((L, B, H)).astype(dtype)
    c0 = rng.standard_normal((L, B, H)).astype(dtype)
    return params, x, h0, c0


def _check(res, ref, dtype):
    for got, want in ((res.y, ref.y), (res.h, ref.h), (res.c, ref.c)):
        np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("T,B,I,H,L", [(70, 1, 5, 33, 1), (40, 3, 16, 100, 2), (30, 4, 7, 130, 1),
                                       (25, 2, 9, 8, 1)])
def test_two_core_path_matches_reference_and_one_core(T, B, I, H, L, dtype):
    params, x, h0, c0 = _problem(T, B, I, H, L, dtype, seed=T + H)
    before = snapshot(x, h0, c0)
    ref = fastlstm.forward(x, params, h0, c0, device="reference")
    with fastlstm.config.options("cpu", **FORCE):
        res = fastlstm.forward(x, params, h0, c0)
    assert res.paths == ("duo",) * L
    _check(res, ref, dtype)
    with fastlstm.config.options("cpu", duo_max_rows=0):
        one = fastlstm.forward(x, params, h0, c0)
    assert "duo" not in one.paths
    _check(res, one, dtype)
    assert_unchanged(before, x, h0, c0)


def test_partner_takes_its_half():
    """On an idle second core the partner computes (most) halves 1 of a long sequence."""
    params, x, h0, c0 = _problem(400, 1, 16, 128, 1, np.float32, seed=3)
    shares = []
    # calls for up to 5 s: a partner that an earlier call found busy (a loaded machine, or a
    # first call compiling the kernels for a new dtype on a cold cache) stays backed off for
    # up to 1 s, and calls during that time run alone by design
    deadline = time.monotonic() + 5.0
    with fastlstm.config.options("cpu", **FORCE):
        while True:
            res = fastlstm.forward(x, params, h0, c0)
            shares.append(duo.partner(1).last_share)
            if shares[-1] > 0.5 or (len(shares) >= 20 and time.monotonic() > deadline):
                break
    assert max(shares) > 0, shares  # the partner never joined in 5 s of calls
    _check(res, fastlstm.forward(x, params, h0, c0, device="reference"), np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_calling_thread_alone_does_every_step(dtype):
    """No partner at all (job never joined): the calling thread claims every half 1 itself."""
    T, B, I, H = 23, 3, 6, 40
    params, x, h0, c0 = _problem(T, B, I, H, 1, dtype, seed=5)
    ctrl = np.zeros(duo.CTRL_SIZE, np.int64)
    ctrl[duo.JOIN] = 4 * 7
    y, h, c = _kernel_call(params, x, h0, c0, lambda x2, w, buf, H0:
                           duo.duo_forward(0, 7, x2, w, buf, H0, ctrl))
    assert ctrl[duo.JOIN] == 4 * 7 + 2 and ctrl[duo.P0] == ctrl[duo.P1] == T
    assert ctrl[duo.XG1] == 2
    ref = fastlstm.forward(x, params, h0, c0, device="reference")
    np.testing.assert_allclose(y, ref.y, **TOL[dtype])
    np.testing.assert_allclose(h, ref.h[0], **TOL[dtype])
    np.testing.assert_allclose(c, ref.c[0], **TOL[dtype])


def _kernel_call(params, x, h0, c0, call):
    """``call(x2, w, buf, H0)`` on fresh buffers for layer 0; (y, h_n, c_n)."""
    from fastlstm.backends import cpu_duo
    from fastlstm.kernels.cpu.smallgemm import aligned_empty
    T, B, I = x.shape
    H, dt = params.hidden_size, params.dtype
    d = cpu_duo.weights(params, 0, B)
    hbuf = aligned_empty((2, B, H), dt)
    hbuf[0] = h0[0]
    c = c0[0].copy()
    y = np.empty((T, B, H), dt)
    e3 = np.empty((0, 0, 0), dt)
    buf = (np.empty((T * B, 4 * d.H0), dt), np.empty((T * B, 4 * (H - d.H0)), dt), hbuf, c, y,
           e3, e3)
    call(x.reshape(T * B, I), d.w, buf, d.H0)
    return y, hbuf[T % 2].copy(), c


def test_partner_taken_same_results_on_one_core():
    """While another call holds the partner, a call does every half itself: the same results,
    bitwise (the arithmetic does not depend on who does which half)."""
    params, x, h0, c0 = _problem(30, 2, 8, 48, 1, np.float64, seed=6)
    p = duo.partner(1)
    with fastlstm.config.options("cpu", **FORCE):
        both = fastlstm.forward(x, params, h0, c0)
        assert p._busy.acquire()
        try:
            alone = fastlstm.forward(x, params, h0, c0)
        finally:
            p._busy.release()
    assert alone.paths == both.paths == ("duo",)
    for a, b in ((alone.y, both.y), (alone.h, both.h), (alone.c, both.c)):
        np.testing.assert_array_equal(a, b)
    _check(alone, fastlstm.forward(x, params, h0, c0, device="reference"), np.float64)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts(threads):
    """One thread: never two cores; two or three: the two-core path (one partner)."""
    params, x, h0, c0 = _problem(30, 2, 8, 40, 1, np.float32, seed=7)
    with fastlstm.config.options("cpu", threads=threads, **FORCE):
        res = fastlstm.forward(x, params, h0, c0)
    assert res.paths == (("serial",) if threads == 1 else ("duo",))
    _check(res, fastlstm.forward(x, params, h0, c0, device="reference"), np.float32)


def test_concurrent_callers():
    """Four threads at once on two params: every result right, whichever path each took."""
    problems = [_problem(60, b, 12, 64, 1, np.float32, seed=10 + b) for b in (1, 3)]
    refs = [fastlstm.forward(x, p, h0, c0, device="reference") for p, x, h0, c0 in problems]
    paths = []

    def work(k):
        with fastlstm.config.options("cpu", **FORCE):
            for i in range(15):
                p, x, h0, c0 = problems[(k + i) % 2]
                res = fastlstm.forward(x, p, h0, c0)
                paths.append(res.paths[0])
                _check(res, refs[(k + i) % 2], np.float32)

    errors, _ = run_in_threads(work, 4)
    assert not errors, errors[0]
    assert set(paths) <= {"duo", "serial"} and "duo" in paths


def test_backs_off_when_the_partner_does_not_come(monkeypatch):
    """A job the partner never joined (here: it is told to do nothing) is done by the calling
    thread alone, right; the partner then counts as busy for a while and the next job is not
    posted to it."""
    real = duo.duo_forward
    monkeypatch.setattr(duo, "duo_forward", lambda part, *a: real(part, *a) if part == 0 else None)
    T, B, I, H = 40, 2, 6, 48
    params, x, h0, c0 = _problem(T, B, I, H, 1, np.float32, seed=8)
    p = duo.Partner(spins=0)
    p.JOIN_WITHIN = 0.0  # any job it has not joined counts
    assert p.usable()
    asked = []
    y, h, c = _kernel_call(params, x, h0, c0, lambda *a: asked.append(p.run(*a)))
    assert asked == [True] and p.last_share == 0 and not p.usable()
    ref = fastlstm.forward(x, params, h0, c0, device="reference")
    np.testing.assert_allclose(y, ref.y, **TOL[np.float32])
    np.testing.assert_allclose(c, ref.c[0], **TOL[np.float32])
    # backing off, it does the next job on the calling thread without asking the partner
    seq = p._seq
    y2, h2, c2 = _kernel_call(params, x, h0, c0, lambda *a: asked.append(p.run(*a)))
    assert asked == [True, False] and p._seq == seq
    np.testing.assert_array_equal(y2, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_training_on_two_cores_saves_what_backward_needs(dtype):
    """Training through the two-core path: its saved gates and cells give the reference's
    gradients; the same results bitwise whether the partner thread, a framework's team (run
    in order here) or nobody took half 1."""
    from fastlstm.kernels.cpu.parallel import tasks_on
    T, B, I, H = 30, 2, 7, 20
    params, x, h0, c0 = _problem(T, B, I, H, 2, dtype, seed=11)
    dy = np.random.default_rng(12).standard_normal((T, B, H)).astype(dtype)
    before = snapshot(x, h0, c0, dy)

    def run():
        res = fastlstm.forward(x, params, h0, c0, training=True)
        g = fastlstm.backward(res.cache, dy)
        return res, [res.y, res.h, res.c, g.dx, g.dh0, g.dc0, *g.dparams.values()]

    with fastlstm.config.options("cpu", threads=2, **FORCE):
        res, got = run()
        assert res.paths == ("duo", "duo")
        p = duo.partner(1)
        assert p._busy.acquire()
        try:
            _, alone = run()
        finally:
            p._busy.release()
        with tasks_on(lambda fn, tasks: [fn(*t) for t in tasks]):
            _, team = run()
    for a, b, c in zip(got, alone, team):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    ref = fastlstm.forward(x, params, h0, c0, training=True, device="reference")
    ref_g = fastlstm.backward(ref.cache, dy)
    want = [ref.y, ref.h, ref.c, ref_g.dx, ref_g.dh0, ref_g.dc0, *ref_g.dparams.values()]
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **tol)
    assert_unchanged(before, x, h0, c0, dy)


def test_new_weights_refill_the_halves_in_place():
    """After an in-place update the halves' layouts are the same arrays, holding the new
    weights: the results follow the reference for them."""
    from fastlstm.backends import cpu_duo
    T, B, I, H = 25, 1, 6, 40
    params, x, h0, c0 = _problem(T, B, I, H, 1, np.float64, seed=13)
    rng = np.random.default_rng(14)
    with fastlstm.config.options("cpu", threads=2, **FORCE):
        fastlstm.forward(x, params, h0, c0)
        first = cpu_duo.weights(params, 0, B)
        for _ in range(2):
            params.update_({k: rng.standard_normal(v.shape) for k, v in
                            params.state_dict().items()}, 0.1)
            res = fastlstm.forward(x, params, h0, c0)
            assert res.paths == ("duo",)
            _check(res, fastlstm.forward(x, params, h0, c0, device="reference"), np.float64)
        again = cpu_duo.weights(params, 0, B, first)
        assert all(a is b for a, b in zip(again.w, first.w))  # refilled where they were
        fresh = cpu_duo.weights(params, 0, B)
        for a, b in zip(again.w, fresh.w):
            np.testing.assert_array_equal(a, b)


def test_which_layers_take_two_cores():
    """duo_min_hidden units per sequence; in training two sequences or more."""
    from fastlstm.backends import cpu_duo
    cfg = fastlstm.config.CPUConfig(threads=2)
    one, two = np.full(1, 50, np.int64), np.full(2, 50, np.int64)
    params = fastlstm.LSTMParams.init(8, 128)
    assert cpu_duo.eligible(params, 50, 1, 8, one, False, cfg)
    assert not cpu_duo.eligible(params, 50, 2, 8, two, False, cfg)
    assert not cpu_duo.eligible(params, 50, 1, 8, one, True, cfg)
    params = fastlstm.LSTMParams.init(8, 256)
    assert cpu_duo.eligible(params, 50, 2, 8, two, False, cfg)
    assert cpu_duo.eligible(params, 50, 2, 8, two, True, cfg)
    assert not cpu_duo.eligible(params, 50, 1, 8, one, True, cfg)
    assert not cpu_duo.eligible(params, 50, 2, 8, np.array([50, 49]), False, cfg)
