"""Backend selection, in one place. Kernels are imported (and compiled) lazily on first use.

Every backend module provides ``lstm_forward(x, params, h0, c0, lengths, masks, training)`` and
``lstm_backward(state, dy, dh_n, dc_n)`` on normalised time-major arrays (see
``fastlstm.reference``).
"""
from __future__ import annotations

import importlib

DEVICES = ("auto", "cpu", "cuda", "reference")

_MODULES = {
    "reference": "fastlstm.reference",
    "cpu": "fastlstm.kernels.cpu.lstm",
    "cuda": "fastlstm.kernels.cuda.lstm",
}


def is_gpu_array(a) -> bool:
    return hasattr(a, "__cuda_array_interface__")


def resolve_device(device, x) -> str:
    """The backend name a call runs on: ``auto`` is ``cuda`` for GPU arrays, else ``cpu``."""
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if is_gpu_array(x) else "cpu"
    if device != "cuda" and is_gpu_array(x):
        raise ValueError(f"x is a GPU array but device={device!r}; use device='cuda' or 'auto'")
    return device


def cuda_unavailable_reason() -> str | None:
    """None when the CUDA backend can run here, else a sentence naming what is missing."""
    try:
        from numba import cuda
    except ImportError:  # pragma: no cover - numba is a hard dependency
        return "numba is not installed"
    try:
        importlib.import_module(_MODULES["cuda"])
    except ImportError as exc:
        return f"the CUDA backend could not be imported ({exc})"
    try:
        if not cuda.is_available():
            return ("no usable CUDA GPU: numba.cuda.is_available() is False (install numba-cuda "
                    "with `pip install fastlstm[cuda]` and check the NVIDIA driver)")
    except Exception as exc:  # pragma: no cover - driver errors
        return f"CUDA is not usable: {exc}"
    return None


def available_devices() -> list[str]:
    devs = ["reference", "cpu"]
    if cuda_unavailable_reason() is None:
        devs.append("cuda")
    return devs


def backend(name: str):
    """The backend module for a resolved device name."""
    if name == "cuda":
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"device='cuda' is not available: {reason}")
    return importlib.import_module(_MODULES[name])
