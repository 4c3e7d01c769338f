"""The benchmark case registry and runners, shared by the benchmarks, the tests and
``python -m fastlstm``.

The definitions live in :mod:`fastlstm.harness` (inside the installed package, so the
command-line tool has them without this checkout); this module is the name the suites import
them by.

    Case(name, T, B, I, H, num_layers=1, bidirectional=False, proj_size=0, lengths=False,
         dtype="float32", quick=False)
    case.make_inputs(seed) -> Inputs(params, x, h0, c0, lengths, dy, dh, dc)   random, never zeros
    case.flops(mode)       -> useful FLOPs of one call: forward 2*N*4H*(I_l + H_out) per layer and
                              direction (+ 2*N*H*P with a projection), N = valid steps x batch;
                              backward = 2 x forward; fwd_bwd = 3 x forward
"""
from fastlstm.harness import (BACKENDS, CASES, CHECK_CASES, FORWARD_KEYS, MODES, QUICK,  # noqa: F401
                              Case, FastLSTMRunner, Inputs, TorchRunner, available_backends,
                              compare_outputs, expected_keys, get_case, make_runner,
                              reference_outputs, torch_available)

#: What bench/bench_lstm.py times (the CUDA backend has its own suite, bench/bench_cuda.py).
BENCH_BACKENDS = ("reference", "cpu", "torch")
