"""Whole-LSTM calls: every case of bench/cases.py x mode x backend (reference, cpu, and the peers
torch and onnxruntime where installed).

Each benchmark first checks the backend's outputs against the NumPy reference (the
fastlstm.testing tolerance rule; this call also compiles), then times the call. Groups are case
names, so a group's table compares the backends on one configuration; ``extra_info`` carries
case, mode, backend, dtype, sizes and ``gflops`` (useful GFLOP of one call).

ONNX Runtime runs inference only, in float32, without ``proj_size`` (``fastlstm.harness.supports``):
only those (case, mode) pairs get an onnxruntime benchmark. The peers get the CPU backend's
thread count; their benchmarks are skipped where they are not installed.
"""
from __future__ import annotations

import pytest

from fastlstm.harness import supports
from fastlstm.testing import assert_close

from .cases import BENCH_BACKENDS, CASES, FORWARD_KEYS as FORWARD_KEYS_, MODES, expected_keys, make_runner

#: The backends timed here: bench/cases.py's, and ONNX Runtime.
BACKENDS = tuple(dict.fromkeys((*BENCH_BACKENDS, "onnxruntime")))

PARAMS = [
    pytest.param(case, mode, backend, id=f"{case.name}-{mode}-{backend}",
                 marks=[pytest.mark.quick] if case.quick else [])
    for case in CASES for mode in MODES for backend in BACKENDS
    if supports(backend, case, mode) is None
]


@pytest.mark.parametrize("case, mode, backend", PARAMS)
def test_lstm(benchmark, bench_timer, oracle, peer_threads, case, mode, backend):
    threads = peer_threads(backend)  # skips a peer that is not installed
    inputs, ref = oracle(case)
    runner = make_runner(case, mode, backend, inputs, torch_threads=threads)
    if backend != "reference":  # the reference is the oracle
        out = runner.outputs(runner())
        for key in expected_keys(mode, ref):
            kind = "forward" if key in FORWARD_KEYS_ else "grad"
            assert key in out, f"{backend} {mode}: no {key} in the outputs"
            assert_close(out[key], ref[key], case.np_dtype, kind, what=f"{case.name} {backend} {mode} {key}")
    benchmark.group = case.name
    benchmark.extra_info.update(case.info(), mode=mode, backend=backend, gflops=case.gflop(mode))
    bench_timer.run(benchmark, runner, case.gflop(mode))
