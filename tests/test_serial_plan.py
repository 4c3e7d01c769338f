"""The serial path's plans (fastlstm/backends/cpu_serial.py): calls whose every layer runs
serially take a plan made once per params version, shape and configuration. Its results are
bitwise the general path's (``CPUConfig.serial_plans=False``), and both match the reference."""
import gc
import os
import signal
import threading
import time
import weakref

import numpy as np
import pytest

import fastlstm
from fastlstm import config
from fastlstm.backends import cpu_serial

from helpers import Config, assert_unchanged, compare, make_problem, run, snapshot


def _plan_keys(params):
    """The keys of the plans that ran a call (their layouts built)."""
    return [k for k, v in cpu_serial.plans_of(params).items() if v.layers is not None]


def _plans(params):
    return {k: cpu_serial.plans_of(params)[k] for k in _plan_keys(params)}


def _all_results(p, **kw):
    fwd, bwd = run(p, "cpu", **kw)
    with config.options("cpu", stepper_kernel_max_rows=0):  # not the step kernel
        inf = fastlstm.forward(p.x, p.params, p.h0, p.c0, lengths=p.lengths)
    return fwd, bwd, inf, [fwd.y, fwd.h, fwd.c, bwd.dx, bwd.dh0, bwd.dc0,
                           *bwd.dparams.values(), inf.y, inf.h, inf.c]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", [
    Config(T=7, B=3, L=2, bidirectional=True, lengths=True),
    Config(T=9, B=2, L=2, proj=3),
    Config(T=8, B=1, L=1, given_state=False),
    Config(T=6, B=4, L=3, bidirectional=True, proj=2, bias=False),
], ids=["bi-lengths", "proj", "B1-zero-state", "bi-proj-nobias"])
def test_plans_give_the_general_paths_results_bitwise(cfg, dtype):
    p = make_problem(cfg, dtype, seed=3)
    before = snapshot(p.x, p.h0, p.c0, p.dy, p.dh, p.dc, *p.params.state_dict().values())
    fwd, bwd, inf, with_plans = _all_results(p, dropout=0.25 if cfg.L > 1 else 0.0, seed=5)
    assert _plan_keys(p.params), "the plan was not used"
    assert fwd.paths == ("serial",) * cfg.L and inf.paths == ("serial",) * cfg.L
    plans = _plans(p.params)
    with config.options("cpu", serial_plans=False):
        p.params._changed_outside()  # a new version: nothing derived carries over
        *_, general = _all_results(p, dropout=0.25 if cfg.L > 1 else 0.0, seed=5)
    assert _plans(p.params) == plans  # no plan made or touched with plans off
    for a, b in zip(with_plans, general):
        np.testing.assert_array_equal(a, b)
    assert_unchanged(before, p.x, p.h0, p.c0, p.dy, p.dh, p.dc,
                     *p.params.state_dict().values())
    ref_f, ref_b = run(p, "reference", dropout=0.25 if cfg.L > 1 else 0.0, seed=5)
    compare(fwd, bwd, ref_f, ref_b, dtype, "serial plan")


def test_thin_inference_of_longer_calls():
    """Inference of more rows than the step kernel takes, through ``forward``'s thin check
    and the plan: states given or not, batch-first with one sequence; new arrays each call."""
    p = make_problem(Config(T=80, B=1, I=5, H=7, L=2, given_state=True), np.float32, seed=1)
    assert 80 > config.current("cpu").stepper_kernel_max_rows
    ref = fastlstm.forward(p.x, p.params, p.h0, p.c0, device="reference")
    zero_ref = fastlstm.forward(p.x, p.params, device="reference")
    half_ref = fastlstm.forward(p.x, p.params, p.h0, None, device="reference")
    bf = np.ascontiguousarray(p.x.transpose(1, 0, 2))
    for _ in range(2):  # the second call reuses the plan; what the first returned is untouched
        got = fastlstm.forward(p.x, p.params, p.h0, p.c0)
        zero = fastlstm.forward(p.x, p.params)
        half = fastlstm.forward(p.x, p.params, p.h0)
        first = fastlstm.forward(bf, p.params, batch_first=True)
        assert got.paths == zero.paths == first.paths == ("serial", "serial")
        for r, want in ((got, ref), (zero, zero_ref), (half, half_ref)):
            for name in ("y", "h", "c"):
                np.testing.assert_allclose(getattr(r, name), getattr(want, name), rtol=2e-5,
                                           atol=2e-6)
        np.testing.assert_array_equal(first.y, zero.y.transpose(1, 0, 2))
        zero.h[...] = 7.0  # the plan's zero states are not the result's arrays
        zero.y[...] = 7.0
    assert len(_plan_keys(p.params)) == 1
    # a non-contiguous state goes the general way, with the same result
    h0_f = np.asfortranarray(p.h0)
    np.testing.assert_array_equal(fastlstm.forward(p.x, p.params, h0_f, p.c0).y, got.y)


@pytest.mark.parametrize("B", [1, 3], ids=["few-rows", "blas"])
def test_a_new_version_refills_the_plan_in_place(B):
    """After in-place updates (one, or two with no call between) the same plans run, their
    layouts recomputed where they are, and give the general path's results for the new
    weights, bitwise."""
    p = make_problem(Config(T=40, B=B, I=4, H=5, L=2, bidirectional=True, proj=3), np.float64,
                     seed=2)
    _all_results(p)
    plans = _plans(p.params)
    assert len(plans) == 2  # training and inference
    arrays = {k: [a for _, args in v._refills for a in args if isinstance(a, np.ndarray)]
              for k, v in plans.items()}
    rng = np.random.default_rng(0)
    for step in range(3):
        grads = {k: rng.standard_normal(v.shape) for k, v in p.params.state_dict().items()}
        p.params.update_(grads, 0.05)
        if step == 1:
            p.params.update_(grads, 0.05)  # two versions on
        fwd, bwd, inf, got = _all_results(p)
        now = _plans(p.params)
        assert now == plans and all(now[k] is plans[k] for k in now)
        assert all(v.version == p.params.version for v in now.values())
        for k, v in now.items():
            again = [a for _, args in v._refills for a in args if isinstance(a, np.ndarray)]
            assert all(a is b for a, b in zip(again, arrays[k]))
        with config.options("cpu", serial_plans=False):
            *_, want = _all_results(p)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    ref_f, ref_b = run(p, "reference")
    compare(fwd, bwd, ref_f, ref_b, np.float64, "refilled plan")


def test_no_plan_where_a_layer_runs_on_two_cores():
    p = make_problem(Config(T=20, B=8, I=6, H=8), np.float32, seed=4)
    with config.options("cpu", parallel_min_flop=0.0, threads=2):
        if not fastlstm.backends.cpu.can_pin():
            pytest.skip("SciPy's OpenBLAS not found")
        fwd, bwd = run(p, "cpu")
        assert fwd.paths == ("parallel",)
    with config.options("cpu", duo_min_hidden=1, duo_min_steps=1, duo_max_rows=8, threads=2,
                        stepper_kernel_max_rows=0):
        duo = fastlstm.forward(p.x, p.params, p.h0, p.c0)
        assert duo.paths == ("duo",)
    assert not _plan_keys(p.params)
    ref_f, ref_b = run(p, "reference")
    compare(fwd, bwd, ref_f, ref_b, np.float32, "parallel")
    compare(duo, bwd, ref_f, ref_b, np.float32, "duo")


def test_threads_share_a_plan():
    p = make_problem(Config(T=50, B=2, I=5, H=9, L=2), np.float64, seed=6)
    want = fastlstm.forward(p.x, p.params, p.h0, p.c0, training=True)
    want_b = fastlstm.backward(want.cache, p.dy, p.dh, p.dc)
    errors, barrier = [], threading.Barrier(4)

    def work():
        try:
            barrier.wait()
            for _ in range(20):
                f = fastlstm.forward(p.x, p.params, p.h0, p.c0, training=True)
                b = fastlstm.backward(f.cache, p.dy, p.dh, p.dc)
                np.testing.assert_array_equal(f.y, want.y)
                np.testing.assert_array_equal(b.dx, want_b.dx)
                for k, g in b.dparams.items():
                    np.testing.assert_array_equal(g, want_b.dparams[k])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(_plan_keys(p.params)) == 1


def test_plans_go_with_their_params():
    p = make_problem(Config(T=40, B=2, I=3, H=4), np.float32, seed=8)
    run(p, "cpu")
    assert _plan_keys(p.params)
    gone = weakref.ref(p.params)
    del p
    gc.collect()
    assert gone() is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_its_own_plans():
    """A child forked while another thread held a plan (refilling it) does not wait for that
    thread, which it does not have: it makes its own plans."""
    p = make_problem(Config(T=80, B=1, I=3, H=4), np.float64, seed=9)
    want = fastlstm.forward(p.x, p.params, p.h0, p.c0)
    plan = next(v for k, v in cpu_serial.plans_of(p.params).items() if not k[1])
    with plan._lock:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                p.params._changed_outside()  # a new version: the call syncs a plan
                got = fastlstm.forward(p.x, p.params, p.h0, p.c0)
                code = 0 if np.array_equal(got.y, want.y) and got.paths == want.paths else 2
            finally:
                os._exit(code)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on its parent's plan")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0
