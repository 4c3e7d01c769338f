"""A serial layer on two cores (kernels/cpu/overlap.py): the forward's input projection fed
block by block ahead of the recurrence, the backward's GEMMs in chunks beside it. The results
match the reference, do not depend on which thread computed which block or chunk (bitwise),
and a call neither hangs nor loses an error when the recurrence fails."""
import numpy as np
import pytest

import fastlstm
from fastlstm import config
from fastlstm.backends import cpu_overlap
from fastlstm.kernels.cpu import duo, overlap
from fastlstm.kernels.cpu.parallel import tasks_on

from fastlstm.testing import assert_close
from helpers import (Config, assert_unchanged, compare, make_problem, run, run_in_threads,
                     snapshot)

#: Overlap at any size, on two threads.
FORCE = dict(threads=2, overlap_min_flop=0, overlap_min_rows=1, overlap_chunks=5)


def _grads(p, **knobs):
    with config.options("cpu", **knobs):
        fwd, bwd = run(p, "cpu")
    return fwd, bwd, [fwd.y, fwd.h, fwd.c, bwd.dx, bwd.dh0, bwd.dc0, *bwd.dparams.values()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", [
    Config(T=23, B=3, I=5, H=7, L=2, lengths=True),
    Config(T=17, B=2, I=4, H=6, L=1, proj=3),
    Config(T=11, B=1, I=3, H=9, L=1, bias=False, given_state=False),
], ids=["lengths-2-layers", "proj", "B1-nobias"])
def test_overlapped_layers_match_the_reference(cfg, dtype):
    p = make_problem(cfg, dtype, seed=4)
    before = snapshot(p.x, p.h0, p.c0, p.dy, p.dh, p.dc, *p.params.state_dict().values())
    forced = config.CPUConfig(**FORCE)
    edges = cpu_overlap.backward_edges(cfg.T, cfg.B, cfg.I, cfg.H, cfg.P, 1, cfg.proj > 0, forced)
    feed = cpu_overlap.forward_edges(cfg.T, cfg.B, cfg.I, cfg.H, 1, True, forced)
    assert len(edges) == len(feed) == 6  # both paths are taken (5 chunks, 5 blocks)
    fwd, bwd, got = _grads(p, **FORCE)
    assert fwd.paths == ("serial",) * cfg.L
    compare(fwd, bwd, *run(p, "reference"), dtype, "overlap")
    assert_unchanged(before, p.x, p.h0, p.c0, p.dy, p.dh, p.dc,
                     *p.params.state_dict().values())
    # the general path (no plan) runs the same chunks, bitwise
    _, _, general = _grads(p, serial_plans=False, **FORCE)
    for a, b in zip(got, general):
        np.testing.assert_array_equal(a, b)
    # and whoever computes the chunks, the sums are the same: the partner held by another
    # call (every chunk on the calling thread), and a framework's team run in order
    partner = duo.partner(config.current("cpu").duo_spins)
    assert partner._busy.acquire()
    try:
        _, _, alone = _grads(p, **FORCE)
    finally:
        partner._busy.release()
    with tasks_on(lambda fn, tasks: [fn(*t) for t in tasks]):
        _, _, team = _grads(p, **FORCE)
    for a, b, c in zip(got, alone, team):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    # inference takes the feed too (not the step kernel; through forward's thin check where
    # it applies)
    with config.options("cpu", stepper_kernel_max_rows=0, **FORCE):
        inf = fastlstm.forward(p.x, p.params, p.h0, p.c0, lengths=p.lengths)
    ref = fastlstm.forward(p.x, p.params, p.h0, p.c0, lengths=p.lengths, device="reference")
    assert inf.paths == ("serial",) * cfg.L
    for name in ("y", "h", "c"):
        assert_close(getattr(inf, name), getattr(ref, name), dtype, "forward", name)


def test_when_it_is_taken():
    cfg = config.CPUConfig(threads=2)
    assert cpu_overlap.backward_edges(200, 1, 64, 128, 128, 1, False, cfg).tolist() == \
        [0, 25, 50, 75, 100, 125, 150, 175, 200]
    assert cpu_overlap.backward_edges(200, 1, 64, 128, 128, 2, False, cfg) is None  # two directions
    assert cpu_overlap.backward_edges(200, 1, 64, 128, 128, 1, False,
                             config.CPUConfig(threads=1)) is None
    assert cpu_overlap.backward_edges(200, 1, 64, 128, 128, 1, False,
                             config.CPUConfig(threads=2, overlap_chunks=0)) is None
    assert cpu_overlap.backward_edges(20, 1, 8, 16, 16, 1, False, cfg) is None  # too small to gain
    # fewer rows than two chunks of overlap_min_rows
    assert cpu_overlap.backward_edges(31, 1, 64, 512, 512, 1, False, cfg) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K, M, N", [(1, 1, 1), (13, 37, 5), (64, 8, 200)])
def test_gemm_tn_sets_and_adds(dtype, K, M, N):
    from numba import njit
    rng = np.random.default_rng(K + M + N)
    a, b = rng.standard_normal((K, M)).astype(dtype), rng.standard_normal((K, N)).astype(dtype)
    c0 = rng.standard_normal((M, N)).astype(dtype)

    @njit
    def call(a, b, c, beta):
        overlap.gemm_tn(a, b, c, beta)

    c = c0.copy()
    call(a, b, c, 0.0)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c, a.T.astype(np.float64) @ b, **tol)
    c = c0.copy()
    call(a, b, c, 1.0)
    np.testing.assert_allclose(c, c0 + a.T.astype(np.float64) @ b, **tol)


@pytest.mark.parametrize("framework", [False, True], ids=["partner", "team"])
def test_a_failing_recurrence_raises_and_releases_the_other_thread(framework):
    """The other thread waits for the recurrence's progress: an error in it must end that
    wait (no hang) and reach the caller; the partner is free afterwards."""
    T, B, I, H, dt = 12, 2, 3, 4, np.float64
    rng = np.random.default_rng(0)
    dg, x, hp = (rng.standard_normal((T * B, n)) for n in (4 * H, I, H))
    w_ih = rng.standard_normal((4 * H, I))
    dx, dw_ih, dw_hh = np.empty((T * B, I), dt), np.empty((4 * H, I), dt), np.empty((4 * H, H), dt)
    edges = np.array([0, 4, 8, 12], np.int64)

    def fails(progress):
        raise RuntimeError("recurrence failed")

    params = fastlstm.LSTMParams.init(I, H, dtype=dt)

    def call():
        cpu_overlap.recurrence_then_grads(fails, edges, params, 0, 0, B, dg, x, hp, w_ih, dx,
                                          dw_ih, dw_hh, config.CPUConfig(threads=2))
    if framework:
        with tasks_on(lambda fn, tasks: [fn(*t) for t in tasks]), \
                pytest.raises(RuntimeError, match="recurrence failed"):
            call()
    else:
        with pytest.raises(RuntimeError, match="recurrence failed"):
            call()
        partner = duo.partner(config.current("cpu").duo_spins)
        assert partner._busy.acquire(timeout=5)
        partner._busy.release()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_recurrence_fed_block_by_block_computes_every_block(dtype):
    """The forward kernel given its input projection as a feed (nobody else computing it; the
    weights in column blocks, rows in chunks): it computes each block as it reaches it, and
    gives what it gives on the projection computed beforehand, with sequences that end
    early."""
    from fastlstm.kernels.cpu import recurrence as rec
    rng = np.random.default_rng(3)
    T, B, I, H = 11, 3, 4, 5
    G = 4 * H
    x = rng.standard_normal((T * B, I)).astype(dtype)
    w = (rng.standard_normal((I, G)) * 0.5).astype(dtype)
    w_hh_t = (rng.standard_normal((1, H, G)) * 0.5).astype(dtype)
    bias = rng.standard_normal(G).astype(dtype)
    h0, c0 = (rng.standard_normal((B, H)).astype(dtype) for _ in range(2))
    lengths = np.array([11, 4, 7], np.int64)
    e3 = np.empty((0, 0, 0), dtype)
    edges = np.array([0, 2, 5, 9, 11], np.int64)

    def forward(xg2, feed):
        y = np.full((T, B, H), np.nan, dtype)
        h_n, c_n = np.empty((B, H), dtype), np.empty((B, H), dtype)
        gates, cs = np.empty((T, B, G), dtype), np.empty((T, B, H), dtype)
        rec.recurrence_forward((xg2.reshape(T, B, G), 0, e3, e3, 0), (bias, w_hh_t, e3), h0, c0,
                               lengths, False, (y, 0, 0, h_n, c_n), (gates, cs, e3), True,
                               (B, B, 1), feed)
        return y, h_n, c_n, gates, cs

    want = forward(x @ w, rec.no_feed(dtype))
    xg = np.full((T * B, G), np.nan, dtype)
    ctrl = np.zeros(overlap.CTRL_SIZE, np.int64)
    flags = np.zeros(4 * overlap.FLAG_STRIDE, np.int64)
    wb = np.ascontiguousarray(w.reshape(I, 2, G // 2).transpose(1, 0, 2))  # 2 column blocks
    got = forward(xg, (ctrl, flags, edges, x, wb, 2, xg))  # in chunks of 2 rows
    assert flags[::overlap.FLAG_STRIDE].tolist() == [1, 1, 1, 1]
    assert ctrl[overlap.CLAIM] == ctrl[overlap.DONE] == 4 and ctrl[overlap.HELPED] == 0
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(xg, x @ w, **tol)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **tol)


def test_concurrent_callers_get_their_own_results():
    """Four threads training at once through the overlapped path (one of them at a time has
    the partner, the others do their chunks alone): each gets what it gets alone, bitwise."""
    problems = [make_problem(Config(T=19 + i, B=2, I=5, H=7), np.float64, seed=20 + i)
                for i in range(4)]
    with config.options("cpu", **FORCE):
        want = [_grads(p)[2] for p in problems]
    got = [None] * 4

    def work(i):
        with config.options("cpu", **FORCE):
            for _ in range(5):
                got[i] = _grads(problems[i])[2]

    errors, threads = run_in_threads(work, 4, timeout=60)
    assert not any(t.is_alive() for t in threads), "a caller hung"
    assert not errors, errors
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            np.testing.assert_array_equal(a, b)
