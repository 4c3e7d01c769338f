"""CPU backend: the three phases of each layer (input GEMM, compiled recurrence, gradient GEMMs).

Takes and returns normalised, time-major, C-contiguous arrays of the compute dtype (the API
layer in ``fastlstm.api`` does all validation and layout conversion)::

    x (T, B, I)  h0 (L*D, B, H_out)  c0 (L*D, B, H)  lengths (B,) int64
    masks: None or L-1 arrays (T, B, D*H_out), inter-layer dropout already scaled

Phase 1 (per layer): one GEMM ``(T*B, I) x (I, D*4H)`` for both directions (the biases are
added inside the recurrence's fused loop, saving a pass over the projection).
Phase 2 (per direction): ``recurrence_forward`` / ``recurrence_backward``, compiled loops over time.
Phase 3 (backward, per direction): ``dW_ih``, ``dW_hh``, ``dW_hr``, ``db`` and ``dx`` as
whole-sequence GEMMs.
"""
from __future__ import annotations

import threading

import numpy as np

from .recurrence import recurrence_backward, recurrence_forward

__all__ = ["lstm_forward", "lstm_backward", "col_blocks", "block_shape", "SMALL_GEMM_MNK", "workspace",
           "release_workspace"]

#: OpenBLAS runs products with M*N*K at most this without packing (its small-matrix kernel);
#: the recurrence splits its per-step products into column blocks under it (bench/NOTES.md).
SMALL_GEMM_MNK = 1_000_000


_tls = threading.local()


def workspace(key: str, shape: tuple, dtype) -> np.ndarray:
    """A scratch array reused across calls by the same thread (contents undefined).

    Only for arrays no result or cache keeps. A fresh large array costs first-touch page
    faults on every call (50 ms for the 42 MB input projection at T=20, B=128, H=1024:
    bench/NOTES.md); one buffer per key and thread avoids that. Threads never share one.
    """
    pool = _tls.__dict__.setdefault("pool", {})
    size = int(np.prod(shape))
    buf = pool.get(key)
    if buf is None or buf.dtype != np.dtype(dtype) or buf.size < size:
        buf = np.empty(size, dtype)
        pool[key] = buf
    return buf[:size].reshape(shape)


def release_workspace() -> None:
    """Free this thread's scratch buffers."""
    _tls.__dict__.pop("pool", None)


#: Per-step products larger than this (M*N*K) run as one BLAS call: long enough to amortise
#: waking OpenBLAS's threads. Below it, the blocks run on OpenBLAS's single-threaded
#: small-matrix kernel (measured in the recurrence at 2 threads: bench/NOTES.md).
SPLIT_MAX_MNK = 1 << 26


def block_shape(M: int, K: int, N: int) -> tuple[int, int]:
    """(columns per block, rows per chunk) for the per-step product (M, K) x (K, N).

    One call (N, M) when the product is already under the small-matrix threshold or over
    SPLIT_MAX_MNK; else the widest multiple of 16 dividing N with M*K*width under the
    threshold; if even that is over it, the narrowest such width (16, or N when N has no
    such divisor) in chunks of rows under the threshold.
    """
    if M * K * N <= SMALL_GEMM_MNK or M * K * N > SPLIT_MAX_MNK:
        return N, M
    best = 0
    for w in range(16, N, 16):
        if N % w == 0 and M * K * w <= SMALL_GEMM_MNK:
            best = w
    if best:
        return best, M
    w = 16 if (N % 16 == 0 and N > 16) else N
    return w, max(1, min(M, SMALL_GEMM_MNK // (K * w)))


def block_width(M: int, K: int, N: int) -> int:
    return block_shape(M, K, N)[0]


def col_blocks(params, key, w, M):
    """``w`` (K, N) as contiguous column blocks (n, K, N/n) for products with M rows, and the
    rows per chunk; memoised on the (immutable) params. A single block is a view."""
    K, N = w.shape
    if K == 0:
        return np.empty((0, 0, 0), w.dtype), max(M, 1)
    nb, mb = block_shape(M, K, N)
    if nb == N:
        return w.reshape(1, K, N), mb
    memo = params.__dict__.setdefault("_cpu_blocks", {})
    mk = (key, nb)
    if mk not in memo:
        memo[mk] = np.ascontiguousarray(w.reshape(K, N // nb, nb).transpose(1, 0, 2))
    return memo[mk], mb


def _prepare(params, layer):
    """Per layer: stacked, transposed weights in the layouts the kernels walk contiguously.

    LSTMParams holds read-only arrays, so the result is memoised on the params object.
    """
    memo = params.__dict__.setdefault("_cpu_prepared", {})
    if layer not in memo:
        memo[layer] = _prepare_uncached(params, layer)
    return memo[layer]


def _prepare_uncached(params, layer):
    D = params.num_directions
    dt = params.dtype
    w_ih, w_hh, w_hh_t, w_hr, w_hr_t, bias = [], [], [], [], [], []
    for d in range(D):
        wi, wh, bi, bh, wr = params.layer_weights(layer, d)
        w_ih.append(wi)
        w_hh.append(wh.copy())  # writable copies: one Numba specialisation per dtype
        w_hh_t.append(np.ascontiguousarray(wh.T))
        w_hr.append(wr.copy() if wr is not None else np.empty((0, 0), dt))
        w_hr_t.append(np.ascontiguousarray(wr.T) if wr is not None else np.empty((0, 0), dt))
        # b_ih + b_hh, added inside the recurrence's fused loop (zeros without biases)
        bias.append(bi + bh if bi is not None else np.zeros(wh.shape[0], dt))
    w_ih_cat_t = np.ascontiguousarray(np.concatenate(w_ih, axis=0).T)  # (I, D*4H)
    return dict(w_ih_cat_t=w_ih_cat_t, bias=bias, w_hh_t=w_hh_t, w_hr_t=w_hr_t, w_hh=w_hh,
                w_hr=w_hr)


def lstm_forward(x, params, h0, c0, lengths, masks=None, training=False):
    """Multi-layer forward. Returns ``y, h_n, c_n, state`` (``state`` is None unless training)."""
    T, B, _ = x.shape
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    dt = params.dtype
    h_n = np.empty((L * D, B, P), dt)
    c_n = np.empty((L * D, B, H), dt)
    empty3 = np.empty((0, 0, 0), dt)
    layer_in = x
    saved = []
    for layer in range(L):
        prep = _prepare(params, layer)
        w_hh_t, w_hr_t = prep["w_hh_t"], prep["w_hr_t"]
        xg = workspace("xg", (T * B, D * 4 * H), dt)
        np.matmul(layer_in.reshape(T * B, -1), prep["w_ih_cat_t"], out=xg)
        xg = xg.reshape(T, B, D * 4 * H)
        y = np.empty((T, B, D * P), dt)
        dirs = []
        for d in range(D):
            k = layer * D + d
            gates = np.empty((T, B, 4 * H), dt) if training else empty3
            cs = np.empty((T, B, H), dt) if training else empty3
            w_hh_tb, mb_hh = col_blocks(params, ("w_hh_t", layer, d), w_hh_t[d], B)
            w_hr_tb, mb_hr = col_blocks(params, ("w_hr_t", layer, d), w_hr_t[d], B)
            recurrence_forward(xg, d * 4 * H, prep["bias"][d], w_hh_tb, w_hr_tb, h0[k], c0[k],
                               lengths, d == 1, y, d * P, h_n[k], c_n[k], gates, cs, training,
                               mb_hh, mb_hr)
            dirs.append((gates, cs))
        del xg
        if training:
            saved.append(dict(x=layer_in, y=y, dirs=dirs))
        layer_in = y * masks[layer] if (masks is not None and layer < L - 1) else y
    state = None
    if training:
        state = dict(params=params, layers=saved, h0=h0, c0=c0, lengths=lengths, masks=masks)
    return layer_in, h_n, c_n, state


def lstm_backward(state, dy, dh_n, dc_n):
    """Full backward from a training ``state``. Returns ``dx, dh0, dc0, dparams``."""
    params = state["params"]
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    dt = params.dtype
    lengths, masks, h0, c0 = state["lengths"], state["masks"], state["h0"], state["c0"]
    T, B = dy.shape[0], dy.shape[1]
    TB = T * B
    dh0 = np.empty_like(dh_n)
    dc0 = np.empty_like(dc_n)
    dparams = {}
    dy_layer = np.ascontiguousarray(dy)
    has_proj = params.proj_size > 0
    last_step = lengths - 1
    batch = np.arange(B)
    for layer in reversed(range(L)):
        saved = state["layers"][layer]
        x_l, y_l = saved["x"], saved["y"]
        x2 = x_l.reshape(TB, -1)
        dx = None
        prep = _prepare(params, layer)
        for d in range(D):
            w_ih, _, b_ih, _, _ = params.layer_weights(layer, d)
            gates, cs = saved["dirs"][d]
            k = layer * D + d
            dgates = workspace("dgates", (T, B, 4 * H), dt)  # consumed before the next direction
            dhp = workspace("dhp", (T, B, P), dt) if has_proj else np.empty((0, 0, 0), dt)
            w_hh_b, mb_hh = col_blocks(params, ("w_hh", layer, d), prep["w_hh"][d], B)
            w_hr_b, mb_hr = col_blocks(params, ("w_hr", layer, d), prep["w_hr"][d], B)
            recurrence_backward(dy_layer, d * P, gates, cs, c0[k], dh_n[k], dc_n[k], w_hh_b,
                                w_hr_b, lengths, d == 1, dgates, dhp, dh0[k], dc0[k], mb_hh,
                                mb_hr)
            dg2 = dgates.reshape(TB, 4 * H)
            s = f"_l{layer}{params.suffix(d)}"
            dparams["weight_ih" + s] = dg2.T @ x2
            # dW_hh = sum_t dgates_t^T h_prev_t. Outputs are exactly 0 past each sequence's
            # end, so the shifted output sequence is h_prev everywhere except at the step that
            # read h0 (forward: t = 0; reverse: each sequence's last valid step).
            hs = y_l[:, :, d * P:(d + 1) * P]
            if d == 0:
                dw_hh = dgates[0].T @ h0[k]
                if T > 1:
                    dw_hh += dgates[1:].reshape(-1, 4 * H).T @ hs[:-1].reshape(-1, P)
            else:
                dw_hh = dgates[last_step, batch].T @ h0[k]
                if T > 1:
                    dw_hh += dgates[:-1].reshape(-1, 4 * H).T @ hs[1:].reshape(-1, P)
            dparams["weight_hh" + s] = dw_hh
            if b_ih is not None:
                db = dg2.sum(axis=0)
                dparams["bias_ih" + s] = db
                dparams["bias_hh" + s] = db.copy()
            if has_proj:
                hh = gates[:, :, 3 * H:] * np.tanh(cs)  # o * tanh(c): 0 on padded steps
                dparams["weight_hr" + s] = dhp.reshape(TB, P).T @ hh.reshape(TB, H)
            if dx is None:
                dx = dg2 @ w_ih
            else:
                dx += dg2 @ w_ih
        dx = dx.reshape(x_l.shape)
        if layer > 0 and masks is not None:
            dx *= masks[layer - 1]
        dy_layer = dx
    ordered = {name: dparams[name] for name in params.keys()}
    return dy_layer, dh0, dc0, ordered
