"""CUDA backend: the three phases of each layer on the GPU (``fastlstm.kernels.cuda``), and the
adapter between the caller's arrays and the device.

``forward`` / ``backward`` are called by :func:`fastlstm.forward` / :func:`fastlstm.backward`
when the device resolves to ``"cuda"``. GPU arrays in (numba device arrays, CuPy arrays, torch
CUDA tensors: anything with ``__cuda_array_interface__``, taken zero-copy) give numba device
arrays out; host arrays are validated by the same rules (:mod:`fastlstm.layout`), copied over
and back, and come out as NumPy arrays in the caller's layout. ``lstm_forward`` /
``lstm_backward`` are the backend contract (:mod:`fastlstm.backends`) on device arrays. The GPU
computes in float32 only.

Per layer (time-major ``x`` (T, B, I) on the device)::

    Phase 1  xg (T*B, D*4H) = x (T*B, I) @ W_ih_cat^T + (b_ih + b_hh)      one GEMM, both directions
    Phase 2  recurrence.recurrence_forward: per step, recurrent product fused with the cell
             update (multi-launch), or one persistent cooperative kernel for the whole sequence
    Phase 3  (backward) recurrence.recurrence_backward (sequential gate gradients), then
             dW_ih_cat = dgates^T x, dW_hh = dgates^T h_prev, dW_hr = dhp^T (o*tanh c),
             db = column sums of dgates, dx = dgates @ W_ih_cat: whole-sequence GEMMs

Knobs: :class:`fastlstm.config.CUDAConfig` (recurrence path, persistent batch limit, shared
memory limit, GEMM implementation), read once per call.

This module imports ``numba.cuda`` lazily: importing it never fails for lack of a GPU.
"""
from __future__ import annotations

import numpy as np

from .. import config, dispatch, layout
from .compile_notice import announce_compiles
from .state import LayerState, TrainingState

__all__ = ["forward", "backward", "lstm_forward", "lstm_backward", "is_device_array"]

_F32 = np.dtype(np.float32)


def _cuda():
    from numba import cuda
    return cuda


def _k():
    """The kernel modules (imported on first use)."""
    announce_compiles()
    from ..kernels.cuda import elementwise, gemm, recurrence
    return recurrence, gemm, elementwise


def _simulating() -> bool:
    from ..kernels.cuda.recurrence import _simulating as sim
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
    return layout.check_float(_as_device(a), name)


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
    whatever the caller left there (NaN included) cannot reach dW_ih (``layout.own_kept_input``
    does the same for host caches)."""
    if (lens < xd.shape[0]).any():
        g, b = _launch1(xd.size)
        _k()[2].zero_padding[g, b](xd, lens_d)


def _host(a):
    return _as_device(a).copy_to_host() if (a is not None and is_device_array(a)) else a


def _state_to_device(a, name, shape, spec):
    """h0/c0 (host or GPU, checked by the layout rules) -> a new (L*D, B, .) float32 device array."""
    cuda = _cuda()
    if a is None:
        return _k()[2].zeros(shape)
    if is_device_array(a):
        da = layout.check_state_shape(_device_float(a, name), name, shape, spec)
        out = cuda.device_array(shape, _F32)
        _copy_to(da, out.reshape(spec.user(shape)) if spec.unbatched else out)
        return out
    return cuda.to_device(layout.host_state(a, name, shape, spec, _F32))


def _check_params_f32(params):
    params = layout.check_params(params)
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
    """Per layer, the weights in the layouts the kernels read (uploaded once per params
    version: memoised by ``LSTMParams.derived``)."""
    return params.derived(("cuda", "weights"), lambda: _upload_weights(params))


def _upload_weights(params):
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
    return out


# ---------------------------------------------------------------------------- device compute
def _recurrence_path(cfg: config.CUDAConfig, training: bool, B: int) -> str:
    if cfg.recurrence == "auto":
        return "auto" if (not training and B <= cfg.persistent_max_batch) else "multi"
    return cfg.recurrence


def lstm_forward(x, params, h0, c0, lengths, masks=None, training=False):
    """Multi-layer forward on device arrays (time-major, float32, C-contiguous): the backend
    contract. ``lengths`` (B,) int64 and ``masks`` (None or L-1 arrays (T, B, D*H_out)) are
    device arrays too. Returns ``y, h_n, c_n, state, paths`` (device arrays; ``state`` None
    unless training)."""
    cfg = config.current("cuda")
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
    path = _recurrence_path(cfg, training, B)
    paths = []
    layer_in = x
    saved = []
    for layer in range(L):
        lw = W[layer]
        I_l = layer_in.shape[2]
        xg = cuda.device_array((T, B, D * G), _F32)
        gemm.matmul(layer_in.reshape(T * B, I_l), lw.w_ih, xg.reshape(T * B, D * G),
                    trans_b=True, bias=lw.bias, backend=cfg.gemm)
        y = cuda.device_array((T, B, D * P), _F32)
        gates = cuda.device_array((T, B, D * G), _F32) if training else ph
        cs = cuda.device_array((T, B, D * H), _F32) if training else ph
        sl = slice(layer * D, (layer + 1) * D)
        paths.append(rec.recurrence_forward(xg, lw.w_hh_t, lw.w_hr_t, h0[sl], c0[sl], lengths, y,
                                            h_n[sl], c_n[sl], gates, cs, hh, training, path,
                                            cfg.persistent_smem_limit))
        del xg
        if training:
            saved.append(LayerState(x=layer_in, y=y, gates=(gates,), cells=(cs,)))
        if masks is not None and layer < L - 1:
            nxt = cuda.device_array(y.shape, _F32)
            g, b = _launch1(T * B * D * P)
            ew.mul3[g, b](y, masks[layer], nxt)
            layer_in = nxt
        else:
            layer_in = y
    state = None
    if training:
        state = TrainingState("cuda", params, params.version, tuple(saved), h0, c0, lengths,
                              tuple(masks) if masks is not None else (), tuple(paths))
    return layer_in, h_n, c_n, state, tuple(paths)


def lstm_backward(state, dy, dh_n, dc_n):
    """Full backward on device arrays from a training ``state``: the backend contract.

    ``dy`` (T, B, D*H_out), ``dh_n`` (L*D, B, H_out), ``dc_n`` (L*D, B, H) (device, float32).
    Returns ``dx`` (T, B, I), ``dh0``, ``dc0`` (device) and ``dparams`` (NumPy, PyTorch's names
    and order).
    """
    cfg = config.current("cuda")
    cuda = _cuda()
    rec, gemm, ew = _k()
    params = state.params
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    G = 4 * H
    T, B = dy.shape[0], dy.shape[1]
    TB = T * B
    lengths, masks, h0, c0 = state.lengths, state.masks, state.h0, state.c0
    W = _device_weights(params)
    has_proj = P != H
    dh0 = cuda.device_array((L * D, B, P), _F32)
    dc0 = cuda.device_array((L * D, B, H), _F32)
    ph = cuda.device_array((1, 1, 1), _F32)
    per_layer = [None] * L
    dy_layer = dy

    def mm(*args, **kw):
        gemm.matmul(*args, backend=cfg.gemm, **kw)

    for layer in reversed(range(L)):
        lw = W[layer]
        sv = state.layers[layer]
        x_l, y_l, gates, cs = sv.x, sv.y, sv.gates[0], sv.cells[0]
        I_l = x_l.shape[2]
        sl = slice(layer * D, (layer + 1) * D)
        dgates = cuda.device_array((T, B, D * G), _F32)
        dhp = cuda.device_array((T, B, D * P), _F32) if has_proj else ph
        rec.recurrence_backward(dy_layer, gates, cs, c0[sl], dh_n[sl], dc_n[sl],
                                lw.w_hh, lw.w_hr, lengths, dgates, dhp, dh0[sl], dc0[sl])
        dg2 = dgates.reshape(TB, D * G)
        x2 = x_l.reshape(TB, I_l)
        dw_ih = cuda.device_array((D * G, I_l), _F32)
        mm(dg2, x2, dw_ih, trans_a=True)
        hprev = cuda.device_array((T, B, D * P), _F32)
        g, b = _launch1(TB * D * P)
        ew.build_hprev[g, b](y_l, h0[sl], lengths, hprev)
        hprev2 = hprev.reshape(TB, D * P)
        dw_hh = []
        for d in range(D):
            out = cuda.device_array((G, P), _F32)
            mm(dg2[:, d * G:(d + 1) * G], hprev2[:, d * P:(d + 1) * P], out, trans_a=True)
            dw_hh.append(out)
        db = gemm.column_sums(dg2) if lw.bias is not None else None
        dw_hr = []
        if has_proj:
            hh = cuda.device_array((T, B, D * H), _F32)
            g, b = _launch1(TB * D * H)
            ew.out_tanh[g, b](gates, cs, H, hh)
            hh2 = hh.reshape(TB, D * H)
            dhp2 = dhp.reshape(TB, D * P)
            for d in range(D):
                out = cuda.device_array((P, H), _F32)
                mm(dhp2[:, d * P:(d + 1) * P], hh2[:, d * H:(d + 1) * H], out, trans_a=True)
                dw_hr.append(out)
        dx = cuda.device_array((T, B, I_l), _F32)
        mm(dg2, lw.w_ih, dx.reshape(TB, I_l))
        if layer > 0 and masks:
            g, b = _launch1(TB * I_l)
            ew.mul3[g, b](dx, masks[layer - 1], dx)
        # to the host
        dw_ih_h = dw_ih.copy_to_host()
        db_h = db.copy_to_host() if db is not None else None
        per_layer[layer] = [
            (np.ascontiguousarray(dw_ih_h[d * G:(d + 1) * G]), dw_hh[d].copy_to_host(),
             None if db_h is None else db_h[d * G:(d + 1) * G].copy(),
             dw_hr[d].copy_to_host() if has_proj else None)
            for d in range(D)]
        dy_layer = dx
    return dy_layer, dh0, dc0, params.named_grads(per_layer)


# ---------------------------------------------------------------------------- API entry points
def _device_inputs(x, params, h0, c0, lengths, batch_first, training, dropout, seed):
    """Validate (the layout rules) and bring every input to the device, time-major: GPU
    arrays without a trip to the host, host arrays by copy."""
    cuda = _cuda()
    on_device = is_device_array(x)
    xa = _device_float(x, "x") if on_device else layout.float_host(x, "x")
    spec = layout.check_call(xa, params, batch_first=batch_first, training=training,
                             dropout=dropout)
    _check_gpu_memory(layout.estimate_bytes(params, spec.T, spec.B, spec.training)
                      + spec.T * spec.B * spec.I * 4, f"a forward of {spec.T}x{spec.B} steps")
    layout.check_states(h0, c0)
    h0d = _state_to_device(h0, "h0", spec.h_shape, spec)
    c0d = _state_to_device(c0, "c0", spec.c_shape, spec)
    lens = layout.check_lengths(_host(lengths), spec.B, spec.T)
    if on_device:
        xt = _time_major(xa, spec.batch_first, spec.unbatched, copy=spec.training)
    else:  # the cache owns its copy whatever the caller does with x
        xt = cuda.to_device(np.ascontiguousarray(layout.time_major_view(xa, spec), dtype=_F32))
    lens_d = cuda.to_device(lens)
    if spec.training:
        _zero_padding(xt, lens_d, lens)
    masks = None
    if spec.training:
        hm = layout.dropout_masks(params, spec.T, spec.B, spec.dropout, seed)
        masks = None if hm is None else [cuda.to_device(m) for m in hm]
    return spec, on_device, xt, h0d, c0d, lens_d, masks


def forward(x, params, h0=None, c0=None, *, lengths=None, batch_first=False, training=False,
            dropout=0.0, seed=None) -> layout.ForwardResult:
    """:func:`fastlstm.forward` on the GPU (same arguments and results; see the module docstring)."""
    params = _check_params_f32(params)
    cuda = _cuda()
    spec, on_device, xt, h0d, c0d, lens_d, masks = _device_inputs(
        x, params, h0, c0, lengths, batch_first, training, dropout, seed)
    T, B = spec.T, spec.B
    if B == 0:
        y, h, c, state, paths = cuda.device_array(spec.y_shape, _F32), h0d, c0d, None, ()
        if spec.training:
            state = TrainingState("cuda", params, params.version, (), h0d, c0d, lens_d)
    else:
        y, h, c, state, paths = lstm_forward(xt, params, h0d, c0d, lens_d, masks, spec.training)
    if not on_device:
        res = layout.host_result("cuda", y.copy_to_host(), h.copy_to_host(), c.copy_to_host(),
                                 state, paths, spec)
        return res
    F = spec.y_shape[2]
    if spec.unbatched:
        y_out = y.reshape(T, F)
        h, c = h.reshape(spec.user(spec.h_shape)), c.reshape(spec.user(spec.c_shape))
    elif spec.batch_first:
        y_out = _copy_to(y, cuda.device_array((B, T, F), _F32), swap01=True)
    else:
        y_out = y
    cache = None
    if state is not None:
        if not spec.batch_first and B > 0:
            y_out = _dcopy(y).reshape(y_out.shape)  # the caller owns y; the cache keeps its own
        cache = layout.make_cache("cuda", state, spec, _F32, on_device=True)
    _finish_on_device()
    return layout.ForwardResult(y_out, h, c, cache, tuple(paths))


def _grad_to_device(a, name, user_shape, tm_shape, spec, is_y):
    """A gradient in the caller's layout (host or GPU; None = zero) -> a new time-major
    float32 device array."""
    cuda = _cuda()
    if a is None:
        return _k()[2].zeros(tm_shape)
    if is_device_array(a):
        da = layout.check_grad_shape(_device_float(a, name), name, user_shape)
        out = cuda.device_array(tm_shape, _F32)
        if spec.unbatched:
            _copy_to(da, out.reshape(user_shape))
        else:
            _copy_to(da, out, swap01=bool(is_y and spec.batch_first))
        return out
    arr = layout.check_grad_shape(layout.float_host(a, name), name, user_shape)
    arr = layout.time_major_view(arr, spec) if is_y else arr.reshape(tm_shape)
    return cuda.to_device(np.ascontiguousarray(arr, dtype=_F32))


def backward(cache, dy=None, dh=None, dc=None) -> layout.BackwardResult:
    """:func:`fastlstm.backward` for a cache of a CUDA forward."""
    if not isinstance(cache, layout.LSTMCache) or cache.device != "cuda":
        raise TypeError("backward needs the cache of a CUDA training forward: "
                        "forward(..., training=True, device='cuda').cache")
    st = cache.state
    spec = layout.cache_spec(cache)
    T, B, I = spec.T, spec.B, spec.I
    dyd = _grad_to_device(dy, "dy", spec.user_y_shape, spec.y_shape, spec, True)
    dhd = _grad_to_device(dh, "dh", spec.user(spec.h_shape), spec.h_shape, spec, False)
    dcd = _grad_to_device(dc, "dc", spec.user(spec.c_shape), spec.c_shape, spec, False)
    if not st.layers:  # an empty batch: every gradient is zero
        p = st.params
        dx = _cuda().device_array((T, 0, I), _F32)
        dh0, dc0 = _k()[2].zeros(spec.h_shape), _k()[2].zeros(spec.c_shape)
        dparams = {name: np.zeros_like(p[name]) for name in p.keys()}
    else:
        dx, dh0, dc0, dparams = lstm_backward(st, dyd, dhd, dcd)
    if not cache.on_device:
        return layout.host_backward_result(cache, dx.copy_to_host(), dh0.copy_to_host(),
                                           dc0.copy_to_host(), dparams)
    if spec.unbatched:
        dx = dx.reshape(T, I)
        dh0, dc0 = dh0.reshape(spec.user(spec.h_shape)), dc0.reshape(spec.user(spec.c_shape))
    elif spec.batch_first:
        dx = _copy_to(dx, _cuda().device_array((B, T, I), _F32), swap01=True)
    _finish_on_device()
    return layout.BackwardResult(dx, dh0, dc0, dparams)
