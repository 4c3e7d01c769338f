"""A parallel layer's two tasks on the partner thread (kernels/cpu/pair.py): the hand-over in
each order of events (partner first, partner late, partner taken), errors on either side, and
the layer's results against the thread pool's, bitwise, alone and under concurrent callers."""
import time

import numpy as np
import pytest
from numba import njit

import fastlstm
from fastlstm import config
from fastlstm.backends import cpu as cpu_backend
from fastlstm.kernels.cpu import pair, parallel

from helpers import Config, make_problem, run, run_in_threads

pytestmark = pytest.mark.skipif(not parallel.can_pin(), reason="SciPy's OpenBLAS not found")


@njit(nogil=True, cache=True)
def _scaled(src, k, out):
    for i in range(src.size):
        out[i] = k * src[i]


@njit(nogil=True, cache=True)
def _spin(n):
    s = 0.0
    for i in range(n):
        s += np.sqrt(i + 1.0)
    return s


@njit(nogil=True, cache=True)
def _fail_if_negative(k):
    if k < 0:
        raise ValueError("negative factor")


class _FakePartner:
    """A partner that runs the posted job at once (``eager``) or never (late), or refuses it."""
    JOIN_WITHIN = 2e-3

    def __init__(self, mode):
        self.mode, self.released, self.ran = mode, [], False

    def offer(self, fn, args):
        if self.mode == "refuse":
            return False
        if self.mode == "eager":
            ended = fn(*args)
            if ended is not None:  # what the partner thread does once it lets go of the GIL
                ended[pair.DONE] = 1
            self.ran = True
        return True

    def release(self, busy):
        self.released.append(busy)

    def in_a_row(self, sign, seen):
        return False


def _lists(rng):
    src = rng.standard_normal(1000)
    a, b = np.empty_like(src), np.empty_like(src)
    return src, a, b, [(_scaled, (src, 2.0, a))], [(_scaled, (src, -3.0, b))]


@pytest.mark.parametrize("mode", ["eager", "late"])
def test_both_lists_run_once_whoever_takes_the_second(mode):
    src, a, b, first, second = _lists(np.random.default_rng(0))
    before = src.copy()
    fake = _FakePartner(mode)
    assert pair.run_pair(fake, first, second)
    np.testing.assert_array_equal(a, 2.0 * src)
    np.testing.assert_array_equal(b, -3.0 * src)
    np.testing.assert_array_equal(src, before)
    assert fake.ran == (mode == "eager")
    assert fake.released == [False]  # released once; a quick late partner is not "busy"


def test_a_partner_that_refuses_runs_nothing():
    src, a, b, first, second = _lists(np.random.default_rng(1))
    a[:] = b[:] = 7.0
    fake = _FakePartner("refuse")
    assert not pair.run_pair(fake, first, second)
    assert (a == 7.0).all() and (b == 7.0).all()
    assert fake.released == []


@pytest.mark.parametrize("mode", ["eager", "late"])
@pytest.mark.parametrize("side", ["first", "second"])
def test_an_error_on_either_side_is_raised_after_both_are_settled(mode, side):
    src, a, b, first, second = _lists(np.random.default_rng(2))
    bad = [(_fail_if_negative, (-1.0,))]
    if side == "first":
        first = bad
    else:
        second = bad
    fake = _FakePartner(mode)
    with pytest.raises(ValueError, match="negative factor"):
        pair.run_pair(fake, first, second)
    assert fake.released == [False]  # the partner is free again
    if side == "first":  # the other side still ran
        np.testing.assert_array_equal(b, -3.0 * src)
    else:
        np.testing.assert_array_equal(a, 2.0 * src)


def test_the_partner_thread_takes_the_second_list_when_the_first_is_long(monkeypatch):
    """With the caller busy for a while (~10-50 ms), the real partner thread claims and runs the
    second list."""
    import threading

    from fastlstm.kernels.cpu import duo
    names = []
    real = pair._run_calls

    def spy(calls):
        names.append(threading.current_thread().name)
        return real(calls)
    monkeypatch.setattr(pair, "_run_calls", spy)
    src, a, b, first, second = _lists(np.random.default_rng(3))
    partner = duo.partner(20_000)
    for _ in range(40):  # the partner may be backing off (up to 1 s) after an earlier call
        names.clear()
        if pair.run_pair(partner, [(_spin, (20_000_000,))] + first, second) \
                and "fastlstm-partner" in names:
            break
        time.sleep(0.05)
    assert names.count("fastlstm-partner") == 1, names
    np.testing.assert_array_equal(b, -3.0 * src)


_CASES = [Config(T=9, B=10, I=5, H=12, lengths=True),
          Config(T=6, B=3, I=4, H=8, L=2, bidirectional=True, proj=3)]


def _results(p, pair_tasks):
    """Every array a forward and backward give, in a list."""
    with config.options("cpu", parallel_min_flop=0.0, threads=2, parallel_min_rows=1,
                        pair_tasks=pair_tasks):
        f, b = run(p, "cpu")
    return [f.y, f.h, f.c, b.dx, b.dh0, b.dc0, *b.dparams.values()]


@pytest.mark.parametrize("cfg", _CASES, ids=str)
def test_paired_layers_equal_the_pools_bitwise(cfg):
    """Two tasks (batch halves; the two directions) through the partner and through the pool:
    the same kernels on the same rows, so the same bits; and the reference's values."""
    p = make_problem(cfg, np.float64, seed=4)
    with config.options("cpu", parallel_min_flop=0.0, threads=2, parallel_min_rows=1):
        D = 2 if cfg.bidirectional else 1
        assert len(cpu_backend.plan_tasks(D, cfg.B, 1.0)) == 2
    pool, paired = _results(p, False), _results(p, True)
    assert len(paired) == len(pool)
    for got, want in zip(paired, pool):
        np.testing.assert_array_equal(got, want)
    f_ref, b_ref = run(p, "reference")
    np.testing.assert_allclose(paired[0], f_ref.y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(paired[3], b_ref.dx, rtol=1e-9, atol=1e-12)


def test_concurrent_callers_share_the_partner_and_get_their_own_results():
    """Four threads at once: one holds the partner, the others fall back to the pool; each
    result is bitwise that of a call alone."""
    cfg = Config(T=12, B=8, I=6, H=16)
    problems = [make_problem(cfg, np.float32, seed=s) for s in range(4)]
    alone = [_results(p, True) for p in problems]
    got = [None] * 4

    def work(i):
        got[i] = _results(problems[i], True)
    for _ in range(3):
        errors, _ = run_in_threads(work, 4, timeout=120)
        assert not errors
        for mine, own in zip(got, alone):
            for x, y in zip(mine, own):
                np.testing.assert_array_equal(x, y)


def test_inference_forward_through_the_pair_matches_the_reference():
    cfg = Config(T=8, B=6, I=7, H=10)
    p = make_problem(cfg, np.float32, seed=9)
    with config.options("cpu", parallel_min_flop=0.0, threads=2, parallel_min_rows=1):
        out = fastlstm.forward(p.x, p.params, device="cpu")
    ref = fastlstm.forward(p.x, p.params, device="reference")
    assert out.paths == ("parallel",)
    np.testing.assert_allclose(out.y, ref.y, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(out.c, ref.c, rtol=2e-5, atol=2e-6)
