"""Weights from and to Keras / TensorFlow and ONNX (fastlstm.convert), and file conversion.

Keras runs on its torch backend (no TensorFlow needed); ONNX models run in ONNX Runtime. Each
group skips when its framework is not installed."""
from __future__ import annotations

import os

import numpy as np
import pytest

import fastlstm
from fastlstm import LSTMParams
from fastlstm.convert import from_keras, from_onnx, to_onnx
from fastlstm.files import convert_file
from fastlstm.testing import assert_close

F32 = np.float32

# Keras' own variables warn under NumPy 2 (their __array__ takes no copy argument)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy")


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("torch")
    os.environ["KERAS_BACKEND"] = "torch"
    return pytest.importorskip("keras")


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def _x(shape, seed=0, dtype=F32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _keras_run(keras, layers, x_bf):
    y = x_bf
    for layer in layers:
        y = layer(y)
    return keras.ops.convert_to_numpy(y)


def _model(keras, layers, I=4):
    return keras.Sequential([keras.Input((None, I))] + list(layers))


# ---------------------------------------------------------------------------- Keras
def test_keras_single_layer(keras):
    layer = keras.layers.LSTM(6, return_sequences=True, bias_initializer="random_normal")
    _model(keras, [layer])
    p = LSTMParams.from_keras(layer)
    assert p.config() == dict(input_size=4, hidden_size=6, num_layers=1, bias=True,
                              bidirectional=False, proj_size=0, dtype="float32")
    assert not p["bias_hh_l0"].any()
    x = _x((3, 7, 4))
    assert_close(fastlstm.forward(x, p, batch_first=True).y, _keras_run(keras, [layer], x),
                 F32, "forward", "keras single layer")


def test_keras_bidirectional_concat(keras):
    layer = keras.layers.Bidirectional(
        keras.layers.LSTM(5, return_sequences=True, bias_initializer="random_normal"))
    _model(keras, [layer])
    p = from_keras(layer)
    assert p.bidirectional and p.num_layers == 1
    x = _x((2, 6, 4), seed=1)
    assert_close(fastlstm.forward(x, p, batch_first=True).y, _keras_run(keras, [layer], x),
                 F32, "forward", "keras bidirectional")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_keras_stacked_sequential(keras, bidirectional):
    def lstm(seq):
        layer = keras.layers.LSTM(5, return_sequences=seq, bias_initializer="random_normal")
        return keras.layers.Bidirectional(layer) if bidirectional else layer

    lstms = [lstm(True), lstm(True), lstm(False)]
    model = _model(keras, [lstms[0], keras.layers.Dropout(0.5)] + lstms[1:]
                   + [keras.layers.Dense(2)])
    p = from_keras(model)  # Dropout: the identity at inference; Dense: not part of the LSTM
    assert (p.num_layers, p.bidirectional) == (3, bidirectional)
    x = _x((3, 6, 4), seed=2)
    y = fastlstm.forward(x, p, batch_first=True).y
    last = np.concatenate([y[:, -1, :5], y[:, 0, 5:]], axis=1) if bidirectional else y[:, -1]
    assert_close(last, _keras_run(keras, lstms, x), F32, "forward", "keras stacked")


def test_keras_no_bias_and_weight_arrays(keras):
    layer = keras.layers.LSTM(4, return_sequences=True, use_bias=False)
    _model(keras, [layer], I=3)
    p = from_keras(layer)
    assert not p.bias
    x = _x((2, 5, 3))
    assert_close(fastlstm.forward(x, p, batch_first=True).y, _keras_run(keras, [layer], x),
                 F32, "forward", "keras use_bias=False")
    biased = keras.layers.LSTM(4, bias_initializer="random_normal")
    _model(keras, [biased], I=3)
    q = from_keras(biased.get_weights())  # the same arrays, without the layer
    r = from_keras(biased)
    assert all(np.array_equal(q[k], r[k]) for k in r)


def test_keras_refusals(keras):
    def built(layer, I=4):
        _model(keras, [layer], I)
        return layer

    cases = [
        (built(keras.layers.LSTM(3, recurrent_activation="hard_sigmoid")), "hard_sigmoid"),
        (built(keras.layers.LSTM(3, activation="relu")), "activation='relu'"),
        (built(keras.layers.LSTM(3, go_backwards=True)), "go_backwards"),
        (built(keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True),
                                          merge_mode="sum")), "merge_mode"),
        (built(keras.layers.GRU(3)), "not an LSTM layer"),
        (keras.layers.LSTM(3), "not built"),
    ]
    for layer, msg in cases:
        with pytest.raises(ValueError, match=msg):
            from_keras(layer)
    below, top = built(keras.layers.LSTM(3)), built(keras.layers.LSTM(3), I=3)
    with pytest.raises(ValueError, match="return_sequences=False"):  # under another LSTM
        from_keras([below, top])
    with pytest.raises(ValueError, match="forget_bias"):
        from_keras(built(keras.layers.LSTM(3)), forget_bias=1.0)


def test_cudnn_bias_halves():
    rng = np.random.default_rng(0)
    I, H = 3, 4
    kernel, rec, b = (rng.standard_normal(s).astype(F32)
                      for s in ((I, 4 * H), (H, 4 * H), (8 * H,)))
    p = from_keras([kernel, rec, b])
    assert np.array_equal(p["bias_ih_l0"], b[:4 * H]) and np.array_equal(p["bias_hh_l0"], b[4 * H:])
    q = from_keras([kernel, rec, b[:4 * H] + b[4 * H:]])  # Keras' one bias: their sum
    x = _x((5, 2, I))
    assert_close(fastlstm.forward(x, p).y, fastlstm.forward(x, q).y, F32, "forward", "cudnn")


def _tf1_forward(x, kernel, bias, forget_bias, proj=None):
    """TF1 LSTMCell's own math, step by step (float64): gates i, j, f, o of [x, h] @ kernel."""
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    T, B, _ = x.shape
    H = kernel.shape[1] // 4
    h = np.zeros((B, H if proj is None else proj.shape[1]))
    c = np.zeros((B, H))
    ys = []
    for t in range(T):
        i, j, f, o = np.split(np.concatenate([x[t], h], 1) @ kernel + bias, 4, axis=1)
        c = sig(f + forget_bias) * c + sig(i) * np.tanh(j)
        h = sig(o) * np.tanh(c)
        if proj is not None:
            h = h @ proj
        ys.append(h)
    return np.stack(ys)


@pytest.mark.parametrize("forget_bias", [None, 0.5])
@pytest.mark.parametrize("with_proj", [False, True])
def test_tf1_lstm_cell_kernel(forget_bias, with_proj):
    rng = np.random.default_rng(3)
    I, H, P = 3, 5, 2
    H_out = P if with_proj else H
    kernel = rng.standard_normal((I + H_out, 4 * H)) * 0.5
    bias = rng.standard_normal(4 * H) * 0.5
    proj = rng.standard_normal((H, P)) if with_proj else None
    arrays = [kernel, bias] + ([proj] if with_proj else [])
    p = from_keras(arrays, forget_bias=forget_bias)
    assert (p.hidden_size, p.proj_size, p.dtype) == (H, P if with_proj else 0, np.float64)
    x = _x((6, 2, I), dtype=np.float64)
    want = _tf1_forward(x, kernel, bias, 1.0 if forget_bias is None else forget_bias, proj)
    assert_close(fastlstm.forward(x, p).y, want, np.float64, "forward", "TF1 cell")
    named = {"rnn/lstm_cell/kernel:0": kernel, "rnn/lstm_cell/bias:0": bias}
    if with_proj:
        named["rnn/lstm_cell/projection/kernel:0"] = proj
    q = from_keras(named, forget_bias=forget_bias)
    assert all(np.array_equal(p[k], q[k]) for k in p)


def test_tf1_refusals():
    rng = np.random.default_rng(0)
    kernel, bias = rng.standard_normal((7, 16)), rng.standard_normal(16)
    with pytest.raises(ValueError, match="peephole"):
        from_keras({"cell/kernel": kernel, "cell/bias": bias, "cell/w_f_diag": bias[:4]})

    class Cell:  # a TF1 cell object: configuration and weights
        def __init__(self, **cfg):
            self.cfg = {**dict(num_units=4, use_peepholes=False, cell_clip=None,
                               proj_clip=None, forget_bias=1.0, activation=None), **cfg}

        def get_config(self):
            return self.cfg

        def get_weights(self):
            return [kernel, bias]

    b = from_keras(Cell(forget_bias=0.25))["bias_ih_l0"]  # torch's f rows: TF1's third block
    np.testing.assert_allclose(b[4:8], bias[8:12] + 0.25, rtol=1e-15)
    for cfg, msg in [(dict(cell_clip=3.0), "cell_clip"), (dict(use_peepholes=True), "peephole"),
                     (dict(proj_clip=1.0), "proj_clip")]:
        with pytest.raises(ValueError, match=msg):
            from_keras(Cell(**cfg))
    with pytest.raises(ValueError, match="several cells"):
        from_keras({"a/kernel": kernel, "a/bias": bias, "b/kernel": kernel, "b/bias": bias})


# ---------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("cfg", [dict(num_layers=1), dict(num_layers=2, bidirectional=True),
                                 dict(num_layers=2, bias=False), dict(dtype=np.float64)])
def test_onnx_round_trip(cfg):
    pytest.importorskip("onnx")
    p = LSTMParams.init(4, 5, seed=0, **cfg)
    q = LSTMParams.from_onnx(p.to_onnx())
    assert q.config() == p.config()
    assert all(np.array_equal(p[k], q[k]) for k in p)


@pytest.mark.parametrize("num_layers,bidirectional,batch_first",
                         [(1, False, False), (2, True, False), (2, True, True), (1, True, True)])
def test_onnxruntime_matches_forward(ort, tmp_path, num_layers, bidirectional, batch_first):
    p = LSTMParams.init(4, 6, num_layers, bidirectional=bidirectional, seed=1)
    path = tmp_path / "lstm.onnx"
    p.to_onnx(path, batch_first=batch_first, lengths=True, initial_state=True)
    T, B, LD = 7, 5, num_layers * p.num_directions
    x = _x((B, T, 4) if batch_first else (T, B, 4), seed=2)
    lengths = np.array([3, 7, 1, 5, 6])  # unsorted
    h0, c0 = _x((LD, B, 6), seed=3), _x((LD, B, 6), seed=4)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y, h, c = sess.run(None, {"x": x, "sequence_lens": lengths.astype(np.int32),
                              "initial_h": h0, "initial_c": c0})
    want = fastlstm.forward(x, p, h0, c0, lengths=lengths, batch_first=batch_first)
    for name, got, ref in (("y", y, want.y), ("h", h, want.h), ("c", c, want.c)):
        assert_close(got, ref, F32, "forward", f"onnxruntime {name}")
    y_tm = y.transpose(1, 0, 2) if batch_first else y
    for b, n in enumerate(lengths):  # padded steps: zeros in both
        assert not y_tm[n:, b].any()


def test_onnx_plain_model_runs(ort):
    """The default export: x in, y / h_n / c_n out."""
    p = LSTMParams.init(3, 4, 2, seed=0)
    sess = ort.InferenceSession(p.to_onnx().SerializeToString(),
                                providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"]
    x = _x((5, 2, 3))
    y, h, c = sess.run(None, {"x": x})
    want = fastlstm.forward(x, p)
    assert_close(y, want.y, F32, "forward", "y")
    assert_close(c, want.c, F32, "forward", "c")


def test_onnx_from_torch_export(ort, tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = torch.nn.LSTM(4, 5, num_layers=2, bidirectional=True).eval()
    x = torch.from_numpy(_x((6, 3, 4)))
    path = tmp_path / "torch.onnx"
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (x,), str(path), dynamo=False, input_names=["x"],
                              output_names=["y", "h", "c"])
    except Exception as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"torch.onnx.export failed here: {exc}")
    p = from_onnx(path)
    sd = m.state_dict()
    assert p.config()["num_layers"] == 2 and p.bidirectional
    for k in sd:
        np.testing.assert_allclose(p[k], sd[k].numpy(), rtol=0, atol=0, err_msg=k)
    with torch.no_grad():
        want = m(x)[0].numpy()
    assert_close(fastlstm.forward(x.numpy(), p).y, want, F32, "forward", "torch export")


def _lstm_model(I=3, H=4, D=1, *, P=None, inputs=None, **attrs):
    """A one-node ONNX LSTM model with random constant weights."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(F32), n)
             for n, s in (("W", (D, 4 * H, I)), ("R", (D, 4 * H, H)), ("B", (D, 8 * H)))]
    ins = inputs or ["x", "W", "R", "B"]
    if P is not None:
        inits.append(numpy_helper.from_array(np.full((D, 3 * H), P, F32), "P"))
        ins = ["x", "W", "R", "B", "", "", "", "P"]
    node = helper.make_node("LSTM", ins, ["Y", "Y_h", "Y_c"], hidden_size=H, **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", I])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph)


def test_onnx_layouts_and_reorder():
    pytest.importorskip("onnx")
    m0, m1 = _lstm_model(), _lstm_model(layout=1)
    p0, p1 = from_onnx(m0), from_onnx(m1)
    assert all(np.array_equal(p0[k], p1[k]) for k in p0)
    from onnx import numpy_helper
    W = numpy_helper.to_array(m0.graph.initializer[0])[0]  # rows i, o, f, c
    i, o, f, c = np.split(W, 4)
    np.testing.assert_array_equal(p0["weight_ih_l0"], np.concatenate([i, f, c, o]))
    assert from_onnx(_lstm_model(P=0.0)).config() == p0.config()  # zero peepholes: none


def test_onnx_refusals():
    pytest.importorskip("onnx")
    cases = [
        (_lstm_model(direction="reverse"), "reverse"),
        (_lstm_model(clip=3.0), "clip"),
        (_lstm_model(input_forget=1), "input_forget"),
        (_lstm_model(activations=["HardSigmoid", "Tanh", "Tanh"]), "activations"),
        (_lstm_model(P=0.5), "peephole"),
        (_lstm_model(inputs=["x", "x", "R", "B"]), "not a constant"),
    ]
    for model, msg in cases:
        with pytest.raises(ValueError, match=msg):
            from_onnx(model)
    with pytest.raises(ValueError, match="proj_size"):
        to_onnx(LSTMParams.init(3, 4, proj_size=2, seed=0))


def test_onnx_node_selection():
    pytest.importorskip("onnx")
    p = LSTMParams.init(3, 4, 3, bidirectional=True, seed=0)
    m = p.to_onnx()
    top = from_onnx(m, node=2)
    assert (top.num_layers, top.input_size) == (1, 8)
    assert np.array_equal(top["weight_hh_l0_reverse"], p["weight_hh_l2_reverse"])
    two = from_onnx(m, node=["lstm_l1", "lstm_l2"])
    assert np.array_equal(two["weight_ih_l1"], p["weight_ih_l2"])
    with pytest.raises(ValueError, match="not the stacked layers"):
        from_onnx(m, node=[0, 2])
    with pytest.raises(ValueError, match="3 LSTM node"):
        from_onnx(m, node=5)


# ---------------------------------------------------------------------------- files
def _same_outputs(p, q, tol_kind="forward"):
    x = _x((5, 2, p.input_size), seed=9)
    assert_close(fastlstm.forward(x, q).y, fastlstm.forward(x, p).y, p.dtype, tol_kind, "files")


@pytest.mark.parametrize("chain", [("npz", "pt", "onnx", "npz"), ("npz", "keras", "pt")])
def test_convert_file_chain(tmp_path, chain):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    if "keras" in chain:
        os.environ.setdefault("KERAS_BACKEND", "torch")
        pytest.importorskip("keras")
    p = LSTMParams.init(4, 5, 2, bidirectional=True, seed=0)
    paths = [tmp_path / f"m{k}.{ext}" for k, ext in enumerate(chain)]
    p.save(paths[0])
    for src, dst in zip(paths, paths[1:]):
        report = convert_file(src, dst, check=True)
        assert isinstance(report, str) and report.ok, report
        assert report.max_error is not None and report.rel_error <= report.tolerance
        assert "ok" in report and str(dst) in report
    q = convert_file(paths[-1], tmp_path / "last.npz").params
    if "keras" in chain:  # Keras keeps one bias: the sum of torch's two
        _same_outputs(p, q)
    else:
        assert all(np.array_equal(p[k], q[k]) for k in p)


def test_convert_file_torch_prefix_and_errors(tmp_path):
    torch = pytest.importorskip("torch")
    p = LSTMParams.init(3, 4, seed=0)
    sd = {f"encoder.lstm.{k}": torch.from_numpy(v) for k, v in p.state_dict().items()}
    sd["head.weight"] = torch.zeros(2, 4)
    torch.save(sd, tmp_path / "model.pt")
    report = convert_file(tmp_path / "model.pt", tmp_path / "lstm.npz")
    assert report.ok and report.max_error is None and "1 layer" in report
    q = LSTMParams.load(tmp_path / "lstm.npz")
    assert all(np.array_equal(p[k], q[k]) for k in p)
    with pytest.raises(ValueError, match="unknown file type"):
        convert_file(tmp_path / "lstm.npz", tmp_path / "lstm.txt")


def test_convert_command_line(tmp_path):
    """``python -m fastlstm convert IN OUT --check``: exit 0 and a report; 2 for an unknown
    format."""
    from fastlstm.cli import main
    p = LSTMParams.init(3, 4, num_layers=2, seed=0)
    p.save(tmp_path / "a.npz")
    assert main(["convert", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--check"]) == 0
    q = LSTMParams.load(tmp_path / "b.npz")
    assert all(np.array_equal(p[k], q[k]) for k in p.keys())
    assert main(["convert", str(tmp_path / "a.npz"), str(tmp_path / "b.txt")]) == 2
