"""pytest configuration of the benchmark suites.

``pytest bench`` collects ``bench/bench_*.py`` (the repository's ``testpaths`` is ``tests``, so a
plain ``pytest`` never runs them). ``pytest bench --benchmark-disable`` runs every benchmark once,
correctness check included: the smoke test. ``pytest bench -m quick`` is the CI subset.

Options (timing only; ignored with --benchmark-disable):
  --bench-budget S       seconds of timed calls per benchmark (default 1.0); the round count is
                         budget / (one call), clamped to [--bench-min-rounds, --bench-max-rounds]
  --bench-min-rounds N   default 5
  --bench-max-rounds N   default 200

Thread counts: torch (set_num_threads) and ONNX Runtime (the session's intra-op threads) get
Numba's thread count (NUMBA_NUM_THREADS, default: all cores), which is recorded in every
benchmark's extra_info["threads"]. ci/bench.sh pins all thread pools to BENCH_THREADS (default 1,
see bench/NOTES.md).

The peers, torch and ONNX Runtime, are optional: their benchmarks are skipped, with the reason,
where they are not installed.
"""
from __future__ import annotations

import fnmatch
import math
import time

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("fastlstm benchmarks")
    group.addoption("--bench-budget", type=float, default=1.0,
                    help="seconds of timed calls per benchmark (default 1.0)")
    group.addoption("--bench-min-rounds", type=int, default=5, help="fewest timed rounds (default 5)")
    group.addoption("--bench-max-rounds", type=int, default=200, help="most timed rounds (default 200)")


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: the CI benchmark subset (bench/cases.py QUICK)")


def pytest_collect_file(file_path, parent):
    """Collect bench_*.py as test modules, unless pytest already does (explicit path, or a
    python_files setting that matches)."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path):
        return None
    if any(fnmatch.fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


@pytest.fixture(scope="session")
def torch_threads():
    """Torch gets the thread count the CPU backend uses (Numba's), or None without torch."""
    from fastlstm.harness import default_torch_threads, torch_available
    if not torch_available():
        return None
    import torch
    n = default_torch_threads()
    torch.set_num_threads(n)
    return n


@pytest.fixture(scope="session")
def onnxruntime_threads(bench_threads):
    """ONNX Runtime sessions get the thread count the CPU backend uses (Numba's), or None
    where onnxruntime (or onnx, which writes the model it runs) does not import."""
    from fastlstm.harness import onnxruntime_available
    return bench_threads if onnxruntime_available() else None


@pytest.fixture(scope="session")
def peer_threads(request):
    """``peer_threads(backend)``: the thread count to give ``backend`` (torch, onnxruntime;
    None for ours), skipping the benchmark where that library is not installed."""
    from fastlstm.harness import PEERS, unavailable_reason

    def get(backend):
        if backend not in PEERS:
            return None
        n = request.getfixturevalue("torch_threads" if backend == "torch"
                                    else "onnxruntime_threads")
        if n is None:
            pytest.skip(unavailable_reason(backend) or f"{backend} is not installed")
        return n

    return get


@pytest.fixture(scope="session")
def oracle():
    """``oracle(case) -> (inputs, reference outputs)``, computed once per case per session."""
    from fastlstm.harness import reference_outputs
    memo = {}

    def get(case):
        if case.name not in memo:
            inputs = case.make_inputs(seed=0)
            memo[case.name] = (inputs, reference_outputs(case, inputs))
        return memo[case.name]

    return get


@pytest.fixture(scope="session")
def bench_threads():
    """Threads the CPU backend may use (Numba's count; ci/bench.sh sets it and BLAS's alike)."""
    import numba
    return numba.get_num_threads()


class Timer:
    """Runs a benchmark: pedantic rounds sized from one untimed call, extra_info filled in."""

    def __init__(self, config):
        self.budget = config.getoption("--bench-budget", default=1.0)
        self.min_rounds = config.getoption("--bench-min-rounds", default=5)
        self.max_rounds = config.getoption("--bench-max-rounds", default=200)

    def rounds_for(self, seconds_per_call: float) -> int:
        n = math.ceil(self.budget / max(seconds_per_call, 1e-7))
        return int(min(self.max_rounds, max(self.min_rounds, n)))

    def run(self, benchmark, fn, gflop: float):
        benchmark.extra_info["threads"] = self.threads
        if not benchmark.enabled:  # smoke run: once
            return benchmark(fn)
        t0 = time.perf_counter()
        fn()  # warm (caches, allocator) and size the round count
        rounds = self.rounds_for(time.perf_counter() - t0)
        result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
        med = benchmark.stats.stats.median
        if med > 0:
            benchmark.extra_info["gflop_per_s"] = gflop / med
        return result


@pytest.fixture(scope="session")
def bench_timer(request, bench_threads):
    timer = Timer(request.config)
    timer.threads = bench_threads
    return timer
