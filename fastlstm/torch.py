"""fastlstm from PyTorch: drop-in modules for ``torch.nn.LSTM`` / ``torch.nn.LSTMCell`` whose
forward and backward run fastlstm's kernels, with gradients through ``torch.autograd``.

::

    import fastlstm.torch as flt
    lstm = flt.LSTM(32, 64, num_layers=2, batch_first=True)   # nn.LSTM's constructor
    n = flt.replace_lstms(model)                               # or swap a model's LSTMs in place

The modules subclass ``nn.LSTM`` / ``nn.LSTMCell``: the same constructor, attributes, parameter
names and shapes, so ``load_state_dict`` works both ways unchanged, and ``forward`` takes and
returns what torch's does (tensors or a ``PackedSequence``, unbatched input, ``hx`` optional).

The work is two ``torch.library`` custom operators, so ``torch.compile(fullgraph=True)`` traces
through them without a graph break (eager calls on CPU tensors run the CPU backend through an
``autograd.Function`` that keeps its training state on the autograd node instead of a reserve;
eager CUDA calls run the operators' implementation through another; both live in
``fastlstm/torch_ops.py``):

``fastlstm::lstm(x, h0, c0, lengths, masks, weights, dims, training) -> (y, h_n, c_n, reserve)``
    time-major ``x`` (T, B, I); ``weights`` in ``nn.LSTM``'s order; ``dims`` =
    ``[num_layers, bidirectional, proj_size, bias]``; ``reserve`` is one flat tensor holding
    what the backward needs (empty unless ``training``): the outputs of the layers below the
    top one, then each layer's and direction's activated gates (T, B, 4H) and cell states
    (T, B, H), in that order (GPU: per layer the gates (T, B, D*4H), then the cells (T, B, D*H)).
``fastlstm::lstm_backward(x, h0, c0, lengths, masks, weights, dims, y, reserve, dy, dh, dc)
    -> [dx, dh0, dc0, *dweights]``

CPU tensors are shared with the kernels without copies (``Tensor.numpy()``); the weights'
layouts the kernels read are rebuilt only when a weight changes (``Tensor._version``). CUDA
tensors go to the numba.cuda kernels through ``__cuda_array_interface__`` (float32 only).
Gradients of gradients are not supported (a clear error).
"""
from __future__ import annotations

try:
    import torch
    from torch import nn
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
except ImportError as exc:  # pragma: no cover - exercised without torch
    raise ImportError('fastlstm.torch needs PyTorch: pip install torch '
                      '(from a checkout: pip install -e ".[torch]")') from exc

from .api import thin_forward
from .torch_ops import (CUSTOM_OPS, _CPU_DTYPES, _RUNNER, _HostCell,  # noqa: F401
                        _eager_inference, _infer, _needs_grad, _params_of, _run)

__all__ = ["LSTM", "LSTMCell", "from_torch", "to_torch", "replace_lstms"]


# ---------------------------------------------------------------------------- modules
def _check_dtype(t, what):
    ok = _CPU_DTYPES if t.is_cpu else (torch.float32,)
    if t.dtype not in ok:
        names = " or ".join(str(d).removeprefix("torch.") for d in ok)
        raise TypeError(f"{what} must be {names} on {t.device.type}, got {t.dtype} "
                        f"(convert the module with .to({ok[0]}) and the input with .to(...))")


class LSTM(nn.RNNBase):
    """``torch.nn.LSTM`` with fastlstm's kernels (same constructor, parameters, inputs and
    outputs). Inter-layer dropout draws its masks from torch's generator.

    It shares ``nn.LSTM``'s base class (``nn.RNNBase``) but is not an ``nn.LSTM`` instance:
    ``torch.compile`` refuses to trace ``nn.LSTM`` instances, and traces this one whole."""

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    def forward(self, input, hx=None):  # noqa: A002 - nn.LSTM's argument name
        if type(input) is torch.Tensor and not torch.is_grad_enabled():
            out = self._small_inference(input, hx)
            if out is not None:
                return out
        packed = isinstance(input, PackedSequence)
        if packed:
            x, lengths = pad_packed_sequence(input)  # (T, B, I), the caller's batch order
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
            unbatched = False
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: expected input to be 2-D or 3-D but received "
                                 f"{input.dim()}-D tensor")
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first
                                                      else input)
            lengths = None
        _check_dtype(x, "input")
        T, B, I = x.shape
        if T == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        if I != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {I}")
        weights = self._flat_weights
        if weights[0].dtype != x.dtype:
            raise TypeError(f"input dtype {x.dtype} does not match the module's "
                            f"{weights[0].dtype}")
        L, D = self.num_layers, 2 if self.bidirectional else 1
        H = self.hidden_size
        P = self.proj_size if self.proj_size > 0 else H
        if hx is None:
            h0 = c0 = None
        else:
            h0, c0 = hx
            if unbatched:
                if h0.dim() != 2 or c0.dim() != 2:
                    raise RuntimeError("For unbatched 2-D input, hx and cx should also be 2-D "
                                       f"but got ({h0.dim()}-D, {c0.dim()}-D) tensors")
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            if tuple(h0.shape) != (L * D, B, P) or tuple(c0.shape) != (L * D, B, H):
                raise RuntimeError(f"Expected hidden sizes {(L * D, B, P)} and {(L * D, B, H)}, "
                                   f"got {tuple(h0.shape)} and {tuple(c0.shape)}")
        dims = self._dims()
        dropout = self.training and self.dropout > 0 and L > 1
        if lengths is None and not dropout and _eager_inference(x) \
                and not _needs_grad(weights, x, h0, c0):
            y, h, c = _infer(weights, dims, x, h0, c0, self)
            if unbatched:
                return y.squeeze(1), (h.squeeze(1), c.squeeze(1))
            return (y.transpose(0, 1) if self.batch_first else y), (h, c)
        if (T == 1 and L == 1 and D == 1 and self.proj_size == 0 and lengths is None
                and x.is_cpu and B > 0 and not torch.compiler.is_compiling()):
            # one step of one layer: the cell's kernels (LSTMCell's training call)
            h, c, y = _HostCell.apply(x[0].contiguous(),
                                      *((x.new_zeros((B, H)),) * 2 if hx is None else
                                        (h0[0].contiguous(), c0[0].contiguous())),
                                      True, *(w.contiguous() for w in weights))
            y, h, c = y.unsqueeze(0), h.unsqueeze(0), c.unsqueeze(0)
            if unbatched:
                return y.squeeze(1), (h.squeeze(1), c.squeeze(1))
            return (y.transpose(0, 1) if self.batch_first else y), (h, c)
        lens = None if lengths is None else lengths.to(torch.int64)
        masks = None
        if dropout:
            keep = 1.0 - self.dropout
            masks = x.new_empty((L - 1, T, B, D * P)).bernoulli_(keep)
            masks = masks / keep if keep > 0 else masks
        y, h, c = _run(self, weights, dims, x, h0, c0, lens, masks)
        if packed:
            y_sorted = y.index_select(1, sorted_indices) if sorted_indices is not None else y
            lens_sorted = lens[sorted_indices] if sorted_indices is not None else lens
            data = pack_padded_sequence(y_sorted, lens_sorted, enforce_sorted=True)
            out = PackedSequence(data.data, data.batch_sizes, sorted_indices, unsorted_indices)
            return out, (h, c)
        if unbatched:
            return y.squeeze(1), (h.squeeze(1), c.squeeze(1))
        return (y.transpose(0, 1) if self.batch_first else y), (h, c)


    def _dims(self):
        return [self.num_layers, int(self.bidirectional), self.proj_size, int(self.bias)]

    def _small_inference(self, x, hx):
        """The streaming case's shortcut (no autograd, a time-major or one-step CPU tensor of
        the weights' dtype, few rows: the step kernel): the general path's checks reduced to
        attribute comparisons; None when the call does not qualify."""
        if (x.dim() != 3 or (self.batch_first and x.shape[0] != 1 and x.shape[1] != 1)
                or not x.is_cpu or not x.is_contiguous() or torch.compiler.is_compiling()):
            return None
        weights = self._flat_weights
        if x.dtype is not weights[0].dtype:
            return None
        h0n = c0n = None
        if hx is not None:
            h0, c0 = hx
            if type(h0) is not torch.Tensor or type(c0) is not torch.Tensor \
                    or not (h0.is_cpu and c0.is_cpu and h0.is_contiguous() and c0.is_contiguous()):
                return None
            h0n, c0n = h0.numpy(), c0.numpy()
        # the memo's stamp has the weights' addresses too: a `.data` reassignment is seen
        params = _params_of(self, weights, self._dims())
        res = thin_forward(x.numpy(), params, h0n, c0n, self.batch_first)
        if res is None:
            return None
        return torch.from_numpy(res.y), (torch.from_numpy(res.h), torch.from_numpy(res.c))


class LSTMCell(nn.RNNCellBase):
    """``torch.nn.LSTMCell`` with fastlstm's kernels: ``h', c' = cell(x, (h, c))`` (same
    constructor and parameters; the base class of ``nn.LSTMCell``)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None):
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device, dtype=dtype)

    def forward(self, input, hx=None):  # noqa: A002
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        _check_dtype(x, "input")
        B, H = x.shape[0], self.hidden_size
        if hx is None:
            h0 = c0 = x.new_zeros((B, H))
        else:
            h0, c0 = hx
            if unbatched:
                h0, c0 = h0.unsqueeze(0), c0.unsqueeze(0)
        if x.shape[1] != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.shape[1]} "
                               f"expected {self.input_size}")
        weights = [self.weight_ih, self.weight_hh] + ([self.bias_ih, self.bias_hh]
                                                      if self.bias else [])
        if weights[0].dtype != x.dtype:
            raise TypeError(f"input dtype {x.dtype} does not match the module's "
                            f"{weights[0].dtype}")
        if _eager_inference(x) and not _needs_grad(weights, x, h0, c0):
            _, h, c = _infer(weights, [1, 0, 0, int(self.bias)], x.unsqueeze(0), h0.unsqueeze(0),
                             c0.unsqueeze(0), self)
            h, c = h[0], c[0]
            return (h[0], c[0]) if unbatched else (h, c)
        if x.is_cpu and x.shape[0] > 0 and not torch.compiler.is_compiling():
            h, c = _HostCell.apply(x.contiguous(), h0.contiguous(), c0.contiguous(), False,
                                   *(w.contiguous() for w in weights))
        else:
            _, h, c = _run(self, weights, [1, 0, 0, int(self.bias)], x.unsqueeze(0),
                           h0.unsqueeze(0), c0.unsqueeze(0), None, None)
            h, c = h[0], c[0]
        return (h[0], c[0]) if unbatched else (h, c)


# ---------------------------------------------------------------------------- conversion
_PAIRS = ((nn.LSTM, LSTM), (nn.LSTMCell, LSTMCell))


def _convert(module, target):
    """A ``target``-class module with ``module``'s configuration sharing its parameters."""
    if hasattr(module, "_flat_weights_names"):  # nn.LSTM or ours
        new = target(module.input_size, module.hidden_size, module.num_layers, module.bias,
                     module.batch_first, module.dropout, module.bidirectional,
                     module.proj_size, device="meta")
        for name in module._flat_weights_names:
            setattr(new, name, getattr(module, name))
    else:
        new = target(module.input_size, module.hidden_size, module.bias, device="meta")
        for name, p in module.named_parameters(recurse=False):
            setattr(new, name, p)
    new.train(module.training)
    return new


def from_torch(module):
    """A fastlstm module for ``torch.nn.LSTM`` / ``torch.nn.LSTMCell`` ``module``, sharing its
    parameters (an optimizer over either trains both)."""
    for torch_cls, ours in _PAIRS:
        if type(module) is torch_cls:
            return _convert(module, ours)
        if type(module) is ours:
            return module
    raise TypeError(f"from_torch takes an nn.LSTM or nn.LSTMCell, got {type(module).__name__}")


def to_torch(module):
    """The ``torch.nn`` module for a fastlstm one, sharing its parameters."""
    for torch_cls, ours in _PAIRS:
        if type(module) is ours:
            return _convert(module, torch_cls)
        if type(module) is torch_cls:
            return module
    raise TypeError(f"to_torch takes a fastlstm.torch LSTM or LSTMCell, got {type(module).__name__}")


def replace_lstms(model: nn.Module) -> int:
    """Swap every ``nn.LSTM`` and ``nn.LSTMCell`` inside ``model`` (at any depth) for fastlstm's,
    in place, parameters shared; returns how many were swapped. ``model`` itself is not
    replaced (use :func:`from_torch` for a bare LSTM)."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (nn.LSTM, nn.LSTMCell):
                setattr(parent, name, from_torch(child))
                count += 1
    return count
