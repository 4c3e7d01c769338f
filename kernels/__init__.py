"""Compiled LSTM kernels, installed as ``fastlstm.kernels``: ``cpu`` (Numba) and ``cuda`` (numba.cuda)."""
