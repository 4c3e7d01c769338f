"""Streaming one step at a time: ``fastlstm.Stepper.step`` against ``torch.nn.LSTMCell`` (one
call per step, ``torch.inference_mode``) and against ``fastlstm.forward`` with T = 1 (the
whole-sequence call used for one step, the state passed in and out).

Each implementation's step is first checked against the NumPy reference (the
``fastlstm.testing`` tolerance rule), then timed. A call takes microseconds, so each timed
round runs it ``ITERATIONS`` times (pytest-benchmark divides). Groups are the cases;
``extra_info`` carries case, mode ("step"), backend ("cpu": ``Stepper.step``, "torch":
``LSTMCell``, "cpu_forward": ``forward`` with T = 1, "torch_lstm": ``nn.LSTM`` with T = 1), sizes, the weight bytes one step reads
and the GB/s that makes.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import fastlstm
from fastlstm import LSTMParams, Stepper
from fastlstm.testing import assert_close

#: (B, I, H), float32, one layer
CASES = [(1, 32, 64), (4, 32, 128)]
BACKENDS = ("cpu", "torch", "cpu_forward", "torch_lstm")
ITERATIONS = 200


def _problem(B, I, H):
    params = LSTMParams.init(I, H, seed=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, I)).astype(np.float32)
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    c0 = rng.standard_normal((1, B, H)).astype(np.float32)
    return params, x, h0, c0


def _runner(backend, params, x, h0, c0):
    """``(step, result)``: a call doing one step, and one that returns ``(h, c)`` after the
    first step from ``h0``, ``c0`` (for the check)."""
    if backend == "cpu":
        s = Stepper(params, x.shape[0], h0, c0)

        def first():
            s.reset(h0, c0)
            s.step(x)
            return s.h, s.c
        return (lambda: s.step(x)), first
    if backend == "cpu_forward":
        xs = x[None]
        state = {"h": h0, "c": c0}

        def step():
            r = fastlstm.forward(xs, params, state["h"], state["c"], device="cpu")
            state["h"], state["c"] = r.h, r.c
            return r.y

        def first():
            r = fastlstm.forward(xs, params, h0, c0, device="cpu")
            return r.h, r.c
        return step, first
    import torch
    if backend == "torch_lstm":
        lstm = torch.nn.LSTM(params.input_size, params.hidden_size)
        with torch.no_grad():
            for name in lstm.state_dict():
                getattr(lstm, name).copy_(torch.tensor(params[name]))
        xs, h0t, c0t = (torch.from_numpy(a.copy()) for a in (x[None], h0, c0))
        st = [(h0t, c0t)]

        def lstm_step():
            with torch.inference_mode():
                y, st[0] = lstm(xs, st[0])
            return y

        def lstm_first():
            with torch.inference_mode():
                _, (h, c) = lstm(xs, (h0t, c0t))
            return h.numpy(), c.numpy()
        return lstm_step, lstm_first
    cell = torch.nn.LSTMCell(params.input_size, params.hidden_size)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(torch.tensor(params[name + "_l0"]))
    xt, ht, ct = (torch.from_numpy(a.copy()) for a in (x, h0[0], c0[0]))
    hc = [(ht, ct)]

    def step():
        with torch.inference_mode():
            hc[0] = cell(xt, hc[0])
        return hc[0][0]

    def first():
        with torch.inference_mode():
            h, c = cell(xt, (ht, ct))
        return h.numpy()[None], c.numpy()[None]
    return step, first


@pytest.mark.parametrize("B, I, H", CASES, ids=[f"B{b}-I{i}-H{h}" for b, i, h in CASES])
@pytest.mark.parametrize("backend", BACKENDS)
def test_step(benchmark, bench_timer, torch_threads, backend, B, I, H):
    if backend.startswith("torch") and torch_threads is None:
        pytest.skip("torch is not installed")
    params, x, h0, c0 = _problem(B, I, H)
    step, first = _runner(backend, params, x, h0, c0)
    ref = fastlstm.forward(x[None].astype(np.float64), params.astype(np.float64),
                           h0.astype(np.float64), c0.astype(np.float64), device="reference")
    h, c = first()
    assert_close(h, ref.h, np.float32, "forward", f"{backend} h")
    assert_close(c, ref.c, np.float32, "forward", f"{backend} c")
    case = f"step-B{B}-I{I}-H{H}"
    weight_bytes = 4 * (4 * H * (I + H) + 4 * H)  # [W_ih | W_hh] and one bias vector
    flop = 2.0 * B * 4 * H * (I + H)
    benchmark.group = case
    benchmark.extra_info.update(case=case, mode="step", backend=backend, dtype="float32", B=B,
                                I=I, H=H, weight_bytes=weight_bytes, gflops=flop / 1e9,
                                threads=bench_timer.threads)
    if not benchmark.enabled:  # smoke run: once
        benchmark(step)
        return
    for _ in range(ITERATIONS):  # warm (caches, allocator) and size the round count
        step()
    t0 = time.perf_counter()
    for _ in range(ITERATIONS):
        step()
    rounds = bench_timer.rounds_for(time.perf_counter() - t0)
    benchmark.pedantic(step, rounds=rounds, iterations=ITERATIONS, warmup_rounds=1)
    med = benchmark.stats.stats.median
    if med > 0:
        benchmark.extra_info["gflop_per_s"] = flop / 1e9 / med
        benchmark.extra_info["weight_gb_per_s"] = weight_bytes / 1e9 / med
