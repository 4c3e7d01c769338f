"""A serial layer's backward on two cores: the weight-gradient GEMMs run beside the recurrence.

On the serial path (one direction, a few sequences) the backward is a chain of per-step
products that one core must run in order, followed by whole-sequence GEMMs

    dx = dG W_ih,    dW_ih = dG^T x,    dW_hh = dG^T h_prev

that only need each step's gate gradients ``dG``. At batch 1-4 the two take about as long
(bench/NOTES.md, "The backward's GEMMs beside its recurrence"). So the steps are cut into
chunks (``edges``, in the recurrence's order: chunk j is the steps it runs j-th) and the GEMMs
of a chunk run as soon as the recurrence has passed it, on the other core, while the
recurrence goes on.

Control words (int64, one cache line each): ``ctrl[PROGRESS]`` the recurrence's steps done
(its ``progress`` word), ``ctrl[CLAIM]`` the next chunk nobody has claimed. Both threads run
:func:`grad_chunks` and claim chunks in order (a compare-and-swap): the other thread only
chunks the recurrence has passed, while it runs; the calling thread, after the recurrence,
whatever is left. A late or busy second core only leaves more of the GEMMs to the calling
thread, which waits at most for the one chunk the other is computing. A chunk's ``dx`` rows are its own; its weight
gradients are added into ``dw_ih``, ``dw_hh`` by a GEMM with beta = 1 (:func:`gemm_tn`), in
chunk order (``ctrl[ADDED]``: the chunks added so far), so the results do not depend on which
thread computed what, and no partial sums are kept.
"""
from __future__ import annotations

import numpy as np

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.linalg import ensure_blas, get_blas_kind

from .atomics import atomic_cas, atomic_load, atomic_store, spin_pause, yield_cpu
from .jit import jit

__all__ = ["PROGRESS", "CLAIM", "ADDED", "CTRL_SIZE", "grad_chunks", "await_chunks", "gemm_tn"]

PROGRESS, CLAIM, ADDED = 0, 8, 16
CTRL_SIZE = 24

_OPTS = dict(cache=True, nogil=True, error_model="numpy")

_char, _voidp, _intp = ir.IntType(8), ir.IntType(8).as_pointer(), cgutils.intp_t


@intrinsic
def gemm_tn(typingctx, a, b, c, beta):
    """``c = a^T b + beta c`` through the BLAS Numba's ``np.dot`` calls (``a`` (K, M), ``b`` (K,
    N), ``c`` (M, N), all C-contiguous, one float dtype; ``beta`` 0 or 1)."""
    arrays = (a, b, c)
    if not all(isinstance(t, types.Array) and t.ndim == 2 and t.layout == "C" for t in arrays) \
            or len({t.dtype for t in arrays}) != 1:
        return None
    dtype = a.dtype
    sig = types.void(a, b, c, types.float64)

    def codegen(context, builder, signature, args):
        ensure_blas()
        arrs = [context.make_array(t)(context, builder, v)
                for t, v in zip(signature.args[:3], args[:3])]
        (K, M), (_, N) = (cgutils.unpack_tuple(builder, arrs[i].shape, 2) for i in (0, 1))
        fnty = ir.FunctionType(ir.IntType(32), [_char, _char, _char, _intp, _intp, _intp,
                                                _voidp, _voidp, _intp, _voidp, _intp, _voidp,
                                                _voidp, _intp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        alpha = cgutils.alloca_once_value(builder, context.get_constant(dtype, 1.0))
        bval = context.cast(builder, args[3], types.float64, dtype)
        beta_slot = cgutils.alloca_once_value(builder, bval)
        ptr = [builder.bitcast(x.data, _voidp) for x in arrs]
        # column-major view: c^T (N, M) = b^T (N, K, as stored) times a (K, M: a^T as stored)
        builder.call(fn, (ir.Constant(_char, ord(get_blas_kind(dtype))), ir.Constant(_char, ord("n")),
                          ir.Constant(_char, ord("t")), N, M, K,
                          builder.bitcast(alpha, _voidp), ptr[1], N, ptr[0], M,
                          builder.bitcast(beta_slot, _voidp), ptr[2], N))
        return context.get_dummy_value()
    return sig, codegen


@jit(**_OPTS)
def grad_chunks(ctrl, edges, reverse, B, dg, x, hp, w_ih, dx, dw_ih, dw_hh, helper):
    """Claim chunks of steps in order and compute them: for chunk ``j`` (recurrence steps
    ``[edges[j], edges[j+1])``) its rows of ``dx`` = ``dg @ w_ih``, then, once chunks
    ``0..j-1`` are added, ``dg^T x`` added into ``dw_ih`` and ``dg^T hp`` into ``dw_hh`` (over
    its rows; chunk 0 sets them). ``dg`` (T*B, 4H), ``x`` (T*B, I), ``hp`` (T*B, P), ``dx``
    (T*B, I): rows are (step, sequence); the recurrence runs steps backwards in time unless
    ``reverse``.

    The ``helper`` claims only chunks the recurrence has passed, and stops when the
    recurrence is done (the calling thread, which runs this after it, takes the rest), so
    it never holds a chunk the other thread waits for longer than the chunk takes, and while
    it waits it yields its core every few hundred pause loops. Returns the pause loops spent
    waiting for the other thread's chunk to be added."""
    T = dg.shape[0] // B
    n = edges.shape[0] - 1
    spins = 0
    idle = 0
    while True:
        j = atomic_load(ctrl, CLAIM)
        if j >= n:
            return spins
        if helper:
            done = atomic_load(ctrl, PROGRESS)
            if done >= edges[n]:
                return spins
            if done < edges[j + 1]:
                spin_pause()
                idle += 1
                if idle % 256 == 0:
                    yield_cpu()
                continue
        if not atomic_cas(ctrl, CLAIM, j, j + 1):
            continue
        s0, s1 = edges[j], edges[j + 1]
        t0, t1 = (s0, s1) if reverse else (T - s1, T - s0)
        r0, r1 = t0 * B, t1 * B
        a = dg[r0:r1]
        np.dot(a, w_ih, dx[r0:r1])
        while atomic_load(ctrl, ADDED) < j:
            spin_pause()
            spins += 1
        beta = 0.0 if j == 0 else 1.0
        gemm_tn(a, x[r0:r1], dw_ih, beta)
        gemm_tn(a, hp[r0:r1], dw_hh, beta)
        atomic_store(ctrl, ADDED, j + 1)


@jit(**_OPTS)
def await_chunks(ctrl, n):
    """Spin until all ``n`` chunks are added (the other thread may still be on its last one);
    the pause loops it took."""
    spins = 0
    while atomic_load(ctrl, ADDED) < n:
        spin_pause()
        spins += 1
    return spins
