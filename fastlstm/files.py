"""Converting LSTM weight files between formats, by extension: ``.pt`` / ``.pth`` (a torch
state dict), ``.keras`` / ``.h5`` / ``.hdf5`` (a Keras model), ``.onnx`` and ``.npz``
(:meth:`fastlstm.LSTMParams.save`), optionally checked by running both files, each in its own
framework, on the same random input (``python -m fastlstm convert IN OUT --check``). The
weight converters themselves are :mod:`fastlstm.convert`'s.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Mapping

import numpy as np

from .api import forward
from .convert import _import, _keras_entries, _keras_module, from_keras, to_keras
from .convert_onnx import _load_onnx, from_onnx, to_onnx
from .harness import Inputs, TorchRunner
from .params import LSTMParams
from .params_io import _prefixes
from .testing import rel_err, tolerance

__all__ = ["convert_file", "ConvertReport", "FORMATS"]

FORMATS = {".npz": "fastlstm", ".pt": "torch", ".pth": "torch", ".keras": "keras", ".h5": "keras",
           ".hdf5": "keras", ".onnx": "onnx"}


class ConvertReport(str):
    """The report line of :func:`convert_file`; also carries its numbers.

    Attributes
    ----------
    params : LSTMParams
        What was converted.
    max_error, rel_error : float or None
        With ``check=True``: the largest absolute difference and the relative norm error
        between the two files' outputs on the same random input; None without a check.
    tolerance : float or None
        The relative error allowed (:mod:`fastlstm.testing`'s forward tolerance of the dtype).
    ok : bool
        False when a check found a mismatch.
    """
    params: LSTMParams
    max_error: float | None
    rel_error: float | None
    tolerance: float | None
    ok: bool


def _format_of(path) -> str:
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{os.fspath(path)}: unknown file type {ext or '(no extension)'!r}; "
                         f"expected one of {', '.join(FORMATS)}")
    return FORMATS[ext]


def _torch():
    return _import("torch", "torch", "PyTorch files")


def _read_torch(path, prefix) -> LSTMParams:
    torch = _torch()
    obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # a training checkpoint
    if not isinstance(obj, Mapping):
        raise ValueError(f"{os.fspath(path)} holds a {type(obj).__name__}, not a state dict")
    if prefix is None and "weight_ih_l0" not in obj and "weight_ih" not in obj:
        found = _prefixes(obj.keys())
        if len(found) > 1:
            raise ValueError(f"{os.fspath(path)} holds several LSTMs (prefixes {found}): "
                             f"choose one with prefix=")
        prefix = found[0] if found else ""
    return LSTMParams.from_state_dict(obj, prefix=prefix or "")


def _read(path, fmt, prefix) -> tuple[LSTMParams, object]:
    """The params in ``path`` and what runs it natively (or None)."""
    if fmt == "fastlstm":
        return LSTMParams.load(path), None
    if fmt == "torch":
        return _read_torch(path, prefix), None
    if fmt == "keras":
        keras = _keras_module()
        model = keras.saving.load_model(os.fspath(path), compile=False)
        layers = _keras_entries(model)
        return from_keras(layers), layers
    model = _load_onnx(path)
    return from_onnx(model), model


def _write(params: LSTMParams, path, fmt) -> None:
    if fmt == "fastlstm":
        params.save(path)
    elif fmt == "torch":
        torch = _torch()
        torch.save({k: torch.from_numpy(v) for k, v in params.state_dict().items()},
                   os.fspath(path))
    elif fmt == "keras":
        to_keras(params).save(os.fspath(path))
    else:
        to_onnx(params, path)


def _run_native(fmt, params: LSTMParams, native, x: np.ndarray) -> tuple[np.ndarray, str]:
    """``y`` (T, B, D*H) of time-major ``x`` computed by the file's own framework, with its
    name; a Keras model whose top layer returns its last step alone gives (B, D*H)."""
    T, B, _ = x.shape
    if fmt == "torch" and importlib.util.find_spec("torch") is not None:
        runner = TorchRunner("infer", Inputs.for_forward(params, x))
        return runner.outputs(runner())["y"], "torch"
    if fmt == "keras":
        keras = _keras_module()
        y = keras.ops.convert_to_numpy(_keras_call(native, x.transpose(1, 0, 2)))
        return (np.ascontiguousarray(y.transpose(1, 0, 2)) if y.ndim == 3 else y), "keras"
    if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is not None \
            and params.dtype == np.float32:  # ONNX Runtime's LSTM is float32 only
        return _run_onnxruntime(native, params, x), "onnxruntime"
    return forward(x, params, device="cpu").y, "fastlstm"


def _keras_call(layers, x_bf):
    y = x_bf
    for layer in layers:
        y = layer(y)
    return y


def _run_onnxruntime(model, params: LSTMParams, x: np.ndarray) -> np.ndarray:
    """Run an ONNX model on time-major ``x`` with ONNX Runtime: ``x`` goes to the first graph
    input (batch-first when the first LSTM node reads it through a Transpose, or has layout 1),
    zeros and full lengths to the others; the first output is brought to (T, B, D*H)."""
    import onnxruntime as ort
    from onnx import helper
    T, B, _ = x.shape
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    feeds = [i for i in graph.input if i.name not in init_names]
    lstm = next(n for n in graph.node if n.op_type == "LSTM")
    producers = {o: n for n in graph.node for o in n.output if o}
    layout = next((helper.get_attribute_value(a) for a in lstm.attribute if a.name == "layout"), 0)
    p = producers.get(lstm.input[0])
    if p is not None and p.op_type == "Transpose":
        perm = next(helper.get_attribute_value(a) for a in p.attribute if a.name == "perm")
        batch_first = list(perm) == [1, 0, 2] if not layout else list(perm) == [0, 1, 2]
    else:
        batch_first = bool(layout)
    x_feed = np.ascontiguousarray(x.transpose(1, 0, 2)) if batch_first else x
    ins = {feeds[0].name: x_feed}
    LD = params.num_layers * params.num_directions
    for f in feeds[1:]:
        if f.type.tensor_type.elem_type in (6, 7):  # int32, int64: sequence lengths
            ins[f.name] = np.full(B, T, np.int32 if f.type.tensor_type.elem_type == 6 else np.int64)
        else:
            ins[f.name] = np.zeros((LD, B, params.output_size), x.dtype)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, ins)[0]
    D, H = params.num_directions, params.hidden_size
    if y.ndim == 4:  # an LSTM node's own Y: (T, D, B, H), or (B, T, D, H) with layout 1
        y = y.transpose(1, 0, 2, 3) if y.shape[:2] == (B, T) and y.shape[2] == D else y
        return np.ascontiguousarray(y.transpose(0, 2, 1, 3)).reshape(T, B, D * H)
    if y.shape == (B, T, D * H) and (T != B or batch_first):
        return np.ascontiguousarray(y.transpose(1, 0, 2))
    return y


def _last_steps(y: np.ndarray, D: int, H: int) -> np.ndarray:
    """(B, D*H) of y (T, B, D*H): what a Keras layer with ``return_sequences=False`` returns
    (the forward direction's last step, the backward one's first)."""
    if D == 1:
        return y[-1]
    return np.concatenate([y[-1, :, :H], y[0, :, H:]], axis=1)


def convert_file(src, dst, check: bool = False, *, prefix: str | None = None,
                 seed: int = 0) -> ConvertReport:
    """Convert LSTM weights between files, by extension: ``.pt`` / ``.pth`` (a torch state
    dict), ``.keras`` / ``.h5`` / ``.hdf5`` (a Keras model), ``.onnx``, ``.npz``
    (:meth:`LSTMParams.save`).

    Parameters
    ----------
    src, dst : str or os.PathLike
    check : bool
        Also run both files, each in its own framework where it is installed (torch, Keras,
        ONNX Runtime; fastlstm for ``.npz`` and where the framework is missing), on the same
        random input (T=7, B=3, standard normal) and report the largest difference of ``y``.
    prefix : str, optional
        ``.pt`` sources: the key prefix of the LSTM in a whole model's state dict (found
        automatically when there is only one).
    seed : int
        Of the check's random input.

    Returns
    -------
    ConvertReport
        A ``str``: one line naming both files, the configuration and, with ``check``, the
        errors and ``ok`` / ``MISMATCH``; its attributes carry the numbers (``.ok``,
        ``.max_error``...).
    """
    fin, fout = _format_of(src), _format_of(dst)
    params, native_src = _read(src, fin, prefix)
    _write(params, dst, fout)
    cfg = (f"{params.num_layers} layer{'s' if params.num_layers > 1 else ''}"
           f"{', bidirectional' if params.bidirectional else ''}, input {params.input_size}, "
           f"hidden {params.hidden_size}{f', proj {params.proj_size}' if params.proj_size else ''}"
           f"{'' if params.bias else ', no bias'}, {params.dtype.name}")
    line = f"{os.fspath(src)} ({fin}) -> {os.fspath(dst)} ({fout}): {cfg}"
    max_err = rel = tol = None
    ok = True
    if check:
        T, B = 7, 3
        x = np.random.default_rng(seed).standard_normal((T, B, params.input_size)) \
            .astype(params.dtype)
        params_dst, native_dst = _read(dst, fout, None)
        a, name_a = _run_native(fin, params, native_src, x)
        b, name_b = _run_native(fout, params_dst, native_dst, x)
        D, H = params.num_directions, params.hidden_size
        if a.ndim != b.ndim:  # one side returns the last step alone
            a, b = (_last_steps(a, D, H), b) if a.ndim == 3 else (a, _last_steps(b, D, H))
        max_err = float(np.max(np.abs(a.astype(np.float64) - b)))
        rel = rel_err(b, a)
        tol = tolerance(params.dtype, "forward")
        ok = bool(rel <= tol)
        line += (f"; check on random input (T={T}, B={B}), {name_a} vs {name_b}: max abs error "
                 f"{max_err:.2e}, relative {rel:.2e} (tolerance {tol:.0e}) "
                 f"{'ok' if ok else 'MISMATCH'}")
    report = ConvertReport(line)
    report.params, report.max_error, report.rel_error = params, max_err, rel
    report.tolerance, report.ok = tol, ok
    return report
