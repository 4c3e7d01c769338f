"""Reading and writing parameters outside the class: PyTorch state dicts (names and shapes
to a configuration) and the ``.npz`` files of ``LSTMParams.save`` / ``load``."""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from typing import Mapping

import numpy as np

from ._coerce import to_numpy

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_CELL_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # torch.nn.LSTMCell's names


def _prefixes(keys) -> list[str]:
    """The prefixes under which ``keys`` hold an LSTM (``<prefix>weight_ih_l0``) or an LSTM
    cell (``<prefix>.weight_ih``), in order of appearance."""
    found: list[str] = []
    for key in keys:
        if not isinstance(key, str):
            continue
        if key.endswith("weight_ih_l0"):
            prefix = key[:-len("weight_ih_l0")]
        elif key.endswith(".weight_ih"):
            prefix = key[:-len("weight_ih")]
        else:
            continue
        if prefix and prefix not in found:
            found.append(prefix)
    return found


def _check_recurrent_shape(shape: tuple[int, ...]) -> None:
    """Refuse a ``weight_hh_l0`` that cannot be an LSTM's, naming the module it comes from.

    An LSTM's is (4H, H), or (4H, P) with P < H; a GRU's (3H, H) and an RNN's (H, H) have more
    columns than a quarter of their rows, so the three cannot be confused.
    """
    if len(shape) != 2:
        raise ValueError(f"weight_hh_l0 must have shape (4*hidden_size, hidden_size), got {shape}")
    rows, cols = shape
    if rows > 0 and cols > 0 and rows % 4 == 0 and cols <= rows // 4:
        return
    lstm = ("an LSTM's weight_hh_l0 has shape (4*hidden_size, hidden_size), or "
            "(4*hidden_size, proj_size) with a projection")
    if cols > 0 and rows == 3 * cols:
        raise ValueError(f"weight_hh_l0 has shape {shape}, (3*hidden_size, hidden_size): this "
                         f"looks like a GRU state dict, not an LSTM one ({lstm})")
    if cols > 0 and rows == cols:
        raise ValueError(f"weight_hh_l0 has shape {shape}, (hidden_size, hidden_size): this "
                         f"looks like an RNN state dict, not an LSTM one ({lstm})")
    raise ValueError(f"weight_hh_l0 has shape {shape}, which is not an LSTM's: {lstm}")


def read_state_dict(mapping: Mapping, dtype=None, prefix: str = ""):
    """``(arrays, config)`` of an LSTM from PyTorch's names and shapes (see
    ``LSTMParams.from_state_dict``, which builds the params from them)."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"expected a mapping of parameter names to arrays, "
                        f"got {type(mapping).__name__}")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string, got {type(prefix).__name__}")
    sd = {k[len(prefix):]: v for k, v in mapping.items()
          if isinstance(k, str) and k.startswith(prefix)} if prefix else dict(mapping)
    if "weight_ih_l0" not in sd and "weight_ih" in sd:  # an LSTMCell
        sd = {(k + "_l0" if k in _CELL_NAMES else k): v for k, v in sd.items()}
    if "weight_ih_l0" not in sd or "weight_hh_l0" not in sd:
        under = f" under prefix {prefix!r}" if prefix else ""
        found = _prefixes(mapping.keys())
        if found:
            raise KeyError(f"no weight_ih_l0{under}, but the keys carry a prefix: pass "
                           + " or ".join(f"prefix={p!r}" for p in found))
        raise KeyError(f"state dict has no weight_ih_l0 / weight_hh_l0{under}: "
                       f"not an LSTM state dict")
    w_ih = to_numpy(sd["weight_ih_l0"], "weight_ih_l0")
    w_hh = to_numpy(sd["weight_hh_l0"], "weight_hh_l0")
    _check_recurrent_shape(w_hh.shape)
    if w_ih.ndim != 2:
        raise ValueError(
            f"weight_ih_l0 must have shape (4*hidden_size, input_size), got {w_ih.shape}"
        )
    hidden = w_hh.shape[0] // 4
    layers = 0
    while f"weight_ih_l{layers}" in sd:
        layers += 1
    proj = 0
    if "weight_hr_l0" in sd:
        w_hr = to_numpy(sd["weight_hr_l0"], "weight_hr_l0")
        if w_hr.ndim != 2 or w_hr.shape[1] != hidden:
            raise ValueError(
                f"weight_hr_l0 must have shape (proj_size, {hidden}), got {w_hr.shape}")
        proj = int(w_hr.shape[0])
    if dtype is None:
        native = w_ih.dtype.newbyteorder("=") if w_ih.dtype.kind == "f" else w_ih.dtype
        dtype = native if native in SUPPORTED_DTYPES else np.float32
    return sd, dict(input_size=w_ih.shape[1], hidden_size=hidden, num_layers=layers,
                    bias="bias_ih_l0" in sd, bidirectional="weight_ih_l0_reverse" in sd,
                    proj_size=proj, dtype=dtype)


def save_npz(arrays: Mapping, config: dict, path) -> None:
    """``arrays`` and ``config`` to ``path`` exactly as given (``.npz``, no pickles) or to a
    writable binary file object."""
    arrays = dict(__config__=np.array(json.dumps(config)), **arrays)
    if isinstance(path, (str, os.PathLike)):
        with open(path, "wb") as f:  # np.savez(path) would append ".npz" to the name
            np.savez(f, **arrays)
    else:
        np.savez(path, **arrays)


def load_npz(path):
    """``(name, arrays, config)`` of a file :func:`save_npz` wrote (``LSTMParams.load`` says
    what it raises)."""
    if isinstance(path, (str, os.PathLike)):
        name = os.fspath(path)
    else:
        name = getattr(path, "name", repr(path))
    unreadable = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)
    try:
        f = np.load(path, allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except unreadable as exc:
        raise ValueError(f"{name} is not a file written by LSTMParams.save: it is truncated "
                         f"or not an .npz archive ({exc})") from exc
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{name} is not a file written by LSTMParams.save: it holds a single "
                         f"array, not an .npz archive")
    with f:
        if "__config__" not in f.files:
            raise ValueError(f"{name} is not a file written by LSTMParams.save: it has no "
                             f"configuration entry")
        try:
            text = str(f["__config__"])
            arrays = {k: f[k] for k in f.files if k != "__config__"}
        except unreadable as exc:
            raise ValueError(f"{name} is damaged: an entry cannot be read ({exc})") from exc
    try:
        cfg = json.loads(text)
        if not isinstance(cfg, dict):
            raise ValueError(f"a JSON object was expected, got {type(cfg).__name__}")
    except ValueError as exc:
        raise ValueError(f"{name}: the stored configuration is unreadable ({exc})") from exc
    return name, arrays, cfg
