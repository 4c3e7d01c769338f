"""fastlstm.torch against torch.nn.LSTM inside a torch model, side by side in one run.

The model: embedding (vocabulary 64, width 32) -> LSTM(32, H) -> linear (H -> 64), float32,
torch with Numba's thread count (``torch_threads``). Modes:

* ``train``: one training step (zero_grad, forward, cross-entropy over every position,
  backward, Adam step);
* ``infer``: the model's forward under ``torch.inference_mode``.

Backends: ``torch`` (the model as built, ``nn.LSTM``) and ``fastlstm`` (a copy after
``fastlstm.torch.replace_lstms``, the same weights). Before timing, each case checks that the
two models give the same logits (and, for ``train``, the same gradients) within the float32
tolerance.

``stream``: ``LSTMCell``, and ``LSTM`` called one step at a time, in training, 20 steps unrolled
(backends ``fastlstm``: a copy after ``from_torch``, and ``torch``).

``overhead``: the module's cost over the NumPy call at T = 1, B = 1, H = 64 (backends
``module`` and ``numpy``: ``fastlstm.torch.LSTM`` under ``inference_mode`` and
``fastlstm.forward``; ``module_train`` and ``numpy_train``: forward + backward with gradients
to the weights, through autograd and through ``fastlstm.forward(training=True)`` +
``fastlstm.backward``).
"""
from __future__ import annotations

import copy
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastlstm  # noqa: E402
import fastlstm.torch as flt  # noqa: E402

V, E = 64, 32
#: (T, B, H)
CASES = [(100, 1, 64), (50, 4, 64), (50, 8, 128), (50, 16, 256), (50, 64, 256)]
QUICK = {(50, 4, 64)}
ITERATIONS = 100  # calls per timed round of the overhead benchmarks


class Net(torch.nn.Module):
    def __init__(self, H):
        super().__init__()
        self.emb = torch.nn.Embedding(V, E)
        self.lstm = torch.nn.LSTM(E, H)
        self.out = torch.nn.Linear(H, V)

    def forward(self, tokens):
        y, _ = self.lstm(self.emb(tokens))
        return self.out(y)


def _models(H):
    torch.manual_seed(0)
    ref = Net(H)
    ours = copy.deepcopy(ref)
    assert flt.replace_lstms(ours) == 1
    return {"torch": ref, "fastlstm": ours}


def _step_fn(model, tokens, targets):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(tokens).reshape(-1, V), targets.reshape(-1))
        loss.backward()
        opt.step()
        return loss
    return step


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _check(models, tokens, targets):
    """The same logits and gradients from both models (float32 tolerance)."""
    with torch.inference_mode():
        want, got = models["torch"](tokens), models["fastlstm"](tokens)
    assert _rel(got, want) <= 2e-5
    grads = []
    for name in ("torch", "fastlstm"):
        m = models[name]
        m.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(m(tokens).reshape(-1, V), targets.reshape(-1)).backward()
        grads.append([p.grad.clone() for p in m.parameters()])
        m.zero_grad(set_to_none=True)
    for a, b in zip(grads[1], grads[0]):
        assert _rel(a, b) <= 1e-4


PARAMS = [pytest.param(case, mode, backend, id=f"T{case[0]}_B{case[1]}_H{case[2]}-{mode}-{backend}",
                       marks=[pytest.mark.quick] if case in QUICK else [])
          for case in CASES for mode in ("train", "infer") for backend in ("fastlstm", "torch")]


@pytest.mark.parametrize("case, mode, backend", PARAMS)
def test_model(benchmark, bench_timer, torch_threads, case, mode, backend):
    T, B, H = case
    models = _models(H)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (T, B), generator=g)
    targets = torch.randint(0, V, (T, B), generator=g)
    _check(models, tokens, targets)
    model = models[backend]
    if mode == "train":
        fn = _step_fn(model, tokens, targets)
    else:
        def fn():
            with torch.inference_mode():
                return model(tokens)
    name = f"T{T}_B{B}_H{H}"
    benchmark.group = f"torch-{name}-{mode}"
    benchmark.extra_info.update(case=name, mode=mode, backend=backend, T=T, B=B, H=H,
                                dtype="float32")
    bench_timer.run(benchmark, fn, 0.0)


# ---------------------------------------------------------------------------- LSTMCell
#: (B, H) of the streaming benchmarks: ``CELL_STEPS`` steps of LSTMCell(32, H), or of
#: LSTM(32, H) called one step at a time, unrolled in Python, a loss on every step's h, backward
#: (what a streaming or RL training loop does)
CELL_CASES = [(1, 64), (8, 128), (32, 256)]
CELL_STEPS = 20


def _stream_fn(module, xs):
    B, H = xs.shape[1], module.hidden_size
    cell = isinstance(module, (torch.nn.LSTMCell, flt.LSTMCell))

    def fn():
        module.zero_grad(set_to_none=True)
        shape = (B, H) if cell else (1, B, H)
        hx = (xs.new_zeros(shape), xs.new_zeros(shape))
        loss = 0.0
        for t in range(xs.shape[0]):
            if cell:
                hx = module(xs[t], hx)
                h = hx[0]
            else:
                h, hx = module(xs[t:t + 1], hx)
            loss = loss + h.sum()
        loss.backward()
        return loss
    return fn


@pytest.mark.parametrize("case", CELL_CASES, ids=lambda c: f"B{c[0]}_H{c[1]}")
@pytest.mark.parametrize("kind", ["cell", "lstm"])
@pytest.mark.parametrize("backend", ["fastlstm", "torch"])
def test_stream_training(benchmark, bench_timer, torch_threads, case, kind, backend):
    B, H = case
    torch.manual_seed(0)
    ref = torch.nn.LSTMCell(E, H) if kind == "cell" else torch.nn.LSTM(E, H)
    modules = {"torch": ref, "fastlstm": flt.from_torch(copy.deepcopy(ref))}
    xs = torch.randn(CELL_STEPS, B, E, generator=torch.Generator().manual_seed(1))
    losses, grads = {}, {}
    for name, module in modules.items():  # the same loss and gradients from both (float32)
        losses[name] = _stream_fn(module, xs)().detach()
        grads[name] = [p.grad.clone() for p in module.parameters()]
    assert _rel(losses["fastlstm"], losses["torch"]) <= 2e-5
    for a, b in zip(grads["fastlstm"], grads["torch"]):
        assert _rel(a, b) <= 1e-4
    name = f"{kind}{CELL_STEPS}_B{B}_H{H}"
    benchmark.group = f"torch-{name}-train"
    benchmark.extra_info.update(case=name, mode="train", backend=backend, T=CELL_STEPS, B=B, H=H,
                                dtype="float32")
    bench_timer.run(benchmark, _stream_fn(modules[backend], xs), 0.0)


# ---------------------------------------------------------------------------- overhead
def _overhead_fn(backend):
    torch.manual_seed(2)
    m = flt.LSTM(32, 64)
    p = fastlstm.LSTMParams.from_state_dict({k: v.detach().numpy() for k, v in
                                             m.state_dict().items()})
    x = torch.randn(1, 1, 32)
    xn = x.numpy()
    dy = np.ones((1, 1, 64), np.float32)
    if backend == "module":
        def fn():
            with torch.inference_mode():
                return m(x)[0]
    elif backend == "numpy":
        def fn():
            return fastlstm.forward(xn, p).y
    elif backend == "module_train":
        def fn():
            m.zero_grad(set_to_none=True)
            m(x)[0].sum().backward()
            return m.weight_hh_l0.grad
    else:  # numpy_train
        def fn():
            res = fastlstm.forward(xn, p, training=True)
            return fastlstm.backward(res.cache, dy).dparams["weight_hh_l0"]
    return fn, m, p, x


@pytest.mark.parametrize("backend", ["module", "numpy", "module_train", "numpy_train"])
def test_overhead(benchmark, bench_timer, torch_threads, backend):
    fn, m, p, x = _overhead_fn(backend)
    with torch.inference_mode():
        want = m(x)[0].numpy()
    np.testing.assert_allclose(fastlstm.forward(x.numpy(), p, device="reference").y, want,
                               rtol=2e-5, atol=2e-6)
    got = fn()
    assert got is not None and np.isfinite(np.asarray(got)).all()
    benchmark.group = "torch-overhead-T1_B1_H64"
    benchmark.extra_info.update(case="T1_B1_I32_H64", mode="overhead", backend=backend)
    if not benchmark.enabled:
        benchmark(fn)
        return
    for _ in range(ITERATIONS):
        fn()
    t0 = time.perf_counter()
    for _ in range(ITERATIONS):
        fn()
    rounds = bench_timer.rounds_for(time.perf_counter() - t0)
    benchmark.pedantic(fn, rounds=rounds, iterations=ITERATIONS, warmup_rounds=1)
