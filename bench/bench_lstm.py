"""Whole-LSTM calls: every case of bench/cases.py x mode x backend (reference, cpu, torch).

Each benchmark first checks the backend's outputs against the NumPy reference (the
fastlstm.testing tolerance rule; this call also compiles), then times the call. Groups are case
names, so a group's table compares the backends on one configuration; ``extra_info`` carries
case, mode, backend, dtype, sizes and ``gflops`` (useful GFLOP of one call).
"""
from __future__ import annotations

import pytest

from fastlstm.testing import assert_close

from .cases import BENCH_BACKENDS, CASES, FORWARD_KEYS as FORWARD_KEYS_, MODES, expected_keys, make_runner

PARAMS = [
    pytest.param(case, mode, backend, id=f"{case.name}-{mode}-{backend}",
                 marks=[pytest.mark.quick] if case.quick else [])
    for case in CASES for mode in MODES for backend in BENCH_BACKENDS
]


@pytest.mark.parametrize("case, mode, backend", PARAMS)
def test_lstm(benchmark, bench_timer, oracle, torch_threads, case, mode, backend):
    if backend == "torch" and torch_threads is None:
        pytest.skip("torch is not installed")
    inputs, ref = oracle(case)
    runner = make_runner(case, mode, backend, inputs, torch_threads=torch_threads)
    if backend != "reference":  # the reference is the oracle
        out = runner.outputs(runner())
        for key in expected_keys(mode, ref):
            kind = "forward" if key in FORWARD_KEYS_ else "grad"
            assert key in out, f"{backend} {mode}: no {key} in the outputs"
            assert_close(out[key], ref[key], case.np_dtype, kind, what=f"{case.name} {backend} {mode} {key}")
    benchmark.group = case.name
    benchmark.extra_info.update(case.info(), mode=mode, backend=backend, gflops=case.gflop(mode))
    bench_timer.run(benchmark, runner, case.gflop(mode))
