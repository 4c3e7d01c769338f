"""Packing weights into the layouts the kernels read: a cache-blocked transpose.

Each parameter version is packed once (``fastlstm/backends/cpu.py::_prepare``); in training
that is once per optimizer step. NumPy's copy of a transposed view walks the source with a
stride of a whole row per element and ran at 1-3 GB/s on this project's machines (23 us for a
(256, 64) float32 ``W_hh``, 420 us for (1024, 256)): at H = 256 more than a forward step's
worth of time per training step. ``transpose_into`` copies square tiles small enough that the
source rows of a tile stay in L1 while it is written row by row.
"""
from .jit import jit

__all__ = ["transpose_into", "block_columns_into", "TILE"]

#: Side of a tile: 32 rows of 32 float64 (8 KB) read, 32 rows written.
TILE = 32


@jit(cache=True, nogil=True)
def transpose_into(src, dst):
    """``dst[j, i] = src[i, j]`` for ``src`` (M, N) and ``dst`` (N, M)."""
    M, N = src.shape
    for i0 in range(0, M, TILE):
        i1 = min(i0 + TILE, M)
        for j0 in range(0, N, TILE):
            j1 = min(j0 + TILE, N)
            for j in range(j0, j1):
                for i in range(i0, i1):
                    dst[j, i] = src[i, j]


@jit(cache=True, nogil=True)
def block_columns_into(w, out):
    """``out[j, k, c] = w[k, j * nb + c]`` for ``w`` (K, N) and ``out`` (N / nb, K, nb): the
    column blocks the blocked products read. NumPy's copy of the equivalent reshaped and
    transposed view took its element-by-element path (7.5 ns per element at nb = 64)."""
    n_blocks, K, nb = out.shape
    for j in range(n_blocks):
        for k in range(K):
            src = w[k, j * nb:(j + 1) * nb]
            dst = out[j, k]
            for c in range(nb):
                dst[c] = src[c]


@jit(cache=True, nogil=True)
def gather_blocks_into(w, rows, cols, out):
    """``out[i, r, c] = w[rows[r], cols[i * nb + c]]`` for ``out`` (n, R, nb): the rows and
    columns of ``w`` picked and cut into column blocks in one pass (the two-core path's
    halves, refilled in place when the weights change)."""
    n, R, nb = out.shape
    for i in range(n):
        for r in range(R):
            src = w[rows[r]]
            dst = out[i, r]
            for c in range(nb):
                dst[c] = src[cols[i * nb + c]]
