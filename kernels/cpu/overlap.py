"""A serial layer's whole-sequence GEMMs on a second core, beside its recurrence.

On the serial path (one direction, a few sequences) the recurrence is a chain of per-step
products that one core must run in order. The GEMMs around it are not:

    forward:   xg = x W_ih^T                                (step t needed at step t)
    backward:  dx = dG W_ih,  dW_ih = dG^T x,  dW_hh = dG^T h_prev   (step t ready at step t)

At batch 1-7 they take about as long as the recurrence (bench/NOTES.md, "Both cores on the
serial path"). So the steps are cut into chunks (``edges``, in the recurrence's order: chunk j
is the steps it runs j-th). Forward: the other core computes the projection's blocks ahead of
the recurrence, which waits for a block only when it gets there first, and computes it itself
when nobody has claimed it (:func:`feed_blocks`, :func:`need_block`). Backward: the GEMMs of a
chunk run on the other core as soon as the recurrence has passed it (:func:`grad_chunks`).

Control words (int64, one cache line each): ``ctrl[PROGRESS]`` the backward recurrence's
steps done (its ``progress`` word), ``ctrl[CLAIM]`` the next job nobody has claimed (a block
of the feed; three per backward chunk: its ``dx`` rows, its share of ``dW_ih``, of
``dW_hh``), ``ctrl[ADDED_IH]``, ``ctrl[ADDED_HH]`` the chunks added into each weight gradient,
``ctrl[DONE]`` the jobs done, ``ctrl[HELPED]`` those the other thread did (written by it
alone, read after ``DONE``), ``ctrl[WAITS]`` the pause loops the recurrence waited for the
feed. Both threads claim jobs in order (a compare-and-swap): in the backward the other thread
only jobs of chunks the recurrence has passed, the calling thread, after the recurrence,
whatever is left. The weight gradients are added chunk after chunk by GEMMs with beta = 1
(:func:`gemm_tn`), in chunk order, so the results do not depend on which thread did what and
no partial sums are kept; the two sums are separate jobs, so the threads work on both at once.
A late or busy second core only leaves more of the jobs to the calling thread, which waits at
most for the ones the other is doing (``fastlstm/backends/cpu_overlap.py`` backs it off after
a call that found it busy).
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
from .smallgemm import bdot

__all__ = ["PROGRESS", "CLAIM", "DONE", "HELPED", "WAITS", "CTRL_SIZE", "FLAG_STRIDE",
           "grad_chunks", "await_jobs", "feed_blocks", "need_block", "gemm_tn"]

PROGRESS, CLAIM, ADDED_IH, ADDED_HH, DONE, HELPED, WAITS = 0, 8, 16, 24, 32, 40, 48
CTRL_SIZE = 56
#: Words per block in a feed's ``flags`` (one cache line each).
FLAG_STRIDE = 8

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
        kind, notrans, trans = (ir.Constant(_char, ord(ch))
                                for ch in (get_blas_kind(dtype), "n", "t"))
        builder.call(fn, (kind, notrans, trans, N, M, K,
                          builder.bitcast(alpha, _voidp), ptr[1], N, ptr[0], M,
                          builder.bitcast(beta_slot, _voidp), ptr[2], N))
        return context.get_dummy_value()
    return sig, codegen


@jit(**_OPTS)
def _count(ctrl, word):
    """``ctrl[word] += 1``, atomically."""
    while True:
        v = atomic_load(ctrl, word)
        if atomic_cas(ctrl, word, v, v + 1):
            return


@jit(**_OPTS)
def grad_chunks(ctrl, edges, reverse, B, dg, x, hp, wb, mb, dx, dw_ih, dw_hh, helper):
    """Claim jobs in order and do them; chunk ``j`` (recurrence steps ``[edges[j],
    edges[j+1])``) has three: job ``3j`` its rows of ``dx = dg @ W_ih`` (``wb``: W_ih's column
    blocks, rows in chunks of ``mb``, as :func:`bdot` takes them), job ``3j + 1``
    ``dg^T x`` added into ``dw_ih``, job ``3j + 2`` ``dg^T hp`` added into ``dw_hh`` (over its
    rows; chunk 0 sets them, and chunk j adds only after chunk j - 1 has). ``dg`` (T*B, 4H),
    ``x`` (T*B, I), ``hp`` (T*B, P), ``dx`` (T*B, I): rows are (step, sequence); the
    recurrence runs steps backwards in time unless ``reverse``.

    The ``helper`` claims only jobs of chunks the recurrence has passed and yields its core
    every few hundred pause loops while it waits for one; the calling thread runs this after
    the recurrence. Returns the pause loops spent waiting for the other thread's previous
    chunk of the same sum."""
    T = dg.shape[0] // B
    n = edges.shape[0] - 1
    spins = 0
    idle = 0
    while True:
        k = atomic_load(ctrl, CLAIM)
        if k >= 3 * n:
            return spins
        j = k // 3
        if helper and atomic_load(ctrl, PROGRESS) < edges[j + 1]:
            spin_pause()
            idle += 1
            if idle % 256 == 0:
                yield_cpu()
            continue
        if not atomic_cas(ctrl, CLAIM, k, k + 1):
            continue
        s0, s1 = edges[j], edges[j + 1]
        t0, t1 = (s0, s1) if reverse else (T - s1, T - s0)
        r0, r1 = t0 * B, t1 * B
        a = dg[r0:r1]
        kind = k - 3 * j
        if kind == 0:
            zp = np.empty((wb.shape[0], r1 - r0, wb.shape[2]), dtype=dx.dtype)
            bdot(a, wb, zp, dx[r0:r1], mb)
        else:
            word = ADDED_IH if kind == 1 else ADDED_HH
            while atomic_load(ctrl, word) < j:
                spin_pause()
                spins += 1
            beta = 0.0 if j == 0 else 1.0
            if kind == 1:
                gemm_tn(a, x[r0:r1], dw_ih, beta)
            else:
                gemm_tn(a, hp[r0:r1], dw_hh, beta)
            atomic_store(ctrl, word, j + 1)
        if helper:
            ctrl[HELPED] += 1
        _count(ctrl, DONE)


@jit(**_OPTS)
def await_jobs(ctrl, jobs):
    """Spin until ``jobs`` jobs are done (the other thread may still be on its last one); the
    pause loops it took."""
    spins = 0
    while atomic_load(ctrl, DONE) < jobs:
        spin_pause()
        spins += 1
    return spins


# ---------------------------------------------------------------------------- the forward's feed
# A serial layer's forward needs step t's input projection xg[t] = x[t] W_ih^T only at step t.
# The projection is cut into blocks of steps (``edges``); the recurrence asks for each block as
# it reaches it (:func:`need_block`, which computes it on the spot when nobody has claimed it)
# while another core computes the blocks ahead (:func:`feed_blocks`). ``flags[k *
# FLAG_STRIDE]`` is 1 once block k is written; ``ctrl[CLAIM]`` the next block nobody has
# claimed, ``ctrl[DONE]`` the blocks written, ``ctrl[HELPED]`` those the helper wrote.


@jit(**_OPTS)
def _feed_block(ctrl, flags, edges, B, x, wb, mb, out, k, helper):
    r0, r1 = edges[k] * B, edges[k + 1] * B
    zp = np.empty((wb.shape[0], r1 - r0, wb.shape[2]), dtype=out.dtype)
    bdot(x[r0:r1], wb, zp, out[r0:r1], mb)
    if helper:
        ctrl[HELPED] += 1  # before the flag: whoever sees the flag sees the count
    atomic_store(flags, k * FLAG_STRIDE, 1)
    _count(ctrl, DONE)


@jit(**_OPTS)
def feed_blocks(ctrl, flags, edges, B, x, wb, mb, out, helper):
    """Claim blocks of steps in order until none is left and compute them: block ``k`` is
    ``out[r] = x[r] @ W`` (``wb``: W's column blocks, rows in chunks of ``mb``) for the rows
    ``r`` (step, sequence) of steps ``edges[k] <= t < edges[k+1]``. The ``helper`` counts its
    blocks in ``ctrl[HELPED]``; returns 0."""
    n = edges.shape[0] - 1
    while True:
        k = atomic_load(ctrl, CLAIM)
        if k >= n:
            return 0
        if atomic_cas(ctrl, CLAIM, k, k + 1):
            _feed_block(ctrl, flags, edges, B, x, wb, mb, out, k, helper)


@jit(**_OPTS)
def need_block(ctrl, flags, edges, B, x, wb, mb, out, k):
    """Block ``k`` written: computed here, with every unclaimed block before it, or, where the
    other thread has claimed it, waited for; the pause loops waited."""
    spins = 0
    while atomic_load(flags, k * FLAG_STRIDE) == 0:
        c = atomic_load(ctrl, CLAIM)
        if c <= k:
            if atomic_cas(ctrl, CLAIM, c, c + 1):
                _feed_block(ctrl, flags, edges, B, x, wb, mb, out, c, False)
        else:
            spin_pause()
            spins += 1
    return spins
