"""Scalar activations for the CPU kernels (inlined into the fused loops).

``sigmoid(z) = 0.5 * tanh(z / 2) + 0.5`` is exact algebra: it never overflows and keeps
full relative accuracy in both tails, the same formula as the NumPy reference.
"""
import math

from numba import njit


@njit(inline="always", cache=True)
def sigmoid(z):
    return 0.5 * math.tanh(0.5 * z) + 0.5


@njit(inline="always", cache=True)
def tanh(z):
    return math.tanh(z)
