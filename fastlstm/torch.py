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
through them without a graph break (eager calls run the same implementation through an
``autograd.Function``, cheaper to dispatch):

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

import threading
import weakref
from collections import OrderedDict

import numpy as np

try:
    import torch
    from torch import nn
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
except ImportError as exc:  # pragma: no cover - exercised without torch
    raise ImportError('fastlstm.torch needs PyTorch: pip install torch '
                      '(from a checkout: pip install -e ".[torch]")') from exc

from . import config
from .backends import cpu as _cpu
from .api import thin_forward
from .backends.state import LayerState, TrainingState
from ._omp import gomp_runner
from .kernels.cpu.parallel import single_threaded_blas as _single_threaded_blas
from .kernels.cpu.parallel import tasks_on
from .params import LSTMParams

__all__ = ["LSTM", "LSTMCell", "from_torch", "to_torch", "replace_lstms"]

_CPU_DTYPES = (torch.float32, torch.float64)


# ---------------------------------------------------------------------------- threads
def _torch_runner():
    """Parallel tasks on torch's OpenMP team (``fastlstm._omp``), or None where torch's intra-op
    backend is not libgomp's OpenMP."""
    try:
        info = torch.__config__.parallel_info()
    except Exception:  # pragma: no cover - builds without it
        return None
    if "parallel backend: OpenMP" not in info:
        return None
    import os
    return gomp_runner(os.path.join(os.path.dirname(torch.__file__), "lib"))


_RUNNER = _torch_runner()


class _OwnThreads:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _task_threads():
    """Where a CPU call's parallel tasks run: torch's threads (``CPUConfig.framework_threads``)
    or fastlstm's pool."""
    if _RUNNER is not None and config.current("cpu").framework_threads:
        return tasks_on(_RUNNER)
    return _OwnThreads()


# ---------------------------------------------------------------------------- weights
def _names(L, D, bias, proj):
    kinds = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else []) \
        + (["weight_hr"] if proj else [])
    return [LSTMParams.param_name(k, layer, d) for layer in range(L) for d in range(D)
            for k in kinds]


def _config(dims, weights):
    L, bi, proj, bias = dims
    w_ih0 = weights[0]
    return dict(input_size=int(w_ih0.shape[1]), hidden_size=int(w_ih0.shape[0]) // 4,
                num_layers=int(L), bias=bool(bias), bidirectional=bool(bi),
                proj_size=int(proj), dtype=np.dtype(str(w_ih0.dtype).removeprefix("torch.")))


_params_lock = threading.Lock()
_params_cache: OrderedDict = OrderedDict()
_PARAMS_KEPT = 8


def _params(weights, dims) -> LSTMParams:
    """LSTMParams over the weight tensors' memory (no copy), one per weight version: the CPU
    backend memoises its weight layouts on it, and an optimizer step (which bumps the tensors'
    ``_version``) gives a new one. CUDA weights are copied to the host once per version (the
    CUDA backend then uploads its layouts once per params object)."""
    key = (tuple(dims), tuple((w.data_ptr(), w._version, w.shape, w.dtype, w.device.type)
                              for w in weights))
    with _params_lock:
        p = _params_cache.get(key)
        if p is not None:
            _params_cache.move_to_end(key)
            return p
    weights = [w.detach() for w in weights]
    weights = [w if w.is_contiguous() else w.contiguous() for w in weights]
    cfg = _config(dims, weights)
    names = _names(cfg["num_layers"], 2 if cfg["bidirectional"] else 1, cfg["bias"],
                   cfg["proj_size"] > 0)
    p = LSTMParams._shared({n: w.numpy() if w.device.type == "cpu" else w.cpu().numpy()
                            for n, w in zip(names, weights)}, **cfg)
    with _params_lock:
        _params_cache[key] = p
        while len(_params_cache) > _PARAMS_KEPT:
            _params_cache.popitem(last=False)
    return p


def _sizes(x, weights, dims):
    L, bi, proj, _ = (int(d) for d in dims)
    D = 2 if bi else 1
    H = int(weights[0].shape[0]) // 4
    P = proj if proj > 0 else H
    T, B = int(x.shape[0]), int(x.shape[1])
    return T, B, L, D, H, P


def _reserve_numel(T, B, L, D, H, P):
    return (L - 1) * T * B * D * P + L * D * T * B * 5 * H


def _layout(T, B, L, D, H, P):
    """Offsets of the reserve's parts: name -> (offset, shape)."""
    parts, off = {}, 0
    for layer in range(L - 1):
        parts[f"y{layer}"] = (off, (T, B, D * P))
        off += T * B * D * P
    for layer in range(L):
        for d in range(D):
            parts[f"gates{layer}.{d}"] = (off, (T, B, 4 * H))
            off += T * B * 4 * H
            parts[f"cells{layer}.{d}"] = (off, (T, B, H))
            off += T * B * H
    return parts


def _view(flat: np.ndarray, part):
    off, shape = part
    return flat[off:off + int(np.prod(shape))].reshape(shape)


def _np(t):
    if not t.requires_grad and t.is_contiguous():
        return t.numpy()
    return t.detach().contiguous().numpy()


# ---------------------------------------------------------------------------- the operators
def _lstm_impl(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, lengths: torch.Tensor,
               masks: torch.Tensor, weights: list[torch.Tensor], dims: list[int],
               training: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    T, B, L, D, H, P = _sizes(x, weights, dims)
    if x.is_cuda:
        from .torch_cuda import cuda_forward
        return cuda_forward(x, h0, c0, lengths, masks, weights, dims, training)
    params = _params(weights, dims)
    y = x.new_empty((T, B, D * P))
    reserve = x.new_empty((_reserve_numel(T, B, L, D, H, P) if training else 0,))
    if B == 0:
        return y, h0.clone(), c0.clone(), reserve
    y_np = y.numpy()
    parts, flat = (_layout(T, B, L, D, H, P), reserve.numpy()) if training else ({}, None)

    def alloc(name, shape):
        if name == f"y{L - 1}":
            return y_np
        if name in parts and training:
            return _view(flat, parts[name])
        return np.empty(shape, params.dtype)

    mask_list = [m for m in _np(masks)] if masks.numel() else None
    # kernel_xh off: the reserve's layout on every path. SciPy's BLAS on the calling thread:
    # torch's own threads spin between its ops, and a threaded BLAS call fights them (a small
    # training step ran 2-5x slower; bench/NOTES.md, "fastlstm.torch").
    with config.options("cpu", kernel_xh=False), _single_threaded_blas(), _task_threads():
        _, h, c, _, _ = _cpu.lstm_forward(_np(x), params, _np(h0), _np(c0), _np(lengths),
                                          mask_list, training, alloc=alloc)
    return y, torch.from_numpy(h), torch.from_numpy(c), reserve


def _lstm_fake(x, h0, c0, lengths, masks, weights, dims, training):
    T, B, L, D, H, P = _sizes(x, weights, dims)
    n = _reserve_numel(T, B, L, D, H, P) if training else 0
    return (x.new_empty((T, B, D * P)), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
            x.new_empty((n,)))


def _lstm_backward_impl(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor,
                        lengths: torch.Tensor, masks: torch.Tensor, weights: list[torch.Tensor],
                        dims: list[int], y: torch.Tensor, reserve: torch.Tensor,
                        dy: torch.Tensor, dh: torch.Tensor, dc: torch.Tensor) -> list[torch.Tensor]:
    if x.is_cuda:
        from .torch_cuda import cuda_backward
        return cuda_backward(x, h0, c0, lengths, masks, weights, dims, y, reserve, dy, dh, dc)
    T, B, L, D, H, P = _sizes(x, weights, dims)
    params = _params(weights, dims)
    if B == 0:
        return [torch.zeros_like(x), torch.zeros_like(h0), torch.zeros_like(c0)] + \
            [torch.zeros_like(w) for w in weights]
    parts, flat = _layout(T, B, L, D, H, P), reserve.detach().numpy()
    mask_list = tuple(m for m in _np(masks)) if masks.numel() else ()
    layers, layer_in = [], _np(x)
    for layer in range(L):
        y_l = _np(y) if layer == L - 1 else _view(flat, parts[f"y{layer}"])
        gates = tuple(_view(flat, parts[f"gates{layer}.{d}"]) for d in range(D))
        cells = tuple(_view(flat, parts[f"cells{layer}.{d}"]) for d in range(D))
        layers.append(LayerState(x=layer_in, y=y_l, gates=gates, cells=cells))
        layer_in = y_l * mask_list[layer] if (mask_list and layer < L - 1) else y_l
    state = TrainingState("cpu", params, params.version, tuple(layers), _np(h0), _np(c0),
                          _np(lengths), mask_list, ("serial",) * L)
    with _single_threaded_blas(), _task_threads():
        dx, dh0, dc0, dparams = _cpu.lstm_backward(state, _np(dy), _np(dh), _np(dc))
    return [torch.from_numpy(a) for a in (dx, dh0, dc0, *dparams.values())]


def _lstm_backward_fake(x, h0, c0, lengths, masks, weights, dims, y, reserve, dy, dh, dc):
    return [torch.empty_like(a) for a in (x, h0, c0, *weights)]


def _setup_context(ctx, inputs, output):
    x, h0, c0, lengths, masks, weights, dims, training = inputs
    y, _, _, reserve = output
    ctx.dims, ctx.training, ctx.n = list(dims), training, len(weights)
    ctx.save_for_backward(x, h0, c0, lengths, masks, y, reserve, *weights)


def _backward_through(bwd):
    """The backward formula of the forward operator, running ``bwd`` (the backward operator,
    or its implementation in eager calls: an operator's dispatch costs ~0.1 ms)."""
    def backward(ctx, gy, gh, gc, _greserve):
        x, h0, c0, lengths, masks, y, reserve, *weights = ctx.saved_tensors
        if not ctx.training:
            raise RuntimeError("fastlstm::lstm ran with training=False (no reserve kept): its "
                               "backward cannot run")
        gy = torch.zeros_like(y) if gy is None else gy.contiguous()
        gh = torch.zeros_like(h0) if gh is None else gh.contiguous()
        gc = torch.zeros_like(c0) if gc is None else gc.contiguous()
        dx, dh0, dc0, *dw = bwd(x, h0, c0, lengths, masks, weights, ctx.dims, y, reserve, gy,
                                gh, gc)
        return dx, dh0, dc0, None, None, list(dw), None, None
    return backward


_eager_backward = _backward_through(_lstm_backward_impl)
_backward = _backward_through(lambda *args: _lstm_backward(*args))  # the op, once defined


def _no_context(ctx, inputs, output):
    pass


#: Whether the operators are ``torch.library`` custom ops (torch >= 2.4: traceable by
#: ``torch.compile``) or, on older torch, an ``autograd.Function`` (eager only).
CUSTOM_OPS = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_fake")

def _no_double_backward(ctx, *grads):
    raise RuntimeError("fastlstm: gradients of gradients (double backward) are not supported")


class _LSTMFunction(torch.autograd.Function):
    """The same operator as an ``autograd.Function``: what eager mode calls (its dispatch costs
    a fraction of a custom operator's), and the whole path on torch without custom ops."""

    @staticmethod
    def forward(ctx, x, h0, c0, lengths, masks, dims, training, *weights):
        out = _lstm_impl(x, h0, c0, lengths, masks, list(weights), dims, training)
        _setup_context(ctx, (x, h0, c0, lengths, masks, list(weights), dims, training), out)
        ctx.mark_non_differentiable(out[3])
        return out

    @staticmethod
    def backward(ctx, gy, gh, gc, greserve):
        if torch.is_grad_enabled():  # backward(create_graph=True)
            _no_double_backward(ctx)
        dx, dh0, dc0, _, _, dw, _, _ = _eager_backward(ctx, gy, gh, gc, greserve)
        return (dx, dh0, dc0, None, None, None, None, *dw)


def _lstm_function(x, h0, c0, lengths, masks, weights, dims, training):
    return _LSTMFunction.apply(x, h0, c0, lengths, masks, dims, training, *weights)


if CUSTOM_OPS:
    lstm_op = torch.library.custom_op("fastlstm::lstm", mutates_args=())(_lstm_impl)
    lstm_op.register_fake(_lstm_fake)
    lstm_backward_op = torch.library.custom_op("fastlstm::lstm_backward",
                                               mutates_args=())(_lstm_backward_impl)
    lstm_backward_op.register_fake(_lstm_backward_fake)
    lstm_op.register_autograd(_backward, setup_context=_setup_context)
    lstm_backward_op.register_autograd(_no_double_backward, setup_context=_no_context)
    _lstm_backward = lstm_backward_op

    def _lstm(x, h0, c0, lengths, masks, weights, dims, training):
        if torch.compiler.is_compiling():
            return lstm_op(x, h0, c0, lengths, masks, weights, dims, training)
        return _lstm_function(x, h0, c0, lengths, masks, weights, dims, training)
else:
    _lstm, _lstm_backward = _lstm_function, _lstm_backward_impl


# ---------------------------------------------------------------------------- modules
def _check_dtype(t, what):
    ok = _CPU_DTYPES if t.is_cpu else (torch.float32,)
    if t.dtype not in ok:
        names = " or ".join(str(d).removeprefix("torch.") for d in ok)
        raise TypeError(f"{what} must be {names} on {t.device.type}, got {t.dtype} "
                        f"(convert the module with .to({ok[0]}) and the input with .to(...))")


def _needs_grad(weights, *tensors) -> bool:
    """Whether autograd will want a backward through this call."""
    return torch.is_grad_enabled() and (any(t is not None and t.requires_grad for t in tensors)
                                        or any(w.requires_grad for w in weights))


def _run(weights, dims, x, h0, c0, lengths, masks):
    """The op, asking for a reserve only when autograd will need it."""
    need = _needs_grad(weights, x, h0, c0)
    y, h, c, _ = _lstm(x, h0, c0, lengths, masks, weights, dims, need)
    return y, h, c


def _eager_inference(x) -> bool:
    """A call with nothing to record: no autograd, no tracing, host tensors. It runs the CPU
    backend directly (no operator dispatch, no reserve; the step kernel for a few rows)."""
    return x.is_cpu and not torch.compiler.is_compiling()


_module_params: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _params_of(module, weights, dims) -> LSTMParams:
    """:func:`_params` with a per-module memo checked by the weights' addresses and versions
    (a third of the cost of the shared cache's full key)."""
    stamp = tuple(dims) + tuple(w.data_ptr() for w in weights) + tuple(w._version for w in weights)
    memo = _module_params.get(module)
    if memo is not None and memo[0] == stamp:
        return memo[1]
    p = _params(weights, dims)
    _module_params[module] = (stamp, p)
    return p


def _infer(weights, dims, x, h0, c0, module=None):
    """Inference on CPU tensors (time-major ``x``; ``h0``, ``c0`` None for zeros): ``y, h, c``."""
    params = _params(weights, dims) if module is None else _params_of(module, weights, dims)
    xn = _np(x)
    h0n = None if h0 is None else _np(h0)
    c0n = None if c0 is None else _np(c0)
    res = thin_forward(xn, params, h0n, c0n, False)
    if res is not None:
        y, h, c = res.y, res.h, res.c
    else:
        T, B = xn.shape[0], xn.shape[1]
        L, D = params.num_layers, params.num_directions
        dt = params.dtype
        if h0n is None:
            h0n = np.zeros((L * D, B, params.output_size), dt)
        if c0n is None:
            c0n = np.zeros((L * D, B, params.hidden_size), dt)
        with _single_threaded_blas(), _task_threads():  # as in the operator
            y, h, c, _, _ = _cpu.lstm_forward(xn, params, h0n, c0n, np.full(B, T, np.int64),
                                              None, False)
    return torch.from_numpy(y), torch.from_numpy(h), torch.from_numpy(c)


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
        if h0 is None:
            h0 = x.new_zeros((L * D, B, P))
            c0 = x.new_zeros((L * D, B, H))
        lens = torch.full((B,), T, dtype=torch.int64) if lengths is None else \
            lengths.to(torch.int64)
        if dropout:
            keep = 1.0 - self.dropout
            masks = x.new_empty((L - 1, T, B, D * P)).bernoulli_(keep)
            masks = masks / keep if keep > 0 else masks
        else:
            masks = x.new_empty((0,))
        y, h, c = _run(weights, dims, x.contiguous(), h0.contiguous(), c0.contiguous(), lens,
                       masks)
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
        lens = torch.ones((B,), dtype=torch.int64)
        _, h, c = _run(weights, [1, 0, 0, int(self.bias)], x.unsqueeze(0).contiguous(),
                       h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous(), lens,
                       x.new_empty((0,)))
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
