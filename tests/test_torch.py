"""fastlstm.torch: the custom operators and the drop-in modules against torch.nn.LSTM /
torch.nn.LSTMCell (values, autograd, training, torch.compile, module behaviour)."""
import copy
import itertools
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import fastlstm.torch as flt  # noqa: E402
from helpers import rel_err  # noqa: E402
from fastlstm.testing import assert_close  # noqa: E402

F64 = torch.float64


_rel = rel_err


def _pair(seed=0, dtype=F64, **kw):
    torch.manual_seed(seed)
    ref = nn.LSTM(**kw).to(dtype)
    with torch.no_grad():  # leave the linear regime of the gates
        for p in ref.parameters():
            p.mul_(1.5)
    return ref, flt.from_torch(copy.deepcopy(ref))


def _tol(dtype, kind):
    return {F64: {"forward": 1e-10, "grad": 1e-10},
            torch.float32: {"forward": 2e-5, "grad": 1e-4}}[dtype][kind]


# ---------------------------------------------------------------------------- operators
def _op_args(L=2, bi=True, proj=2, bias=True, T=4, B=3, I=3, H=4, training=True, grad=True):
    torch.manual_seed(1)
    m = nn.LSTM(I, H, L, bias=bias, bidirectional=bi, proj_size=proj).to(F64)
    D, P = 2 if bi else 1, proj or H
    weights = [w.detach().clone().requires_grad_(grad) for w in m._flat_weights]
    x = torch.randn(T, B, I, dtype=F64, requires_grad=grad)
    h0 = torch.randn(L * D, B, P, dtype=F64, requires_grad=grad)
    c0 = torch.randn(L * D, B, H, dtype=F64, requires_grad=grad)
    lengths = torch.tensor([T, 2, 1][:B], dtype=torch.int64)
    masks = (torch.rand(L - 1, T, B, D * P, dtype=F64) > 0.3).to(F64) / 0.7
    return (x, h0, c0, lengths, masks, weights, [L, int(bi), proj, int(bias)], training)


def test_opcheck_forward_and_backward_ops():
    args = _op_args()
    torch.library.opcheck(torch.ops.fastlstm.lstm.default, args)
    torch.library.opcheck(torch.ops.fastlstm.lstm.default, _op_args(training=False, grad=False))
    x, h0, c0, lengths, masks, weights, dims, _ = args
    y, h, c, reserve = torch.ops.fastlstm.lstm(*args)
    dy, dh, dc = torch.randn_like(y), torch.randn_like(h), torch.randn_like(c)
    bargs = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in
                  (x, h0, c0, lengths, masks)) + ([w.detach() for w in weights], dims,
                                                   y.detach(), reserve.detach(), dy, dh, dc)
    torch.library.opcheck(torch.ops.fastlstm.lstm_backward.default, bargs)


GRID = list(itertools.product([1, 2], [False, True], [0, 2], [False, True], [False, True]))


@pytest.mark.parametrize("L, bi, proj, packed, hx", GRID,
                         ids=[f"L{a}-{'bi' if b else 'uni'}-p{c}-{'packed' if d else 'full'}-"
                              f"{'hx' if e else 'nohx'}" for a, b, c, d, e in GRID])
def test_gradcheck_float64(L, bi, proj, packed, hx):
    """Gradients through the module (input, hx and every parameter) against finite
    differences, float64."""
    _, m = _pair(3, input_size=2, hidden_size=3, num_layers=L, bidirectional=bi, proj_size=proj)
    D, P, H = 2 if bi else 1, proj or 3, 3
    x = torch.randn(3, 2, 2, dtype=F64, requires_grad=True)
    lengths = torch.tensor([2, 3])
    h0 = torch.randn(L * D, 2, P, dtype=F64, requires_grad=True)
    c0 = torch.randn(L * D, 2, H, dtype=F64, requires_grad=True)
    params = list(m.parameters())

    def f(x, h0, c0, *ps):
        for p, v in zip(params, ps):
            p.data = v
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        y, (h, c) = m(inp, (h0, c0) if hx else None)
        if packed:
            y, _ = pad_packed_sequence(y, total_length=3)
        return y, h, c

    ps = [p.detach().clone().requires_grad_(True) for p in params]
    assert torch.autograd.gradcheck(f, (x, h0, c0, *ps), eps=1e-6, atol=1e-6, rtol=1e-5)


_OLD_TORCH = r"""
import torch
del torch.library.custom_op  # as on torch < 2.4
import numpy as np
import fastlstm.torch as flt
assert not flt.CUSTOM_OPS
torch.manual_seed(0)
ref = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()
m = flt.from_torch(ref)
x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
for mod in (ref, m):
    x.grad = None
    y, (h, c) = mod(x)
    (y.pow(2).sum() + h.sum()).backward()
    print(float(y.detach().norm()), float(x.grad.norm()), float(ref.weight_ih_l1.grad.norm()))
"""


def test_autograd_function_path_for_older_torch():
    """Without torch.library.custom_op the modules run through an autograd.Function."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _OLD_TORCH], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = (np.array(line.split(), float) for line in r.stdout.split("\n")[:2])
    np.testing.assert_allclose(b[:2], a[:2], rtol=1e-10)


def test_double_backward_is_a_clear_error():
    _, m = _pair(input_size=2, hidden_size=3)
    x = torch.randn(3, 2, 2, dtype=F64, requires_grad=True)
    y, _ = m(x)
    with pytest.raises(RuntimeError, match="double backward"):
        (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
        g.sum().backward()


# ---------------------------------------------------------------------------- the module
CONFIGS = [dict(input_size=4, hidden_size=5),
           dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True, proj_size=3),
           dict(input_size=3, hidden_size=5, num_layers=3, bias=False, batch_first=True)]


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kw", CONFIGS, ids=["1layer", "2layer-bi-proj", "3layer-nobias-bf"])
def test_module_matches_nn_lstm(kw, dtype):
    ref, m = _pair(2, dtype, **kw)
    B, T = 3, 5
    shape = (B, T, kw["input_size"]) if kw.get("batch_first") else (T, B, kw["input_size"])
    x = torch.randn(*shape, dtype=dtype)
    before = x.clone()
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1, (h1, c1) = ref(x1)
    y2, (h2, c2) = m(x2)
    for a, b in ((y2, y1), (h2, h1), (c2, c1)):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert _rel(a, b) <= _tol(dtype, "forward")
    w = torch.randn_like(y1)
    loss1 = (y1 * w).sum() + h1.pow(2).sum() + c1.sum()
    loss2 = (y2 * w).sum() + h2.pow(2).sum() + c2.sum()
    g1 = torch.autograd.grad(loss1, [x1, *ref.parameters()])
    g2 = torch.autograd.grad(loss2, [x2, *m.parameters()])
    for a, b in zip(g2, g1):
        assert _rel(a, b) <= _tol(dtype, "grad")
    assert torch.equal(x, before)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kw", CONFIGS, ids=["1layer", "2layer-bi-proj", "3layer-nobias-bf"])
@pytest.mark.parametrize("T, B", [(1, 1), (5, 3), (40, 4)])
def test_inference_route_matches_nn_lstm(kw, dtype, T, B):
    """Under no_grad (and in eval mode with frozen weights) the module runs the CPU backend
    directly: the step kernel for a few rows, the whole-sequence path otherwise."""
    ref, m = _pair(3, dtype, **kw)
    m.eval()
    L, D = kw.get("num_layers", 1), 2 if kw.get("bidirectional") else 1
    P, H = kw.get("proj_size") or kw["hidden_size"], kw["hidden_size"]
    shape = (B, T, kw["input_size"]) if kw.get("batch_first") else (T, B, kw["input_size"])
    x = torch.randn(*shape, dtype=dtype)
    hx = (torch.randn(L * D, B, P, dtype=dtype), torch.randn(L * D, B, H, dtype=dtype))
    before = [t.clone() for t in (x, *hx)]
    with torch.no_grad():
        for args in ((x,), (x, hx)):
            y1, (h1, c1) = ref(*args)
            y2, (h2, c2) = m(*args)
            for a, b in ((y2, y1), (h2, h1), (c2, c1)):
                assert a.shape == b.shape and a.dtype == b.dtype and not a.requires_grad
                assert _rel(a, b) <= _tol(dtype, "forward")
    for p in m.parameters():  # frozen weights with grad mode on: the same route
        p.requires_grad_(False)
    y3, _ = m(x, hx)
    assert _rel(y3, ref(x, hx)[0]) <= _tol(dtype, "forward")
    assert all(torch.equal(a, b) for a, b in zip((x, *hx), before))


def test_streaming_shortcut_taken_and_refreshed(monkeypatch):
    """Under no_grad a small time-major (or one-step batch_first) call takes the module's
    shortcut to the step kernel, with and without hx; an optimizer step (an in-place weight
    update) is seen by the next call; calls that do not qualify (a non-contiguous input, a
    wrong dtype) take the general path and its errors; a `.data` reassignment is seen too."""
    calls = []
    real = flt.LSTM._small_inference

    def spy(self, *a):
        out = real(self, *a)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(flt.LSTM, "_small_inference", spy)
    ref, m = _pair(11, torch.float32, input_size=6, hidden_size=8, num_layers=2)
    x = torch.randn(3, 2, 6)
    hx = (torch.randn(2, 2, 8), torch.randn(2, 2, 8))
    with torch.inference_mode():
        for args in ((x,), (x, hx)):
            for a, b in zip(m(*args)[1] + (m(*args)[0],), ref(*args)[1] + (ref(*args)[0],)):
                assert _rel(a, b) <= 2e-6
    assert calls == [True] * 4
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    m.weight_hh_l1.grad = torch.randn_like(m.weight_hh_l1)
    opt.step()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert _rel(m(x, hx)[0], ref(x, hx)[0]) <= 2e-6
        xt = torch.randn(6, 2, 3).transpose(0, 2)  # (3, 2, 6), not contiguous
        assert _rel(m(xt)[0], ref(xt)[0]) <= 2e-6
        with pytest.raises(TypeError, match="input"):
            m(x.half())
        m.weight_hh_l0.data = torch.randn_like(m.weight_hh_l0)  # same list, same versions
        ref.load_state_dict(m.state_dict())
        assert _rel(m(x, hx)[0], ref(x, hx)[0]) <= 2e-6
    assert calls == [True] * 5 + [False, False, True]
    bf = flt.LSTM(6, 8, batch_first=True)
    ref_bf = nn.LSTM(6, 8, batch_first=True)
    ref_bf.load_state_dict(bf.state_dict())
    x1 = torch.randn(1, 5, 6)  # (B, T, I) with B = 1: the time-major memory
    with torch.no_grad():
        assert _rel(bf(x1)[0], ref_bf(x1)[0]) <= 2e-6


def test_inference_route_cell_and_unbatched():
    torch.manual_seed(8)
    ref = nn.LSTMCell(3, 5)
    cell = flt.from_torch(copy.deepcopy(ref))
    x = torch.randn(4, 3)
    hx = (torch.randn(4, 5), torch.randn(4, 5))
    with torch.no_grad():
        for args in ((x,), (x, hx), (x[0],), (x[0], (hx[0][0], hx[1][0]))):
            for a, b in zip(cell(*args), ref(*args)):
                assert a.shape == b.shape and _rel(a, b) <= 2e-6
    ref2, m = _pair(9, torch.float32, input_size=3, hidden_size=4, num_layers=2)
    with torch.no_grad():
        (y1, (h1, _)), (y2, (h2, _)) = ref2(x), m(x)  # unbatched (T=4, I=3)
    assert y2.shape == y1.shape == (4, 4) and h2.shape == (2, 4)
    assert _rel(y2, y1) <= 2e-5 and _rel(h2, h1) <= 2e-5


@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequences_in_and_out(enforce_sorted):
    ref, m = _pair(4, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    lengths = torch.tensor([5, 4, 2, 2, 1]) if enforce_sorted else torch.tensor([2, 5, 1, 4, 2])
    x = torch.randn(5, 5, 3, dtype=F64)
    hx = (torch.randn(4, 5, 4, dtype=F64), torch.randn(4, 5, 4, dtype=F64))
    outs = []
    for mod in (ref, m):
        xi = x.clone().requires_grad_(True)
        packed = pack_padded_sequence(xi, lengths, enforce_sorted=enforce_sorted)
        y, (h, c) = mod(packed, hx)
        assert isinstance(y, torch.nn.utils.rnn.PackedSequence)
        yp, _ = pad_packed_sequence(y)
        (yp.pow(2).sum() + h.sum() + c.sum()).backward()
        outs.append((y, yp, h, c, xi.grad))
    (y1, yp1, h1, c1, g1), (y2, yp2, h2, c2, g2) = outs
    assert torch.equal(y1.batch_sizes, y2.batch_sizes)
    for a, b in ((y1.sorted_indices, y2.sorted_indices), (y1.unsorted_indices, y2.unsorted_indices)):
        assert (a is None and b is None) or torch.equal(a, b)
    assert _rel(y2.data, y1.data) <= 1e-10
    for a, b in ((yp2, yp1), (h2, h1), (c2, c1), (g2, g1)):
        assert _rel(a, b) <= 1e-10


def test_unbatched_input_and_hx():
    ref, m = _pair(5, input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(6, 3, dtype=F64)
    hx = (torch.randn(2, 4, dtype=F64), torch.randn(2, 4, dtype=F64))
    (y1, (h1, c1)), (y2, (h2, c2)) = ref(x, hx), m(x, hx)
    assert y2.shape == y1.shape == (6, 4) and h2.shape == h1.shape == (2, 4)
    for a, b in ((y2, y1), (h2, h1), (c2, c1)):
        assert _rel(a, b) <= 1e-10


def test_non_contiguous_input_and_requires_grad_input():
    ref, m = _pair(6, input_size=3, hidden_size=4, batch_first=True)
    base = torch.randn(5, 4, 6, dtype=F64)
    x = base[:, :, ::2]  # non-contiguous
    assert not x.is_contiguous()
    y1, _ = ref(x)
    y2, _ = m(x)
    assert _rel(y2, y1) <= 1e-10
    xr = x.detach().clone().requires_grad_(True)
    m(xr)[0].sum().backward()
    assert xr.grad is not None and xr.grad.shape == x.shape



def test_eager_backward_state_is_guarded_and_reusable():
    """The eager CPU call keeps the backend's training state on the autograd node: an in-place
    change to a weight, the input or the output before the backward is torch's error (not a
    silently wrong gradient), and retain_graph gives the same gradients twice."""
    ref, m = _pair(7, input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 2, 4, dtype=F64, requires_grad=True)
    c0 = torch.randn(2, 2, 4, dtype=F64)  # no gradient wanted
    y, (h, c) = m(x, (h0, c0))
    loss = y.pow(2).sum() + c.sum()
    loss.backward(retain_graph=True)
    first = [t.grad.clone() for t in (x, h0, m.weight_hh_l1)]
    yr, (hr, cr) = ref(x, (h0, c0))
    want = torch.autograd.grad(yr.pow(2).sum() + cr.sum(), (x, h0, ref.weight_hh_l1))
    for a, b in zip(first, want):
        assert _rel(a, b) <= 1e-10
    assert c0.grad is None
    loss.backward()
    for t, g in zip((x, h0, m.weight_hh_l1), first):
        assert _rel(t.grad, 2 * g) <= 1e-12
    for change in ("weight", "input", "output"):
        xi = x.detach().clone().requires_grad_(True)
        xin = xi * 1.0  # a non-leaf input that can be changed in place
        y, _ = m(xin)
        s = y.pow(2).sum()
        with torch.no_grad():
            {"weight": m.weight_hh_l0, "input": xin, "output": y}[change].add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            s.backward()


def test_lstm_cell_matches_nn_lstm_cell():
    torch.manual_seed(7)
    for bias in (True, False):
        ref = nn.LSTMCell(3, 5, bias=bias).to(F64)
        cell = flt.from_torch(copy.deepcopy(ref))
        assert isinstance(cell, flt.LSTMCell)
        x = torch.randn(4, 3, dtype=F64)
        hx = (torch.randn(4, 5, dtype=F64), torch.randn(4, 5, dtype=F64))
        outs = []
        for mod in (ref, cell):
            xi = x.clone().requires_grad_(True)
            h, c = mod(xi, hx)
            h2, c2 = mod(xi, (h, c))  # two steps: the state carries
            (h2.pow(2).sum() + c2.sum()).backward()
            outs.append((h2, c2, xi.grad, [p.grad for p in mod.parameters()]))
        for a, b in zip(outs[1][:3], outs[0][:3]):
            assert _rel(a, b) <= 1e-10
        for a, b in zip(outs[1][3], outs[0][3]):
            assert _rel(a, b) <= 1e-10
        h1, c1 = ref(x[0])
        h2, c2 = cell(x[0])  # unbatched, no hx
        assert h2.shape == (5,) and _rel(h2, h1) <= 1e-10 and _rel(c2, c1) <= 1e-10


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_training_parity_with_adam(dtype):
    """The same model with nn.LSTM and with fastlstm.torch.LSTM, 20 Adam steps on a small task:
    the losses and the final weights agree."""
    def model():
        torch.manual_seed(11)
        return nn.Sequential().to(dtype), nn.LSTM(4, 8, num_layers=2, batch_first=True).to(dtype), \
            nn.Linear(8, 1).to(dtype)

    torch.manual_seed(0)
    x = torch.randn(16, 12, 4, dtype=dtype)
    target = x.cumsum(1)[:, :, :1] * 0.1
    runs = []
    for swap in (False, True):
        _, lstm, head = model()
        if swap:
            lstm = flt.from_torch(lstm)
        opt = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=1e-2)
        losses = []
        for _ in range(20):
            opt.zero_grad()
            y, _ = lstm(x)
            loss = (head(y) - target).pow(2).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        runs.append((np.array(losses), [p.detach().clone() for p in lstm.parameters()]))
    (l1, w1), (l2, w2) = runs
    tol = _tol(dtype, "grad") * (10 if dtype == torch.float32 else 1)
    assert np.max(np.abs(l2 - l1) / np.abs(l1)) <= tol, (l1, l2)
    assert l2[-1] < l2[0]  # it trains
    for a, b in zip(w2, w1):
        assert _rel(a, b) <= tol


def test_dropout_uses_torchs_generator():
    _, m = _pair(8, input_size=3, hidden_size=4, num_layers=3)
    m.dropout = 0.5
    x = torch.randn(5, 2, 3, dtype=F64)
    torch.manual_seed(3)
    a = m(x)[0]
    torch.manual_seed(3)
    b = m(x)[0]
    c = m(x)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])


def test_state_dict_copies_and_conversions():
    ref, m = _pair(9, input_size=3, hidden_size=4, num_layers=2, bidirectional=True, proj_size=2)
    other = nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2).to(F64)
    other.load_state_dict(m.state_dict())
    m.load_state_dict(ref.state_dict())
    x = torch.randn(4, 2, 3, dtype=F64)
    for mod in (copy.deepcopy(m), pickle.loads(pickle.dumps(m)), flt.to_torch(m), other):
        assert _rel(mod(x)[0], ref(x)[0]) <= 1e-10
    assert type(flt.to_torch(m)) is nn.LSTM
    m32 = copy.deepcopy(m).to(torch.float32)
    assert _rel(m32(x.float())[0].double(), ref(x)[0]) <= 1e-5
    assert m.train() is m and m.eval() is m and not m.training


def test_shared_parameters_and_in_place_updates_are_seen():
    """from_torch shares the parameters; an optimizer step (in place) reaches the kernels."""
    torch.manual_seed(10)
    ref = nn.LSTM(3, 4).to(F64)
    m = flt.from_torch(ref)
    assert m.weight_hh_l0 is ref.weight_hh_l0
    x = torch.randn(4, 2, 3, dtype=F64)
    m(x)  # weight layouts built for these values
    with torch.no_grad():
        ref.weight_hh_l0.add_(0.5)
    assert _rel(m(x)[0], ref(x)[0]) <= 1e-10


def test_replace_lstms_in_a_nested_model():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(3, 3), nn.LSTM(3, 4, batch_first=True))
            self.blocks = nn.ModuleList([nn.LSTM(4, 4), nn.LSTMCell(4, 4)])
            self.head = nn.Linear(4, 2)

    net = Net().double()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 5, 3, dtype=F64)
    want = net.enc(x)[0]
    assert flt.replace_lstms(net) == 3
    assert isinstance(net.enc[1], flt.LSTM) and isinstance(net.blocks[1], flt.LSTMCell)
    assert flt.replace_lstms(net) == 0  # already swapped
    assert set(net.state_dict()) == set(before)
    assert _rel(net.enc(x)[0], want) <= 1e-10


def test_bad_dtypes_are_clear_errors():
    m = flt.LSTM(3, 4)
    with pytest.raises(TypeError, match="input must be float32 or float64"):
        m(torch.ones(2, 1, 3, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="does not match the module"):
        m(torch.ones(2, 1, 3, dtype=F64))
    with pytest.raises(RuntimeError, match="input_size"):
        m(torch.ones(2, 1, 5))
    with pytest.raises(TypeError, match="from_torch takes"):
        flt.from_torch(nn.GRU(3, 4))


@pytest.mark.parametrize("batch_first", [False, True])
def test_no_steps_is_nn_lstms_error(batch_first):
    """A sequence of length 0 raises what nn.LSTM raises, with or without gradients."""
    torch.manual_seed(0)
    ours, ref = flt.LSTM(3, 4, batch_first=batch_first), nn.LSTM(3, 4, batch_first=batch_first)
    x = torch.zeros((2, 0, 3) if batch_first else (0, 2, 3), requires_grad=True)
    for module in (ref, ours):
        with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
            module(x)
        with torch.no_grad(), pytest.raises(RuntimeError, match="larger than 0"):
            module(x)


def test_compile_fullgraph_trains_and_matches_eager():
    """embedding -> LSTM -> linear under torch.compile(fullgraph=True): no graph break, the
    same loss and gradients as eager."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.lstm = flt.LSTM(4, 6, batch_first=True)
            self.out = nn.Linear(6, 10)

        def forward(self, tokens):
            return self.out(self.lstm(self.emb(tokens))[0])

    torch.manual_seed(0)
    net = Net()
    tokens = torch.randint(0, 10, (3, 7))
    target = torch.randint(0, 10, (3, 7))
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")

    def step(model):
        net.zero_grad()
        loss = nn.functional.cross_entropy(model(tokens).reshape(-1, 10), target.reshape(-1))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()]

    le, ge = step(net)
    lc, gc = step(compiled)
    assert abs(float(lc - le)) <= 1e-6 * abs(float(le))
    for a, b in zip(gc, ge):
        assert _rel(a, b) <= 1e-5


@pytest.mark.gpu
def test_cuda_tensors_stay_on_the_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and a CUDA build of torch")
    ref, _ = _pair(12, torch.float32, input_size=3, hidden_size=4, num_layers=2)
    ref = ref.cuda()
    m = flt.from_torch(ref)
    x = torch.randn(5, 2, 3, device="cuda", requires_grad=True)
    y, (h, c) = m(x)
    assert y.is_cuda and h.is_cuda
    y.sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    yr, _ = ref(xr)
    yr.sum().backward()
    assert_close(y.detach().cpu().numpy(), yr.detach().cpu().numpy(), np.float32, "forward")
    assert_close(x.grad.cpu().numpy(), xr.grad.cpu().numpy(), np.float32, "grad")


# ---------------------------------------------------------------------------- torch's threads
def test_gomp_runner_runs_every_task_in_order_and_raises():
    from fastlstm._omp import gomp_runner
    run = flt._RUNNER
    if run is None:
        pytest.skip("torch's intra-op threads are not libgomp's OpenMP here")
    import threading
    out = run(lambda a, b: (a * b, threading.get_ident()), [(i, 10) for i in range(5)])
    assert [v for v, _ in out] == [0, 10, 20, 30, 40]
    assert len({t for _, t in out}) > 1  # a team, not the caller alone
    # nested inside a team thread: a team of one runs all the tasks
    nested = run(lambda k: run(lambda i: i + k, [(0,), (1,), (2,)]), [(100,), (200,)])
    assert nested == [[100, 101, 102], [200, 201, 202]]

    def boom(i):
        if i == 2:
            raise KeyError("task 2")
        return i
    with pytest.raises(KeyError, match="task 2"):
        run(boom, [(i,) for i in range(4)])
    assert gomp_runner("/nonexistent/dir") is not None  # any mapped libgomp will do


@pytest.mark.parametrize("framework_threads", [True, False], ids=["torch-threads", "own-pool"])
def test_parallel_layers_in_the_operators_run_on_the_chosen_threads(framework_threads,
                                                                    monkeypatch):
    if flt._RUNNER is None:
        pytest.skip("torch's intra-op threads are not libgomp's OpenMP here")
    import threading

    from fastlstm import config
    from fastlstm.backends import cpu as cpu_backend
    from fastlstm.kernels.cpu.parallel import can_pin
    if not can_pin():
        pytest.skip("SciPy's OpenBLAS not found: no parallel path")
    names = []

    def spy(real):
        def wrapped(*args):
            names.append(threading.current_thread().name)
            return real(*args)
        return wrapped

    from fastlstm.kernels.cpu import pair
    # the tasks' compiled calls: on a thread team's threads, or the partner thread's
    monkeypatch.setattr(cpu_backend, "_calls", spy(cpu_backend._calls))
    monkeypatch.setattr(pair, "_run_calls", spy(pair._run_calls))
    ref, m = _pair(12, input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
    x = torch.randn(6, 4, 3, dtype=F64)
    # pair_tasks off: the calls' threads are the team's or the pool's, never the caller's
    # (a partner thread may come too late for these tiny tasks; tests/test_pair.py has it)
    with config.options("cpu", parallel_min_flop=0, threads=2, parallel_min_rows=1,
                        framework_threads=framework_threads, pair_tasks=False):
        outs = []
        for mod in (ref, m):
            xi = x.clone().requires_grad_(True)
            y, (h, c) = mod(xi)
            (y.pow(2).sum() + h.sum() + c.sum()).backward()
            outs.append((y, h, c, xi.grad, [p.grad for p in mod.parameters()]))
    for a, b in zip(outs[1][:4], outs[0][:4]):
        assert _rel(a, b) <= 1e-10
    for a, b in zip(outs[1][4], outs[0][4]):
        assert _rel(a, b) <= 1e-10
    others = {n for n in names if n != threading.main_thread().name}
    assert others, names
    if framework_threads:  # ctypes callbacks on OpenMP threads show up as dummy threads
        assert all(n.startswith("Dummy") for n in others), others
    else:
        assert all(n.startswith("fastlstm") for n in others), others
