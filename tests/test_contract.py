"""The structure the package is built on: imports point one way, every backend implements the
same contract, the training state flattens to arrays and ints and back, knobs come from
``fastlstm.config``; and the rough edges of the public calls (flags, empty batches, parameters
changed in place, first-use compilation)."""
import ast
import pathlib

import numpy as np
import pytest

import fastlstm
from fastlstm import LSTMParams, config
from fastlstm.backends.state import TrainingState

from helpers import Config, assert_unchanged, compare, make_problem, run, snapshot, torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _imports(path: pathlib.Path) -> list[str]:
    """Absolute module names imported by a file (relative imports resolved)."""
    pkg = "fastlstm." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.is_relative_to(ROOT / "fastlstm"):
        pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:-node.level]
                out.append(".".join(base + ([node.module] if node.module else [])))
            else:
                out.append(node.module)
    return out


def test_kernels_import_nothing_from_the_package():
    """kernels/ is compiled code only: numpy, numba, scipy and each other."""
    for path in (ROOT / "kernels").rglob("*.py"):
        bad = [m for m in _imports(path)
               if m.startswith("fastlstm") and not m.startswith("fastlstm.kernels")]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


# the floors, bottom up; a module may import its own floor and the ones below
_FLOORS = [
    {"fastlstm.kernels"},
    {"fastlstm._coerce", "fastlstm._omp", "fastlstm.config", "fastlstm.params",
     "fastlstm.params_io", "fastlstm.convert", "fastlstm.convert_onnx",
     "fastlstm.testing",
     "fastlstm.backends.state", "fastlstm.backends.compile_notice"},
    {"fastlstm.reference", "fastlstm.backends.cpu", "fastlstm.backends.cuda", "fastlstm.layout",
     "fastlstm.dispatch", "fastlstm.backends"},
    {"fastlstm.api", "fastlstm.stepper", "fastlstm.head", "fastlstm.rnn", "fastlstm.train"},
    {"fastlstm", "fastlstm.harness", "fastlstm.harness_peers", "fastlstm.torch",
     "fastlstm.torch_ops", "fastlstm.torch_cuda", "fastlstm.dask", "fastlstm.files"},
    {"fastlstm.cli", "fastlstm.__main__"},
]


def _floor(module: str) -> int:
    """The floor of the longest name in ``_FLOORS`` that is ``module`` or a package above it."""
    best, best_len = -1, -1
    for i, floor in enumerate(_FLOORS):
        for m in floor:
            if (module == m or module.startswith(m + ".")) and len(m) > best_len:
                best, best_len = i, len(m)
    return best


def test_floor_lookup():
    assert _floor("fastlstm.kernels.cpu.recurrence") == 0
    assert _floor("fastlstm.backends.cpu") == 2 and _floor("fastlstm.api") == 3
    assert _floor("fastlstm.cli.bench") == 5 and _floor("fastlstm") == 4


def test_imports_point_down():
    """cli -> harness -> api -> layout/dispatch -> backends -> kernels, never upwards."""
    for path in (ROOT / "fastlstm").rglob("*.py"):
        mod = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        here = _floor(mod)
        assert here >= 0, f"{mod} is on no floor"
        for m in _imports(path):
            if m.startswith("fastlstm") and m != "fastlstm":
                assert _floor(m) <= here, f"{mod} (floor {here}) imports {m} (floor {_floor(m)})"


# ---------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("device,opts", [("reference", {}), ("cpu", {}),
                                         ("cpu", dict(parallel_min_flop=0, threads=2)),
                                         ("cpu", dict(parallel_min_flop=0, threads=2, fuse_input=False))],
                         ids=["reference", "cpu-serial", "cpu-parallel", "cpu-parallel-unfused"])
@pytest.mark.parametrize("cfg", [Config(T=5, B=8, I=3, H=4, lengths=True),
                                 Config(T=4, B=9, I=3, H=6, L=2, bidirectional=True, proj=2,
                                        lengths=True)], ids=str)
def test_state_flattens_and_rebuilds(device, opts, cfg):
    """``TrainingState.flatten()`` gives arrays and ints only; ``unflatten`` rebuilds a state
    whose backward is bitwise the original's (what a framework's operator needs)."""
    p = make_problem(cfg, np.float64, seed=4)
    with config.options("cpu", **opts):
        fwd, bwd = run(p, device, dropout=0.3, seed=1)
        arrays, ints = fwd.cache.state.flatten()
        assert all(isinstance(a, np.ndarray) for a in arrays)
        assert all(type(i) is int for i in ints)
        rebuilt = TrainingState.unflatten(arrays, ints, p.params)
        cache = fwd.cache.__class__(**{**fwd.cache.__dict__, "state": rebuilt})
        again = fastlstm.backward(cache, p.dy, p.dh, p.dc)
    for a, b in [(bwd.dx, again.dx), (bwd.dh0, again.dh0), (bwd.dc0, again.dc0)]:
        np.testing.assert_array_equal(a, b)
    for k in bwd.dparams:
        np.testing.assert_array_equal(bwd.dparams[k], again.dparams[k])
    with pytest.raises(ValueError, match="more arrays"):
        TrainingState.unflatten(arrays + (arrays[0],), ints, p.params)


@pytest.mark.parametrize("device", ["reference", "cpu"])
def test_every_backend_has_the_contract(device):
    """``lstm_forward`` / ``lstm_backward`` on normalised arrays, the same results as the API."""
    mod = fastlstm.dispatch.backend(device)
    p = make_problem(Config(T=4, B=3, I=3, H=5, lengths=True), np.float64, seed=2)
    h0, c0 = p.h0, p.c0
    y, h, c, state, paths = mod.lstm_forward(p.x, p.params, h0, c0, p.lengths, None, True)
    assert isinstance(state, TrainingState) and state.backend == device and len(paths) == 1
    dx, dh0, dc0, dparams = mod.lstm_backward(state, p.dy, p.dh, p.dc)
    ref_f, ref_b = run(p, "reference")
    compare(fastlstm.ForwardResult(y, h, c), fastlstm.BackwardResult(dx, dh0, dc0, dparams),
            ref_f, ref_b, np.float64, device)


# ---------------------------------------------------------------------------- flags and inputs
@pytest.mark.parametrize("flag", ["batch_first", "training"])
@pytest.mark.parametrize("value", ["yes", 1, None, np.array([True])])
def test_every_flag_is_checked_alike(flag, value):
    p = LSTMParams.init(3, 4, seed=0)
    with pytest.raises(TypeError, match=f"{flag} must be a bool"):
        fastlstm.forward(np.ones((2, 1, 3), np.float32), p, **{flag: value})


@pytest.mark.parametrize("flag", ["batch_first", "bias", "bidirectional"])
def test_module_flags_are_checked(flag):
    with pytest.raises(TypeError, match=f"{flag} must be a bool"):
        fastlstm.LSTM(3, 4, **{flag: "yes"})
    with pytest.raises(TypeError, match="bias must be a bool"):
        LSTMParams.init(3, 4, bias="no")


@pytest.mark.skipif(torch is None, reason="torch is not installed")
@pytest.mark.parametrize("tdtype", ["bfloat16", "float16"])
def test_half_precision_torch_tensors_are_widened(tdtype):
    """torch half-precision inputs are converted like any other float dtype (exactly: every
    bfloat16/float16 value is a float32 value)."""
    p = LSTMParams.init(3, 4, seed=0)
    xt = torch.randn(5, 2, 3).to(getattr(torch, tdtype))
    before = xt.clone()
    got = fastlstm.forward(xt, p, h0=torch.zeros(1, 2, 4, dtype=xt.dtype), device="cpu")
    want = fastlstm.forward(xt.float().numpy(), p, device="reference")
    np.testing.assert_allclose(got.y, want.y, rtol=2e-5, atol=1e-6)
    assert torch.equal(xt, before)


def test_gpu_array_detection_survives_exporters_that_raise():
    """torch raises RuntimeError (not AttributeError) for the interface of CUDA tensors that
    require grad; such an object is still a GPU array, not a crash."""
    class Exporter:
        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("Can't export tensors that require gradient")

    assert fastlstm.dispatch.is_gpu_array(Exporter())
    assert fastlstm.dispatch.resolve_device("auto", Exporter()) == "cuda"
    assert not fastlstm.dispatch.is_gpu_array(np.ones(3))


@pytest.mark.parametrize("device", ["reference", "cpu"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_empty_batch_gives_empty_results(device, batch_first):
    """B = 0 returns y of shape (T, 0, D*H_out) and states of (L*D, 0, .), as torch.nn.LSTM;
    backward gives empty input gradients and zero parameter gradients."""
    p = LSTMParams.init(3, 4, num_layers=2, bidirectional=True, proj_size=2, seed=0)
    x = np.ones((0, 5, 3) if batch_first else (5, 0, 3), np.float32)
    res = fastlstm.forward(x, p, training=True, batch_first=batch_first, device=device)
    assert res.y.shape == ((0, 5, 4) if batch_first else (5, 0, 4))
    assert res.h.shape == (4, 0, 2) and res.c.shape == (4, 0, 4)
    g = fastlstm.backward(res.cache, np.ones_like(res.y))
    assert g.dx.shape == x.shape and g.dh0.shape == (4, 0, 2) and g.dc0.shape == (4, 0, 4)
    assert set(g.dparams) == set(p.keys())
    assert all(not v.any() and v.shape == p[k].shape for k, v in g.dparams.items())
    with pytest.raises(ValueError, match="at least one step"):
        fastlstm.forward(np.ones((0, 0, 3), np.float32), p, device=device)


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_empty_batch_matches_torch_shapes():
    m = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    y, (h, c) = m(torch.ones(5, 0, 3))
    res = fastlstm.forward(np.ones((5, 0, 3), np.float32), LSTMParams.from_state_dict(m.state_dict()))
    assert (res.y.shape, res.h.shape, res.c.shape) == (tuple(y.shape), tuple(h.shape), tuple(c.shape))


@pytest.mark.parametrize("device", ["reference", "cpu"])
def test_backward_refuses_a_cache_older_than_an_in_place_update(device):
    p = make_problem(Config(T=4, B=3, I=3, H=5), np.float32, seed=6)
    tr = fastlstm.forward(p.x, p.params, training=True, device=device)
    grads = fastlstm.backward(tr.cache, p.dy).dparams
    p.params.update_(grads, 0.1)
    with pytest.raises(RuntimeError, match="updated in place"):
        fastlstm.backward(tr.cache, p.dy)


def test_in_place_update_reaches_the_cpu_backend():
    """The CPU backend's weight layouts are rebuilt after an in-place update (a stale layout
    would silently compute with the old weights)."""
    p = make_problem(Config(T=5, B=4, I=3, H=6, L=2), np.float64, seed=7)
    fastlstm.forward(p.x, p.params, device="cpu")  # layouts memoised now
    tr = fastlstm.forward(p.x, p.params, training=True, device="cpu")
    p.params.update_(fastlstm.backward(tr.cache, p.dy).dparams, 0.5)
    got = fastlstm.forward(p.x, p.params, device="cpu").y
    want = fastlstm.forward(p.x, p.params, device="reference").y
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
def test_copies_compute_with_their_own_weights(copier):
    """A copy of params that the CPU backend already used (layouts memoised) computes with the
    copy's weights after the copy is updated; the original is unchanged."""
    import copy
    import pickle
    p = make_problem(Config(T=5, B=4, I=3, H=6), np.float64, seed=8)
    y0 = fastlstm.forward(p.x, p.params, device="cpu").y
    q = copy.deepcopy(p.params) if copier == "deepcopy" else pickle.loads(pickle.dumps(p.params))
    q.update_({"weight_hh_l0": np.ones_like(q["weight_hh_l0"])}, 0.3)
    np.testing.assert_allclose(fastlstm.forward(p.x, q, device="cpu").y,
                               fastlstm.forward(p.x, q, device="reference").y, rtol=1e-12)
    np.testing.assert_array_equal(fastlstm.forward(p.x, p.params, device="cpu").y, y0)


# ---------------------------------------------------------------------------- first use
# (the compile notice on a cold cache, and silence on a warm one: tests/test_environment.py)
def test_warmup_rejects_unknown_devices():
    with pytest.raises(ValueError, match="devices"):
        fastlstm.warmup(devices=["tpu"])
