"""The recurrence alone (phase 2 of DESIGN.md §4): ``recurrence_forward`` of the compiled CPU
kernel (kernels/cpu/recurrence.py) against the NumPy reference's (fastlstm/reference.py), on
the single-layer, unidirectional cases of the shared registry, inference mode.

The input projection is precomputed outside the timed call, so these numbers isolate the
per-step product and the fused cell update from the big GEMMs that ``bench_lstm.py`` also
times. Each kernel's outputs are checked against the reference before it is timed.
"""
from __future__ import annotations

import numpy as np
import pytest

from fastlstm import reference
from fastlstm.backends import cpu as cpu_backend
from fastlstm.kernels.cpu import recurrence as cpu_rec
from fastlstm.testing import assert_close

from .cases import CASES

RECURRENCE_CASES = [c for c in CASES if c.num_layers == 1 and not c.bidirectional]


def _setup(case):
    params = case.make_params(seed=0)
    rng = np.random.default_rng(1)
    dt = case.np_dtype
    T, B, H, P = case.T, case.B, case.H, case.H_out
    w_ih, w_hh, b_ih, b_hh, w_hr = params.layer_weights(0, 0)
    x = rng.standard_normal((T, B, case.I)).astype(dt)
    xg = np.ascontiguousarray(x @ w_ih.T)
    bias = (b_ih + b_hh) if b_ih is not None else np.zeros(4 * H, dt)
    h0 = rng.standard_normal((B, P)).astype(dt)
    c0 = rng.standard_normal((B, H)).astype(dt)
    lengths = case.length_array()
    lengths = np.full(B, T, np.int64) if lengths is None else lengths
    return params, x, xg, bias, w_hh, w_hr, h0, c0, lengths


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", RECURRENCE_CASES, ids=lambda c: c.name)
def test_recurrence_forward(benchmark, bench_timer, case, backend):
    params, x, xg, bias, w_hh, w_hr, h0, c0, lengths = _setup(case)
    dt = case.np_dtype
    T, B, H, P = case.T, case.B, case.H, case.H_out
    xgb = xg + bias

    def run_reference():
        return reference.recurrence_forward(xgb, w_hh, w_hr, h0, c0, lengths, False)[:3]

    w_hh_t = np.ascontiguousarray(w_hh.T)
    w_hr_t = np.ascontiguousarray(w_hr.T) if w_hr is not None else np.empty((0, 0), dt)
    w_hh_tb, mb_hh = cpu_backend.col_blocks(params, ("bench_w_hh_t",), w_hh_t, B)
    w_hr_tb, mb_hr = cpu_backend.col_blocks(params, ("bench_w_hr_t",), w_hr_t, B)
    e3 = np.empty((0, 0, 0), dt)
    y = np.empty((T, B, P), dt)
    h_n = np.empty((B, P), dt)
    c_n = np.empty((B, H), dt)
    step_input = cpu_rec.StepInput(xg, 0, e3, e3, 0)  # the projection precomputed
    weights = cpu_rec.ForwardWeights(bias, w_hh_tb, w_hr_tb)
    out = cpu_rec.ForwardOut(y, 0, 0, h_n, c_n)
    saved = cpu_rec.Saved(e3, e3, e3)  # inference: nothing saved
    blocks = cpu_rec.Blocks(mb_hh, mb_hr, 1)

    def run_cpu():
        cpu_rec.recurrence_forward(step_input, weights, h0, c0, lengths, False, out, saved, False,
                                   blocks, cpu_rec.no_feed(dt))
        return y, h_n, c_n

    run = run_cpu if backend == "cpu" else run_reference
    if backend == "cpu":  # check (and compile) before timing
        expected = run_reference()
        for got, exp in zip(run_cpu(), expected):
            assert_close(got, exp, dt, "forward", f"{case.name} recurrence")
    # useful FLOPs: the per-step product over valid steps (the cell update is O(H) per step)
    gflop = 2.0 * case.valid_steps() * 4 * H * P / 1e9 + (
        2.0 * case.valid_steps() * H * P / 1e9 if case.proj_size else 0.0)
    benchmark.group = f"recurrence {case.name}"
    benchmark.extra_info.update(case.info(), mode="recurrence_infer", backend=backend, gflops=gflop)
    bench_timer.run(benchmark, run, gflop)
