"""The CPU backend's parallel path (kernels/cpu/parallel.py): directions and batch slices of a
layer run as independent tasks on worker threads, with SciPy's OpenBLAS pinned to one thread.

The path is forced on small shapes (``fastlstm.config``: the FLOP floor set to 0, the thread
count set) and checked against the NumPy reference, forward and backward, like the serial
kernels."""
import contextlib
import contextvars
import threading

import numpy as np
import pytest

import fastlstm
from fastlstm import config
from fastlstm.backends import cpu as cpu_backend
from fastlstm.kernels.cpu import parallel
from fastlstm.testing import assert_close

from helpers import Config, assert_unchanged, compare, make_problem, run, snapshot

pytestmark = pytest.mark.skipif(not parallel.can_pin(), reason="SciPy's OpenBLAS not found")


@pytest.fixture
def cpu_options():
    """``cpu_options(**knobs)`` sets CPU knobs for the rest of the test; restored after it."""
    with contextlib.ExitStack() as stack:
        yield lambda **kw: stack.enter_context(config.options("cpu", **kw))


@pytest.fixture
def threads(cpu_options):
    """Force the parallel path with ``n`` threads for every call in the test."""
    return lambda n: cpu_options(parallel_min_flop=0.0, threads=n)


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", [
    Config(T=7, B=9, I=5, H=8, L=2, bidirectional=True, lengths=True),
    Config(T=6, B=12, I=4, H=16, proj=5, lengths=True),
    Config(T=5, B=8, I=3, H=6, L=3, bias=False),
    Config(T=3, B=13, I=6, H=7, bidirectional=True, proj=3, lengths=True),
], ids=str)
def test_parallel_matches_reference(cfg, dtype, n, fuse, threads, cpu_options):
    """``fused``: the tasks compute their input projection inside the recurrence, step by
    step, and in backward the input gradient too; ``unfused``: one GEMM per task for each."""
    threads(n)
    cpu_options(fuse_input=fuse)
    D = 2 if cfg.bidirectional else 1
    tasks = cpu_backend.plan_tasks(D, cfg.B, 1.0)
    assert tasks is not None and len(tasks) >= 2  # really on the parallel path
    assert all(cpu_backend.fuse_dx(b1 - b0, 4 * cfg.H, cfg.I) for _, b0, b1 in tasks)
    p = make_problem(cfg, dtype, seed=21)
    before = snapshot(p.x, p.h0, p.c0, p.lengths, p.dy, p.dh, p.dc)
    f_ref, b_ref = run(p, "reference")
    f_cpu, b_cpu = run(p, "cpu")
    assert_unchanged(before, p.x, p.h0, p.c0, p.lengths, p.dy, p.dh, p.dc)
    compare(f_cpu, b_cpu, f_ref, b_ref, dtype, str(cfg))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_parallel_dx_per_step_in_some_layers_only(dtype, threads, monkeypatch):
    """With the per-step input projection on, ``fuse_dx`` may still keep one dx GEMM for a
    layer (thin row chunks: the largest sizes): here layer 0 keeps it, layer 1 goes per step,
    with dropout between them. Four threads: each direction in two batch slices."""
    threads(4)
    cfg = Config(T=6, B=9, I=11, H=6, L=2, bidirectional=True, lengths=True)
    seen = []

    def rule(Bw, G, I):
        fused = I != cfg.I  # layer 0 (input size cfg.I) keeps the GEMM
        seen.append(fused)
        return fused

    monkeypatch.setattr(cpu_backend, "fuse_dx", lambda Bw, G, I, cfg=None: rule(Bw, G, I))
    p = make_problem(cfg, dtype, seed=5)
    f_ref, b_ref = run(p, "reference", dropout=0.3, seed=2)
    f_cpu, b_cpu = run(p, "cpu", dropout=0.3, seed=2)
    compare(f_cpu, b_cpu, f_ref, b_ref, dtype, str(cfg))
    assert True in seen and False in seen  # both kinds of task ran


@pytest.mark.parametrize("n", [2, 4])
def test_parallel_with_dropout_matches_reference(threads, n):
    """Inter-layer dropout masks on the parallel path (directions; with 4, batch slices too)."""
    threads(n)
    cfg = Config(T=5, B=10, I=4, H=6, L=3, bidirectional=True, lengths=True)
    p = make_problem(cfg, np.float64, seed=8)
    f_ref, b_ref = run(p, "reference", dropout=0.4, seed=3)
    f_cpu, b_cpu = run(p, "cpu", dropout=0.4, seed=3)
    compare(f_cpu, b_cpu, f_ref, b_ref, np.float64, "dropout")


def test_parallel_is_deterministic(threads):
    threads(2)
    p = make_problem(Config(T=9, B=16, I=6, H=12, lengths=True), np.float32, seed=4)
    (f1, b1), (f2, b2) = run(p, "cpu"), run(p, "cpu")
    np.testing.assert_array_equal(f1.y, f2.y)
    for name in b1.dparams:
        np.testing.assert_array_equal(b1.dparams[name], b2.dparams[name])


def test_plan_tasks(monkeypatch):
    plan = cpu_backend.plan_tasks
    big = 1e12
    with config.options("cpu", threads=2) as cfg:
        assert plan(1, 16, big) == [(0, 0, 8), (0, 8, 16)]
        assert plan(2, 16, big) == [(0, 0, 16), (1, 0, 16)]  # directions first
        assert plan(2, 1, big) == [(0, 0, 1), (1, 0, 1)]
        assert plan(1, 7, big) is None  # fewer than 2 x parallel_min_rows rows
        assert plan(1, 64, cfg.parallel_min_flop / 2) is None  # too small
        with config.options("cpu", parallel_min_flop=0):
            assert plan(1, 64, 1.0) is not None
    with config.options("cpu", threads=4):
        assert plan(2, 16, big) == [(0, 0, 8), (0, 8, 16), (1, 0, 8), (1, 8, 16)]
    with config.options("cpu", threads=1):
        assert plan(2, 64, big) is None
    with config.options("cpu", threads=2):
        monkeypatch.setattr(cpu_backend, "can_pin", lambda: False)  # no pinnable BLAS
        assert plan(2, 64, big) is None


def test_options_are_checked_and_restored():
    before = config.current("cpu")
    with pytest.raises(TypeError, match="unknown cpu option"):
        with config.options("cpu", parallel_min_flops=0):
            pass
    with config.options("cpu", threads=3):
        assert config.current("cpu").threads == 3
        with config.options("cpu", fuse_input=False):
            assert config.current("cpu").threads == 3 and not config.current("cpu").fuse_input
        assert config.current("cpu").fuse_input
    assert config.current("cpu") == before


def test_forward_reports_the_path_each_layer_took(threads):
    p = make_problem(Config(T=4, B=8, I=3, H=5, L=2), np.float32, seed=3)
    serial = fastlstm.forward(p.x, p.params, device="cpu", training=True)
    threads(2)
    par = fastlstm.forward(p.x, p.params, device="cpu", training=True)
    assert serial.paths == ("serial", "serial") == serial.cache.paths
    assert par.paths == ("parallel", "parallel") == par.cache.paths
    assert fastlstm.forward(p.x, p.params, device="reference").paths == ("reference",) * 2


@pytest.mark.parametrize("batch_first", [False, True], ids=["tbi", "bti"])
def test_one_layer_cache_keeps_the_kernels_rows_and_owns_them(batch_first, threads,
                                                               monkeypatch):
    """One layer, one direction, parallel: the cache keeps the [x | h_prev] rows the forward
    kernels wrote instead of x and y (so neither is copied for it); changing x or the
    returned y afterwards changes nothing, backward twice gives the same result, and so does a
    backward with one thread left."""
    threads(2)
    p = make_problem(Config(T=7, B=10, I=5, H=6, lengths=True), np.float32, seed=8)
    x = p.x.transpose(1, 0, 2).copy() if batch_first else p.x.copy()
    tr = fastlstm.forward(x, p.params, p.h0, p.c0, lengths=p.lengths, training=True,
                          batch_first=batch_first, device="cpu")
    layer = tr.cache.state.layers[0]
    assert layer.x is None and layer.y is None and len(layer.xh) == 2
    g1 = fastlstm.backward(tr.cache, np.ones_like(tr.y), p.dh, p.dc)
    x[:] = 7.0
    tr.y[:] = 9.0
    g2 = fastlstm.backward(tr.cache, np.ones_like(tr.y), p.dh, p.dc)
    for a, b in [(g1.dx, g2.dx), (g1.dh0, g2.dh0), (g1.dc0, g2.dc0)]:
        np.testing.assert_array_equal(a, b)
    for k in g1.dparams:
        np.testing.assert_array_equal(g1.dparams[k], g2.dparams[k])
    # with the cores taken away before backward, the forward's tasks run one at a time
    threads(1)
    monkeypatch.setattr(cpu_backend, "run_tasks", None)  # calling the pool would fail
    g3 = fastlstm.backward(tr.cache, np.ones_like(tr.y), p.dh, p.dc)
    np.testing.assert_array_equal(g3.dx, g1.dx)
    for k in g1.dparams:
        np.testing.assert_array_equal(g3.dparams[k], g1.dparams[k])
    rf = fastlstm.forward(p.x, p.params, p.h0, p.c0, lengths=p.lengths, training=True,
                          device="reference")
    ref = fastlstm.backward(rf.cache, np.ones_like(rf.y), p.dh, p.dc)
    assert_close(g1.dx.transpose(1, 0, 2) if batch_first else g1.dx, ref.dx, np.float32, "grad")
    for k in ref.dparams:
        assert_close(g1.dparams[k], ref.dparams[k], np.float32, "grad", k)


@pytest.mark.parametrize("B,parts", [(1, 1), (5, 2), (16, 3), (3, 5)])
def test_split_rows_covers_once(B, parts):
    spans = parallel.split_rows(B, parts)
    assert spans[0][0] == 0 and spans[-1][1] == B
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(b1 > b0 for b0, b1 in spans) and len(spans) == min(B, parts)


@pytest.mark.parametrize("n_parts", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_partial_weight_gradients_summed_and_split(n_parts, dtype):
    """The tasks' partial ``[dW_ih | dW_hh]`` (G, I + P) become two C-contiguous gradients
    equal to the column ranges of their sum."""
    rng = np.random.default_rng(n_parts)
    G, I, P = 12, 5, 7
    parts = [rng.standard_normal((G, I + P)).astype(dtype) for _ in range(n_parts)]
    expect = np.sum(np.stack(parts).astype(np.float64), axis=0)
    dw_ih, dw_hh = cpu_backend._sum_split(parts, I)
    for got, want in ((dw_ih, expect[:, :I]), (dw_hh, expect[:, I:])):
        assert got.flags.c_contiguous and got.dtype == dtype
        tol = 1e-5 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_single_threaded_blas_nests_and_restores():
    get, _ = parallel._openblas()
    before = get()
    with parallel.single_threaded_blas():
        assert get() == 1
        with parallel.single_threaded_blas():
            assert get() == 1
        assert get() == 1  # the inner exit does not restore early
    assert get() == before
    with pytest.raises(KeyError):
        with parallel.single_threaded_blas():
            raise KeyError("boom")
    assert get() == before


def test_run_tasks_results_and_errors():
    assert parallel.run_tasks(lambda a, b: a * b, [(1, 2), (3, 4), (5, 6)]) == [2, 12, 30]
    done = []

    def fn(i):
        if i == 0:
            raise ValueError("first task")
        done.append(i)
        return i

    with pytest.raises(ValueError, match="first task"):
        parallel.run_tasks(fn, [(0,), (1,), (2,)])
    assert sorted(done) == [1, 2]  # the others ran to completion before the error surfaced


def test_concurrent_parallel_calls(threads):
    """Several user threads on the parallel path at once share the pool and the BLAS pin."""
    threads(2)
    p = make_problem(Config(T=6, B=8, I=4, H=8, bidirectional=True), np.float32, seed=2)
    expected = fastlstm.forward(p.x, p.params, device="reference").y
    get, _ = parallel._openblas()
    before = get()
    errors, outs = [], []
    ctx = contextvars.copy_context()  # the options are per thread: hand them to the workers

    def worker():
        try:
            for _ in range(5):
                outs.append(fastlstm.forward(p.x, p.params, device="cpu").y)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=ctx.copy().run, args=(worker,)) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and len(outs) == 20
    for y in outs:
        np.testing.assert_allclose(y, expected, rtol=2e-5, atol=2e-6)
    assert get() == before


def test_numba_thread_count_selects_the_path():
    """With Numba set to one thread the backend runs serially (and still matches)."""
    import numba
    n = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert cpu_backend.plan_tasks(2, 64, 1e12) is None
        p = make_problem(Config(T=4, B=8, I=3, H=5, bidirectional=True), np.float32, seed=1)
        f_ref, b_ref = run(p, "reference")
        f_cpu, b_cpu = run(p, "cpu")
        compare(f_cpu, b_cpu, f_ref, b_ref, np.float32, "one thread")
    finally:
        numba.set_num_threads(n)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_forked_child_runs_parallel_path(threads):
    """After a parallel call, a forked child (e.g. a data-loader worker) gets a fresh pool
    instead of waiting forever on the parent's threads, which it does not have."""
    import multiprocessing as mp
    threads(2)
    p = make_problem(Config(T=5, B=8, I=4, H=8), np.float32, seed=9)
    parent = fastlstm.forward(p.x, p.params, device="cpu").y  # the pool now exists
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply_async(_child_forward, (p.x, p.params)).get(timeout=120)
    np.testing.assert_array_equal(child, parent)


def _child_forward(x, params):
    with config.options("cpu", parallel_min_flop=0.0, threads=2):
        assert cpu_backend.plan_tasks(1, x.shape[1], 1.0) is not None
        return fastlstm.forward(x, params, device="cpu").y


def test_run_tasks_while_the_pool_grows(monkeypatch):
    """A call that grows the pool must not shut it under another call's submissions (a slow
    ``submit`` widens the window that a thread switch would open)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    class SlowSubmit(ThreadPoolExecutor):
        def submit(self, *a, **k):
            time.sleep(0.001)
            return super().submit(*a, **k)

    monkeypatch.setattr(parallel, "ThreadPoolExecutor", SlowSubmit)
    for _ in range(10):
        monkeypatch.setitem(parallel._state, "pool", None)
        monkeypatch.setitem(parallel._state, "size", 0)
        errors, results = [], []

        def call(n):
            try:
                results.append(parallel.run_tasks(lambda i: i * i, [(i,) for i in range(n)]))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        a = threading.Thread(target=call, args=(2,))
        b = threading.Thread(target=call, args=(3,))
        a.start()
        time.sleep(0.0003)
        b.start()
        a.join()
        b.join()
        assert not errors
        assert sorted(results, key=len) == [[0, 1], [0, 1, 4]]


def test_release_workspace_frees_every_threads_scratch(threads):
    threads(2)
    p = make_problem(Config(T=6, B=16, I=5, H=8), np.float32, seed=5)
    fastlstm.forward(p.x, p.params, device="cpu")  # the caller's scratch (both tasks')
    done, leave = threading.Event(), threading.Event()

    def another_thread():  # and, while it lives, another thread's
        fastlstm.forward(p.x, p.params, device="cpu")
        done.set()
        leave.wait()
    other = threading.Thread(target=another_thread)
    other.start()
    try:
        assert done.wait(60)
        held = [pool for pool in cpu_backend._all_pools if pool.bufs]
        assert len(held) >= 2
        fastlstm.release_workspace()
        assert not any(pool.bufs for pool in cpu_backend._all_pools)
    finally:
        leave.set()
        other.join()
    again = fastlstm.forward(p.x, p.params, device="cpu").y  # buffers are made afresh
    np.testing.assert_allclose(again, fastlstm.forward(p.x, p.params, device="reference").y,
                               rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("min_flop, want", [(200e6, 1), (0.0, None)], ids=["pinned", "free"])
def test_small_serial_layers_keep_blas_on_the_calling_thread(min_flop, want, monkeypatch,
                                                            cpu_options):
    """A serial layer under ``serial_blas_min_flop`` runs its BLAS calls (the input GEMM, the
    gradient GEMMs) with SciPy's OpenBLAS pinned to one thread; the setting is restored."""
    get, put = parallel._openblas()
    saved = get()
    put(2)
    seen = []

    def spy(real):
        def wrapped(*args):
            seen.append(get())
            return real(*args)
        return wrapped

    for module in (cpu_backend, cpu_backend.cpu_serial):  # the general path and the plans
        monkeypatch.setattr(module, "matmul_into", spy(module.matmul_into))
    # both paths' gradient GEMMs (cpu_overlap.recurrence_then_grads)
    monkeypatch.setattr(cpu_backend.cpu_overlap, "grad_gemms",
                        spy(cpu_backend.cpu_overlap.grad_gemms))
    cpu_options(serial_blas_min_flop=min_flop, parallel_min_flop=1e18, threads=2,
                stepper_kernel_max_rows=0)
    try:
        p = make_problem(Config(T=6, B=2, I=3, H=5), np.float64, seed=1)
        f_cpu, b_cpu = run(p, "cpu")
        f_ref, b_ref = run(p, "reference")
        compare(f_cpu, b_cpu, f_ref, b_ref, np.float64, "pinned serial")
        assert get() == 2  # restored
    finally:
        put(saved)
    assert len(seen) >= 2
    assert all(n == (want or 2) for n in seen), seen
