"""Products with a few rows, ``y = a @ W``, with the accumulators held in registers.

At batch 1-8 the per-step products of the recurrence (``h @ W_hh^T`` forward, ``dgates @ W_hh``
backward) and of the step kernel are bound by streaming the weights from the L2 cache: every
weight is used once per step per row. OpenBLAS sustains 45-60 GB/s on them on this project's
machines, plus a fixed ~0.4 us per call. The kernel here reads W once per row group of up to 4
rows, in tiles of 4 SIMD vectors (64 float32 / 32 float64 columns; 8 for 1-2 rows), keeping
the vector accumulators in registers over the whole K loop; no packing, no call overhead. It
reaches the L2 stream rate (70-105 GB/s) when W is laid out in column blocks exactly one tile
wide: each tile then reads a contiguous stream (``fastlstm/backends/cpu.py::block_shape``
picks that layout for products of at most ``CPUConfig.micro_max_rows`` rows). Measured against
the BLAS call in bench/NOTES.md ("Few rows") and bench/bench_smallgemm.py.

The tile is written as LLVM vector IR (``numba.extending.intrinsic``): Numba's own loops keep
such accumulators in memory (W and y might alias), which caps them at 32-40 GB/s. 512-bit
vectors are emitted; LLVM splits them on machines with narrower registers.

``micro_dot(a, w, y, yc, acc=False)``: ``y[:, yc:yc + N] = a @ w`` (``+=`` with ``acc``) for
``a`` (M, K), ``w`` (K, N), ``y`` (M, .), all with unit stride along rows (the inner axis).
With ``acc`` a product split over ranges of K in successive calls does exactly the FMAs of one
call. Under ``NUMBA_DISABLE_JIT`` it is ``np.dot``.
"""
import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import jit

__all__ = ["micro_dot", "bdot", "TILE_BYTES", "tile_columns", "aligned_empty", "aligned_zeros"]

#: Bytes of one tile's row: 4 vectors of 64 bytes.
TILE_BYTES = 256
_VECTOR_BYTES = 64
_MAX_ROWS = 4
_MAX_VECTORS = 4

_OPTS = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})


def tile_columns(itemsize: int, rows: int = 4) -> int:
    """Columns of one full tile for products of ``rows`` rows: 4 vectors (64 float32 / 32
    float64 columns), 8 vectors for 1-2 rows."""
    return (2 if rows <= 2 else 1) * TILE_BYTES // itemsize


@jit(cache=True, nogil=True)
def _address(a):
    """The address of a 1-D array's data (7x cheaper than ``a.ctypes.data`` from Python)."""
    return a.ctypes.data


def aligned_empty(shape, dtype) -> np.ndarray:
    """A C-contiguous array whose data starts on a 64-byte boundary (contents undefined). The
    kernel's vector loads then stay within cache lines wherever a row's length in bytes is a
    multiple of 64: 1.5-1.65x faster than the same weights at NumPy's 16-byte alignment
    (bench/NOTES.md)."""
    dt = np.dtype(dtype)
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    n = math.prod(shape)
    raw = np.empty(n + 64 // dt.itemsize, dt)
    skip = (-_address(raw) % 64) // dt.itemsize
    return raw[skip:skip + n].reshape(shape)


def aligned_zeros(shape, dtype) -> np.ndarray:
    """:func:`aligned_empty`, zeroed."""
    out = aligned_empty(shape, dtype)
    out.fill(0)
    return out


def _row_pointer(builder, ary, row, col, fty):
    """Address of ``ary[row, col]`` (a 2-D array with unit inner stride) as ``fty*``."""
    i8p = ir.IntType(8).as_pointer()
    stride0 = cgutils.unpack_tuple(builder, ary.strides, 2)[0]
    base = builder.bitcast(ary.data, i8p)
    p = builder.gep(base, [builder.mul(row, stride0)])
    return builder.gep(builder.bitcast(p, fty.as_pointer()), [col])


def _make_tile(R: int, V: int):
    """An intrinsic ``tile(a, r0, w, wc, y, yc, acc)``: for rows r0..r0+R-1 and V vectors of
    columns, ``y[r, yc:yc + V*lanes] (+)= a[r, :K] @ w[:, wc:wc + V*lanes]`` (K =
    ``a.shape[1]`` > 0; ``acc``: the accumulators start from y's values instead of 0, so a
    product split over ranges of K in successive calls does the same FMAs as one call)."""

    @intrinsic
    def tile(typingctx, a, r0, w, wc, y, yc, acc):
        sig = types.void(a, r0, w, wc, y, yc, types.boolean)

        def codegen(context, builder, signature, args):
            a_, r0_, w_, wc_, y_, yc_, acc_ = args
            aty, _, wty, _, yty, _, _ = signature.args
            fty = context.get_value_type(aty.dtype)
            itemsize = context.get_abi_sizeof(fty)
            lanes = _VECTOR_BYTES // itemsize
            vty = ir.VectorType(fty, lanes)
            i64 = ir.IntType(64)
            align = itemsize
            aa = context.make_array(aty)(context, builder, a_)
            wa = context.make_array(wty)(context, builder, w_)
            ya = context.make_array(yty)(context, builder, y_)
            K = cgutils.unpack_tuple(builder, aa.shape, 2)[1]
            wstride = cgutils.unpack_tuple(builder, wa.strides, 2)[0]
            name = "llvm.fmuladd.v%d%s" % (lanes, "f32" if itemsize == 4 else "f64")
            fma = cgutils.get_or_insert_function(builder.module,
                                                 ir.FunctionType(vty, [vty] * 3), name)
            arows = [_row_pointer(builder, aa, builder.add(r0_, ir.Constant(i64, r)),
                                  ir.Constant(i64, 0), fty) for r in range(R)]
            w0 = builder.bitcast(_row_pointer(builder, wa, ir.Constant(i64, 0), wc_, fty),
                                 ir.IntType(8).as_pointer())
            zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * lanes)
            yrows = [_row_pointer(builder, ya, builder.add(r0_, ir.Constant(i64, r)), yc_, fty)
                     for r in range(R)]
            start = [[builder.select(acc_, builder.load(builder.bitcast(
                builder.gep(yrows[r], [ir.Constant(i64, v * lanes)]), vty.as_pointer()),
                align=align), zero) for v in range(V)] for r in range(R)]
            splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            undef = ir.Constant(vty, ir.Undefined)
            pre = builder.block
            loop = builder.append_basic_block("tile.loop")
            done = builder.append_basic_block("tile.done")
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(i64)
            k.add_incoming(ir.Constant(i64, 0), pre)
            acc = [[builder.phi(vty) for _ in range(V)] for _ in range(R)]
            for r in range(R):
                for v in range(V):
                    acc[r][v].add_incoming(start[r][v], pre)
            wrow = builder.bitcast(builder.gep(w0, [builder.mul(k, wstride)]), fty.as_pointer())
            wv = [builder.load(builder.bitcast(builder.gep(wrow, [ir.Constant(i64, v * lanes)]),
                                               vty.as_pointer()), align=align)
                  for v in range(V)]
            new = []
            for r in range(R):
                xs = builder.load(builder.gep(arows[r], [k]), align=align)
                xb = builder.shuffle_vector(
                    builder.insert_element(undef, xs, ir.Constant(ir.IntType(32), 0)), undef, splat)
                new.append([builder.call(fma, [xb, wv[v], acc[r][v]]) for v in range(V)])
            k1 = builder.add(k, ir.Constant(i64, 1))
            end = builder.block
            k.add_incoming(k1, end)
            for r in range(R):
                for v in range(V):
                    acc[r][v].add_incoming(new[r][v], end)
            builder.cbranch(builder.icmp_signed("<", k1, K), loop, done)
            builder.position_at_end(done)
            for r in range(R):
                yrow = yrows[r]
                for v in range(V):
                    ptr = builder.bitcast(builder.gep(yrow, [ir.Constant(i64, v * lanes)]),
                                          vty.as_pointer())
                    builder.store(new[r][v], ptr, align=align)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# R x V tiles: 1-2 rows of up to 8 vectors, or 4 rows of up to 4 (at most 16 accumulators,
# leaving registers for the loaded weights; one row's 4 accumulators would each wait on a
# chain of K dependent FMAs, 8 keep the loads in flight). Other shapes are made of these:
# 3 rows as 2 + 1, tails of 3 vectors as 2 + 1 (fewer variants: each one costs compile time).
_T = {(r, v): _make_tile(r, v) for r in (1, 2, 4) for v in (1, 2, 4, 8) if r < 4 or v < 8}
_t11, _t12, _t14, _t18 = (_T[1, v] for v in (1, 2, 4, 8))
_t21, _t22, _t24, _t28 = (_T[2, v] for v in (1, 2, 4, 8))
_t41, _t42, _t44 = (_T[4, v] for v in (1, 2, 4))


@jit(inline="always", **_OPTS)
def _tile(R, V, a, r0, w, wc, y, yc, acc):
    """One tile: R in (1, 2, 4) rows, V in (1, 2, 4, 8) vectors (8 only with R <= 2)."""
    if R == 4:
        if V == 4:
            _t44(a, r0, w, wc, y, yc, acc)
        elif V == 2:
            _t42(a, r0, w, wc, y, yc, acc)
        else:
            _t41(a, r0, w, wc, y, yc, acc)
    elif R == 2:
        if V == 8:
            _t28(a, r0, w, wc, y, yc, acc)
        elif V == 4:
            _t24(a, r0, w, wc, y, yc, acc)
        elif V == 2:
            _t22(a, r0, w, wc, y, yc, acc)
        else:
            _t21(a, r0, w, wc, y, yc, acc)
    else:
        if V == 8:
            _t18(a, r0, w, wc, y, yc, acc)
        elif V == 4:
            _t14(a, r0, w, wc, y, yc, acc)
        elif V == 2:
            _t12(a, r0, w, wc, y, yc, acc)
        else:
            _t11(a, r0, w, wc, y, yc, acc)


@jit(**_OPTS)
def _micro_dot(a, w, y, yc, acc=False):
    M, K = a.shape
    N = w.shape[1]
    if M == 0 or N == 0:
        return
    if K == 0:
        if not acc:
            y[:, yc:yc + N] = 0.0
        return
    lanes = _VECTOR_BYTES // a.itemsize
    full = N - N % lanes  # columns the vector tiles cover
    vmax = 2 * _MAX_VECTORS if M <= 2 else _MAX_VECTORS
    c = 0
    while c < full:
        left = (full - c) // lanes
        V = vmax if left >= vmax else (4 if left >= 4 else (2 if left >= 2 else 1))
        r = 0
        while r < M:
            R = 4 if M - r >= 4 else (2 if M - r >= 2 else 1)
            _tile(R, V, a, r, w, c, y, yc + c, acc)
            r += R
        c += V * lanes
    for c in range(full, N):  # fewer columns than a vector: plain dot products
        for r in range(M):
            if acc:
                s = y[r, yc + c] + a[r, 0] * w[0, c]
            else:
                s = a[r, 0] * w[0, c]
            for k in range(1, K):
                s += a[r, k] * w[k, c]
            y[r, yc + c] = s


if numba.config.DISABLE_JIT:
    def micro_dot(a, w, y, yc, acc=False):
        """``y[:, yc:yc + N] (+)= a @ w`` (NumPy: the JIT is disabled)."""
        if acc:
            y[:, yc:yc + w.shape[1]] += np.dot(a, w)
        else:
            y[:, yc:yc + w.shape[1]] = np.dot(a, w)
else:
    micro_dot = _micro_dot


@jit(**_OPTS)
def bdot(a, wb, zp, out, mb):
    """``out = a @ W`` where ``wb`` (n, K, N/n) holds W's column blocks, issued in row chunks
    of ``mb`` rows; ``zp`` (n, B, N/n) is scratch. With n == 1 the products go straight into
    ``out``; one BLAS call in all when also mb >= B. ``mb == 0``: few rows, the
    register-blocked kernel (:func:`micro_dot`), block by block straight into ``out``."""
    n = wb.shape[0]
    B = a.shape[0]
    if mb == 0:
        nb = wb.shape[2]
        # the types the two-core kernels pass too (rows of a strided view, ``acc`` a runtime
        # bool), so the tiles compile once per dtype
        av = a[:, :a.shape[1]]
        for i in range(n):
            micro_dot(av, wb[i], out, i * nb, i < 0)
        return
    if n == 1:
        for r0 in range(0, B, mb):
            r1 = min(r0 + mb, B)
            np.dot(a[r0:r1], wb[0], out[r0:r1])
        return
    nb = wb.shape[2]
    for i in range(n):
        for r0 in range(0, B, mb):
            r1 = min(r0 + mb, B)
            np.dot(a[r0:r1], wb[i], zp[i, r0:r1])
    for b in range(B):
        ob = out[b]
        for i in range(n):
            zb = zp[i, b]
            for q in range(nb):
                ob[i * nb + q] = zb[q]
