"""The CPU backend's weight layouts: which column blocks a per-step product reads
(``block_shape``, ``col_blocks``) and each layer's weights in the layouts the kernels walk
(``_prepare``). All are derived from the parameters and memoised on them per version
(``LSTMParams.derived``); a new version (an in-place update, an optimizer step on shared torch
tensors) refills the previous version's arrays (``LSTMParams.previous``), built on first use.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import config
from ..kernels.cpu import smallgemm
from ..kernels.cpu.pack import block_columns_into, transpose_into

__all__ = ["block_shape", "col_blocks"]


def block_shape(M: int, K: int, N: int, threaded: bool = True,
                cfg: config.CPUConfig | None = None, itemsize: int = 0) -> tuple[int, int]:
    """(columns per block, rows per chunk) for the per-step product (M, K) x (K, N).

    Few rows (M <= ``micro_max_rows``, weights of ``itemsize``-byte values within
    ``micro_max_bytes``): blocks one register tile wide (``kernels/cpu/smallgemm.py``; the
    widest multiple of a vector dividing N from two vectors up to a tile, N when none does:
    narrower tiles would each wait on one chain of FMAs) and rows per chunk
    0, which tells the kernels to use that kernel instead of BLAS. Otherwise BLAS: one call
    (N, M) when the product is already under the small-matrix threshold (``small_gemm_mnk``),
    or over ``split_max_mnk`` when BLAS may thread it (``threaded``; a parallel task's BLAS is
    pinned to one thread, where blocks always win); else the widest multiple of 16 dividing N
    with M*K*width under the threshold; if even 16 columns are over it, chunks of rows under
    the threshold, in the widest of 64, 32, 16 columns that still gives ``chunk_min_rows`` rows
    (32 or 16 when none does; N when N has no such divisor).
    """
    cfg = cfg or config.current("cpu")
    if itemsize and 0 < M <= cfg.micro_max_rows and K * N * itemsize <= cfg.micro_max_bytes:
        return _tile_width(M, N, itemsize), 0
    small = cfg.small_gemm_mnk
    if M * K * N <= small or (threaded and M * K * N > cfg.split_max_mnk):
        return N, M
    best = 0
    for w in range(16, N, 16):
        if N % w == 0 and M * K * w <= small:
            best = w
    if best:
        return best, M
    widths = [w for w in (64, 32, 16) if N % w == 0 and N > w]
    if not widths:
        return N, max(1, min(M, small // (K * N)))
    w = next((w for w in widths if small // (K * w) >= cfg.chunk_min_rows),
             32 if 32 in widths else widths[-1])
    return w, max(1, min(M, small // (K * w)))


@functools.lru_cache(maxsize=256)
def _tile_width(M: int, N: int, itemsize: int) -> int:
    """Columns per block for the register-blocked kernel (see :func:`block_shape`)."""
    lanes = 64 // itemsize
    tile = smallgemm.tile_columns(itemsize, M)
    widths = [w for w in range(2 * lanes, tile + 1, lanes) if N % w == 0]
    return widths[-1] if widths else N


def col_blocks(params, key, w, M, threaded=True, cfg=None):
    """``w`` (K, N) as contiguous column blocks (n, K, N/n) for products with M rows, and the
    rows per chunk (``block_shape``); memoised on the params (``LSTMParams.derived``). A single
    block for BLAS is a view of a writable ``w`` (a read-only one, e.g. a parameter, is copied
    once: the kernels are compiled for writable arrays); blocks for the few-rows kernel are
    always a 64-byte aligned copy."""
    K, N = w.shape
    if K == 0:
        return np.empty((0, 0, 0), w.dtype), max(M, 1)
    nb, mb = block_shape(M, K, N, threaded, cfg, w.dtype.itemsize)
    if nb == N and w.flags.writeable and mb > 0:
        return w.reshape(1, K, N), mb
    dkey = ("cpu", "blocks", key, nb)
    blocks = params.derived(dkey, lambda: _blocked(w, nb, params.previous(dkey)))
    return blocks, mb


def _blocked(w, nb, old=None):
    """``w`` (K, N) as column blocks (N/nb, K, nb), 64-byte aligned (``smallgemm``); into
    ``old`` when it has that shape and dtype."""
    K, N = w.shape
    out = _reusable(old, (N // nb, K, nb), w.dtype)
    block_columns_into(w, out)
    return out


def _reusable(old, shape, dtype) -> np.ndarray:
    """``old`` when it is an array of ``shape`` and ``dtype`` (the previous version's buffer,
    refilled in place), else a new 64-byte aligned one."""
    if old is not None and old.shape == shape and old.dtype == dtype:
        return old
    return smallgemm.aligned_empty(shape, dtype)


def _aligned(w, old=None) -> np.ndarray:
    """A C-contiguous, 64-byte aligned copy of ``w`` (into ``old`` when it fits)."""
    out = _reusable(old, w.shape, w.dtype)
    np.copyto(out, w)
    return out


def _aligned_t(w, old=None) -> np.ndarray:
    """:func:`_aligned` of ``w.T`` (2-D ``w``), by the tiled transpose (``kernels/cpu/pack.py``)."""
    out = _reusable(old, (w.shape[1], w.shape[0]), w.dtype)
    transpose_into(w, out)
    return out


class _Prepared:
    """One layer's weights in the layouts the kernels walk contiguously, per direction. The
    stored ones are the parameters' own (read-only) arrays; the others are built on first use,
    since each path reads only some of them (transposes cost ~1.5 ns per element on this
    project's machines: bench/NOTES.md, "fastlstm.torch"), into the previous version's arrays
    where they fit (a training step changes values, never shapes).

    Stored: ``w_ih`` (4H, I), ``w_hh`` (4H, H_out), ``w_hr`` (P, H) or (0, 0); ``bias`` (4H,)
    ``b_ih + b_hh`` (zeros without biases). Built: ``w_ih_t`` (I, 4H), ``w_ih_cat_t`` (I, D*4H)
    both directions (the serial path's input GEMM), ``w_hh_t`` (H_out, 4H), ``w_hr_t`` (H, P)
    or (0, 0). (BLAS reading the stored ``W_ih`` transposed instead was slower on small
    products: 19 vs 12 us for (100, 32) x (32, 256); a repeated inference call would pay that
    every time, the transpose is paid once per version.)"""

    def __init__(self, params, layer, old):
        D, dt = params.num_directions, params.dtype
        ws = [params.layer_weights(layer, d) for d in range(D)]
        self._dt = dt
        # what the previous version built (never its own leftovers: no chain of versions)
        self._spare = {k: v for k, v in vars(old).items() if not k.startswith("_")} \
            if old is not None else {}
        self.w_ih = [w[0] for w in ws]
        self.w_hh = [w[1] for w in ws]
        self.w_hr = [w[4] if w[4] is not None else np.empty((0, 0), dt) for w in ws]
        old_bias = self._spare.pop("bias", [None] * D)
        self.bias = []
        for (_, wh, bi, bh, _), ob in zip(ws, old_bias):
            b = _reusable(ob, (wh.shape[0],), dt)
            if bi is not None:
                np.add(bi, bh, out=b)
            else:
                b.fill(0)
            self.bias.append(b)

    def _was(self, name, d=None):
        old = self._spare.get(name)
        return old if d is None or old is None else old[d]

    @functools.cached_property
    def w_ih_t(self):
        return [_aligned_t(w, self._was("w_ih_t", d)) for d, w in enumerate(self.w_ih)]

    @functools.cached_property
    def w_ih_cat_t(self):
        if len(self.w_ih) == 1:
            return self.w_ih_t[0]
        w = self.w_ih_t
        out = _reusable(self._was("w_ih_cat_t"), (w[0].shape[0], sum(a.shape[1] for a in w)),
                        self._dt)
        np.concatenate(w, axis=1, out=out)
        return out

    @functools.cached_property
    def w_hh_t(self):
        return [_aligned_t(w, self._was("w_hh_t", d)) for d, w in enumerate(self.w_hh)]

    @functools.cached_property
    def w_hr_t(self):
        return [_aligned_t(w, self._was("w_hr_t", d)) if w.size else np.empty((0, 0), self._dt)
                for d, w in enumerate(self.w_hr)]


def _prepare(params, layer) -> _Prepared:
    key = ("cpu", "layer", layer)
    return params.derived(key, lambda: _Prepared(params, layer, params.previous(key)))
