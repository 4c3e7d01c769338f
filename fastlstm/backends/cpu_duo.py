"""The CPU backend's two-core path for small batches (``kernels/cpu/duo.py``): which
layers take it, their weights in the halves' layouts, and one layer's call.

A layer of at most ``CPUConfig.duo_max_rows`` sequences (one direction, no projection, equal
lengths, ``duo_min_steps`` steps or more, ``duo_min_hidden`` units per sequence or more,
weights within ``duo_max_bytes``, two threads or more; in training two sequences or more) is
split by hidden units: the calling thread computes half of each step and a partner thread
(inside ``fastlstm.torch``'s operators, torch's own worker) the other half (bench/NOTES.md,
"Few rows"). The halves' weight layouts are refilled in place when the weights change.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ..kernels.cpu import duo, smallgemm
from .cpu import num_threads, workspace
from ..kernels.cpu.pack import gather_blocks_into
from .cpu_layouts import _prepare, _reusable, _tile_width

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


def weights(params, layer, B, old=None) -> _Duo:
    """Layer ``layer``'s weights for batches of ``B`` (the tiles' width depends on B); into
    the arrays of ``old`` (an earlier version's, of the same shapes) where given: a training
    loop changes the weights every step."""
    prep = _prepare(params, layer)
    H = params.hidden_size
    dt = params.dtype
    # halves on separate cache lines of h, c and y: H0 a multiple of 64 bytes where H allows
    step = 64 // dt.itemsize if H >= 128 // dt.itemsize else 4
    H0 = max(step, (H // 2 + step // 2) // step * step) if H >= 8 else H // 2
    units = (np.arange(H0), np.arange(H0, H))
    cols = [np.concatenate([g * H + u for g in range(4)]) for u in units]
    w_ih_t, w_hh_t = prep.w_ih_cat_t, prep.w_hh_t[0]
    reuse = old.w if old is not None and old.H0 == H0 else (None,) * 9

    def picked(w, rows, cq, shape, k):
        """``w``'s ``rows`` and columns ``cq`` into an array of ``shape`` (``(R, N)``, or
        column blocks ``(n, R, nb)``), ``reuse[k]`` when it fits."""
        out = _reusable(reuse[k], shape, dt)
        gather_blocks_into(w, rows, cq, out.reshape(-1, len(rows), shape[-1]))
        return out

    def blocks(rows, cq, k):
        nb = _tile_width(B, len(cq), dt.itemsize)
        return picked(w_hh_t, rows, cq, (len(cq) // nb, len(rows), nb), k)

    I = w_ih_t.shape[0]
    wih = [picked(w_ih_t, np.arange(I), cols[q], (I, len(cols[q])), q) for q in (0, 1)]
    wo = [blocks(units[q], cols[q], 2 + 2 * q) for q in (0, 1)]
    wx = [blocks(units[1 - q], cols[q], 3 + 2 * q) for q in (0, 1)]
    ws = [blocks(np.concatenate([units[q], units[1 - q]]), cols[q], 6 + q) for q in (0, 1)]
    bias = reuse[8] if reuse[8] is not None else np.empty(4 * H, dt)
    np.take(prep.bias[0], np.concatenate(cols), out=bias)
    return _Duo(H0, (wih[0], wih[1], wo[0], wx[0], wo[1], wx[1], ws[0], ws[1], bias))


def eligible(params, T, B, I, lengths, training, cfg) -> bool:
    """Whether a serial layer runs on two cores split by hidden units (``CPUConfig.duo_*``; in
    training from two sequences: at one, refilling the halves' layouts after every weight
    update and saving the gates cost what the split saves)."""
    H = params.hidden_size
    return (params.num_directions == 1 and params.proj_size == 0
            and 0 < B <= cfg.duo_max_rows and T >= cfg.duo_min_steps
            and H >= cfg.duo_min_hidden * B and (B >= 2 or not training)
            and num_threads(cfg) >= 2
            and 4 * H * (I + H) * params.dtype.itemsize <= cfg.duo_max_bytes
            and not numba.config.DISABLE_JIT and bool((lengths == T).all()))


def layer_forward(params, layer, layer_in, h0, c0, y, h_n, c_n, cfg, pin, gates, cells) -> None:
    """One layer on two cores (on the calling thread alone, same arithmetic, while the partner
    thread is held by another call or the second core is busy); in training (``gates``,
    ``cells`` with steps) the activated gates and cell values saved as the one-core path saves
    them."""
    T, B, I = layer_in.shape
    H = params.hidden_size
    dt = params.dtype
    key = ("cpu", "duo", layer, smallgemm.tile_columns(dt.itemsize, B))
    d = params.derived(key, lambda: weights(params, layer, B, params.previous(key)))
    x2 = np.ascontiguousarray(layer_in).reshape(T * B, I)
    xg0 = workspace("xg", (T * B, 4 * d.H0), dt)
    xg1 = workspace("xg1", (T * B, 4 * (H - d.H0)), dt)
    hbuf = smallgemm.aligned_empty((2, B, H), dt)
    hbuf[0] = h0[layer]
    c = smallgemm.aligned_empty((B, H), dt)
    c[...] = c0[layer]
    with pin:
        duo.partner(cfg.duo_spins).run(x2, d.w, (xg0, xg1, hbuf, c, y, gates, cells), d.H0)
    h_n[layer] = hbuf[T % 2]
    c_n[layer] = c
