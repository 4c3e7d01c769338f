"""LSTMParams: derived-data store and version, copies and pickles, in-place updates, naming
helpers, dtypes, reading state dicts (torch modules, prefixes, LSTMCell) and damaged files."""
from __future__ import annotations

import copy
import pickle
import re
import threading
import zipfile

import numpy as np
import pytest

import fastlstm
from fastlstm import LSTMParams
from fastlstm.params import _normalize_dtype


def _params(dtype=np.float64, seed=0, **kw):
    cfg = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, proj_size=2)
    cfg.update(kw)
    return LSTMParams.init(**cfg, dtype=dtype, seed=seed)


def _random_like(p, seed=1, names=None, dtype=None):
    rng = np.random.default_rng(seed)
    names = p.keys() if names is None else names
    return {k: rng.standard_normal(p[k].shape).astype(dtype or p.dtype) for k in names}


def _snapshot(mapping):
    return {k: np.array(mapping[k], copy=True) for k in mapping.keys()}


def _assert_same(a, b):
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


# ---------------------------------------------------------------------------- version, derived
def test_version_starts_at_zero_and_is_read_only():
    p = _params()
    assert p.version == 0
    with pytest.raises(AttributeError):
        p.version = 3
    p.update_(_random_like(p), 0.1)
    p.copy_(_random_like(p, seed=2))
    assert p.version == 2


def test_derived_builds_once_per_version_and_in_place_changes_drop_it():
    p = _params()
    calls = []

    def build():
        calls.append(p.version)
        return p["weight_hh_l0"].T.copy()

    first = p.derived(("cpu", "prepared", 0), build)
    assert p.derived(("cpu", "prepared", 0), build) is first and calls == [0]
    np.testing.assert_array_equal(first, p["weight_hh_l0"].T)
    other = p.derived(("cpu", "prepared", 1), lambda: "layer 1")
    assert other == "layer 1"

    p.update_(_random_like(p, names=["weight_hh_l0"]), 0.5)
    second = p.derived(("cpu", "prepared", 0), build)
    assert second is not first and calls == [0, 1]
    np.testing.assert_array_equal(second, p["weight_hh_l0"].T)  # built from the new weights
    assert p.derived(("cpu", "prepared", 1), lambda: "rebuilt") == "rebuilt"
    p.copy_({"bias_ih_l0": np.ones(20)})
    assert p.derived(("cpu", "prepared", 1), lambda: "again") == "again"


def test_previous_hands_out_the_last_versions_value_once():
    p = _params()
    assert p.previous("k") is None
    first = p.derived("k", lambda: np.zeros(3))
    p.update_(_random_like(p, names=["bias_ih_l0"]), 1.0)
    assert p.previous("k") is first and p.previous("k") is None  # once
    p.derived("k", lambda: np.ones(3))
    p.update_(_random_like(p, names=["bias_ih_l0"]), 1.0)
    p.update_(_random_like(p, names=["bias_ih_l0"]), 1.0)
    assert p.previous("k") is None  # two versions back: gone


@pytest.mark.parametrize("B", [1, 3], ids=["few-rows", "blas"])
def test_cpu_layouts_are_refilled_in_place_across_updates(B):
    """After an in-place update the CPU backend refills the previous version's layouts (same
    arrays) and every call sees the new weights (forward and backward, against the reference)."""
    from fastlstm.backends import cpu as cpu_backend
    p = _params(dtype=np.float32, hidden_size=6, proj_size=0)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, B, 3)).astype(np.float32)
    dy = rng.standard_normal((4, B, 12)).astype(np.float32)
    fastlstm.backward(fastlstm.forward(x, p, training=True).cache, dy)
    before = cpu_backend._prepare(p, 0)
    for step in range(2):
        p.update_(_random_like(p, seed=10 + step), 0.3)
        res = fastlstm.forward(x, p, training=True)
        got = fastlstm.backward(res.cache, dy)
        want_y = fastlstm.forward(x, p, device="reference", training=True)
        want = fastlstm.backward(want_y.cache, dy)
        np.testing.assert_allclose(res.y, want_y.y, rtol=2e-5, atol=2e-6)
        for k in p.keys():
            np.testing.assert_allclose(got.dparams[k], want.dparams[k], rtol=2e-4, atol=2e-5,
                                       err_msg=k)
        np.testing.assert_allclose(got.dx, want.dx, rtol=2e-4, atol=2e-5)
        after = cpu_backend._prepare(p, 0)
        assert after.w_hh_t[1] is before.w_hh_t[1] and after.bias[0] is before.bias[0]
        np.testing.assert_array_equal(after.w_hh_t[1], p["weight_hh_l0_reverse"].T)
        np.testing.assert_array_equal(after.w_ih_cat_t,
                                      np.concatenate([p["weight_ih_l0"],
                                                      p["weight_ih_l0_reverse"]]).T)


def test_derived_is_built_once_while_concurrent_callers_wait():
    import time
    p = _params()
    n = 8
    barrier = threading.Barrier(n)
    results, calls = [None] * n, []

    def build(i):
        calls.append(i)
        time.sleep(0.05)  # the others arrive meanwhile
        return np.full(4, i)

    def worker(i):
        barrier.wait()
        results[i] = p.derived("key", lambda: build(i))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert all(r is results[0] for r in results)
    assert p.derived("key", lambda: pytest.fail("built twice")) is results[0]


def test_derived_build_that_raises_lets_a_waiter_build():
    import time
    p = _params()
    started = threading.Event()
    out = {}

    def failing():
        started.set()
        time.sleep(0.05)
        raise RuntimeError("no layout")

    def first():
        with pytest.raises(RuntimeError, match="no layout"):
            p.derived("key", failing)

    def second():
        started.wait()
        out["v"] = p.derived("key", lambda: "built by the waiter")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out["v"] == "built by the waiter"
    assert p.derived("key", lambda: pytest.fail("built twice")) == "built by the waiter"


def test_derived_value_built_across_an_update_is_not_stored():
    p = _params()
    def build():
        p.update_(_random_like(p, names=["bias_hh_l1"]), 1.0)  # the weights change meanwhile
        return "old"

    value = p.derived("k", build)
    assert value == "old" and p.version == 1
    assert p.derived("k", lambda: "new") == "new"


# ---------------------------------------------------------------------------- copies and pickles
def _pickled(p):
    return pickle.loads(pickle.dumps(p))


@pytest.mark.parametrize("make_copy", [copy.copy, copy.deepcopy, _pickled],
                         ids=["copy", "deepcopy", "pickle"])
def test_copies_and_pickles_are_independent_read_only_and_carry_nothing_derived(make_copy):
    p = _params(np.float32, bias=False)
    p.update_(_random_like(p), 0.01)
    big = p.derived("big", lambda: np.random.default_rng(0).standard_normal(10**5))
    q = make_copy(p)
    assert type(q) is LSTMParams and q.config() == p.config() and q.dtype == np.float32
    assert q.version == 0 and p.version == 1
    _assert_same(q, p)
    for k in q:
        assert q[k].flags.writeable is False and q[k].flags.c_contiguous
        assert not np.shares_memory(q[k], p[k])
    assert q.derived("big", lambda: "fresh") == "fresh"
    assert p.derived("big", lambda: "unused") is big
    before = _snapshot(q)
    p.update_(_random_like(p, seed=5), 1.0)  # the copy does not follow the original
    _assert_same(q, before)
    q.update_(_random_like(q, seed=6), 1.0)  # and it can be updated itself
    assert q.version == 1


def test_pickle_holds_the_arrays_and_not_the_derived_data():
    p = _params(np.float64, input_size=64, hidden_size=128, num_layers=1, bidirectional=False,
                proj_size=0)
    nbytes = sum(p[k].nbytes for k in p)
    plain = len(pickle.dumps(p))
    p.derived(("cpu", "prepared", 0), lambda: np.ones(10 * nbytes // 8))
    p.derived(("cpu", "blocks"), lambda: [np.ones(nbytes // 8) for _ in range(3)])
    assert len(pickle.dumps(p)) == plain
    size = len(pickle.dumps(p, protocol=pickle.HIGHEST_PROTOCOL))
    assert nbytes <= size < nbytes + 4096
    assert "_derived" not in p.__getstate__()


# ---------------------------------------------------------------------------- in-place updates
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_update_is_an_sgd_step_in_place(dtype):
    p = _params(dtype)
    names = ["weight_ih_l0", "bias_hh_l1_reverse", "weight_hr_l1"]
    grads = _random_like(p, names=names, dtype=np.float64)  # float64 grads applied in dtype
    grads["weight_ih_l0"] = grads["weight_ih_l0"].astype(np.float32)
    grads_before = _snapshot(grads)
    before = p.state_dict()
    held = {k: p[k] for k in p}
    lr = 0.37
    assert p.update_(grads, lr) is p
    _assert_same(grads, grads_before)
    for k in p:
        assert p[k] is held[k] and p[k].flags.writeable is False and p[k].dtype == dtype
        if k in grads:
            want = before[k] - lr * grads[k].astype(dtype)
            np.testing.assert_array_equal(p[k], want.astype(dtype))
            assert not np.array_equal(p[k], before[k])
        else:
            np.testing.assert_array_equal(p[k], before[k])
    with pytest.raises(ValueError):
        p["weight_ih_l0"][0, 0] = 1.0


def test_update_accepts_cpu_tensors_of_any_float_dtype():
    torch = pytest.importorskip("torch")
    p = _params(np.float32)
    rng = np.random.default_rng(3)
    grads = {"weight_hh_l0": torch.from_numpy(rng.standard_normal(p["weight_hh_l0"].shape)),
             "bias_ih_l1": torch.from_numpy(rng.standard_normal(20)).to(torch.bfloat16),
             "weight_ih_l1_reverse": torch.from_numpy(
                 rng.standard_normal(p["weight_ih_l1_reverse"].shape)).half()}
    before = p.state_dict()
    p.update_(grads, 0.25)
    for k, g in grads.items():
        want = (before[k] - 0.25 * g.float().numpy()).astype(np.float32)
        np.testing.assert_allclose(p[k], want, rtol=1e-6, atol=1e-7)


def test_update_reads_gradients_that_alias_the_parameters_before_changing_them():
    p = _params()
    before = p.state_dict()
    p.update_({"weight_hh_l0": p["weight_hh_l0"], "bias_ih_l0": p["bias_ih_l0"][::-1],
               "bias_hh_l0": p["bias_ih_l0"]}, 0.5)
    np.testing.assert_array_equal(p["weight_hh_l0"], before["weight_hh_l0"] * 0.5)
    b_ih, b_hh = before["bias_ih_l0"], before["bias_hh_l0"]
    np.testing.assert_array_equal(p["bias_ih_l0"], b_ih - 0.5 * b_ih[::-1])
    np.testing.assert_array_equal(p["bias_hh_l0"], b_hh - 0.5 * b_ih)
    p.copy_({"weight_ih_l1": p["weight_ih_l1"][::-1], "bias_hh_l1": p["bias_ih_l1"]})
    np.testing.assert_array_equal(p["weight_ih_l1"], before["weight_ih_l1"][::-1])
    np.testing.assert_array_equal(p["bias_hh_l1"], before["bias_ih_l1"])


@pytest.mark.parametrize("bad, exc, match", [
    ({"weight_xx_l0": np.ones(3)}, KeyError, "weight_xx_l0"),
    ({"weight_hh_l1": np.ones((20, 3))}, ValueError, r"weight_hh_l1 must have shape \(20, 2\)"),
    ({"bias_ih_l0": np.ones(20, np.int64)}, TypeError, "bias_ih_l0 must be a floating-point"),
    ({"bias_ih_l0": np.ones(20, bool)}, TypeError, "floating-point"),
])
@pytest.mark.parametrize("method", ["update_", "copy_"])
def test_a_failed_in_place_call_changes_nothing(bad, exc, match, method):
    p = _params()
    p.derived("k", lambda: "kept")
    before = p.state_dict()
    values = {**_random_like(p, names=["weight_ih_l0", "bias_hh_l0"]), **bad,
              "weight_hr_l0": np.ones((2, 5))}  # valid entries before and after the bad one
    args = (values, 0.5) if method == "update_" else (values,)
    with pytest.raises(exc, match=match):
        getattr(p, method)(*args)
    _assert_same(p, before)
    assert p.version == 0 and p.derived("k", lambda: "rebuilt") == "kept"


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -np.inf])
def test_update_refuses_a_non_finite_learning_rate(lr):
    p = _params()
    before = p.state_dict()
    with pytest.raises(ValueError, match="lr must be finite"):
        p.update_(_random_like(p), lr)
    for bad in ("0.1", None, [0.1, 0.2]):
        with pytest.raises(TypeError, match="lr must be a real number"):
            p.update_(_random_like(p), bad)
    with pytest.raises(TypeError, match="mapping"):
        p.update_([np.ones(3)], 0.1)
    _assert_same(p, before)
    assert p.version == 0


def test_copy_loads_a_state_dict_into_the_same_object():
    p = _params(np.float32)
    src = _params(np.float64, seed=9)
    held = {k: p[k] for k in p}
    assert p.copy_(src.state_dict()) is p
    assert p.version == 1 and p.dtype == np.float32
    for k in p:
        assert p[k] is held[k] and p[k].flags.writeable is False
        np.testing.assert_array_equal(p[k], src[k].astype(np.float32))
    part = _random_like(p, seed=4, names=["weight_hh_l1"])
    p.copy_(part)  # a subset
    np.testing.assert_array_equal(p["weight_hh_l1"], part["weight_hh_l1"])
    np.testing.assert_array_equal(p["weight_hh_l0"], src["weight_hh_l0"].astype(np.float32))
    q = _params(np.float32, seed=11)
    p.copy_(q)  # another LSTMParams is a mapping too
    _assert_same(p, q)
    assert p.version == 3


@pytest.mark.parametrize("device", ["reference", "cpu"])
def test_forward_after_an_update_uses_the_new_weights(device):
    p = _params(np.float64, input_size=4, hidden_size=6, proj_size=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4))
    fastlstm.forward(x, p, device=device)  # layouts derived from the old weights
    p.update_(_random_like(p, seed=2), 0.3)
    got = fastlstm.forward(x, p, device=device)
    want = fastlstm.forward(x, LSTMParams.from_state_dict(p.state_dict()), device=device)
    np.testing.assert_allclose(got.y, want.y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.h, want.h, rtol=1e-12, atol=1e-14)


def test_sgd_with_update_equals_rebuilding_the_params():
    p = _params(np.float32)
    rebuilt = LSTMParams.from_state_dict(p.state_dict())
    for step in range(3):
        g = _random_like(p, seed=step)
        rebuilt = LSTMParams.from_state_dict({k: rebuilt[k] - 0.05 * g[k] for k in rebuilt})
        p.update_(g, 0.05)
    _assert_same(p, rebuilt)
    assert p.version == 3


# ---------------------------------------------------------------------------- names
def test_param_name_builds_pytorch_names():
    assert LSTMParams.param_name("weight_hh", 1, 1) == "weight_hh_l1_reverse"
    assert LSTMParams.param_name("bias_ih", 0, 0) == "bias_ih_l0"
    assert LSTMParams.param_name("weight_hr", 3, direction=0) == "weight_hr_l3"
    with pytest.raises(ValueError, match="kind"):
        LSTMParams.param_name("weight_xx", 0, 0)
    with pytest.raises(ValueError, match="direction"):
        LSTMParams.param_name("weight_ih", 0, 2)


@pytest.mark.parametrize("bias, proj, bidirectional", [
    (True, 0, False), (False, 0, True), (True, 2, True), (False, 3, False)])
def test_named_grads_follows_the_parameter_order(bias, proj, bidirectional):
    p = LSTMParams.init(3, 5, 2, bias=bias, proj_size=proj, bidirectional=bidirectional, seed=0)
    rng = np.random.default_rng(0)
    D, H = p.num_directions, p.hidden_size
    per_layer = []
    for layer in range(p.num_layers):
        dirs = []
        for d in range(D):
            w = {kind: rng.standard_normal(p[p.param_name(kind, layer, d)].shape)
                 for kind in ("weight_ih", "weight_hh")}
            db = rng.standard_normal(4 * H) if bias else None
            dw_hr = rng.standard_normal((proj, H)) if proj else None
            dirs.append((w["weight_ih"], w["weight_hh"], db, dw_hr))
        per_layer.append(dirs)
    named = p.named_grads(per_layer)
    assert list(named) == list(p.keys()) == list(p.expected_shapes())
    for layer in range(p.num_layers):
        for d in range(D):
            dw_ih, dw_hh, db, dw_hr = per_layer[layer][d]
            name = lambda kind: p.param_name(kind, layer, d)  # noqa: E731
            assert named[name("weight_ih")] is dw_ih and named[name("weight_hh")] is dw_hh
            if bias:
                assert named[name("bias_ih")] is db
                assert named[name("bias_hh")] is not db
                np.testing.assert_array_equal(named[name("bias_hh")], db)
            if proj:
                assert named[name("weight_hr")] is dw_hr
    if bias:  # a missing bias gradient is an error, not a silent None
        broken = [list(dirs) for dirs in per_layer]
        broken[1][0] = (*broken[1][0][:2], None, broken[1][0][3])
        with pytest.raises(ValueError, match="bias_ih_l1"):
            p.named_grads(broken)


def test_layer_weights_and_expected_shapes_use_the_same_names():
    p = _params()
    for layer in range(2):
        for d in range(2):
            got = p.layer_weights(layer, d)
            kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
            for kind, arr in zip(kinds, got):
                assert arr is p[LSTMParams.param_name(kind, layer, d)]


# ---------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("spelling, want", [
    (">f8", np.float64), ("<f8", np.float64), (">f4", np.float32), ("=f4", np.float32),
    ("float64", np.float64), (np.dtype(np.float32).newbyteorder(), np.float32)])
def test_normalize_dtype_accepts_any_byte_order_and_returns_the_native_one(spelling, want):
    dt = _normalize_dtype(spelling)
    assert dt == np.dtype(want) and dt.isnative


@pytest.mark.parametrize("order", [">", "<"])
def test_state_dict_of_foreign_byte_order_keeps_its_precision(order):
    src = LSTMParams.init(3, 4, 2, proj_size=2, dtype=np.float64, seed=0).state_dict()
    foreign = {k: v.astype(order + "f8") for k, v in src.items()}
    q = LSTMParams.from_state_dict(foreign)
    assert q.dtype == np.float64 and q.dtype.isnative
    for k in q:
        assert q[k].dtype.isnative and q[k].dtype == np.float64
        np.testing.assert_array_equal(q[k], src[k])
    half = LSTMParams.from_state_dict({k: v.astype(order + "f4") for k, v in src.items()})
    assert half.dtype == np.float32
    assert LSTMParams.init(3, 4, dtype=">f8", seed=0).dtype == np.float64


@pytest.mark.parametrize("name", ["bias", "bidirectional"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_flags_must_be_booleans(name, value):
    with pytest.raises(TypeError, match=name):
        LSTMParams.init(3, 4, **{name: value})
    arrays = LSTMParams.init(3, 4, seed=0).state_dict()
    with pytest.raises(TypeError, match=name):
        LSTMParams(arrays, input_size=3, hidden_size=4, **{name: value})


# ---------------------------------------------------------------------------- torch state dicts
def test_gru_and_rnn_state_dicts_are_named_as_such():
    torch = pytest.importorskip("torch")
    for H in (3, 4, 8):
        for module, word in ((torch.nn.GRU(5, H, 2), "GRU"), (torch.nn.RNN(5, H), "RNN"),
                             (torch.nn.GRU(5, H, bidirectional=True), "GRU")):
            with pytest.raises(ValueError, match=rf"looks like an? {word} state dict, not an LSTM"):
                LSTMParams.from_state_dict(module.state_dict())
    sd = LSTMParams.init(3, 4, seed=0).state_dict()
    with pytest.raises(ValueError, match="not an LSTM's"):
        LSTMParams.from_state_dict({**sd, "weight_hh_l0": np.ones((16, 5))})
    # projected LSTMs (weight_hh_l0 has fewer than H columns) are still LSTMs
    lstm = torch.nn.LSTM(5, 8, proj_size=3)
    assert LSTMParams.from_state_dict(lstm.state_dict()).proj_size == 3


@pytest.mark.parametrize("bias", [True, False])
def test_lstm_cell_state_dict_is_a_one_layer_lstm(bias):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(4, 6, bias=bias).double()
    sd = cell.state_dict()
    sd_before = {k: v.clone() for k, v in sd.items()}
    p = LSTMParams.from_state_dict(sd)
    assert p.config() == dict(input_size=4, hidden_size=6, num_layers=1, bias=bias,
                              bidirectional=False, proj_size=0, dtype="float64")
    assert list(p.keys()) == [k + "_l0" for k in sd]
    rng = np.random.default_rng(0)
    x, h0, c0 = (rng.standard_normal(shape) for shape in ((3, 4), (3, 6), (3, 6)))
    out = fastlstm.forward(x[None], p, h0[None], c0[None], device="reference")
    with torch.no_grad():
        h1, c1 = cell(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    np.testing.assert_allclose(out.y[0], h1.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.h[0], h1.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.c[0], c1.numpy(), rtol=1e-10, atol=1e-12)
    for k in sd:
        assert torch.equal(sd[k], sd_before[k])


def test_prefix_reads_the_lstm_out_of_a_whole_model():
    torch = pytest.importorskip("torch")

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.lstm = torch.nn.LSTM(4, 6, 2, bidirectional=True)
            self.head = torch.nn.Linear(12, 3)

    torch.manual_seed(0)
    model = Tagger()
    sd = model.state_dict()
    p = LSTMParams.from_state_dict(sd, prefix="lstm.")
    _assert_same(p, {k: v.numpy() for k, v in model.lstm.state_dict().items()})
    with pytest.raises(KeyError, match=re.escape("keys carry a prefix: pass prefix='lstm.'")):
        LSTMParams.from_state_dict(sd)

    seq = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LSTMCell(4, 5))
    cell = LSTMParams.from_state_dict(seq.state_dict(), prefix="1.")
    assert cell.hidden_size == 5 and cell.input_size == 4
    with pytest.raises(KeyError, match=re.escape("prefix='1.'")):
        LSTMParams.from_state_dict(seq.state_dict())

    nested = {"encoder." + k: v for k, v in sd.items()}
    with pytest.raises(KeyError, match=re.escape("pass prefix='encoder.lstm.'")):
        LSTMParams.from_state_dict(nested)
    with pytest.raises(KeyError, match=re.escape("under prefix 'lstm.'")):
        LSTMParams.from_state_dict(nested, prefix="lstm.")
    _assert_same(LSTMParams.from_state_dict(nested, prefix="encoder.lstm."), p)


def test_prefix_with_numpy_arrays_ignores_other_keys():
    src = LSTMParams.init(3, 4, proj_size=2, dtype=np.float64, seed=0)
    sd = {"dec.weight_ih_l0": np.ones((16, 3)),
          **{"enc." + k: v for k, v in src.state_dict().items()}, "enc_count": np.ones(1)}
    _assert_same(LSTMParams.from_state_dict(sd, prefix="enc."), src)
    with pytest.raises(KeyError, match="prefix='dec.' or prefix='enc.'"):
        LSTMParams.from_state_dict(sd)
    with pytest.raises(KeyError, match="not an LSTM state dict"):
        LSTMParams.from_state_dict({"foo": np.zeros(3)})


# ---------------------------------------------------------------------------- damaged files
def _saved(tmp_path, name="w.npz"):
    p = LSTMParams.init(3, 4, 2, proj_size=2, seed=0)
    path = tmp_path / name
    p.save(path)
    return p, path


def _rewrite_zip(src, dst, drop=(), replace=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if item.filename in drop:
                continue
            data = zin.read(item.filename)
            if replace and item.filename in replace:
                data = replace[item.filename](data)
            zout.writestr(item, data)


@pytest.mark.parametrize("damage, what", [
    ("truncated", "truncated"),
    ("empty", "truncated"),
    ("text", "not an .npz archive"),
    ("npy", "single array"),
    ("missing_array", "missing keys"),
    ("garbled_config", "configuration is unreadable"),
    ("config_not_object", "configuration is unreadable"),
    ("bad_crc", "damaged"),
])
def test_damaged_files_are_value_errors_naming_the_file(tmp_path, damage, what):
    p, good = _saved(tmp_path, "good.npz")
    path = tmp_path / f"{damage}.npz"
    data = good.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("hidden_size = 4\n")
    elif damage == "npy":
        with open(path, "wb") as f:
            np.save(f, np.ones(3))
    elif damage == "missing_array":
        _rewrite_zip(good, path, drop=("weight_hh_l1.npy",))
    elif damage in ("garbled_config", "config_not_object"):
        text = "{'hidden_size': 4" if damage == "garbled_config" else "[1, 2]"
        buf = tmp_path / "cfg.npy"
        np.save(buf, np.array(text))
        _rewrite_zip(good, path, replace={"__config__.npy": lambda _: buf.read_bytes()})
    elif damage == "bad_crc":
        _rewrite_zip(good, path)
        raw = bytearray(path.read_bytes())
        at = raw.index(p["weight_ih_l0"].tobytes()[:16])
        raw[at] ^= 0xFF
        path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=re.escape(str(path))) as info:
        LSTMParams.load(path)
    assert what in str(info.value)
    with open(path, "rb") as f:  # file objects too
        with pytest.raises(ValueError, match=what):
            LSTMParams.load(f)
    _assert_same(LSTMParams.load(good), p)


def test_missing_file_is_still_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        LSTMParams.load(tmp_path / "absent.npz")
