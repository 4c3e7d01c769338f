"""Turning what callers pass into what the package computes on, with errors that name the
argument: host arrays (NumPy, array-likes, CPU torch tensors) and flags. Used by the parameter
container, the input rules (``fastlstm.layout``) and the benchmark harness alike."""
from __future__ import annotations

import numpy as np

__all__ = ["is_torch_tensor", "to_numpy", "check_bool"]


def is_torch_tensor(value) -> bool:
    """A ``torch.Tensor``, recognised without importing torch."""
    return type(value).__module__.startswith("torch") and hasattr(value, "detach") \
        and hasattr(value, "cpu")


def to_numpy(value, name: str, *, copy: bool = False) -> np.ndarray:
    """A NumPy array of a host array-like: NumPy arrays, lists, CPU torch tensors.

    torch tensors are detached and brought to the host; half-precision ones (``float16``,
    ``bfloat16``, which NumPy cannot hold or torch cannot export) are widened to float32,
    exactly. ``copy=True`` always returns a new array; otherwise a view where possible.
    GPU arrays are refused (their caller dispatches them to the CUDA backend instead).
    """
    if is_torch_tensor(value):
        t = value.detach()
        if t.is_complex():
            raise TypeError(f"{name} must be a real floating-point tensor, got {t.dtype}")
        if t.dtype.is_floating_point and t.element_size() < 4:
            t = t.float()  # bfloat16 / float16 -> float32, exact
        value = t.cpu().numpy()
    elif hasattr(value, "__cuda_array_interface__"):
        raise TypeError(f"{name} is a GPU array; this call takes host arrays (NumPy or CPU tensors)")
    try:
        return np.array(value, copy=True) if copy else np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{name} must be an array, got {type(value).__name__}") from exc


def check_bool(value, name: str) -> bool:
    """``value`` as a bool; only ``True``/``False`` (Python or NumPy) are accepted."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be a bool (True or False), got {value!r}")
