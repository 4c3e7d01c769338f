"""CUDA backend: the three phases of each layer on the GPU, and the API entry points.

``forward`` / ``backward`` are called by :func:`fastlstm.forward` / :func:`fastlstm.backward`
when the device resolves to ``"cuda"``. GPU arrays in (numba device arrays, CuPy arrays, torch
CUDA tensors: anything with ``__cuda_array_interface__``, taken zero-copy) give numba device
arrays out; host arrays are validated by :func:`fastlstm.api.prepare_host_inputs`, copied over
and back, and come out as NumPy arrays in the caller's layout. The GPU computes in float32
only.

Per layer (time-major ``x`` (T, B, I) on the device)::

    Phase 1  xg (T*B, D*4H) = x (T*B, I) @ W_ih_cat^T + (b_ih + b_hh)      one GEMM, both directions
    Phase 2  recurrence.recurrence_forward: per step, recurrent product fused with the cell
             update (multi-launch), or one persistent cooperative kernel for the whole sequence
    Phase 3  (backward) recurrence.recurrence_backward (sequential gate gradients), then
             dW_ih_cat = dgates^T x, dW_hh = dgates^T h_prev, dW_hr = dhp^T (o*tanh c),
             db = column sums of dgates, dx = dgates @ W_ih_cat: whole-sequence GEMMs

Switches (module attributes, initial values from the environment):

``RECURRENCE`` (``FASTLSTM_CUDA_RECURRENCE``): ``"auto"`` (persistent kernel for inference with
at most ``PERSISTENT_MAX_BATCH`` sequences when the GPU supports cooperative launch and W_hh fits
on chip, else multi-launch), ``"multi"`` or ``"persistent"`` (forced, also in training).
``gemm.GEMM_BACKEND`` (``FASTLSTM_CUDA_GEMM``): ``"auto"`` (cuBLAS through CuPy when importable),
``"numba"`` or ``"cupy"``.

This module imports ``numba.cuda`` lazily: importing it never fails for lack of a GPU.
"""
from __future__ import annotations

import os
import weakref

import numpy as np

from fastlstm import api, dispatch

__all__ = ["forward", "backward", "lstm_forward", "lstm_backward", "RECURRENCE",
           "PERSISTENT_MAX_BATCH", "last_paths"]

RECURRENCE = os.environ.get("FASTLSTM_CUDA_RECURRENCE", "auto")
PERSISTENT_MAX_BATCH = 16
#: The recurrence path each layer of the last forward ran ("multi" or "persistent").
last_paths: list = []

_F32 = np.dtype(np.float32)
_WEIGHTS = weakref.WeakKeyDictionary()  # LSTMParams -> per-layer device weights


def _cuda():
    from numba import cuda
    return cuda


def _k():
    """The kernel modules (imported on first use)."""
    from . import elementwise, gemm, recurrence
    return recurrence, gemm, elementwise


def _simulating() -> bool:
    from .recurrence import _simulating as sim
    return sim()


# ---------------------------------------------------------------------------- arrays
def is_device_array(a) -> bool:
    """A GPU array (``__cuda_array_interface__``), or a simulator device array."""
    if dispatch.is_gpu_array(a):
        return True
    return type(a).__name__ == "FakeCUDAArray" and _simulating()


def _as_device(a):
    if type(a).__name__ == "FakeCUDAArray":
        return a
    return _cuda().as_cuda_array(a)


def _device_float(a, name):
    da = _as_device(a)
    if np.dtype(da.dtype).kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {np.dtype(da.dtype)}")
    return da


def _launch1(n):
    return _k()[2].launch_1d(n)


def _copy_to(src, dst, swap01=False):
    """Copy (with a cast and optional swap of the first two axes) into a new-layout array."""
    ew = _k()[2]
    n = int(np.prod(dst.shape))
    if n == 0:
        return dst
    g, b = _launch1(n)
    if len(dst.shape) == 2:
        ew.copy2[g, b](src, dst)
    else:
        ew.copy3[g, b](src, dst, bool(swap01))
    return dst


def _dcopy(a):
    out = _cuda().device_array(a.shape, _F32)
    out.copy_to_device(a)
    return out


def _finish_on_device():
    """Wait for this call's kernels before handing device arrays back.

    Our kernels run on the legacy default stream and numba's arrays export no stream in
    ``__cuda_array_interface__``, so a consumer on a non-blocking stream (PyTorch's side
    streams, a non-blocking CuPy stream) would not be ordered after them. One host wait per
    call (never per step).
    """
    _cuda().default_stream().synchronize()


def _is_c_contiguous(a) -> bool:
    try:
        return bool(a.is_c_contiguous())
    except AttributeError:  # pragma: no cover
        return False


def _time_major(da, batch_first, unbatched, copy):
    """(T, B, I) C-contiguous float32 device array from a validated x (view when possible)."""
    cuda = _cuda()
    if unbatched:
        T, I = da.shape
        if da.dtype == _F32 and _is_c_contiguous(da) and not copy:
            return da.reshape(T, 1, I)
        out = cuda.device_array((T, 1, I), _F32)
        _copy_to(da, out.reshape(T, I))
        return out
    if batch_first:
        B, T, I = da.shape
        return _copy_to(da, cuda.device_array((T, B, I), _F32), swap01=True)
    if da.dtype == _F32 and _is_c_contiguous(da) and not copy:
        return da
    return _copy_to(da, cuda.device_array(da.shape, _F32))


def _zero_padding(xd, lens_d, lens):
    """Zero the steps past each sequence's length in the cache's own device copy of x, so that
    whatever the caller left there (NaN included) cannot reach dW_ih (``api.own_kept_input``
    does the same for host caches)."""
    if (lens < xd.shape[0]).any():
        g, b = _launch1(xd.size)
        _k()[2].zero_padding[g, b](xd, lens_d)


def _host(a):
    return _as_device(a).copy_to_host() if (a is not None and is_device_array(a)) else a


def _state_to_device(a, name, shape, unbatched):
    """h0/c0 (host or GPU) validated like the CPU path -> a new (L*D, B, .) float32 device array."""
    cuda = _cuda()
    want = (shape[0], shape[2]) if unbatched else shape
    if is_device_array(a):
        da = _device_float(a, name)
        if tuple(da.shape) != want:
            raise ValueError(f"{name} must have shape {want}, got {tuple(da.shape)}")
        out = cuda.device_array(shape, _F32)
        _copy_to(da, out.reshape(want) if unbatched else out)
        return out
    arr = api._check_state(a, name, shape, unbatched)
    return cuda.to_device(np.ascontiguousarray(arr.reshape(shape), dtype=_F32))


def _check_params_f32(params):
    params = api._check_params(params)
    if params.dtype != _F32:
        raise TypeError(
            f"the CUDA backend computes in float32 only, but the parameters are {params.dtype.name}; "
            "convert them with params.astype(np.float32)")
    return params


def _check_gpu_memory(nbytes: int, what: str) -> None:
    if _simulating():
        return
    try:
        free, _total = _cuda().current_context().get_memory_info()
    except Exception:  # pragma: no cover
        return
    if nbytes > free:
        raise MemoryError(f"{what} would need {nbytes / 2**30:.1f} GiB of GPU memory, "
                          f"more than the {free / 2**30:.1f} GiB free")


# ---------------------------------------------------------------------------- weights
class _LayerWeights:
    __slots__ = ("w_ih", "bias", "w_hh_t", "w_hh", "w_hr_t", "w_hr")


def _device_weights(params):
    """Per layer, the weights in the layouts the kernels read (uploaded once per params)."""
    try:
        return _WEIGHTS[params]
    except (KeyError, TypeError):
        pass
    cuda = _cuda()
    D = params.num_directions
    out = []
    for layer in range(params.num_layers):
        ws = [params.layer_weights(layer, d) for d in range(D)]
        lw = _LayerWeights()
        lw.w_ih = cuda.to_device(np.ascontiguousarray(np.concatenate([w[0] for w in ws], axis=0)))
        lw.bias = None if ws[0][2] is None else cuda.to_device(
            np.concatenate([w[2] + w[3] for w in ws]).astype(_F32))
        lw.w_hh = cuda.to_device(np.ascontiguousarray(np.stack([w[1] for w in ws])))
        lw.w_hh_t = cuda.to_device(np.ascontiguousarray(np.stack([w[1].T for w in ws])))
        if params.proj_size > 0:
            lw.w_hr = cuda.to_device(np.ascontiguousarray(np.stack([w[4] for w in ws])))
            lw.w_hr_t = cuda.to_device(np.ascontiguousarray(np.stack([w[4].T for w in ws])))
        else:
            lw.w_hr = lw.w_hr_t = cuda.device_array((1, 1, 1), _F32)
        out.append(lw)
    try:
        _WEIGHTS[params] = out
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    return out


# ---------------------------------------------------------------------------- device compute
def _recurrence_path(training: bool, B: int) -> str:
    choice = RECURRENCE
    if choice not in ("auto", "multi", "persistent"):
        raise ValueError(f"RECURRENCE must be 'auto', 'multi' or 'persistent', got {choice!r}")
    if choice == "auto":
        return "auto" if (not training and B <= PERSISTENT_MAX_BATCH) else "multi"
    return choice


def lstm_forward_device(x, params, h0, c0, lengths, masks, training):
    """Multi-layer forward on device arrays (time-major, float32, C-contiguous).

    ``x`` (T, B, I), ``h0`` (L*D, B, H_out), ``c0`` (L*D, B, H), ``lengths`` (B,) int64 device
    array, ``masks`` None or L-1 device arrays (T, B, D*H_out). Returns ``y, h_n, c_n, state``
    (device arrays; ``state`` None unless training).
    """
    cuda = _cuda()
    rec, gemm, ew = _k()
    T, B, _ = x.shape
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    G = 4 * H
    W = _device_weights(params)
    h_n = cuda.device_array((L * D, B, P), _F32)
    c_n = cuda.device_array((L * D, B, H), _F32)
    ph = cuda.device_array((1, 1, 1), _F32)
    hh = cuda.device_array((D, B, H), _F32) if P != H else ph
    path = _recurrence_path(training, B)
    paths = []
    layer_in = x
    saved = []
    for layer in range(L):
        lw = W[layer]
        I_l = layer_in.shape[2]
        xg = cuda.device_array((T, B, D * G), _F32)
        gemm.matmul(layer_in.reshape(T * B, I_l), lw.w_ih, xg.reshape(T * B, D * G),
                    trans_b=True, bias=lw.bias)
        y = cuda.device_array((T, B, D * P), _F32)
        gates = cuda.device_array((T, B, D * G), _F32) if training else ph
        cs = cuda.device_array((T, B, D * H), _F32) if training else ph
        sl = slice(layer * D, (layer + 1) * D)
        paths.append(rec.recurrence_forward(xg, lw.w_hh_t, lw.w_hr_t, h0[sl], c0[sl], lengths, y,
                                            h_n[sl], c_n[sl], gates, cs, hh, training, path))
        del xg
        if training:
            saved.append(dict(x=layer_in, y=y, gates=gates, cs=cs))
        if masks is not None and layer < L - 1:
            nxt = cuda.device_array(y.shape, _F32)
            g, b = _launch1(T * B * D * P)
            ew.mul3[g, b](y, masks[layer], nxt)
            layer_in = nxt
        else:
            layer_in = y
    last_paths[:] = paths
    state = None
    if training:
        state = dict(params=params, layers=saved, h0=h0, c0=c0, lengths=lengths, masks=masks,
                     T=T, B=B)
    return layer_in, h_n, c_n, state


def lstm_backward_device(state, dy, dh_n, dc_n):
    """Full backward on device arrays from a training ``state``.

    ``dy`` (T, B, D*H_out), ``dh_n`` (L*D, B, H_out), ``dc_n`` (L*D, B, H) (device, float32).
    Returns ``dx`` (T, B, I), ``dh0``, ``dc0`` (device) and ``dparams`` (NumPy, PyTorch's names
    and order).
    """
    cuda = _cuda()
    rec, gemm, ew = _k()
    params = state["params"]
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    G = 4 * H
    T, B = state["T"], state["B"]
    TB = T * B
    lengths, masks, h0, c0 = state["lengths"], state["masks"], state["h0"], state["c0"]
    W = _device_weights(params)
    has_proj = P != H
    dh0 = cuda.device_array((L * D, B, P), _F32)
    dc0 = cuda.device_array((L * D, B, H), _F32)
    ph = cuda.device_array((1, 1, 1), _F32)
    dparams = {}
    dy_layer = dy
    for layer in reversed(range(L)):
        lw = W[layer]
        sv = state["layers"][layer]
        x_l, y_l = sv["x"], sv["y"]
        I_l = x_l.shape[2]
        sl = slice(layer * D, (layer + 1) * D)
        dgates = cuda.device_array((T, B, D * G), _F32)
        dhp = cuda.device_array((T, B, D * P), _F32) if has_proj else ph
        rec.recurrence_backward(dy_layer, sv["gates"], sv["cs"], c0[sl], dh_n[sl], dc_n[sl],
                                lw.w_hh, lw.w_hr, lengths, dgates, dhp, dh0[sl], dc0[sl])
        dg2 = dgates.reshape(TB, D * G)
        x2 = x_l.reshape(TB, I_l)
        dw_ih = cuda.device_array((D * G, I_l), _F32)
        gemm.matmul(dg2, x2, dw_ih, trans_a=True)
        hprev = cuda.device_array((T, B, D * P), _F32)
        g, b = _launch1(TB * D * P)
        ew.build_hprev[g, b](y_l, h0[sl], lengths, hprev)
        hprev2 = hprev.reshape(TB, D * P)
        dw_hh = []
        for d in range(D):
            out = cuda.device_array((G, P), _F32)
            gemm.matmul(dg2[:, d * G:(d + 1) * G], hprev2[:, d * P:(d + 1) * P], out, trans_a=True)
            dw_hh.append(out)
        db = gemm.column_sums(dg2) if lw.bias is not None else None
        dw_hr = []
        if has_proj:
            hh = cuda.device_array((T, B, D * H), _F32)
            g, b = _launch1(TB * D * H)
            ew.out_tanh[g, b](sv["gates"], sv["cs"], H, hh)
            hh2 = hh.reshape(TB, D * H)
            dhp2 = dhp.reshape(TB, D * P)
            for d in range(D):
                out = cuda.device_array((P, H), _F32)
                gemm.matmul(dhp2[:, d * P:(d + 1) * P], hh2[:, d * H:(d + 1) * H], out,
                            trans_a=True)
                dw_hr.append(out)
        dx = cuda.device_array((T, B, I_l), _F32)
        gemm.matmul(dg2, lw.w_ih, dx.reshape(TB, I_l))
        if layer > 0 and masks is not None:
            g, b = _launch1(TB * I_l)
            ew.mul3[g, b](dx, masks[layer - 1], dx)
        # to the host, under PyTorch's names
        dw_ih_h = dw_ih.copy_to_host()
        db_h = db.copy_to_host() if db is not None else None
        for d in range(D):
            s = f"_l{layer}{params.suffix(d)}"
            dparams["weight_ih" + s] = np.ascontiguousarray(dw_ih_h[d * G:(d + 1) * G])
            dparams["weight_hh" + s] = dw_hh[d].copy_to_host()
            if db_h is not None:
                dparams["bias_ih" + s] = db_h[d * G:(d + 1) * G].copy()
                dparams["bias_hh" + s] = db_h[d * G:(d + 1) * G].copy()
            if has_proj:
                dparams["weight_hr" + s] = dw_hr[d].copy_to_host()
        dy_layer = dx
    ordered = {name: dparams[name] for name in params.keys()}
    return dy_layer, dh0, dc0, ordered


def lstm_forward(x, params, h0, c0, lengths, masks=None, training=False):
    """The backend contract of ``fastlstm.dispatch`` on normalised host arrays (as the CPU
    backend's ``lstm_forward``): NumPy in, NumPy ``y, h_n, c_n`` out, plus a device ``state``."""
    params = _check_params_f32(params)
    cuda = _cuda()
    f = lambda a: cuda.to_device(np.ascontiguousarray(a, dtype=_F32))  # noqa: E731
    dmasks = None if masks is None else [f(m) for m in masks]
    y, h, c, state = lstm_forward_device(f(x), params, f(h0), f(c0),
                                         cuda.to_device(np.ascontiguousarray(lengths, np.int64)),
                                         dmasks, bool(training))
    if state is not None:
        state["gpu_io"] = False
    return y.copy_to_host(), h.copy_to_host(), c.copy_to_host(), state


def lstm_backward(state, dy, dh_n, dc_n):
    """The backend contract's ``lstm_backward`` on normalised host arrays: NumPy out."""
    cuda = _cuda()
    f = lambda a: cuda.to_device(np.ascontiguousarray(a, dtype=_F32))  # noqa: E731
    dx, dh0, dc0, dparams = lstm_backward_device(state, f(dy), f(dh_n), f(dc_n))
    return dx.copy_to_host(), dh0.copy_to_host(), dc0.copy_to_host(), dparams


# ---------------------------------------------------------------------------- API entry points
def forward(x, params, h0=None, c0=None, *, lengths=None, batch_first=False, training=False,
            dropout=0.0, seed=None) -> api.ForwardResult:
    """:func:`fastlstm.forward` on the GPU (same arguments and results; see the module docstring)."""
    params = _check_params_f32(params)
    cuda = _cuda()
    if not is_device_array(x):
        prep = api.prepare_host_inputs(x, params, _host(h0), _host(c0), lengths=_host(lengths),
                                       batch_first=batch_first, training=training,
                                       dropout=dropout, seed=seed)
        T, B, _ = prep.x.shape
        masks = None if prep.masks is None else [cuda.to_device(m) for m in prep.masks]
        xd, lens_d = cuda.to_device(prep.x), cuda.to_device(prep.lengths)
        if prep.training:
            _zero_padding(xd, lens_d, prep.lengths)
        y, h, c, state = lstm_forward_device(
            xd, params, cuda.to_device(prep.h0), cuda.to_device(prep.c0), lens_d, masks,
            prep.training)
        if state is not None:
            state["gpu_io"] = False
        return api.finish_forward("cuda", y.copy_to_host(), h.copy_to_host(), c.copy_to_host(),
                                  state, prep)
    # GPU input: the CPU path's validation rules, without copying x to the host.
    dropout = api.check_training_and_dropout(training, dropout)
    training = bool(training)
    xa = _device_float(x, "x")
    shape = tuple(xa.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"x must be 2-D (T, I) unbatched or 3-D (T, B, I)/(B, T, I), got "
                         f"{len(shape)}-D shape {shape}")
    unbatched = len(shape) == 2
    if unbatched:
        (T, I), B = shape, 1
    elif batch_first:
        B, T, I = shape
    else:
        T, B, I = shape
    if T == 0 or B == 0:
        raise ValueError(f"x must have at least one step and one sequence, got shape {shape}")
    if I != params.input_size:
        raise ValueError(f"x has {I} features per step but params.input_size is {params.input_size}")
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    _check_gpu_memory(api._estimate_bytes(params, T, B, training) + T * B * I * 4,
                      f"a forward of {T}x{B} steps")
    h_shape, c_shape = (L * D, B, P), (L * D, B, H)
    if c0 is not None and h0 is None:
        raise ValueError("c0 was given without h0; pass both (or h0 alone, with c0 = 0)")
    ew = _k()[2]
    h0d = ew.zeros(h_shape) if h0 is None else _state_to_device(h0, "h0", h_shape, unbatched)
    c0d = ew.zeros(c_shape) if c0 is None else _state_to_device(c0, "c0", c_shape, unbatched)
    lens = api._check_lengths(_host(lengths), B, T)
    xt = _time_major(xa, bool(batch_first), unbatched, copy=training)
    lens_d = cuda.to_device(lens)
    if training:
        _zero_padding(xt, lens_d, lens)
    masks = None
    if training:
        hm = api._dropout_masks(params, T, B, dropout, seed)
        masks = None if hm is None else [cuda.to_device(m) for m in hm]
    y, h, c, state = lstm_forward_device(xt, params, h0d, c0d, lens_d, masks, training)
    if unbatched:
        y_out = y.reshape(T, D * P)
        h, c = h.reshape(L * D, P), c.reshape(L * D, H)
    elif batch_first:
        y_out = _copy_to(y, cuda.device_array((B, T, D * P), _F32), swap01=True)
    else:
        y_out = y
    cache = None
    if state is not None:
        if not batch_first:
            y_out = _dcopy(y).reshape(y_out.shape)  # the caller owns y; the cache keeps its own
        state["gpu_io"] = True
        cache = api.LSTMCache("cuda", state, bool(batch_first), unbatched, shape,
                              tuple(y_out.shape), h_shape, c_shape, _F32)
    _finish_on_device()
    return api.ForwardResult(y_out, h, c, cache)


def _grad_to_device(a, name, user_shape, tm_shape, batch_first, unbatched, is_y):
    """A gradient in the caller's layout (host or GPU) -> a new time-major float32 device array."""
    cuda = _cuda()
    if is_device_array(a):
        da = _device_float(a, name)
        if tuple(da.shape) != tuple(user_shape):
            raise ValueError(f"{name} must have shape {tuple(user_shape)} (the shape of the "
                             f"output), got {tuple(da.shape)}")
        out = cuda.device_array(tm_shape, _F32)
        if unbatched:
            _copy_to(da, out.reshape(user_shape))
        else:
            _copy_to(da, out, swap01=bool(is_y and batch_first))
        return out
    arr = api._grad(a, name, user_shape)
    if unbatched:
        arr = arr.reshape(tm_shape)
    elif is_y and batch_first:
        arr = arr.transpose(1, 0, 2)
    return cuda.to_device(np.ascontiguousarray(arr, dtype=_F32))


def backward(cache, dy=None, dh=None, dc=None) -> api.BackwardResult:
    """:func:`fastlstm.backward` for a cache of a CUDA forward."""
    if not isinstance(cache, api.LSTMCache) or cache.device != "cuda":
        raise TypeError("backward needs the cache of a CUDA training forward: "
                        "forward(..., training=True, device='cuda').cache")
    st = cache.state
    T, B = st["T"], st["B"]
    L_D, _, P = cache.h_shape
    H = cache.c_shape[2]
    DP = cache.y_shape[-1]
    ub, bf = cache.unbatched, cache.batch_first
    user_h = (L_D, P) if ub else cache.h_shape
    user_c = (L_D, H) if ub else cache.c_shape
    ew = _k()[2]
    dyd = ew.zeros((T, B, DP)) if dy is None else _grad_to_device(
        dy, "dy", cache.y_shape, (T, B, DP), bf, ub, True)
    dhd = ew.zeros(cache.h_shape) if dh is None else _grad_to_device(
        dh, "dh", user_h, cache.h_shape, bf, ub, False)
    dcd = ew.zeros(cache.c_shape) if dc is None else _grad_to_device(
        dc, "dc", user_c, cache.c_shape, bf, ub, False)
    dx, dh0, dc0, dparams = lstm_backward_device(st, dyd, dhd, dcd)
    I = dx.shape[2]
    if ub:
        dx, dh0, dc0 = dx.reshape(T, I), dh0.reshape(user_h), dc0.reshape(user_c)
    elif bf:
        dx = _copy_to(dx, _cuda().device_array((B, T, I), _F32), swap01=True)
    if not st["gpu_io"]:
        dx, dh0, dc0 = dx.copy_to_host(), dh0.copy_to_host(), dc0.copy_to_host()
    else:
        _finish_on_device()
    return api.BackwardResult(dx, dh0, dc0, dparams)
