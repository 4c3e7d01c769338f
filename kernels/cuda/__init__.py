"""CUDA kernels (numba.cuda)."""
