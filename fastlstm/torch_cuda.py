"""The CUDA half of :mod:`fastlstm.torch`'s operators: CUDA tensors go to the numba.cuda
backend through ``__cuda_array_interface__`` (float32), on the same device memory; results come
back as CUDA tensors, never via the host."""
from __future__ import annotations

import numpy as np
import torch

from .backends.state import LayerState, TrainingState
from .torch_ops import _params, _reserve_numel, _sizes

__all__ = ["cuda_forward", "cuda_backward"]


def _dev(t):
    from numba import cuda
    return cuda.as_cuda_array(t.detach().contiguous())


def cuda_forward(x, h0, c0, lengths, masks, weights, dims, training):
    """The op on CUDA tensors: the numba.cuda backend on the same device memory (float32)."""
    from .backends import cuda as _cuda_backend
    T, B, L, D, H, P = _sizes(x, weights, dims)
    params = _params(weights, dims)
    torch.cuda.current_stream().synchronize()  # our kernels run on numba's stream
    mask_list = [_dev(m) for m in masks] if masks.numel() else None
    y, h, c, state, _ = _cuda_backend.lstm_forward(_dev(x), params, _dev(h0), _dev(c0),
                                                   _dev(lengths.to(x.device)), mask_list, training)
    y_t, h_t, c_t = (torch.as_tensor(a, device=x.device).clone() for a in (y, h, c))
    reserve = x.new_empty((_reserve_numel(T, B, L, D, H, P) if training else 0,))
    if training:
        off = 0
        for layer in range(L):
            lay = state.layers[layer]
            pieces = ([lay.y] if layer < L - 1 else []) + [lay.gates[0], lay.cells[0]]
            for a in pieces:
                t = torch.as_tensor(a, device=x.device).reshape(-1)
                reserve[off:off + t.numel()] = t
                off += t.numel()
    from numba import cuda
    cuda.default_stream().synchronize()
    return y_t, h_t, c_t, reserve


def cuda_backward(x, h0, c0, lengths, masks, weights, dims, y, reserve, dy, dh, dc):
    from numba import cuda

    from .backends import cuda as _cuda_backend
    T, B, L, D, H, P = _sizes(x, weights, dims)
    params = _params(weights, dims)
    torch.cuda.current_stream().synchronize()
    mask_list = tuple(_dev(m) for m in masks) if masks.numel() else ()
    layers, layer_in, off = [], _dev(x), 0

    def take(shape):
        nonlocal off
        n = int(np.prod(shape))
        part = _dev(reserve[off:off + n].reshape(shape))
        off += n
        return part

    ys = []
    for layer in range(L):
        y_l = take((T, B, D * P)) if layer < L - 1 else _dev(y)
        gates, cells = take((T, B, D * 4 * H)), take((T, B, D * H))
        layers.append(LayerState(x=layer_in, y=y_l, gates=(gates,), cells=(cells,)))
        ys.append(y_l)
        if layer < L - 1:
            nxt = torch.as_tensor(y_l, device=x.device)
            if mask_list:
                nxt = nxt * masks[layer]
            layer_in = _dev(nxt)
    state = TrainingState("cuda", params, params.version, tuple(layers), _dev(h0), _dev(c0),
                          _dev(lengths.to(x.device)), mask_list, ("multi",) * L)
    dx, dh0, dc0, dparams = _cuda_backend.lstm_backward(state, _dev(dy), _dev(dh), _dev(dc))
    out = [torch.as_tensor(a, device=x.device).clone() for a in (dx, dh0, dc0)]
    out += [torch.from_numpy(g).to(x.device) for g in dparams.values()]
    cuda.default_stream().synchronize()
    return out
