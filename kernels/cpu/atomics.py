"""Atomic loads, stores and compare-and-swap on int64 array words, and a spin-wait hint, for
compiled kernels that hand work between threads (Numba has no CPU atomics: these are LLVM atomic
instructions emitted by intrinsics, acquire / release ordering; the hint is x86's ``pause``).

A word written by one thread and read by another is read with :func:`atomic_load` and written
with :func:`atomic_store` (or :func:`atomic_cas`): everything the writer stored before the
release store is visible to a reader whose acquire load sees it.
"""
from __future__ import annotations

import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["atomic_load", "atomic_store", "atomic_cas", "spin_pause", "yield_cpu"]

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
_LINUX = platform.system() == "Linux"


def _word(context, builder, aty, arr, idx):
    return builder.gep(context.make_array(aty)(context, builder, arr).data, [idx])


@intrinsic
def atomic_load(typingctx, arr, idx):
    """``arr[idx]`` (int64), an acquire load."""
    sig = types.int64(arr, idx)

    def codegen(context, builder, signature, args):
        return builder.load_atomic(_word(context, builder, signature.args[0], *args),
                                   "acquire", 8)
    return sig, codegen


@intrinsic
def atomic_store(typingctx, arr, idx, val):
    """``arr[idx] = val`` (int64), a release store."""
    sig = types.void(arr, idx, types.int64)

    def codegen(context, builder, signature, args):
        builder.store_atomic(args[2], _word(context, builder, signature.args[0], args[0],
                                            args[1]), "release", 8)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def atomic_cas(typingctx, arr, idx, expected, new):
    """``arr[idx] = new`` if it equals ``expected`` (atomically); whether it did."""
    sig = types.boolean(arr, idx, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        ptr = _word(context, builder, signature.args[0], args[0], args[1])
        res = builder.cmpxchg(ptr, args[2], args[3], "acq_rel", "acquire")
        return builder.extract_value(res, 1)
    return sig, codegen


@intrinsic
def spin_pause(typingctx):
    """A spin-wait hint (``pause`` on x86; nothing elsewhere)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module,
                                                ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def yield_cpu(typingctx):
    """Lets the scheduler run another thread on this core (``sched_yield``; nothing off Linux):
    for long waits, so that a waiting thread does not take the core of the one it waits for."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _LINUX:
            fn = cgutils.get_or_insert_function(builder.module,
                                                ir.FunctionType(ir.IntType(32), []),
                                                "sched_yield")
            builder.call(fn, [])
        return context.get_dummy_value()
    return sig, codegen
