"""ONNX ``LSTM`` nodes to and from :class:`~fastlstm.params.LSTMParams`: :func:`from_onnx`,
:func:`to_onnx` (re-exported by :mod:`fastlstm.convert`, which holds the gate orders and the
shared assembly; see its docstring for the layouts)."""
from __future__ import annotations

import os

import numpy as np

from .convert import (_FROM_ONNX, _ONNX_MIN_OPSET, _TO_ONNX, _array, _Direction, _build, _import,
                      _reorder)
from .params import LSTMParams

__all__ = ["from_onnx", "to_onnx"]


# ---------------------------------------------------------------------------- ONNX
def _onnx():
    return _import("onnx", "onnx", "ONNX conversion")


def _load_onnx(model_or_path):
    onnx = _onnx()
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if isinstance(model_or_path, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model_or_path))
    if isinstance(model_or_path, (str, os.PathLike)) or hasattr(model_or_path, "read"):
        return onnx.load(model_or_path)
    raise TypeError(f"expected an onnx.ModelProto, a path or bytes, got "
                    f"{type(model_or_path).__name__}")


def _onnx_constants(graph) -> dict[str, np.ndarray]:
    """Every value the graph holds as data: initializers and the outputs of Constant nodes."""
    from onnx import helper, numpy_helper
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
                elif a.name in ("value_float", "value_floats", "value_int", "value_ints"):
                    out[node.output[0]] = np.asarray(helper.get_attribute_value(a))
    return out


def _node_label(node, index: int) -> str:
    return f"ONNX LSTM node {node.name!r}" if node.name else f"ONNX LSTM node #{index}"


# ONNX operators that pass an LSTM's output on to the next LSTM unchanged in value
_PASS_THROUGH = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Dropout",
                 "Cast"}


def _check_chained(prev, node, producers: dict, labels) -> None:
    """``node``'s input X is ``prev``'s output Y through value-preserving reshapes only."""
    target = prev.output[0] if prev.output else ""
    name, seen = node.input[0], set()
    while name and name not in seen:
        seen.add(name)
        if name == target:
            return
        p = producers.get(name)
        if p is None or p.op_type not in _PASS_THROUGH:
            what = "a graph input or constant" if p is None else f"a {p.op_type} node"
            raise ValueError(f"{labels[1]} does not take {labels[0]}'s output Y as its input "
                             f"(its X comes from {what}): the nodes are not the stacked layers "
                             f"of one LSTM; pick one with node=")
        name = p.input[0] if p.input else ""
    raise ValueError(f"{labels[1]} does not take {labels[0]}'s output Y as its input: the nodes "
                     f"are not the stacked layers of one LSTM; pick one with node=")


def _onnx_layer(node, consts: dict, where: str) -> list[_Direction]:
    from onnx import helper
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    if direction == "reverse":
        raise ValueError(f"{where}: direction='reverse' alone has no torch.nn.LSTM equivalent "
                         f"(only 'forward' and 'bidirectional' convert)")
    if direction not in ("forward", "bidirectional"):
        raise ValueError(f"{where}: unknown direction {direction!r}")
    D = 2 if direction == "bidirectional" else 1
    if attrs.get("clip") is not None:
        raise ValueError(f"{where}: clip={attrs['clip']} has no equivalent in fastlstm, which "
                         f"never clips the gates")
    if int(attrs.get("input_forget", 0)):
        raise ValueError(f"{where}: input_forget=1 (coupled input and forget gates) has no "
                         f"equivalent in fastlstm")
    acts = [a.decode() if isinstance(a, bytes) else str(a) for a in attrs.get("activations", [])]
    if acts and [a.lower() for a in acts] != ["sigmoid", "tanh", "tanh"] * D:
        raise ValueError(f"{where}: activations={acts} have no equivalent in fastlstm, which "
                         f"computes {['Sigmoid', 'Tanh', 'Tanh'] * D} (the default)")
    if int(attrs.get("layout", 0)) not in (0, 1):
        raise ValueError(f"{where}: unknown layout {attrs['layout']}")
    inputs = list(node.input) + [""] * (8 - len(node.input))

    def const(i, what):
        name = inputs[i]
        if not name:
            return None
        if name not in consts:
            raise ValueError(f"{where}: {what} ({name!r}) is not a constant of the graph "
                             f"(initializer or Constant node), so its weights cannot be read")
        return _array(consts[name], f"{where} {what}")

    W, R, B, P = const(1, "W"), const(2, "R"), const(3, "B"), const(7, "P")
    if W is None or R is None:
        raise ValueError(f"{where}: no W or R input")
    if P is not None and np.any(P != 0):
        raise ValueError(f"{where}: peephole weights P have no equivalent in fastlstm "
                         f"(torch.nn.LSTM has no peepholes)")
    if R.ndim != 3 or R.shape[0] != D or R.shape[1] != 4 * R.shape[2]:
        raise ValueError(f"{where}: R must have shape ({D}, 4*hidden_size, hidden_size), got "
                         f"{R.shape}")
    H = R.shape[2]
    if "hidden_size" in attrs and int(attrs["hidden_size"]) != H:
        raise ValueError(f"{where}: hidden_size={attrs['hidden_size']} but R has shape {R.shape}")
    if W.ndim != 3 or W.shape[:2] != (D, 4 * H):
        raise ValueError(f"{where}: W must have shape ({D}, {4 * H}, input_size), got {W.shape}")
    if B is not None and B.shape != (D, 8 * H):
        raise ValueError(f"{where}: B must have shape ({D}, {8 * H}), got {B.shape}")
    dirs = []
    for d in range(D):
        w = _Direction(_reorder(W[d], _FROM_ONNX), _reorder(R[d], _FROM_ONNX))
        if B is not None:
            w.b_ih = _reorder(B[d, :4 * H], _FROM_ONNX)
            w.b_hh = _reorder(B[d, 4 * H:], _FROM_ONNX)
        dirs.append(w)
    return dirs


def from_onnx(model_or_path, node=None, *, dtype=None) -> LSTMParams:
    """LSTMParams from the ``LSTM`` nodes of an ONNX model.

    Parameters
    ----------
    model_or_path : onnx.ModelProto, path or bytes
    node : int, str, onnx.NodeProto or a list of them, optional
        Which LSTM node(s): an index among the graph's LSTM nodes, a node name or a NodeProto.
        By default every LSTM node of the graph, in graph order: several become the layers of
        one LSTM and must be stacked directly (each one's X is the previous one's Y, through
        Transpose / Reshape / Squeeze-like nodes only), as ``torch.onnx.export`` and
        :func:`to_onnx` write them.
    dtype : float32 or float64, optional
        Defaults to W's (float32 unless W is float64).

    Returns
    -------
    LSTMParams
        ``W``'s and ``R``'s rows reordered from ONNX's ``i, o, f, c`` to ``i, f, g, o``; ``B``'s
        halves (``Wb``, ``Rb``) become ``bias_ih`` and ``bias_hh``; no ``B`` gives
        ``bias=False``. ``layout`` 0 and 1 give the same weights (pass ``batch_first`` to
        ``forward`` for layout 1).

    Raises
    ------
    ValueError
        No LSTM node; weights that are not constants; a lone ``direction="reverse"``; nonzero
        peepholes ``P``; ``clip``; ``input_forget=1``; ``activations`` other than the default
        Sigmoid, Tanh, Tanh; nodes that are not stacked layers of one LSTM.
    """
    model = _load_onnx(model_or_path)
    graph = model.graph
    lstms = [n for n in graph.node if n.op_type == "LSTM" and n.domain in ("", "ai.onnx")]
    if not lstms:
        ops = sorted({n.op_type for n in graph.node})
        raise ValueError(f"the ONNX graph has no LSTM node (its operators: {', '.join(ops)})")
    index = {id(n): i for i, n in enumerate(lstms)}
    chosen = lstms
    if node is not None:
        chosen = [_pick_node(lstms, n) for n in (node if isinstance(node, (list, tuple))
                                                 else [node])]
    labels = [_node_label(n, index[id(n)]) for n in chosen]
    consts = _onnx_constants(graph)
    producers = {o: n for n in graph.node for o in n.output if o}
    for k in range(1, len(chosen)):
        _check_chained(chosen[k - 1], chosen[k], producers, labels[k - 1:k + 1])
    layers = [_onnx_layer(n, consts, lab) for n, lab in zip(chosen, labels)]
    return _build(layers, dtype, "ONNX")


def _pick_node(lstms, sel):
    if isinstance(sel, (int, np.integer)) and not isinstance(sel, bool):
        if not -len(lstms) <= sel < len(lstms):
            raise ValueError(f"node={sel}: the graph has {len(lstms)} LSTM node(s)")
        return lstms[sel]
    if isinstance(sel, str):
        for n in lstms:
            if n.name == sel or sel in n.output:
                return n
        raise ValueError(f"node={sel!r}: no LSTM node of that name (names: "
                         f"{[n.name for n in lstms]})")
    for n in lstms:
        if n is sel or n == sel:
            return n
    raise TypeError(f"node must be an index, a name or an LSTM NodeProto of the graph, got "
                    f"{type(sel).__name__}")


def to_onnx(params: LSTMParams, path=None, *, batch_first: bool = False, lengths: bool = False,
            initial_state: bool = False, opset: int = 17):
    """An ONNX model of ``params``' LSTM, written to ``path`` when given.

    One ONNX ``LSTM`` node per layer (``layout=0``); between layers, and at the output, its
    ``Y`` (T, D, B, H) becomes (T, B, D*H) through Transpose + Reshape.

    Graph inputs: ``x`` (T, B, I), or (B, T, I) with ``batch_first``; with ``lengths=True``
    also ``sequence_lens`` (B,) int32; with ``initial_state=True`` also ``initial_h`` and
    ``initial_c`` (L*D, B, H). Outputs, in torch's layout: ``y`` (x's layout, last axis D*H),
    ``h_n`` and ``c_n`` (L*D, B, H). T and B are symbolic. Steps past a sequence's length give
    zeros in ``y``, as in :func:`fastlstm.forward`. (ONNX Runtime runs float32 LSTM nodes only;
    float64 params give a valid model that it refuses to run.)

    Parameters
    ----------
    params : LSTMParams
    path : str or os.PathLike, optional
    batch_first, lengths, initial_state : bool
    opset : int
        The ``ai.onnx`` opset (10 or later); the IR version follows it.

    Returns
    -------
    onnx.ModelProto

    Raises
    ------
    ValueError
        ``proj_size > 0`` (ONNX's LSTM has no projection), or an opset below 10.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper
    if params.proj_size:
        raise ValueError(f"proj_size={params.proj_size}: ONNX's LSTM operator has no output "
                         f"projection, so these params have no ONNX equivalent")
    opset = int(opset)
    if opset < _ONNX_MIN_OPSET:
        raise ValueError(f"opset must be >= {_ONNX_MIN_OPSET}, got {opset}")
    L, D, H, I = params.num_layers, params.num_directions, params.hidden_size, params.input_size
    elem = TensorProto.DOUBLE if params.dtype == np.float64 else TensorProto.FLOAT
    nodes, inits = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    x_dims = ["batch", "seq", I] if batch_first else ["seq", "batch", I]
    state_dims = [L * D, "batch", H]
    inputs = [helper.make_tensor_value_info("x", elem, x_dims)]
    if lengths:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["batch"]))
    if initial_state:
        inputs += [helper.make_tensor_value_info(n, elem, state_dims)
                   for n in ("initial_h", "initial_c")]
    x_in = "x"
    if batch_first:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2]))
        x_in = "x_tm"
    flat = init("shape_tb_", np.array([0, 0, -1], np.int64))
    if initial_state and L > 1:
        init("slice_axes", np.array([0], np.int64))
    h_outs, c_outs = [], []
    for k in range(L):
        W, R, Bs = [], [], []
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh, _ = params.layer_weights(k, d)
            W.append(_reorder(w_ih, _TO_ONNX))
            R.append(_reorder(w_hh, _TO_ONNX))
            if params.bias:
                Bs.append(np.concatenate([_reorder(b_ih, _TO_ONNX), _reorder(b_hh, _TO_ONNX)]))
        ins = [x_in, init(f"W_l{k}", np.stack(W)), init(f"R_l{k}", np.stack(R)),
               init(f"B_l{k}", np.stack(Bs)) if params.bias else "",
               "sequence_lens" if lengths else "", "", ""]
        if initial_state:
            if L == 1:
                ins[5], ins[6] = "initial_h", "initial_c"
            else:
                lo = init(f"slice_lo_l{k}", np.array([k * D], np.int64))
                hi = init(f"slice_hi_l{k}", np.array([(k + 1) * D], np.int64))
                for j, src in ((5, "initial_h"), (6, "initial_c")):
                    ins[j] = f"{src}_l{k}"
                    nodes.append(helper.make_node("Slice", [src, lo, hi, "slice_axes"], [ins[j]]))
        outs = [f"Y_l{k}", f"Y_h_l{k}", f"Y_c_l{k}"]
        nodes.append(helper.make_node("LSTM", ins, outs, name=f"lstm_l{k}", hidden_size=H,
                                      direction="bidirectional" if D == 2 else "forward"))
        h_outs.append(outs[1])
        c_outs.append(outs[2])
        last = k == L - 1
        perm = [2, 0, 1, 3] if (last and batch_first) else [0, 2, 1, 3]
        nodes.append(helper.make_node("Transpose", [outs[0]], [f"Y_t_l{k}"], perm=perm))
        x_in = "y" if last else f"X_l{k + 1}"
        nodes.append(helper.make_node("Reshape", [f"Y_t_l{k}", flat], [x_in]))
    for name, parts in (("h_n", h_outs), ("c_n", c_outs)):
        if L == 1:
            nodes.append(helper.make_node("Identity", parts, [name]))
        else:
            nodes.append(helper.make_node("Concat", parts, [name], axis=0))
    y_dims = ["batch", "seq", D * H] if batch_first else ["seq", "batch", D * H]
    outputs = [helper.make_tensor_value_info("y", elem, y_dims),
               helper.make_tensor_value_info("h_n", elem, state_dims),
               helper.make_tensor_value_info("c_n", elem, state_dims)]
    graph = helper.make_graph(nodes, "fastlstm_lstm", inputs, outputs, initializer=inits)
    model = helper.make_model_gen_version(graph, producer_name="fastlstm",
                                          opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model


#: File formats by extension, for :func:`convert_file`.
