"""Numba ``@njit`` LSTM kernels for the CPU (compiled lazily on first use, cached on disk)."""
