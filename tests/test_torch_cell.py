"""fastlstm.torch's training calls of one step: ``LSTMCell`` and a one-layer ``LSTM`` given one
step, through the cell's own kernels (``kernels/cpu/cell.py``,
``fastlstm/torch_ops.py::_HostCell``), against ``torch.autograd.gradcheck`` and
torch.nn.LSTMCell / nn.LSTM."""
import copy

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import fastlstm.torch as flt  # noqa: E402
from helpers import rel_err  # noqa: E402
from fastlstm.torch_ops import _HostCell, _cell_large  # noqa: E402

F64 = torch.float64


_rel = rel_err


@pytest.fixture(params=["kernels", "torch's products"])
def cell_cores(request):
    """A cell's training call with its products in the kernels, or from torch (forced: the
    route of large calls)."""
    from fastlstm import config
    if request.param == "kernels":
        yield
        return
    with config.options("cpu", parallel_min_flop=0, threads=2):
        assert _cell_large(1, 1, 1)
        yield


@pytest.mark.parametrize("bias", [True, False])
def test_lstm_cell_gradcheck_float64(bias, cell_cores):
    """The cell's own training kernels (one call each way): gradients to the input, both
    states and every weight, against finite differences."""
    torch.manual_seed(3)
    cell = flt.LSTMCell(4, 5, bias=bias).to(F64)
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    h0 = torch.randn(3, 5, dtype=F64, requires_grad=True)
    c0 = torch.randn(3, 5, dtype=F64, requires_grad=True)
    ws = [p.detach().clone().requires_grad_(True) for p in cell.parameters()]
    assert torch.autograd.gradcheck(lambda *a: _HostCell.apply(*a[:3], False, *a[3:]),
                                    (x, h0, c0, *ws), eps=1e-6, atol=1e-6, rtol=1e-5)
    assert torch.autograd.gradcheck(lambda *a: _HostCell.apply(*a[:3], True, *a[3:]),
                                    (x, h0, c0, *ws), eps=1e-6, atol=1e-6, rtol=1e-5)
    h, c = _HostCell.apply(x, h0, c0, False, *ws)  # what the module's call gives
    hm, cm = cell(x, (h0, c0))
    assert torch.equal(h, hm) and torch.equal(c, cm)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_lstm_cell_training_call_against_nn_lstm_cell(dtype, cell_cores):
    """Random rows, a non-contiguous input, states with and without gradients: the same
    outputs and gradients as nn.LSTMCell, inputs unchanged; an in-place change to the output
    cell state or a weight before the backward is torch's error; no double backward."""
    torch.manual_seed(11)
    ref = nn.LSTMCell(6, 7).to(dtype)
    cell = flt.from_torch(copy.deepcopy(ref))
    x = torch.randn(6, 5, dtype=dtype).t()  # (5, 6), not contiguous
    hx = (torch.randn(5, 7, dtype=dtype), torch.randn(5, 7, dtype=dtype))
    before = [x.clone(), hx[0].clone(), hx[1].clone()]
    tol = 1e-10 if dtype == F64 else 2e-5
    outs = []
    for mod in (ref, cell):
        xi = x.clone().requires_grad_(True)
        h0 = hx[0].clone().requires_grad_(True)
        h, c = mod(xi, (h0, hx[1]))
        (h.pow(2).sum() + (c * c.detach()).sum()).backward()
        outs.append([h, c, xi.grad, h0.grad, *[p.grad for p in mod.parameters()]])
    for a, b in zip(outs[1], outs[0]):
        assert a.shape == b.shape and _rel(a, b) <= tol
    for a, b in zip(before, [x, *hx]):
        assert torch.equal(a, b)
    for change in ("cell", "weight"):
        h, c = cell(x, hx)
        loss = h.sum() + c.sum()
        with torch.no_grad():
            (c if change == "cell" else cell.weight_hh).add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
        if change == "weight":
            with torch.no_grad():
                cell.weight_hh.sub_(1.0)
    xg = x.clone().requires_grad_(True)
    h, _ = cell(xg, hx)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(h.sum(), xg, create_graph=True)


@pytest.mark.parametrize("layout", ["time-major", "batch-first", "unbatched"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no hx", "hx"])
def test_one_step_lstm_training_against_nn_lstm(layout, with_hx, cell_cores):
    """A one-layer LSTM called one step at a time (the streaming training loop) runs the
    cell's kernels: outputs, and gradients to the input, hx and every weight over two steps,
    as nn.LSTM's; y and h_n are tensors of their own."""
    torch.manual_seed(5)
    batch_first = layout == "batch-first"
    ref = nn.LSTM(4, 6, batch_first=batch_first).to(F64)
    m = flt.from_torch(copy.deepcopy(ref))
    shape = {"time-major": (1, 3, 4), "batch-first": (3, 1, 4), "unbatched": (1, 4)}[layout]
    xs = [torch.randn(*shape, dtype=F64) for _ in range(2)]
    hshape = (1, 6) if layout == "unbatched" else (1, 3, 6)
    hx0 = (torch.randn(*hshape, dtype=F64), torch.randn(*hshape, dtype=F64))
    outs = []
    for mod in (ref, m):
        xi = [x.clone().requires_grad_(True) for x in xs]
        h0 = hx0[0].clone().requires_grad_(True)
        hx = (h0, hx0[1]) if with_hx else None
        y1, hx1 = mod(xi[0], hx)
        y2, (h2, c2) = mod(xi[1], hx1)
        (y1.pow(2).sum() + y2.sum() + (h2 * c2).sum()).backward()
        outs.append([y1, y2, h2, c2, *(x.grad for x in xi), *[p.grad for p in mod.parameters()]]
                    + ([h0.grad] if with_hx else []))
    for a, b in zip(outs[1], outs[0]):
        assert a.shape == b.shape and _rel(a, b) <= 1e-10
    y, (h, _) = m(xs[0])
    with torch.no_grad():
        y.add_(1.0)
    assert not torch.equal(y, h.reshape(y.shape))  # h_n is not a view of y
