"""LSTM parameters under ``torch.nn.LSTM``'s names, shapes and gate order.

Names, per layer ``k`` and direction (suffix ``""`` forward, ``"_reverse"`` backward)::

    weight_ih_l{k}{sfx}  (4H, I)       layer 0: I = input_size; later layers: I = D * H_out
    weight_hh_l{k}{sfx}  (4H, H_out)
    bias_ih_l{k}{sfx}    (4H,)         only with bias=True
    bias_hh_l{k}{sfx}    (4H,)         only with bias=True
    weight_hr_l{k}{sfx}  (P, H)        only with proj_size P > 0

``H_out = P if P > 0 else H``, ``D = 2 if bidirectional else 1``. The rows of the
4H axis are the gates in the order ``i, f, g, o``.
"""
from __future__ import annotations

import json
import math
import os
from typing import Iterator, Mapping

import numpy as np

__all__ = ["LSTMParams", "SUPPORTED_DTYPES", "check_allocation"]

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def _physical_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 40


def check_allocation(nbytes: int, what: str) -> None:
    """Refuse (``MemoryError``) an allocation larger than this machine's physical memory.

    Called before allocating, so absurd sizes fail fast with a clear message instead of
    swapping or being killed.
    """
    limit = _physical_memory_bytes()
    if nbytes > limit:
        raise MemoryError(
            f"{what} would need {nbytes / 2**30:.1f} GiB, more than this machine's "
            f"{limit / 2**30:.1f} GiB of physical memory"
        )


def _normalize_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _to_numpy(value, name: str) -> np.ndarray:
    """NumPy array from a NumPy array, array-like, or CPU torch tensor (never a view of it)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    if hasattr(value, "__cuda_array_interface__"):
        raise TypeError(f"{name}: parameters must be host arrays (NumPy or CPU tensors)")
    return np.array(value, copy=True)


class LSTMParams:
    """The weights of a (multi-layer, optionally bidirectional, optionally projected) LSTM.

    Build with :meth:`init` (PyTorch's initialisation), :meth:`from_state_dict` or
    :meth:`load`. The arrays are held read-only; :meth:`state_dict` returns copies.

    Attributes
    ----------
    input_size, hidden_size, num_layers, proj_size : int
    bidirectional, bias : bool
    dtype : numpy.dtype (float32 or float64)
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], *, input_size: int, hidden_size: int,
                 num_layers: int = 1, bias: bool = True, bidirectional: bool = False,
                 proj_size: int = 0, dtype=np.float32):
        self.input_size = _positive_int(input_size, "input_size")
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        self.num_layers = _positive_int(num_layers, "num_layers")
        self.proj_size = _positive_int(proj_size, "proj_size", minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size (got proj_size={self.proj_size}, "
                f"hidden_size={self.hidden_size})"
            )
        self.bias = bool(bias)
        self.bidirectional = bool(bidirectional)
        self.dtype = _normalize_dtype(dtype)
        expected = self.expected_shapes()
        missing = [k for k in expected if k not in arrays]
        unexpected = [k for k in arrays if k not in expected]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise KeyError("parameters do not match the configuration: " + "; ".join(parts))
        self._arrays: dict[str, np.ndarray] = {}
        for name, shape in expected.items():
            arr = _to_numpy(arrays[name], name)
            if arr.dtype.kind != "f":
                raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
            arr = np.ascontiguousarray(arr, dtype=self.dtype)
            arr.setflags(write=False)
            self._arrays[name] = arr

    # ------------------------------------------------------------------ configuration
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """``H_out``: the size of ``h`` (``proj_size`` if set, else ``hidden_size``)."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def config(self) -> dict:
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, bias=self.bias,
                    bidirectional=self.bidirectional, proj_size=self.proj_size,
                    dtype=self.dtype.name)

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.num_directions * self.output_size

    @staticmethod
    def suffix(direction: int) -> str:
        return "_reverse" if direction == 1 else ""

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter name (in ``torch.nn.LSTM``'s order) and its shape."""
        H, P = self.hidden_size, self.proj_size
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                s = f"_l{layer}{self.suffix(d)}"
                shapes["weight_ih" + s] = (4 * H, self.layer_input_size(layer))
                shapes["weight_hh" + s] = (4 * H, self.output_size)
                if self.bias:
                    shapes["bias_ih" + s] = (4 * H,)
                    shapes["bias_hh" + s] = (4 * H,)
                if P > 0:
                    shapes["weight_hr" + s] = (P, H)
        return shapes

    def layer_weights(self, layer: int, direction: int):
        """``(w_ih, w_hh, b_ih, b_hh, w_hr)`` for one layer and direction; absent ones are None."""
        s = f"_l{layer}{self.suffix(direction)}"
        get = self._arrays.get
        return (get("weight_ih" + s), get("weight_hh" + s), get("bias_ih" + s),
                get("bias_hh" + s), get("weight_hr" + s))

    # ------------------------------------------------------------------ construction
    @classmethod
    def init(cls, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
             bidirectional: bool = False, proj_size: int = 0, dtype=np.float32,
             seed=None) -> "LSTMParams":
        """PyTorch's initialisation: every parameter ~ uniform(-1/sqrt(H), 1/sqrt(H))."""
        dt = _normalize_dtype(dtype)
        shell = cls.__new__(cls)
        shell.input_size = _positive_int(input_size, "input_size")
        shell.hidden_size = _positive_int(hidden_size, "hidden_size")
        shell.num_layers = _positive_int(num_layers, "num_layers")
        shell.proj_size = _positive_int(proj_size, "proj_size", minimum=0)
        shell.bias = bool(bias)
        shell.bidirectional = bool(bidirectional)
        if shell.proj_size >= shell.hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size (got proj_size={shell.proj_size}, "
                f"hidden_size={shell.hidden_size})"
            )
        shapes = shell.expected_shapes()
        total = sum(math.prod(s) for s in shapes.values())
        check_allocation(total * dt.itemsize, "the parameters")
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(hidden_size)
        arrays = {name: rng.uniform(-k, k, size=shape).astype(dt) for name, shape in shapes.items()}
        return cls(arrays, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                   bias=bias, bidirectional=bidirectional, proj_size=proj_size, dtype=dt)

    @classmethod
    def from_state_dict(cls, mapping: Mapping, dtype=None) -> "LSTMParams":
        """Infer the configuration from PyTorch's names and shapes.

        Accepts NumPy arrays or CPU torch tensors (e.g. ``torch.nn.LSTM(...).state_dict()``).
        ``dtype`` defaults to the dtype of ``weight_ih_l0``.
        """
        if not isinstance(mapping, Mapping):
            raise TypeError(f"expected a mapping of parameter names to arrays, got {type(mapping).__name__}")
        if "weight_ih_l0" not in mapping or "weight_hh_l0" not in mapping:
            raise KeyError("state dict has no weight_ih_l0 / weight_hh_l0: not an LSTM state dict")
        w_ih = _to_numpy(mapping["weight_ih_l0"], "weight_ih_l0")
        w_hh = _to_numpy(mapping["weight_hh_l0"], "weight_hh_l0")
        if w_ih.ndim != 2 or w_hh.ndim != 2 or w_ih.shape[0] % 4 or w_ih.shape[0] == 0:
            raise ValueError(
                f"weight_ih_l0 must have shape (4*hidden_size, input_size), got {w_ih.shape}"
            )
        hidden = w_ih.shape[0] // 4
        layers = 0
        while f"weight_ih_l{layers}" in mapping:
            layers += 1
        proj = 0
        if "weight_hr_l0" in mapping:
            w_hr = _to_numpy(mapping["weight_hr_l0"], "weight_hr_l0")
            if w_hr.ndim != 2 or w_hr.shape[1] != hidden:
                raise ValueError(f"weight_hr_l0 must have shape (proj_size, {hidden}), got {w_hr.shape}")
            proj = int(w_hr.shape[0])
        if dtype is None:
            dtype = w_ih.dtype if w_ih.dtype in SUPPORTED_DTYPES else np.float32
        return cls(dict(mapping), input_size=w_ih.shape[1], hidden_size=hidden,
                   num_layers=layers, bias="bias_ih_l0" in mapping,
                   bidirectional="weight_ih_l0_reverse" in mapping, proj_size=proj, dtype=dtype)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter as NumPy arrays under PyTorch's names, in PyTorch's order."""
        return {name: arr.copy() for name, arr in self._arrays.items()}

    def astype(self, dtype) -> "LSTMParams":
        return LSTMParams(self._arrays, **{**self.config(), "dtype": dtype})

    def save(self, path) -> None:
        """Write to ``path`` exactly as given (``.npz`` format: arrays plus the configuration, no
        pickles), or to a writable binary file object; :meth:`load` reads it back."""
        arrays = dict(__config__=np.array(json.dumps(self.config())), **self._arrays)
        if isinstance(path, (str, os.PathLike)):
            with open(path, "wb") as f:  # np.savez(path) would append ".npz" to the name
                np.savez(f, **arrays)
        else:
            np.savez(path, **arrays)

    @classmethod
    def load(cls, path) -> "LSTMParams":
        with np.load(path, allow_pickle=False) as f:
            if "__config__" not in f.files:
                raise ValueError(f"{path} is not a file written by LSTMParams.save")
            cfg = json.loads(str(f["__config__"]))
            arrays = {k: f[k] for k in f.files if k != "__config__"}
        return cls(arrays, **cfg)

    # ------------------------------------------------------------------ mapping protocol
    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __contains__(self, name) -> bool:
        return name in self._arrays

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def keys(self):
        return self._arrays.keys()

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"LSTMParams({cfg})"
