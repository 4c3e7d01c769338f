"""LSTM weights from and to other frameworks: Keras / TensorFlow, ONNX, PyTorch files.

Every converter maps the other framework's weights onto :class:`~fastlstm.params.LSTMParams`
(``torch.nn.LSTM``'s names, shapes and gate order ``i, f, g, o``) exactly, or refuses with a
``ValueError`` that names what has no equivalent (another activation, peepholes, clipping...).

Gate orders and layouts::

    torch / fastlstm   weight_ih (4H, I)       rows     i, f, g, o   two biases b_ih, b_hh
    Keras LSTM         kernel (I, 4H)          columns  i, f, c, o   one bias (4H,)
    Keras CuDNNLSTM    as Keras                                      bias (8H,) = b_ih | b_hh
    TF1 LSTMCell       kernel (I + H, 4H)      columns  i, j, f, o   one bias, + forget_bias
    ONNX LSTM          W (D, 4H, I)            rows     i, o, f, c   B (D, 8H) = Wb | Rb

Public calls: :func:`from_keras`, :func:`to_keras`, :func:`from_onnx`, :func:`to_onnx` (also
``LSTMParams.from_keras`` / ``from_onnx`` / ``to_onnx``); whole files: :mod:`fastlstm.files`.
The other frameworks are imported only when a call needs them: ``keras`` for :func:`to_keras`,
``onnx`` for the ONNX calls; reading a Keras layer or model object needs nothing but the
object. This module depends on the parameters alone (it sits beside them, below the API).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .params import SUPPORTED_DTYPES, LSTMParams

__all__ = ["from_keras", "to_keras", "from_onnx", "to_onnx"]

# Rows of the 4H axis, in the source's order, that give torch's i, f, g, o.
_FROM_KERAS = (0, 1, 2, 3)   # i, f, c, o: the same order
_FROM_TF1 = (0, 2, 1, 3)     # i, j, f, o
_FROM_ONNX = (0, 2, 3, 1)    # i, o, f, c
_TO_ONNX = (0, 3, 1, 2)      # torch i, f, g, o -> ONNX i, o, f, c

_ONNX_MIN_OPSET = 10  # Slice with its bounds as inputs


def _import(module: str, extra: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs {module}: pip install \"fastlstm[{extra}]\" "
                          f"(from a checkout: pip install -e \".[{extra}]\")") from exc


def _reorder(a: np.ndarray, order, axis: int = 0) -> np.ndarray:
    """The four gate blocks of ``a`` along ``axis`` (of size 4H) taken in ``order``."""
    blocks = np.split(np.asarray(a), 4, axis=axis)
    return np.concatenate([blocks[k] for k in order], axis=axis)


def _array(value, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (a Keras variable on the torch backend)
        value = value.detach().cpu().numpy()
    elif hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise TypeError(f"{what} must be a floating-point array, got dtype {arr.dtype}")
    return arr


# ---------------------------------------------------------------------------- assembling params
@dataclass
class _Direction:
    """One layer and direction in torch's layout and gate order."""
    w_ih: np.ndarray                 # (4H, I)
    w_hh: np.ndarray                 # (4H, H_out)
    b_ih: np.ndarray | None = None   # (4H,)
    b_hh: np.ndarray | None = None   # (4H,)
    w_hr: np.ndarray | None = None   # (P, H)


def _build(layers: list[list[_Direction]], dtype, source: str) -> LSTMParams:
    """LSTMParams from per-layer, per-direction weights, checking that they make one LSTM."""
    if not layers:
        raise ValueError(f"{source}: no LSTM layer found")
    D = len(layers[0])
    first = layers[0][0]
    H = first.w_ih.shape[0] // 4
    P = 0 if first.w_hr is None else first.w_hr.shape[0]
    H_out = P or H
    bias = first.b_ih is not None
    arrays = {}
    for k, dirs in enumerate(layers):
        where = f"{source}, layer {k}"
        if len(dirs) != D:
            raise ValueError(f"{where}: {'bidirectional' if len(dirs) == 2 else 'one direction'}"
                             f", but layer 0 is {'bidirectional' if D == 2 else 'one direction'}:"
                             f" fastlstm's layers all have the same number of directions")
        want_in = None if k == 0 else D * H_out
        for d, w in enumerate(dirs):
            wd = where + (" (backward)" if d == 1 else "")
            if w.w_ih.ndim != 2 or w.w_ih.shape[0] != 4 * H:
                raise ValueError(f"{wd}: {w.w_ih.shape[0] // 4 if w.w_ih.ndim == 2 else '?'} "
                                 f"units, but layer 0 has {H}: fastlstm's layers all have the "
                                 f"same hidden size")
            if want_in is not None and w.w_ih.shape[1] != want_in:
                raise ValueError(f"{wd} takes {w.w_ih.shape[1]} features per step, but the layer "
                                 f"below gives {want_in}: the layers are not stacked directly")
            if w.w_hh.shape != (4 * H, H_out):
                raise ValueError(f"{wd}: the recurrent weight has shape {w.w_hh.shape} (torch's "
                                 f"layout), expected {(4 * H, H_out)}")
            if (w.b_ih is not None) != bias:
                raise ValueError(f"{wd} {'has' if w.b_ih is not None else 'has no'} bias, but "
                                 f"layer 0 {'has' if bias else 'has none'}: fastlstm's layers "
                                 f"all have biases or none")
            if (0 if w.w_hr is None else w.w_hr.shape[0]) != P:
                raise ValueError(f"{wd}: projection sizes differ between layers")
            parts = {"weight_ih": w.w_ih, "weight_hh": w.w_hh}
            if bias:
                parts.update(bias_ih=w.b_ih, bias_hh=w.b_hh)
            if P:
                parts["weight_hr"] = w.w_hr
            for kind, a in parts.items():
                arrays[LSTMParams.param_name(kind, k, d)] = a
    if dtype is None:
        dt = first.w_ih.dtype.newbyteorder("=")
        dtype = dt if dt in SUPPORTED_DTYPES else np.float32
    return LSTMParams(arrays, input_size=first.w_ih.shape[1], hidden_size=H,
                      num_layers=len(layers), bias=bias, bidirectional=D == 2, proj_size=P,
                      dtype=dtype)


# ---------------------------------------------------------------------------- Keras / TensorFlow
def _activation_name(value) -> str:
    """The name of a Keras activation as its configuration holds it (string, dict, callable)."""
    if value is None:
        return "linear"
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, Mapping):
        cfg = value.get("config")
        name = cfg.get("name") if isinstance(cfg, Mapping) else cfg
        return str(name or value.get("class_name", "?")).lower()
    return str(getattr(value, "__name__", value)).lower()


def _check_activations(cfg: Mapping, where: str) -> None:
    act = _activation_name(cfg.get("activation", "tanh"))
    rec = _activation_name(cfg.get("recurrent_activation", "sigmoid"))
    if rec != "sigmoid":
        raise ValueError(f"{where}: recurrent_activation={rec!r} has no equivalent in fastlstm, "
                         f"whose gates use the logistic sigmoid (torch.nn.LSTM's math); "
                         f"only recurrent_activation='sigmoid' converts")
    if act != "tanh":
        raise ValueError(f"{where}: activation={act!r} has no equivalent in fastlstm, which "
                         f"uses tanh for the cell input and output; only activation='tanh' "
                         f"converts")


def _keras_direction(weights, where: str, use_bias: bool | None = None) -> _Direction:
    """Keras / CuDNNLSTM weights ``[kernel (I, 4H), recurrent_kernel (H, 4H)(, bias)]``."""
    ws = [_array(w, where) for w in weights]
    if len(ws) not in (2, 3):
        raise ValueError(f"{where}: expected [kernel, recurrent_kernel(, bias)], got "
                         f"{len(ws)} arrays")
    kernel, rec = ws[0], ws[1]
    if rec.ndim != 2 or rec.shape[1] != 4 * rec.shape[0]:
        raise ValueError(f"{where}: recurrent_kernel must have shape (units, 4*units), got "
                         f"{rec.shape}")
    H = rec.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != 4 * H:
        raise ValueError(f"{where}: kernel must have shape (input_size, {4 * H}), got "
                         f"{kernel.shape}")
    d = _Direction(_reorder(kernel.T, _FROM_KERAS), _reorder(rec.T, _FROM_KERAS))
    if len(ws) == 3:
        b = ws[2]
        if b.shape == (4 * H,):       # Keras: one bias
            d.b_ih, d.b_hh = _reorder(b, _FROM_KERAS), np.zeros_like(b)
        elif b.shape == (8 * H,):     # CuDNNLSTM: the input and the recurrent bias, as torch
            d.b_ih, d.b_hh = _reorder(b[:4 * H], _FROM_KERAS), _reorder(b[4 * H:], _FROM_KERAS)
        else:
            raise ValueError(f"{where}: bias must have shape ({4 * H},) (or ({8 * H},) from "
                             f"CuDNNLSTM), got {b.shape}")
    elif use_bias:
        raise ValueError(f"{where}: use_bias=True but the layer has no bias array")
    return d


def _tf1_direction(weights, where: str, forget_bias: float) -> _Direction:
    """TF1 ``LSTMCell`` / ``BasicLSTMCell``: ``[kernel (I + H_out, 4H), bias (4H,)(,
    projection kernel (H, P))]``, gate columns ``i, j, f, o``; ``forget_bias`` is added to the
    f gate at run time, so it is folded into the bias here."""
    ws = [_array(w, where) for w in weights]
    kernel, bias = ws[0], ws[1]
    proj = ws[2] if len(ws) == 3 else None
    if kernel.ndim != 2 or kernel.shape[1] % 4:
        raise ValueError(f"{where}: kernel must have shape (input_size + units, 4*units), got "
                         f"{kernel.shape}")
    H = kernel.shape[1] // 4
    if bias.shape != (4 * H,):
        raise ValueError(f"{where}: bias must have shape ({4 * H},), got {bias.shape}")
    if proj is not None and (proj.ndim != 2 or proj.shape[0] != H or not 0 < proj.shape[1] < H):
        raise ValueError(f"{where}: projection kernel must have shape ({H}, num_proj) with "
                         f"num_proj < {H}, got {proj.shape}")
    H_out = H if proj is None else proj.shape[1]
    I = kernel.shape[0] - H_out
    if I < 1:
        raise ValueError(f"{where}: kernel has {kernel.shape[0]} rows, at most the {H_out} "
                         f"recurrent ones: expected (input_size + {H_out}, {4 * H})")
    b = _reorder(bias, _FROM_TF1).copy()
    b[H:2 * H] += np.asarray(forget_bias, b.dtype)
    return _Direction(_reorder(kernel[:I].T, _FROM_TF1), _reorder(kernel[I:].T, _FROM_TF1),
                      b, np.zeros_like(b), None if proj is None else np.ascontiguousarray(proj.T))


_PEEPHOLE_KEYS = ("w_f_diag", "w_i_diag", "w_o_diag")


def _leaf(key: str) -> tuple[str, str]:
    """``(prefix, name)`` of a TF variable name such as ``rnn/lstm_cell/kernel:0``; the
    projection kernel (``.../projection/kernel``) is named ``projection``."""
    k = key.split(":")[0].replace(".", "/")
    parts = k.split("/")
    if len(parts) >= 2 and parts[-1] == "kernel" and parts[-2] == "projection":
        return "/".join(parts[:-2]), "projection"
    return "/".join(parts[:-1]), parts[-1]


def _mapping_direction(mapping: Mapping, where: str, forget_bias) -> tuple[_Direction, bool]:
    """One cell's variables by name: Keras' ``kernel``, ``recurrent_kernel``, ``bias``, or TF1's
    ``kernel``, ``bias`` (``projection/kernel``). Returns the weights and whether they are
    TF1's."""
    groups: dict[str, dict[str, object]] = {}
    for key, value in mapping.items():
        prefix, name = _leaf(str(key))
        groups.setdefault(prefix, {})[name] = value
    if len(groups) > 1:
        raise ValueError(f"{where}: the mapping holds several cells ({', '.join(map(repr, groups))}"
                         f"); pass them as a list in layer order, one mapping per cell (and "
                         f"{{'forward': ..., 'backward': ...}} for a bidirectional layer)")
    (prefix, cell), = groups.items()
    where = f"{where} {prefix!r}" if prefix else where
    peep = [k for k in _PEEPHOLE_KEYS if k in cell]
    if peep:
        raise ValueError(f"{where}: peephole weights ({', '.join(peep)}) have no equivalent in "
                         f"fastlstm (torch.nn.LSTM has no peepholes)")
    if "kernel" not in cell:
        raise ValueError(f"{where}: no 'kernel' among {sorted(cell)}")
    if "recurrent_kernel" in cell:
        ws = [cell["kernel"], cell["recurrent_kernel"]] + ([cell["bias"]] if "bias" in cell else [])
        return _keras_direction(ws, where), False
    if "bias" not in cell:
        raise ValueError(f"{where}: a TF1 LSTMCell kernel needs its 'bias'; found {sorted(cell)}")
    ws = [cell["kernel"], cell["bias"]] + ([cell["projection"]] if "projection" in cell else [])
    return _tf1_direction(ws, where, 1.0 if forget_bias is None else forget_bias), True


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or hasattr(value, "__array__") and not hasattr(
        value, "get_config")


def _raw_direction(weights, where: str, forget_bias) -> tuple[_Direction, bool]:
    """A list of arrays (one cell) or a mapping of named variables."""
    if isinstance(weights, Mapping):
        return _mapping_direction(weights, where, forget_bias)
    ws = list(weights)
    if len(ws) >= 2 and np.ndim(ws[1]) == 1:  # [kernel, bias(, projection)]: TF1's cell
        if len(ws) > 3:
            raise ValueError(f"{where}: a TF1 cell's weights are [kernel, bias(, projection "
                             f"kernel)]; got {len(ws)} arrays (peephole weights do not convert)")
        return _tf1_direction(ws, where, 1.0 if forget_bias is None else forget_bias), True
    return _keras_direction(ws, where), False


def _class(obj) -> str:
    return type(obj).__name__


def _weights_of(layer, where: str) -> list:
    ws = layer.get_weights()
    if not ws:
        raise ValueError(f"{where}: the layer has no weights yet (not built): call it on an "
                         f"input or build it first")
    return ws


def _tf1_cell_direction(cell, where: str, forget_bias) -> _Direction:
    """A TF1 ``LSTMCell`` / ``BasicLSTMCell`` object (its configuration holds ``num_units``)."""
    cfg = cell.get_config()
    if cfg.get("use_peepholes"):
        raise ValueError(f"{where}: use_peepholes=True has no equivalent in fastlstm "
                         f"(torch.nn.LSTM has no peepholes)")
    for clip in ("cell_clip", "proj_clip"):
        if cfg.get(clip) is not None:
            raise ValueError(f"{where}: {clip}={cfg[clip]!r} has no equivalent in fastlstm, "
                             f"which never clips the cell or the output")
    act = _activation_name(cfg.get("activation") or "tanh")
    if act != "tanh":
        raise ValueError(f"{where}: activation={act!r} has no equivalent in fastlstm (tanh only)")
    fb = cfg.get("forget_bias", 1.0) if forget_bias is None else forget_bias
    return _tf1_direction(_weights_of(cell, where), where, fb)


def _keras_layer(layer, where: str, *, backwards: bool, forget_bias):
    """One direction of a Keras layer: ``(weights, return_sequences, tf1)``."""
    cls = _class(layer)
    cfg = dict(layer.get_config())
    if "num_units" in cfg:  # a TF1 cell object
        return _tf1_cell_direction(layer, where, forget_bias), True, True
    if cls == "RNN":
        cell = getattr(layer, "cell", None)
        if _class(cell) != "LSTMCell":
            raise ValueError(f"{where}: an RNN layer over {_class(cell)}, not one LSTMCell")
        cfg = {**cell.get_config(), **cfg}
    elif "peephole" in cls.lower():
        raise ValueError(f"{where}: {cls} has peephole connections, which have no equivalent in "
                         f"fastlstm (torch.nn.LSTM has no peepholes)")
    elif cls not in ("LSTM", "CuDNNLSTM", "LSTMCell"):
        raise ValueError(f"{where}: {cls} is not an LSTM layer (expected LSTM, CuDNNLSTM, "
                         f"Bidirectional(LSTM), RNN(LSTMCell) or LSTMCell)")
    _check_activations(cfg, where)
    if bool(cfg.get("go_backwards", False)) != backwards:
        if backwards:
            raise ValueError(f"{where}: the backward layer of a Bidirectional wrapper must run "
                             f"with go_backwards=True")
        raise ValueError(f"{where}: go_backwards=True on a layer that is not inside "
                         f"Bidirectional has no torch.nn.LSTM equivalent (a lone reverse "
                         f"direction); wrap it in Bidirectional or reverse the input instead")
    w = _keras_direction(_weights_of(layer, where), where, cfg.get("use_bias", True))
    return w, bool(cfg.get("return_sequences", cls == "LSTMCell")), False


def _keras_stack_entry(obj, where: str, forget_bias):
    """One layer of the stack: ``(directions, return_sequences, tf1)``."""
    if isinstance(obj, Mapping) and set(obj) == {"forward", "backward"}:
        (fw, tf_f), (bw, tf_b) = (_raw_direction(obj[k], f"{where} ({k})", forget_bias)
                                  for k in ("forward", "backward"))
        return [fw, bw], True, tf_f or tf_b
    if _class(obj) == "Bidirectional":
        merge = getattr(obj, "merge_mode", "concat")
        if merge != "concat":
            raise ValueError(f"{where}: Bidirectional(merge_mode={merge!r}); fastlstm "
                             f"concatenates the two directions (merge_mode='concat'), as "
                             f"torch.nn.LSTM does")
        fw, seq, tf1 = _keras_layer(obj.forward_layer, where + " (forward)", backwards=False,
                                    forget_bias=forget_bias)
        bw, _, _ = _keras_layer(obj.backward_layer, where + " (backward)", backwards=True,
                                forget_bias=forget_bias)
        return [fw, bw], seq, tf1
    if hasattr(obj, "get_config") and hasattr(obj, "get_weights"):
        w, seq, tf1 = _keras_layer(obj, where, backwards=False, forget_bias=forget_bias)
        return [w], seq, tf1
    w, tf1 = _raw_direction(obj, where, forget_bias)
    return [w], True, tf1


_KERAS_RECURRENT = ("LSTM", "CuDNNLSTM", "Bidirectional", "RNN", "PeepholeLSTMCell")
# layers that change nothing at inference: an LSTM run continues across them
_KERAS_INFERENCE_IDENTITY = ("InputLayer", "Dropout", "SpatialDropout1D", "GaussianDropout",
                             "GaussianNoise", "AlphaDropout", "ActivityRegularization")


def _keras_model_layers(model) -> list:
    """The consecutive run of LSTM layers of a Keras model (other layers are ignored; dropout
    and noise layers, identities at inference, do not break a run)."""
    runs, current = [], []
    for layer in model.layers:
        if _class(layer) in _KERAS_RECURRENT:
            current.append(layer)
        elif _class(layer) not in _KERAS_INFERENCE_IDENTITY and current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    name = getattr(model, "name", _class(model))
    if not runs:
        raise ValueError(f"Keras model {name!r} has no LSTM layer (its layers: "
                         f"{', '.join(_class(l) for l in model.layers)})")
    if len(runs) > 1:
        desc = "; ".join(", ".join(repr(l.name) for l in r) for r in runs)
        raise ValueError(f"Keras model {name!r} has several separate runs of LSTM layers ({desc})"
                         f": pass the layers of one run, e.g. from_keras([model.get_layer(name),"
                         f" ...])")
    return runs[0]


def _keras_entries(obj) -> list:
    """The layers (objects or raw weights) that ``obj`` stacks, bottom first."""
    if hasattr(obj, "layers") and _class(obj) not in _KERAS_RECURRENT \
            and isinstance(getattr(obj, "layers", None), (list, tuple)):
        return _keras_model_layers(obj)
    if isinstance(obj, (list, tuple)) and obj and not all(_is_array(w) for w in obj):
        return list(obj)
    return [obj]


def from_keras(layer_or_weights, *, forget_bias: float | None = None,
               dtype=None) -> LSTMParams:
    """LSTMParams from Keras / TensorFlow LSTM weights.

    Parameters
    ----------
    layer_or_weights
        One of:

        * a ``keras.layers.LSTM`` (or ``CuDNNLSTM``, or ``RNN(LSTMCell)``) layer, built;
        * a ``keras.layers.Bidirectional`` wrapper of one (``merge_mode="concat"``);
        * a Keras model (``Sequential`` or functional): its consecutive LSTM /
          Bidirectional layers become the layers of one multi-layer LSTM (every one but the
          last must have ``return_sequences=True``; dropout layers between them, identities at
          inference, are skipped); other layers, before or after, are ignored;
        * a list of such layers, bottom first;
        * arrays: ``[kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,)]`` (Keras; the bias is
          optional, and (8H,) from ``CuDNNLSTM``), or ``[kernel (I + H, 4H), bias (4H,)]`` (the
          kernel of a TF1 ``LSTMCell`` / ``BasicLSTMCell``, gate columns ``i, j, f, o``, with a
          third ``projection kernel (H, P)`` when it has ``num_proj``), or a mapping of one
          cell's variables by name (``"rnn/lstm_cell/kernel"``, ``"rnn/lstm_cell/bias"``...);
          ``{"forward": ..., "backward": ...}`` for a bidirectional layer; a list of these for
          several layers;
        * a TF1 cell object (its configuration has ``num_units``): checked for peepholes and
          clipping, its ``forget_bias`` read from it.
    forget_bias : float, optional
        TF1 cells only: the constant their cell adds to the f gate at run time (default 1.0,
        as ``LSTMCell`` and ``BasicLSTMCell``); folded into the f bias. Keras layers hold theirs
        in the bias already (``unit_forget_bias`` is an initialiser), so it is refused there.
    dtype : float32 or float64, optional
        Defaults to the kernel's (float32 unless it is float64).

    Returns
    -------
    LSTMParams
        The Keras bias goes to ``bias_ih`` and zeros to ``bias_hh`` (a CuDNNLSTM's two halves
        to each); ``use_bias=False`` gives ``bias=False`` params; a TF1 projection gives
        ``proj_size``. Keras runs batch-first: call ``forward(..., batch_first=True)``.

    Raises
    ------
    ValueError
        What has no ``torch.nn.LSTM`` equivalent: ``recurrent_activation`` other than sigmoid
        (e.g. Keras 2's ``hard_sigmoid``), ``activation`` other than tanh, peepholes,
        ``cell_clip`` / ``proj_clip``, ``go_backwards`` outside ``Bidirectional``,
        ``merge_mode`` other than concat, stacked layers that differ in size, directions or
        bias, or that are not stacked directly (``return_sequences=False`` below the top).
    """
    entries = _keras_entries(layer_or_weights)
    layers, any_tf1 = [], False
    for k, entry in enumerate(entries):
        name = getattr(entry, "name", None)
        where = f"Keras layer {k}" + (f" {name!r}" if isinstance(name, str) else "")
        dirs, seq, tf1 = _keras_stack_entry(entry, where, forget_bias)
        any_tf1 |= tf1
        if not seq and k < len(entries) - 1:
            raise ValueError(f"{where} has return_sequences=False but another LSTM layer is "
                             f"stacked on it: only the top layer may return its last step alone")
        layers.append(dirs)
    if forget_bias is not None and not any_tf1:
        raise ValueError("forget_bias applies to TF1 LSTMCell/BasicLSTMCell kernels only; Keras "
                         "layers hold their forget bias in the bias array already")
    return _build(layers, dtype, "Keras")


def _keras_module():
    """``keras``, on the torch backend when no backend is chosen and TensorFlow is absent."""
    if "KERAS_BACKEND" not in os.environ and importlib.util.find_spec("tensorflow") is None \
            and importlib.util.find_spec("torch") is not None:
        os.environ["KERAS_BACKEND"] = "torch"
    return _import("keras", "keras", "Keras models")


def to_keras(params: LSTMParams):
    """A ``keras.Sequential`` model computing ``params``' LSTM (batch-first, every step out).

    Input ``(B, T, I)``; one ``LSTM(return_sequences=True)`` per layer, wrapped in
    ``Bidirectional(merge_mode="concat")`` when bidirectional; the output is fastlstm's ``y``
    with ``batch_first=True``. Keras has one bias: it gets ``bias_ih + bias_hh``.

    Raises
    ------
    ValueError
        ``proj_size > 0`` (Keras' LSTM has no projection).
    """
    if params.proj_size:
        raise ValueError(f"proj_size={params.proj_size}: Keras' LSTM has no output projection, "
                         f"so these params have no Keras equivalent")
    keras = _keras_module()
    dt = params.dtype.name
    model = keras.Sequential(name="fastlstm")
    model.add(keras.Input(shape=(None, params.input_size), dtype=dt))
    H = params.hidden_size
    per_layer = []
    for k in range(params.num_layers):
        def lstm(backwards=False):
            return keras.layers.LSTM(H, return_sequences=True, use_bias=params.bias,
                                     go_backwards=backwards, dtype=dt)
        layer = keras.layers.Bidirectional(lstm(), backward_layer=lstm(True), merge_mode="concat",
                                           dtype=dt) if params.bidirectional else lstm()
        model.add(layer)
        per_layer.append(layer)
    for k, layer in enumerate(per_layer):
        subs = [layer.forward_layer, layer.backward_layer] if params.bidirectional else [layer]
        for d, sub in enumerate(subs):
            w_ih, w_hh, b_ih, b_hh, _ = params.layer_weights(k, d)
            ws = [w_ih.T, w_hh.T] + ([b_ih + b_hh] if params.bias else [])
            sub.set_weights([np.ascontiguousarray(w) for w in ws])
    return model


from .convert_onnx import from_onnx, to_onnx  # noqa: E402  (the ONNX half, built on the above)
