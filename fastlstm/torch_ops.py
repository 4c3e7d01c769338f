"""fastlstm's operators for PyTorch (what :mod:`fastlstm.torch`'s modules call): the
``torch.library`` custom operators ``fastlstm::lstm`` / ``fastlstm::lstm_backward`` that
``torch.compile`` traces, the ``autograd.Function`` eager calls run, and the weights' sharing
with the kernels. The operators' contract is in :mod:`fastlstm.torch`'s docstring."""
from __future__ import annotations

import operator
import threading
import weakref
from collections import OrderedDict

import numpy as np
import torch

from . import config
from .backends import cpu as _cpu
from .api import thin_forward
from .backends.state import LayerState, TrainingState
from ._omp import gomp_runner
from .kernels.cpu.cell import cell_backward, cell_dz, cell_forward, cell_update
from .kernels.cpu.smallgemm import aligned_empty
from .kernels.cpu.parallel import single_threaded_blas as _single_threaded_blas
from .kernels.cpu.parallel import tasks_on
from .params import LSTMParams

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


def _needs_grad(weights, *tensors) -> bool:
    """Whether autograd will want a backward through this call."""
    return torch.is_grad_enabled() and (any(t is not None and t.requires_grad for t in tensors)
                                        or any(w.requires_grad for w in weights))


class _HostLSTM(torch.autograd.Function):
    """The eager call on CPU tensors: the CPU backend's training state stays on the autograd
    node (nothing flattened into a reserve and rebuilt for the backward), and the backward
    runs the backend on it directly. ``h0``/``c0`` None mean zeros (and get no gradient),
    ``lengths`` None (an int64 array otherwise) every sequence T long, ``masks`` None no
    dropout. The tensors the state reads (``x``, ``h0``, ``c0``, ``y``, the weights) are
    saved, so an in-place change to any of them before the backward raises torch's error."""

    @staticmethod
    def forward(ctx, x, h0, c0, lengths, masks, params, training, *weights):
        T, B = x.shape[0], x.shape[1]
        dt, LD = params.dtype, params.num_layers * params.num_directions
        h0n = np.zeros((LD, B, params.output_size), dt) if h0 is None else _np(h0)
        c0n = np.zeros((LD, B, params.hidden_size), dt) if c0 is None else _np(c0)
        lens = np.full(B, T, np.int64) if lengths is None else lengths
        mask_list = None if masks is None else list(_np(masks))
        with _single_threaded_blas(), _task_threads():  # as in the operator
            y, h, c, state, _ = _cpu.lstm_forward(_np(x), params, h0n, c0n, lens, mask_list,
                                                  training)
        y = torch.from_numpy(y)
        ctx.state = state
        ctx.save_for_backward(x, h0, c0, y, *weights)
        return y, torch.from_numpy(h), torch.from_numpy(c)

    @staticmethod
    def backward(ctx, gy, gh, gc):
        if torch.is_grad_enabled():  # backward(create_graph=True)
            _no_double_backward(ctx)
        _, h0, c0, y, *_ = ctx.saved_tensors  # torch's check for in-place changes
        state = ctx.state
        if state is None:
            raise RuntimeError("fastlstm: this call kept no training state (no input needed a "
                               "gradient when it ran): its backward cannot run")
        dh_shape = state.h0.shape
        dt = state.params.dtype
        dy = np.zeros(y.shape, dt) if gy is None else _np(gy)
        dh = np.zeros(dh_shape, dt) if gh is None else _np(gh)
        dc = np.zeros(state.c0.shape, dt) if gc is None else _np(gc)
        with _single_threaded_blas(), _task_threads():
            dx, dh0, dc0, dparams = _cpu.lstm_backward(state, dy, dh, dc)
        return (torch.from_numpy(dx), None if h0 is None else torch.from_numpy(dh0),
                None if c0 is None else torch.from_numpy(dc0), None, None, None, None,
                *(torch.from_numpy(g) for g in dparams.values()))


class _HostCell(torch.autograd.Function):
    """An ``LSTMCell`` training call on CPU tensors (and an ``LSTM`` one of one step and one
    layer, ``with_y``: h is also returned as the output, a tensor of its own): compiled
    kernels (``kernels/cpu/cell.py``) on the weights as torch stores them, so nothing is
    derived from them per call or per optimizer step. A call of at least
    ``CPUConfig.parallel_min_flop`` (forward and backward) takes its matrix products from
    torch (``Tensor.mm`` on its own threads: faster than SciPy's OpenBLAS at these shapes) and
    only the cell's pointwise work from the kernels. Products whose result no input needs are
    skipped. ``h0``, ``c0`` (B, H) are tensors (zeros when the module got none). The tensors the
    backward reads (inputs, weights and ``c1``) are saved: an in-place change to any of them
    before the backward raises torch's error."""

    @staticmethod
    def forward(ctx, x, h0, c0, with_y, *weights):  # tensors C-contiguous (LSTMCell.forward)
        B, H = c0.shape
        arrays = (x.detach().numpy(), h0.detach().numpy(), c0.detach().numpy())
        dt = arrays[0].dtype
        w = [t.detach().numpy() for t in weights]
        b_ih, b_hh = (w[2], w[3]) if len(w) == 4 else (_NO_BIAS[dt], _NO_BIAS[dt])
        gates = np.empty((B, 4 * H), dt)
        c1, h1 = np.empty((B, H), dt), np.empty((B, H), dt)
        ctx.large = _cell_large(B, arrays[0].shape[1], H)
        if ctx.large:  # autograd is off in here: plain products
            zx = x.mm(weights[0].t()).numpy()[None]
            zh = h0.mm(weights[1].t()).numpy()[None]
            cell_update(zx, zh, b_ih, b_hh, arrays[2], gates, c1, h1)
        else:
            with _single_threaded_blas():
                cell_forward(*arrays, w[0], w[1], b_ih, b_hh, gates, c1, h1)
        h1t, c1t = torch.from_numpy(h1), torch.from_numpy(c1)
        ctx.arrays = arrays + (gates, c1, w[0], w[1])
        ctx.save_for_backward(x, h0, c0, c1t, *weights)
        if with_y:  # an LSTM step's output: h again, its own tensor (as nn.LSTM's y and h_n)
            return h1t, c1t, h1t.clone()
        return h1t, c1t

    @staticmethod
    def backward(ctx, gh, gc, gy=None):
        if torch.is_grad_enabled():  # backward(create_graph=True)
            _no_double_backward(ctx)
        ctx.saved_tensors  # torch's check for in-place changes
        x, h0, c0, gates, c1, w_ih, w_hh = ctx.arrays
        dt = x.dtype
        B, H = c0.shape
        if gy is not None:
            gh = gy if gh is None else gh + gy
        dh1 = np.zeros((B, H), dt) if gh is None else _np(gh)
        dc1 = np.zeros((B, H), dt) if gc is None else _np(gc)
        need = ctx.needs_input_grad  # x, h0, c0, with_y, w_ih, w_hh[, b_ih, b_hh]
        # a product nobody needs gets an output of no rows: the kernel skips it
        dx = np.empty(x.shape if need[0] else (0, x.shape[1]), dt)
        dh0 = np.empty((B if need[1] else 0, H), dt)
        dw_ih = np.empty(w_ih.shape if need[4] else (0, w_ih.shape[1]), dt)
        dw_hh = np.empty(w_hh.shape if need[5] else (0, H), dt)
        dc0, db = np.empty((B, H), dt), np.empty(4 * H, dt)
        if ctx.large:
            dz = aligned_empty(gates.shape, dt)
            cell_dz(gates, c0, c1, dh1, dc1, dz, dc0, db)
            t, dzt = torch.from_numpy, torch.from_numpy(dz)
            for out, a, b in ((dx, dzt, w_ih), (dh0, dzt, w_hh), (dw_ih, dzt.t(), x),
                              (dw_hh, dzt.t(), h0)):
                if out.shape[0]:
                    torch.mm(a, t(b), out=t(out))
        else:
            with _single_threaded_blas():
                cell_backward(x, h0, c0, gates, c1, dh1, dc1, w_ih, w_hh, dx, dh0, dc0, dw_ih,
                              dw_hh, db)
        grads = [torch.from_numpy(g) if g.shape[0] else None for g in (dx, dh0, dc0)]
        grads += [None] + [torch.from_numpy(g) if g.shape[0] else None for g in (dw_ih, dw_hh)]
        if len(need) > 6:  # the two bias vectors
            dbt = torch.from_numpy(db)
            grads += [dbt if need[6] else None, dbt.clone() if need[7] else None]
        return tuple(grads)


def _cell_large(B, I, H) -> bool:
    """Whether a cell's training call takes its products from torch: at least
    ``CPUConfig.parallel_min_flop`` in forward and backward together, two threads."""
    cfg = config.current("cpu")
    return 6.0 * B * 4 * H * (I + H) >= cfg.parallel_min_flop and _cpu.num_threads(cfg) >= 2


_NO_BIAS = {np.dtype(np.float32): np.empty(0, np.float32),
            np.dtype(np.float64): np.empty(0, np.float64)}


def _run(module, weights, dims, x, h0, c0, lengths, masks):
    """``y, h, c`` of a call that may need a backward (time-major ``x``; ``h0``, ``c0`` None
    for zeros; ``lengths`` an int64 tensor or None for all T; ``masks`` (L-1, T, B, D*H_out)
    or None), keeping what the backward needs only when autograd will run one. Eager calls
    on CPU tensors go through :class:`_HostLSTM`; the others (tracing, CUDA, B = 0) through
    the operator."""
    need = _needs_grad(weights, x, h0, c0)
    if x.is_cpu and x.shape[1] > 0 and not torch.compiler.is_compiling():
        params = _params_of(module, weights, dims)
        lens = None if lengths is None else lengths.numpy()
        return _HostLSTM.apply(x.contiguous(), None if h0 is None else h0.contiguous(),
                               None if c0 is None else c0.contiguous(), lens, masks, params,
                               need, *weights)
    T, B, L, D, H, P = _sizes(x, weights, dims)
    if h0 is None:
        h0, c0 = x.new_zeros((L * D, B, P)), x.new_zeros((L * D, B, H))
    lens = torch.full((B,), T, dtype=torch.int64) if lengths is None else lengths
    masks = x.new_empty((0,)) if masks is None else masks
    y, h, c, _ = _lstm(x.contiguous(), h0.contiguous(), c0.contiguous(), lens, masks, weights,
                       dims, need)
    return y, h, c


def _eager_inference(x) -> bool:
    """A call with nothing to record: no autograd, no tracing, host tensors. It runs the CPU
    backend directly (no operator dispatch, no reserve; the step kernel for a few rows)."""
    return x.is_cpu and not torch.compiler.is_compiling()


_module_params: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_data_ptr = torch.Tensor.data_ptr
_version_of = operator.attrgetter("_version")


def _params_of(module, weights, dims) -> LSTMParams:
    """:func:`_params` with a per-module memo checked by the weights' addresses and versions
    (a third of the cost of the shared cache's full key). When only the versions moved (an
    optimizer step writes the tensors in place) and the params are views of the tensors, the
    same params take a new version: their layouts are refilled in place, nothing is rebuilt
    (``LSTMParams._changed_outside``)."""
    ptrs = (*dims, *map(_data_ptr, weights))  # map over C methods: no generator frames
    versions = tuple(map(_version_of, weights))
    memo = _module_params.get(module)
    if memo is not None and memo[0] == ptrs:
        if memo[1] == versions:
            return memo[2]
        if memo[3]:  # views of the same memory: a new version of the same params
            p = memo[2]
            p._changed_outside()
            _module_params[module] = (ptrs, versions, p, True)
            return p
    p = _params(weights, dims)
    views = all(w.device.type == "cpu" and w.is_contiguous() for w in weights)
    _module_params[module] = (ptrs, versions, p, views)
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
