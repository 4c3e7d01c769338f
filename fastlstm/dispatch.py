"""Device name -> backend module, in one place. Backends are imported (and their kernels
compiled) lazily, on first use.

Every backend module implements the contract described in :mod:`fastlstm.backends`.
"""
from __future__ import annotations

import importlib

from ._coerce import is_torch_tensor

__all__ = ["DEVICES", "is_gpu_array", "resolve_device", "cuda_unavailable_reason",
           "available_devices", "backend", "require"]

DEVICES = ("auto", "cpu", "cuda", "reference")

_MODULES = {
    "reference": "fastlstm.reference",
    "cpu": "fastlstm.backends.cpu",
    "cuda": "fastlstm.backends.cuda",
}

_INSTALL_HINT = ('install numba-cuda: pip install "fastlstm[cuda]" (from a checkout: '
                 'pip install -e ".[cuda]")')


def is_gpu_array(a) -> bool:
    """Whether ``a`` lives on a GPU: a CUDA torch tensor, or anything exporting
    ``__cuda_array_interface__`` (numba device arrays, CuPy)."""
    if is_torch_tensor(a):
        # torch raises (not AttributeError) on the interface of tensors that require grad
        return bool(a.is_cuda)
    try:
        return hasattr(a, "__cuda_array_interface__")
    except Exception:  # an exporter that fails to describe itself is still a GPU array
        return True


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
    """None when the CUDA backend can run here, else a sentence naming what is missing (with
    Numba's own reason when it gives one)."""
    try:
        from numba import cuda
    except ImportError:  # numba-cuda (or numba's built-in CUDA target) missing
        return f"numba's CUDA target is not installed; {_INSTALL_HINT}"
    try:
        importlib.import_module(_MODULES["cuda"])
    except ImportError as exc:
        return f"the CUDA backend could not be imported ({exc}); {_INSTALL_HINT}"
    try:
        if cuda.is_available():
            return None
    except Exception as exc:  # pragma: no cover - driver errors
        return f"CUDA is not usable: {exc}"
    why = None
    try:
        from numba.cuda.cudadrv.driver import driver
        err = getattr(driver, "initialization_error", None)
        why = " ".join(str(err).split()) if err else None
    except Exception:  # pragma: no cover
        pass
    return ("no usable CUDA GPU: numba.cuda.is_available() is False"
            + (f" ({why})" if why else "")
            + f"; check the NVIDIA driver and {_INSTALL_HINT}"
            + " (NUMBA_ENABLE_CUDASIM=1 runs the kernels in Numba's simulator)")


def available_devices() -> list[str]:
    devs = ["reference", "cpu"]
    if cuda_unavailable_reason() is None:
        devs.append("cuda")
    return devs


def require(name: str) -> None:
    """Raise (RuntimeError) now if the resolved device ``name`` cannot run here."""
    if name == "cuda":
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"device='cuda' is not available: {reason}")


def backend(name: str):
    """The backend module for a resolved device name."""
    require(name)
    return importlib.import_module(_MODULES[name])
