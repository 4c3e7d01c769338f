"""The CPU backend's two-core path for small-batch inference (``kernels/cpu/duo.py``): which
layers take it, their weights in the halves' layouts, and one layer's call.

A layer of at most ``CPUConfig.duo_max_rows`` sequences (one direction, no projection, equal
lengths, ``duo_min_steps`` steps or more, ``duo_min_hidden`` units per sequence or more,
weights within ``duo_max_bytes``, inference, two threads or more) is split by hidden units: the
calling thread computes half of each step and a partner thread the other half (bench/NOTES.md,
"Few rows").
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ..kernels.cpu import duo, smallgemm
from .cpu import num_threads, workspace
from .cpu_layouts import _blocked, _prepare, _tile_width

__all__ = ["eligible", "layer_forward", "weights"]


@dataclass(frozen=True)
class _Duo:
    """One layer's weights for :func:`kernels.cpu.duo.duo_forward`: units split at ``H0``,
    gate columns in the halves' order (``[i f g o]`` of units [0, H0), then of [H0, H)).
    ``w`` = (wih0, wih1, wo0, wx0, wo1, wx1, ws0, ws1, bias): per half q, W_ih^T's columns of
    q's gates (I, 4Hq), and the W_hh^T rows of q's own units, of the other half's, and both
    stacked, q's columns, in aligned column blocks; the bias (4H,) in the same column order."""
    H0: int
    w: tuple


def weights(params, layer, B) -> _Duo:
    """Layer ``layer``'s weights for batches of ``B`` (the tiles' width depends on B)."""
    prep = _prepare(params, layer)
    H = params.hidden_size
    dt = params.dtype
    # halves on separate cache lines of h, c and y: H0 a multiple of 64 bytes where H allows
    step = 64 // dt.itemsize if H >= 128 // dt.itemsize else 4
    H0 = max(step, (H // 2 + step // 2) // step * step) if H >= 8 else H // 2
    units = (np.arange(H0), np.arange(H0, H))
    cols = [np.concatenate([g * H + u for g in range(4)]) for u in units]
    w_ih_t, w_hh_t = prep.w_ih_cat_t, prep.w_hh_t[0]

    def blocks(w):
        return _blocked(w, _tile_width(B, w.shape[1], dt.itemsize))

    wih = [np.ascontiguousarray(w_ih_t[:, cols[q]]) for q in (0, 1)]
    wo = [blocks(w_hh_t[units[q]][:, cols[q]]) for q in (0, 1)]
    wx = [blocks(w_hh_t[units[1 - q]][:, cols[q]]) for q in (0, 1)]
    ws = [blocks(w_hh_t[np.concatenate([units[q], units[1 - q]])][:, cols[q]]) for q in (0, 1)]
    bias = np.ascontiguousarray(prep.bias[0][np.concatenate(cols)])
    return _Duo(H0, (wih[0], wih[1], wo[0], wx[0], wo[1], wx[1], ws[0], ws[1], bias))


def eligible(params, T, B, I, lengths, training, cfg) -> bool:
    """Whether a serial layer runs on two cores split by hidden units (``CPUConfig.duo_*``)."""
    H = params.hidden_size
    return (not training and params.num_directions == 1 and params.proj_size == 0
            and 0 < B <= cfg.duo_max_rows and T >= cfg.duo_min_steps
            and H >= cfg.duo_min_hidden * B and num_threads(cfg) >= 2
            and 4 * H * (I + H) * params.dtype.itemsize <= cfg.duo_max_bytes
            and not numba.config.DISABLE_JIT and bool((lengths == T).all()))


def layer_forward(params, layer, layer_in, h0, c0, y, h_n, c_n, cfg, pin) -> None:
    """One inference layer on two cores (on the calling thread alone, same arithmetic, while
    the partner thread is held by another call or the second core is busy)."""
    T, B, I = layer_in.shape
    H = params.hidden_size
    dt = params.dtype
    d = params.derived(("cpu", "duo", layer, smallgemm.tile_columns(dt.itemsize, B)),
                       lambda: weights(params, layer, B))
    x2 = np.ascontiguousarray(layer_in).reshape(T * B, I)
    xg0 = workspace("xg", (T * B, 4 * d.H0), dt)
    xg1 = workspace("xg1", (T * B, 4 * (H - d.H0)), dt)
    hbuf = smallgemm.aligned_empty((2, B, H), dt)
    hbuf[0] = h0[layer]
    c = smallgemm.aligned_empty((B, H), dt)
    c[...] = c0[layer]
    with pin:
        duo.partner(cfg.duo_spins).run(x2, d.w, (xg0, xg1, hbuf, c, y), d.H0)
    h_n[layer] = hbuf[T % 2]
    c_n[layer] = c
