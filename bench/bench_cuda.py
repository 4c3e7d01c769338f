"""GPU benchmarks: fastlstm's CUDA backend against torch cuDNN (TF32 off and on) and fastlstm's CPU
backend. Skipped entirely without a real CUDA GPU (and under the simulator).

Grid: T = 512, B in {1, 8, 64, 256}, H in {256, 512, 1024}, I = H, one unidirectional layer,
float32; modes ``infer`` (forward, training=False) and ``fwd_bwd`` (training forward + backward).

Backends:

``cuda``             fastlstm, device arrays in and out, ``recurrence="auto"`` (persistent kernel
                     for small-batch inference when it fits), default GEMM (cuBLAS via CuPy when
                     installed, else the numba tiled GEMM; recorded as ``gemm`` in extra_info)
``cuda-multi``       fastlstm with ``recurrence="multi"`` forced (``fastlstm.config``; infer
                     only: what the persistent kernel buys)
``torch-cudnn``      ``torch.nn.LSTM`` on the GPU, ``torch.backends.cudnn.allow_tf32 = False``
``torch-cudnn-tf32`` the same with TF32 allowed (torch's default for cuDNN)
``cpu``              fastlstm's CPU backend (host arrays); skipped above ``CPU_MAX_GFLOP``

GPU timings include a device synchronisation after each call; inputs are already on the GPU.
Before timing, every backend is checked against the NumPy reference on the same configuration
with T = 8 (fastlstm.testing's float32 tolerances; ``TF32_TOLERANCE`` for the TF32 backend).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from fastlstm import config

from .cases import (FORWARD_KEYS, Case, FastLSTMRunner, TorchRunner, compare_outputs, make_runner,
                    reference_outputs)


def _no_gpu_reason():
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return "NUMBA_ENABLE_CUDASIM is set: GPU timings need a real GPU"
    try:
        from numba import cuda
    except ImportError:
        return "numba-cuda is not installed"
    try:
        if not cuda.is_available():
            return "no usable CUDA GPU (numba.cuda.is_available() is False)"
    except Exception as exc:  # pragma: no cover
        return f"CUDA is not usable: {exc}"
    return None


_REASON = _no_gpu_reason()
if _REASON is not None:
    pytest.skip(f"bench_cuda: {_REASON}", allow_module_level=True)

T = 512
BATCHES = (1, 8, 64, 256)
HIDDEN = (256, 512, 1024)
MODES = ("infer", "fwd_bwd")
BACKENDS = ("cuda", "cuda-multi", "torch-cudnn", "torch-cudnn-tf32", "cpu")
CPU_MAX_GFLOP = 400.0     # the CPU backend only where one call takes seconds, not minutes
TF32_TOLERANCE = 2e-2     # relative norm error allowed for TF32 (10-bit mantissa products)
CHECK_T = 8

CASES = [Case.from_size(T, B, H, H) for H in HIDDEN for B in BATCHES]
PARAMS = [pytest.param(case, mode, backend, id=f"{case.name}-{mode}-{backend}")
          for case in CASES for mode in MODES for backend in BACKENDS
          if not (backend == "cuda-multi" and mode != "infer")]

_REF = {}


def _check_case(case: Case) -> Case:
    return dataclasses.replace(case, T=CHECK_T, name=f"{case.name}_check")


def _reference(case: Case):
    """(inputs, reference outputs) of the small-T check configuration, once per case."""
    c = _check_case(case)
    if c.name not in _REF:
        inputs = c.make_inputs(seed=0)
        _REF[c.name] = (inputs, reference_outputs(c, inputs))
    return _REF[c.name]


class CudaRunner(FastLSTMRunner):
    """fastlstm on the GPU with device-resident inputs (each call ends with a synchronisation),
    with the recurrence path ``recurrence`` ("auto" or "multi") in force during the call."""

    def __init__(self, case, mode, inputs, recurrence="auto"):
        super().__init__(case, mode, "cuda", inputs, resident=True)
        self.recurrence = recurrence

    def __call__(self):
        with config.options("cuda", recurrence=self.recurrence):
            return super().__call__()


def _runner(case, mode, backend, inputs):
    if backend == "cuda":
        return CudaRunner(case, mode, inputs, "auto")
    if backend == "cuda-multi":
        return CudaRunner(case, mode, inputs, "multi")
    if backend.startswith("torch-cudnn"):
        pytest.importorskip("torch", reason="torch is not installed")
        import torch
        if not torch.cuda.is_available():
            pytest.skip("torch cannot use a GPU here (torch.cuda.is_available() is False: a "
                        "CPU-only build of torch, or no driver)")
        return TorchRunner(mode, inputs, device="cuda", tf32=backend.endswith("tf32"))
    if backend == "cpu":
        return make_runner(case, mode, "cpu", inputs)
    raise ValueError(backend)


@pytest.mark.parametrize("case, mode, backend", PARAMS)
def test_cuda_lstm(benchmark, bench_timer, case, mode, backend):
    if backend == "cpu" and case.gflop(mode) > CPU_MAX_GFLOP:
        pytest.skip(f"cpu backend: {case.gflop(mode):.0f} GFLOP per call is above CPU_MAX_GFLOP "
                    f"({CPU_MAX_GFLOP:.0f}): too slow to time")
    # correctness first, on the same configuration with T = CHECK_T
    check_inputs, ref = _reference(case)
    small = _runner(_check_case(case), mode, backend, check_inputs)
    out = small.outputs(small())
    errs = {}
    for key, err, tol, ok in compare_outputs(out, ref, np.float32, mode):
        errs[key] = err
        if backend == "torch-cudnn-tf32":
            ok = err <= TF32_TOLERANCE and np.all(np.isfinite(out[key]))
        assert ok, f"{case.name} {backend} {mode} {key}: relative error {err:.3e} > tolerance"
    del small, out
    runner = _runner(case, mode, backend, case.make_inputs(seed=0))
    extra = dict(case=case.name, mode=mode, backend=backend, dtype=case.dtype, T=case.T, B=case.B,
                 I=case.I, H=case.H, gflops=case.gflop(mode),
                 max_fwd_err=max(v for k, v in errs.items() if k in FORWARD_KEYS),
                 max_grad_err=max((v for k, v in errs.items() if k not in FORWARD_KEYS), default=0.0))
    if backend.startswith("cuda"):
        from fastlstm.kernels.cuda import gemm
        result, _ = runner()  # warm: compiles, uploads weights; the result names the path taken
        extra.update(gemm=gemm.resolve(config.current("cuda").gemm),
                     recurrence=",".join(result.paths))
    benchmark.group = f"{case.name}-{mode}"
    benchmark.extra_info.update(extra)
    bench_timer.run(benchmark, runner, case.gflop(mode))
