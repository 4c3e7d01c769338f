"""One LSTM step through every layer of a unidirectional stack: the streaming kernel.

Gate order ``i, f, g, o`` (PyTorch's). ``step_forward`` advances the state by one step,
``steps_forward`` by several (one compiled call either way). All weights and all state live in
two flat arrays described by an int64 ``meta`` array, so a call unboxes five arrays whatever the
number of layers: at a few microseconds per step, every argument of the compiled call counts.

Buffers (offsets in elements; ``fastlstm/stepper.py`` builds them, each block 64-byte aligned)::

    w    per layer l:  wcat_l (n_l, I_l + H_out, 4H/n_l)  [W_ih^T ; W_hh^T] in n_l column blocks
                       bias_l (4H,)                       b_ih + b_hh (zeros without biases)
                       whr_l  (m_l, H, P/m_l)             W_hr^T in m_l column blocks (projection)
    s    h (L, B, H_out), c (L, B, H)                      the state
         z (B, 4H), zp (B * 4H), hh (B, H), hp (B * P), s1 (4H), s2 (4H)   scratch
         per layer l: xh_l (B, I_l + H_out)                the rows [x_t | h_prev]
    meta [L, B, H, H_out, has_proj, o_h, o_c, o_z, o_zp, o_hh, o_hp, o_s1, o_s2,
          then per layer: I_l, o_wcat, n_l, rows_l, o_bias, o_whr, m_l, rows_r, o_xh]

Per layer and step: ``xh = [input | h_l]``, one product ``z = xh @ [W_ih^T ; W_hh^T]`` (the input
and the recurrent product at once), then per sequence the fused, vectorised cell update of
``kernels/cpu/recurrence.py`` (bias, activations, ``c``, and ``o*tanh(c)`` written straight into
``h`` without a projection) and, with one, ``h = hh @ W_hr^T``. The top layer's new ``h`` is
copied to the output.

The products are BLAS calls (``np.dot``: SciPy's OpenBLAS) issued as column blocks in row
chunks of the sizes the CPU backend uses for its per-step products
(``fastlstm/backends/cpu.py::block_shape``): each small enough for OpenBLAS's small-matrix
kernel, which neither packs the weights nor wakes its threads on every call.

Cost: every weight is read once per step, so at small batches a step is bound by streaming
them from the L2 cache: (I + H_out) * 4H values, 98 KB at I = 32, H = 64 in float32, ~2.2 us
at the 45-60 GB/s that this 2-core VM sustains (measured: 2.15 us for the whole compiled step
in a loop; the call from Python adds ~1.3 us: bench/bench_step.py).

The same arithmetic as the whole-sequence recurrence except the order of the sums in the gate
pre-activations (one product over ``[x | h]`` here, ``x W_ih^T`` and ``h W_hh^T`` added
afterwards there): results agree to rounding.
"""
import numpy as np

from .activations import half_like, tanh_row
from .jit import jit
from .smallgemm import bdot as _bdot

__all__ = ["step_forward", "steps_forward", "META_HEADER", "META_PER_LAYER"]

_OPTS = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})

#: Entries of ``meta`` before the per-layer blocks, and per layer.
META_HEADER = 13
META_PER_LAYER = 9


@jit(inline="always", **_OPTS)
def _cell(zb, bias, cb, hb, H, s1, s2):
    """One sequence's cell update from its gate pre-activations ``zb`` (4H, bias not yet
    added; activated in place): ``c`` (``cb``) updated, ``o * tanh(c)`` written to ``hb``.
    The steps of ``recurrence._cell_forward``: sigmoid(a) = 0.5 * tanh(a / 2) + 0.5, so one
    tanh pass over the row serves all four gates."""
    half = half_like(zb[0])
    G = 4 * H
    for g in range(G):
        zb[g] = zb[g] + bias[g]
    for g in range(2 * H):
        zb[g] = half * zb[g]
    for g in range(3 * H, G):
        zb[g] = half * zb[g]
    tanh_row(zb, zb, s1)
    for j in range(H):
        gi = half * zb[j] + half
        gf = half * zb[H + j] + half
        go = half * zb[3 * H + j] + half
        zb[3 * H + j] = go
        cb[j] = gf * cb[j] + gi * zb[2 * H + j]
    tc = s2[:H]
    tanh_row(cb, tc, s1)
    for j in range(H):
        hb[j] = zb[3 * H + j] * tc[j]


@jit(**_OPTS)
def step_forward(w, s, meta, x, out):
    """One step of every layer: ``x`` (B, I) C-contiguous in, ``out`` (B, H_out) the top
    layer's new h; the state in ``s`` advances. (The buffers come first, so a caller can bind
    them once.)"""
    L, B, H, P = meta[0], meta[1], meta[2], meta[3]
    has_proj = meta[4] != 0
    o_h, o_c, o_z, o_zp, o_hh, o_hp, o_s1, o_s2 = (meta[5], meta[6], meta[7], meta[8],
                                                   meta[9], meta[10], meta[11], meta[12])
    G = 4 * H
    z = s[o_z:o_z + B * G].reshape(B, G)
    hh = s[o_hh:o_hh + B * H].reshape(B, H)
    s1 = s[o_s1:o_s1 + G]
    s2 = s[o_s2:o_s2 + G]
    for layer in range(L):
        m = META_HEADER + META_PER_LAYER * layer
        I, o_w, n_w, mb_w = meta[m], meta[m + 1], meta[m + 2], meta[m + 3]
        o_b, o_r, n_r, mb_r, o_x = meta[m + 4], meta[m + 5], meta[m + 6], meta[m + 7], meta[m + 8]
        K = I + P
        xh = s[o_x:o_x + B * K].reshape(B, K)
        hs = o_h + layer * B * P
        h = s[hs:hs + B * P].reshape(B, P)
        cs = o_c + layer * B * H
        c = s[cs:cs + B * H].reshape(B, H)
        below = x if layer == 0 else s[hs - B * P:hs].reshape(B, P)
        for b in range(B):
            row = xh[b]
            src = below[b]
            for k in range(I):
                row[k] = src[k]
            hb = h[b]
            for k in range(P):
                row[I + k] = hb[k]
        wb = w[o_w:o_w + K * G].reshape(n_w, K, G // n_w)
        zp = s[o_zp:o_zp + B * G].reshape(n_w, B, G // n_w)
        _bdot(xh, wb, zp, z, mb_w)
        bias = w[o_b:o_b + G]
        # without a projection o*tanh(c) is the new h: straight into the state (xh holds the old)
        dst = hh if has_proj else h
        for b in range(B):
            _cell(z[b], bias, c[b], dst[b], H, s1, s2)
        if has_proj:
            rb = w[o_r:o_r + H * P].reshape(n_r, H, P // n_r)
            hp = s[o_hp:o_hp + B * P].reshape(n_r, B, P // n_r)
            _bdot(hh, rb, hp, h, mb_r)
    top = s[o_h + (L - 1) * B * P:o_h + L * B * P].reshape(B, P)
    for b in range(B):
        ob = out[b]
        tb = top[b]
        for k in range(P):
            ob[k] = tb[k]


@jit(**_OPTS)
def steps_forward(w, s, meta, x, y):
    """``x.shape[0]`` steps: ``x`` (T, B, I) C-contiguous in, ``y`` (T, B, H_out) the top
    layer's outputs; the state in ``s`` advances T steps."""
    for t in range(x.shape[0]):
        step_forward(w, s, meta, x[t], y[t])
