"""Without a usable GPU (and without the simulator): ``import fastlstm`` works, the CUDA backend
module imports, and ``device="cuda"`` raises a clear RuntimeError naming what is missing.

Runs in a subprocess with ``NUMBA_ENABLE_CUDASIM`` unset (this process may be simulating)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = r"""
import numpy as np
import fastlstm
import fastlstm.backends.cuda  # importable without a GPU
from numba import cuda
assert not cuda.is_available(), "a GPU is usable here"
assert "cuda" not in fastlstm.available_devices()
p = fastlstm.LSTMParams.init(3, 4, seed=0)
try:
    fastlstm.forward(np.ones((2, 1, 3), np.float32), p, device="cuda")
except RuntimeError as exc:
    print("RUNTIME_ERROR:", exc)
else:
    print("NO_ERROR")
"""


@pytest.mark.no_numba_cuda_ok
def test_cuda_without_gpu_is_a_clear_runtime_error(real_gpu):
    if real_gpu:
        pytest.skip("a real CUDA GPU is present")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "RUNTIME_ERROR: device='cuda' is not available" in out, out
    assert "GPU" in out or "numba" in out, out  # names what is missing
