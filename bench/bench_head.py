"""The fused output head (dense -> softmax cross-entropy, forward + backward): ours
(``fastlstm.head``, CPU) against the NumPy reference (``device="reference"``) and torch
(``nn.Linear`` + ``cross_entropy`` + autograd).

Each benchmark first checks the loss and the gradients against the NumPy reference (the
fastlstm.testing tolerance rule), then times one forward + backward. Groups are case names;
``extra_info`` carries the sizes and ``gflops`` (the three GEMMs: 6 N H V flop).

``blas-floor`` is not a head: it times the three products alone (``y W^T``, ``G W``, ``y^T G``
or ``G^T y``) into preallocated arrays, split over the threads as ours splits them, with
SciPy's OpenBLAS: the floor under our time (what the row passes, allocation and hand-offs
add is ours minus it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from fastlstm import head
from fastlstm.testing import assert_close


@dataclass(frozen=True)
class HeadCase:
    N: int
    H: int
    V: int
    dtype: str = "float32"
    quick: bool = False

    @property
    def name(self) -> str:
        return f"head-N{self.N}-H{self.H}-V{self.V}-{self.dtype}"

    def gflop(self) -> float:
        return 6.0 * self.N * self.H * self.V / 1e9

    def inputs(self):
        rng = np.random.default_rng(0)
        dt = np.dtype(self.dtype)
        y = rng.standard_normal((self.N, self.H)).astype(dt)
        W = (rng.standard_normal((self.V, self.H)) / np.sqrt(self.H)).astype(dt)
        b = (rng.standard_normal(self.V) * 0.1).astype(dt)
        t = rng.integers(0, self.V, self.N)
        return y, W, b, t


CASES = [
    HeadCase(256, 64, 64, quick=True),
    HeadCase(512, 64, 10_000, quick=True),
    HeadCase(32_768, 256, 64),
    HeadCase(32_768, 256, 64, "float64"),
    HeadCase(4_096, 256, 10_000),
    HeadCase(32_768, 256, 10_000),
]
BACKENDS = ("fastlstm", "reference", "torch", "blas-floor")


def _floor_runner(y, W):
    """The three products of one forward + backward, on ours's row blocks and threads."""
    from fastlstm.kernels.cpu.head import grad_gemms
    from fastlstm.kernels.cpu.parallel import (matmul_into, run_tasks, single_threaded_blas,
                                               split_rows)
    N, H = y.shape
    V = W.shape[0]
    parts = split_rows(N, head._threads(N, H, V))
    g = np.empty((N, V), y.dtype)
    g.fill(1e-3)
    dy = np.empty((N, H), y.dtype)
    shape = (H, V) if head._dw_transposed(V, H, y.dtype) else (V, H)
    dws = [np.zeros(shape, y.dtype) for _ in parts]

    def fwd(r0, r1):
        matmul_into(y[r0:r1], W.T, g[r0:r1])

    def bwd(r0, r1, dw):
        grad_gemms(g[r0:r1], W, y[r0:r1], dy[r0:r1], dw)

    def run():
        with single_threaded_blas():
            run_tasks(fwd, parts)
            run_tasks(bwd, [(r0, r1, d) for (r0, r1), d in zip(parts, dws)])
    return run


def _runner(backend, y, W, b, t, threads):
    if backend == "blas-floor":
        return _floor_runner(y, W)
    if backend in ("fastlstm", "reference"):
        device = "cpu" if backend == "fastlstm" else "reference"

        def run():
            res = head.dense_softmax_xent(y, W, b, t, device=device)
            return (res.loss, *head.dense_softmax_xent_backward(res.cache))
        return run
    import torch
    torch.set_num_threads(threads)
    yt = torch.from_numpy(y).requires_grad_(True)
    lin = torch.nn.Linear(y.shape[1], W.shape[0]).to(yt.dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W))
        lin.bias.copy_(torch.from_numpy(b))
    tt = torch.from_numpy(t)

    def run():
        yt.grad = lin.weight.grad = lin.bias.grad = None
        loss = torch.nn.functional.cross_entropy(lin(yt), tt)
        loss.backward()
        return (loss.item(), yt.grad.numpy(), lin.weight.grad.numpy(), lin.bias.grad.numpy())
    return run


PARAMS = [pytest.param(case, backend, id=f"{case.name}-{backend}",
                       marks=[pytest.mark.quick] if case.quick else [])
          for case in CASES for backend in BACKENDS]


@pytest.mark.parametrize("case, backend", PARAMS)
def test_head(benchmark, bench_timer, peer_threads, bench_threads, case, backend):
    threads = peer_threads(backend) or bench_threads
    y, W, b, t = case.inputs()
    run = _runner(backend, y, W, b, t, threads)
    if backend not in ("reference", "blas-floor"):
        ref = _runner("reference", y, W, b, t, threads)()
        out = run()
        dt = np.dtype(case.dtype)
        assert abs(out[0] - ref[0]) <= (1e-10 if dt == np.float64 else 2e-5) * max(1.0, abs(ref[0]))
        for name, a, r in zip(("dy", "dW", "db"), out[1:], ref[1:]):
            assert_close(a, r, dt, "grad", what=f"{case.name} {backend} {name}")
    benchmark.group = case.name
    benchmark.extra_info.update(N=case.N, H=case.H, V=case.V, dtype=case.dtype, backend=backend,
                                gflops=case.gflop())
    bench_timer.run(benchmark, run, case.gflop())
