"""The big GEMMs of the GPU backend: ``C (+)= op(A) @ op(B) (+ bias)``.

Two implementations behind :func:`matmul`:

* ``"numba"``: a tiled numba.cuda kernel. Each block computes a ``BM x BN`` tile of C from
  ``BK``-deep shared-memory tiles of A and B; each thread accumulates ``TM x TN`` outputs in
  registers (rows ``ty + i*BM/TM``, columns ``tx + j*BN/TN``, so global writes are coalesced).
  Real GPU: 64x64x16 tiles, 4x4 per thread (256 threads). Simulator: 8x8x4 tiles, 2x2 per
  thread (the same code with smaller constants; the simulator runs a Python thread per GPU thread).
* ``"cupy"``: cuBLAS through CuPy (zero-copy views of the same device memory).

Selection: :func:`matmul`'s ``backend`` argument: ``"auto"`` (CuPy when importable and not
simulating, else numba), ``"numba"`` or ``"cupy"`` (``fastlstm.config.CUDAConfig.gemm``).

Shapes: ``C`` (M, N); ``A`` (M, K), or (K, M) with ``trans_a``; ``B`` (K, N), or (N, K) with
``trans_b``; ``bias`` (N,). Any strides (column slices of a wider matrix are fine).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import cuda, float32

from .recurrence import _simulating

_ZERO = np.float32(0.0)
_MAX_GRID_Y = 65535  # CUDA's limit for gridDim.y (and z); gridDim.x goes to 2**31 - 1


@cuda.jit(device=True, inline=True)
def _load_tile(X, s, k_major, o0, n_outer, k0, K, tid, NT, BO, BK):
    """Stages a ``BO x BK`` tile of a matrix with logical shape (n_outer, K) into the shared
    ``s[kk, r]`` (0 outside the matrix), rows from ``o0`` and depth from ``k0``. ``k_major``:
    stored (K, n_outer), else (n_outer, K); either way consecutive threads walk the stored
    array's last index (coalesced reads). Holds no barrier: the caller syncs after both tiles."""
    for idx in range(tid, BO * BK, NT):
        if k_major:
            kk = idx // BO
            r = idx % BO
        else:
            r = idx // BK
            kk = idx % BK
        o = o0 + r
        k = k0 + kk
        v = _ZERO
        if o < n_outer and k < K:
            if k_major:
                v = X[k, o]
            else:
                v = X[o, k]
        s[kk, r] = v


def _make_gemm(BM, BN, BK, TM, TN):
    NTX = BN // TN
    NTY = BM // TM
    NT = NTX * NTY
    PA = BM + 1  # padded rows: the transposing tile stores hit distinct banks
    PB = BN + 1

    @cuda.jit
    def gemm(A, B, C, bias, trans_a, trans_b, accumulate, has_bias):
        M = C.shape[0]
        N = C.shape[1]
        K = A.shape[0] if trans_a else A.shape[1]
        sA = cuda.shared.array((BK, PA), dtype=float32)
        sB = cuda.shared.array((BK, PB), dtype=float32)
        acc = cuda.local.array((TM, TN), dtype=float32)
        ra = cuda.local.array(TM, dtype=float32)
        rb = cuda.local.array(TN, dtype=float32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * NTX + tx
        m0 = cuda.blockIdx.x * BM  # M (T*B rows: may be millions) on x: gridDim.x < 2**31
        n0 = cuda.blockIdx.y * BN  # N on y: gridDim.y <= 65535 (checked by matmul)
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = _ZERO
        for k0 in range(0, K, BK):
            # op(A) is (M, K): K-major when A is stored (K, M); op(B)^T is (N, K): K-major
            # when B is stored as is, (K, N).
            _load_tile(A, sA, trans_a, m0, M, k0, K, tid, NT, BM, BK)
            _load_tile(B, sB, not trans_b, n0, N, k0, K, tid, NT, BN, BK)
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(TM):
                    ra[i] = sA[kk, ty + i * NTY]
                for j in range(TN):
                    rb[j] = sB[kk, tx + j * NTX]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += ra[i] * rb[j]
            cuda.syncthreads()
        for i in range(TM):
            m = m0 + ty + i * NTY
            if m < M:
                for j in range(TN):
                    n = n0 + tx + j * NTX
                    if n < N:
                        v = acc[i, j]
                        if has_bias:
                            v += bias[n]
                        if accumulate:
                            v += C[m, n]
                        C[m, n] = v

    return gemm, (NTX, NTY), (BM, BN)


@lru_cache(maxsize=None)
def _gemm_kernel(sim: bool):
    return _make_gemm(8, 8, 4, 2, 2) if sim else _make_gemm(64, 64, 16, 4, 4)


@cuda.jit
def colsum(A, out):
    """``out[n] += sum_m A[m, n]`` (out must start at 0). Block (32, ny); grid (ceil(N/32), gy)."""
    n = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if n >= A.shape[1]:
        return
    acc = _ZERO
    step = cuda.gridDim.y * cuda.blockDim.y
    for m in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, A.shape[0], step):
        acc += A[m, n]
    cuda.atomic.add(out, n, acc)


def column_sums(A):
    """Sums over the rows of a 2-D device array: a new (N,) float32 device array."""
    M, N = A.shape
    out = cuda.to_device(np.zeros(N, np.float32))
    if M == 0 or N == 0:
        return out  # a zero-size grid is a launch error on a GPU
    if _simulating():  # several blocks in x and y, as on a GPU (atomics across blocks)
        colsum[((N + 3) // 4, 2), (4, 2)](A, out)
    else:
        gy = max(1, min(64, (M + 255) // 256))
        colsum[((N + 31) // 32, gy), (32, 8)](A, out)
    return out


def _cupy():
    try:
        import cupy
    except Exception:  # ImportError, or a CuPy without a usable CUDA runtime
        return None
    return cupy


def resolve(choice: str = "auto") -> str:
    """The GEMM implementation ``choice`` gives here: ``"numba"`` or ``"cupy"``."""
    if choice not in ("auto", "numba", "cupy"):
        raise ValueError(f"GEMM backend must be 'auto', 'numba' or 'cupy', got {choice!r}")
    if choice == "numba":
        return "numba"
    if _simulating():
        if choice == "cupy":
            raise RuntimeError("the CuPy GEMM path needs a real GPU (NUMBA_ENABLE_CUDASIM is set)")
        return "numba"
    if _cupy() is None:
        if choice == "cupy":
            raise RuntimeError("GEMM backend 'cupy' chosen but CuPy is not importable (pip install cupy-cuda12x)")
        return "numba"
    return "cupy"


def matmul(A, B, C, *, trans_a=False, trans_b=False, bias=None, accumulate=False, backend="auto"):
    """``C (+)= op(A) @ op(B) (+ bias)`` on device arrays (see the module docstring for shapes);
    ``backend``: see :func:`resolve`."""
    M, N = C.shape
    K = A.shape[0] if trans_a else A.shape[1]
    if ((A.shape[1] if trans_a else A.shape[0]) != M or (B.shape[0] if trans_b else B.shape[1]) != N
            or (B.shape[1] if trans_b else B.shape[0]) != K):
        raise ValueError(f"matmul shapes do not match: A {A.shape} (trans {trans_a}), "
                         f"B {B.shape} (trans {trans_b}), C {C.shape}")
    if M == 0 or N == 0:
        return C
    if resolve(backend) == "cupy":
        cp = _cupy()
        # The numba kernels before and after this run on the legacy default stream; run cuBLAS
        # there too, whatever CuPy stream the caller made current (a non-blocking stream would
        # not be ordered with our launches).
        with cp.cuda.Stream.null:
            a = cp.asarray(A)
            b = cp.asarray(B)
            c = cp.asarray(C)
            if trans_a:
                a = a.T
            if trans_b:
                b = b.T
            if accumulate:
                c += a @ b
            else:
                cp.matmul(a, b, out=c)
            if bias is not None:
                c += cp.asarray(bias)
        return C
    kern, (ntx, nty), (bm, bn) = _gemm_kernel(_simulating())
    has_bias = bias is not None
    if not has_bias:
        bias = C[0]  # placeholder, never read
    grid = ((M + bm - 1) // bm, (N + bn - 1) // bn)
    if grid[1] > _MAX_GRID_Y:
        raise ValueError(f"matmul: N = {N} columns is more than the numba GEMM's grid covers "
                         f"({_MAX_GRID_Y} x {bn}); use the CuPy backend")
    kern[grid, (ntx, nty)](A, B, C, bias, bool(trans_a), bool(trans_b), bool(accumulate), has_bias)
    return C
