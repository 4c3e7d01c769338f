"""The LSTM recurrence on the GPU (numba.cuda): the twin of ``kernels/cpu/recurrence.py``.

Gate order ``i, f, g, o`` (PyTorch's). Both directions of a layer run in the same launches
(``blockIdx.z`` / the virtual block index picks the direction ``d``; direction 1 walks time
backwards). Shapes, for one layer::

    xg       (T, B, D*4H)   input projection of all steps, biases included; direction d's gates
                            are columns [d*4H, (d+1)*4H)
    w_hh_t   (D, H_out, 4H) W_hh transposed: threads of consecutive hidden units read
                            consecutive addresses (coalesced)
    w_hh     (D, 4H, H_out) W_hh as stored (backward: dh = dgates W_hh)
    w_hr_t   (D, H, P)      W_hr transposed (forward projection); w_hr (D, P, H) (backward)
    h, c     (D, B, H_out), (D, B, H)  working states
    lengths  (B,) int64     valid steps per sequence (1..T)
    y        (T, B, D*H_out) layer output; direction d writes columns [d*H_out, (d+1)*H_out)
    gates    (T, B, D*4H)   activated gates, saved in training (0 on padded steps)
    cs       (T, B, D*H)    cell states, saved in training (0 on padded steps)

Steps past a sequence's end leave its state unchanged and write 0 to ``y`` (packed-sequence
semantics; the reverse direction therefore starts at each sequence's last valid step).

Two forward paths:

* multi-launch (``recurrence_forward(..., path="multi")``): per step one launch of
  ``step_forward`` (recurrent product fused with the gate/cell/hidden update, one thread per
  (hidden unit, direction), looping over the sequences with a grid stride along y, so any batch
  size fits CUDA's gridDim.y limit), plus one launch of ``step_project`` with ``proj_size``.
* persistent (``path="persistent"``): ONE cooperative launch of ``persistent_forward`` for the
  whole sequence. Each block keeps its slice of W_hh (all 4 gates of ``JB`` hidden units) in
  shared memory for all steps; the K dimension of each gate row is split over ``KS`` threads
  and reduced through shared memory; steps are separated by a grid barrier
  (``cuda.cg.this_grid().sync()``). A block may own several slices ("virtual blocks", ``NV``),
  so any grid size works, including the one-block grid the CUDA simulator can run.

Backward, per step (in the reverse of each direction's forward order): ``step_backward_fused``
(no projection: ``dh = dgates_{prev} W_hh`` for this thread's unit fused with the gate
gradients; one launch), or ``step_backward_dh`` + ``step_backward_cell`` (with a projection,
where the cell update needs the whole projected gradient). A last ``dh`` launch yields ``dh0``.
The weight gradients and ``dx`` are whole-sequence GEMMs done by ``lstm.py``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_ZERO = np.float32(0.0)


@cuda.jit(device=True, inline=True)
def _sigmoid(z):
    # 0.5 * (1 + tanh(z/2)): the reference's formula; never overflows.
    return _HALF * math.tanh(_HALF * z) + _HALF


@cuda.jit(device=True, inline=True)
def _load4(a, t, b, col, H):
    """The four gate columns (i, f, g, o) of one unit: ``a[t, b, col + q*H]`` for q = 0..3."""
    return a[t, b, col], a[t, b, col + H], a[t, b, col + 2 * H], a[t, b, col + 3 * H]


@cuda.jit(device=True, inline=True)
def _store4(a, t, b, col, H, vi, vf, vg, vo):
    """Writes the four gate columns of one unit (the layout :func:`_load4` reads)."""
    a[t, b, col] = vi
    a[t, b, col + H] = vf
    a[t, b, col + 2 * H] = vg
    a[t, b, col + 3 * H] = vo


@cuda.jit(device=True, inline=True)
def _zero_gates(t, b, j, d, a, H):
    """Zeros the four gate columns of unit j, direction d (a padded step's gates or dgates)."""
    _store4(a, t, b, d * 4 * H + j, H, _ZERO, _ZERO, _ZERO, _ZERO)


@cuda.jit(device=True, inline=True)
def _prev_step(t, b, d, lengths):
    """``(first, prev)`` for step t of sequence b in direction d: whether t is the direction's
    first step (it reads h0/c0), else the step it follows (t-1 forward, t+1 reverse)."""
    if d == 1:
        first = t == lengths[b] - 1
        prev = t + 1
    else:
        first = t == 0
        prev = t - 1
    return first, prev


def _simulating() -> bool:
    try:
        from numba.cuda.core import config  # numba-cuda >= 0.2x
    except ImportError:  # pragma: no cover - older layouts read numba's config
        from numba.core import config
    return bool(config.ENABLE_CUDASIM)


# ---------------------------------------------------------------------------------- forward
@cuda.jit(device=True, inline=True)
def _cell_forward(t, b, j, d, zi, zf, zg, zo, c, h_out, hh, y, gates, cs, has_proj, training):
    """Valid step t of unit j, sequence b, direction d from its gate pre-activations: the
    activations, the cell update (``c`` in place), the training saves, and the hidden value to
    ``hh`` (with a projection) or to ``h_out`` and ``y``."""
    H = c.shape[2]
    P = h_out.shape[2]
    col = d * 4 * H + j
    gi = _sigmoid(zi)
    gf = _sigmoid(zf)
    gg = math.tanh(zg)
    go = _sigmoid(zo)
    cn = gf * c[d, b, j] + gi * gg
    c[d, b, j] = cn
    hv = go * math.tanh(cn)
    if training:
        _store4(gates, t, b, col, H, gi, gf, gg, go)
        cs[t, b, d * H + j] = cn
    if has_proj:
        hh[d, b, j] = hv
    else:
        h_out[d, b, j] = hv
        y[t, b, d * P + j] = hv


@cuda.jit(device=True, inline=True)
def _cell_padded(t, b, j, d, H, h_in, h_out, y, gates, cs, has_proj, training):
    """Padded step t (past sequence b's end) of unit j: zero saves and output, state carried.
    With a projection nothing is written to h (the projection carries it) nor to ``hh`` (the
    projection does not read it on padded steps)."""
    P = h_out.shape[2]
    if training:
        _zero_gates(t, b, j, d, gates, H)
        cs[t, b, d * H + j] = _ZERO
    if not has_proj:
        h_out[d, b, j] = h_in[d, b, j]
        y[t, b, d * P + j] = _ZERO


@cuda.jit(device=True, inline=True)
def _project_unit(t, b, p, d, hh, w_hr_t, h_in, h_out, y, lengths):
    """Projected output p of sequence b at step t: ``hh[d, b, :] . W_hr[p, :]`` to ``h_out`` and
    ``y`` on a valid step; on a padded one h carries over and y is 0."""
    H = hh.shape[2]
    P = h_out.shape[2]
    if t < lengths[b]:
        acc = _ZERO
        for j in range(H):
            acc += hh[d, b, j] * w_hr_t[d, j, p]
        h_out[d, b, p] = acc
        y[t, b, d * P + p] = acc
    else:
        h_out[d, b, p] = h_in[d, b, p]
        y[t, b, d * P + p] = _ZERO


@cuda.jit
def step_forward(s, xg, w_hh_t, h_in, h_out, c, hh, y, gates, cs, lengths, has_proj, training):
    """One step of every direction: thread (j, d) owns hidden unit j of the sequences b it
    strides over (b = y index + k * gridDim.y * blockDim.y).

    Reads ``h_in``, writes ``h_out`` (ping-pong buffers) and updates ``c`` in place. With a
    projection it writes ``hh = o * tanh(c)`` and ``step_project`` produces h and y.
    """
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    d = cuda.blockIdx.z
    T = xg.shape[0]
    B = xg.shape[1]
    H = c.shape[2]
    P = h_in.shape[2]
    if j >= H:
        return
    t = T - 1 - s if d == 1 else s
    G = 4 * H
    col = d * G + j
    for b in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, B,
                   cuda.gridDim.y * cuda.blockDim.y):
        if t < lengths[b]:
            zi, zf, zg, zo = _load4(xg, t, b, col, H)
            for k in range(P):
                hk = h_in[d, b, k]
                zi += hk * w_hh_t[d, k, j]
                zf += hk * w_hh_t[d, k, H + j]
                zg += hk * w_hh_t[d, k, 2 * H + j]
                zo += hk * w_hh_t[d, k, 3 * H + j]
            _cell_forward(t, b, j, d, zi, zf, zg, zo, c, h_out, hh, y, gates, cs, has_proj,
                          training)
        else:
            _cell_padded(t, b, j, d, H, h_in, h_out, y, gates, cs, has_proj, training)


@cuda.jit
def step_project(s, hh, w_hr_t, h_in, h_out, y, lengths):
    """The projection of one step: thread (p, b, d) computes ``h[b, p] = hh[b, :] . W_hr[p, :]``."""
    p = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    d = cuda.blockIdx.z
    T = y.shape[0]
    B = y.shape[1]
    P = h_in.shape[2]
    if p >= P:
        return
    t = T - 1 - s if d == 1 else s
    for b in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, B,
                   cuda.gridDim.y * cuda.blockDim.y):
        _project_unit(t, b, p, d, hh, w_hr_t, h_in, h_out, y, lengths)


def _bounded(**bounds):
    """``cuda.jit`` with launch bounds on a GPU (the simulator's ``jit`` takes none)."""
    return cuda.jit if _simulating() else cuda.jit(**bounds)


# 128 threads, 4 blocks per SM: caps the kernel at 128 registers per thread (without the bound,
# 138 registers left room for 3 blocks of 128 threads per SM, and large plans did not fit)
@_bounded(launch_bounds=(128, 4))
def persistent_forward(xg, w_hh_t, w_hr_t, hbuf, c, hh, y, gates, cs, lengths,
                       d_first, nd, JB, KS, NV, has_proj, training):
    """The whole sequence of ``nd`` directions (from ``d_first``) in one cooperative launch.

    ``hbuf`` (2, D, B, H_out): ping-pong hidden states, step s reads ``hbuf[s % 2]`` (the caller
    fills ``hbuf[0]`` with h0); the final state is in ``hbuf[T % 2]``. ``c`` (D, B, H) starts as
    c0 and ends as c_n. Block size is ``4*JB*KS`` threads; virtual block v (``nd*ceil(H/JB)``
    of them, block ``blockIdx.x`` owns v = blockIdx.x + m*gridDim.x for m < NV) owns hidden units
    [j0, j0+JB) of direction d. Dynamic shared memory (float32):
    ``NV*4*JB*(H_out+1)`` for W_hh slices, then ``B*blockDim.x`` for partial sums.
    """
    grid = cuda.cg.this_grid()
    sm = cuda.shared.array(0, dtype=float32)
    T = xg.shape[0]
    B = xg.shape[1]
    H = c.shape[2]
    P = hbuf.shape[3]
    G = 4 * H
    R = 4 * JB
    stride = P + 1
    NJ = (H + JB - 1) // JB
    nvb = nd * NJ
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    row = tid // KS
    ks = tid % KS
    red = NV * R * stride
    # W_hh slices into shared memory, once.
    for m in range(NV):
        v = cuda.blockIdx.x + m * cuda.gridDim.x
        if v < nvb:
            d = d_first + v // NJ
            j0 = (v % NJ) * JB
            for idx in range(tid, R * P, nt):
                k = idx // R
                r = idx % R
                j = j0 + r % JB
                val = _ZERO
                if j < H:
                    val = w_hh_t[d, k, (r // JB) * H + j]
                sm[(m * R + r) * stride + k] = val
    cuda.syncthreads()
    gtid = cuda.blockIdx.x * nt + tid
    gsize = cuda.gridDim.x * nt
    for s in range(T):
        cur = s % 2
        nxt = 1 - cur
        h_cur = hbuf[cur]  # views (D, B, H_out): no copies
        h_nxt = hbuf[nxt]
        for m in range(NV):
            v = cuda.blockIdx.x + m * cuda.gridDim.x
            if v < nvb:  # uniform over the block
                d = d_first + v // NJ
                j0 = (v % NJ) * JB
                t = T - 1 - s if d == 1 else s
                wbase = (m * R + row) * stride
                for b in range(B):
                    acc = _ZERO
                    for k in range(ks, P, KS):
                        acc += sm[wbase + k] * h_cur[d, b, k]
                    sm[red + b * nt + tid] = acc
                cuda.syncthreads()
                for w in range(tid, B * JB, nt):
                    b = w // JB
                    jr = w % JB
                    j = j0 + jr
                    if j < H:
                        col = d * G + j
                        if t < lengths[b]:
                            zi, zf, zg, zo = _load4(xg, t, b, col, H)
                            base = red + b * nt
                            for q in range(KS):
                                zi += sm[base + (jr) * KS + q]
                                zf += sm[base + (JB + jr) * KS + q]
                                zg += sm[base + (2 * JB + jr) * KS + q]
                                zo += sm[base + (3 * JB + jr) * KS + q]
                            _cell_forward(t, b, j, d, zi, zf, zg, zo, c, h_nxt, hh, y, gates, cs,
                                          has_proj, training)
                        else:
                            _cell_padded(t, b, j, d, H, h_cur, h_nxt, y, gates, cs, has_proj,
                                         training)
                cuda.syncthreads()  # the partial sums are reused by the next slice
        grid.sync()
        if has_proj:
            for w in range(gtid, nd * B * P, gsize):
                d = d_first + w // (B * P)
                b = (w // P) % B
                p = w % P
                t = T - 1 - s if d == 1 else s
                _project_unit(t, b, p, d, hh, w_hr_t, h_cur, h_nxt, y, lengths)
            grid.sync()


def persistent_smem_bytes(JB: int, KS: int, NV: int, B: int, P: int) -> int:
    """Dynamic shared memory of one ``persistent_forward`` block."""
    return 4 * (NV * 4 * JB * (P + 1) + B * 4 * JB * KS)


# ---------------------------------------------------------------------------------- backward
@cuda.jit(device=True, inline=True)
def _cell_backward(t, b, j, d, d_h, gates, cs, c0, dc, dgates, lengths):
    """Gate gradients of unit j of sequence b at step t (valid), given dL/dh (before projection)."""
    H = dc.shape[2]
    G = 4 * H
    col = d * G + j
    first, prev = _prev_step(t, b, d, lengths)
    gi, gf, gg, go = _load4(gates, t, b, col, H)
    tc = math.tanh(cs[t, b, d * H + j])
    if first:
        c_prev = c0[d, b, j]
    else:
        c_prev = cs[prev, b, d * H + j]
    dct = dc[d, b, j] + d_h * go * (_ONE - tc * tc)
    _store4(dgates, t, b, col, H,
            dct * gg * gi * (_ONE - gi),
            dct * c_prev * gf * (_ONE - gf),
            dct * gi * (_ONE - gg * gg),
            d_h * tc * go * (_ONE - go))
    dc[d, b, j] = dct * gf


@cuda.jit(device=True, inline=True)
def _dh_from_prev(s, T, b, k, d, dgates, w_hh, dh, lengths):
    """dh[d, b, k] after the step processed at backward step s-1 (unchanged if that was padded)."""
    if s > 0:
        tp = s - 1 if d == 1 else T - s
        if tp < lengths[b]:
            G = w_hh.shape[1]
            acc = _ZERO
            base = d * G
            for g in range(G):
                acc += dgates[tp, b, base + g] * w_hh[d, g, k]
            dh[d, b, k] = acc
            return acc
    return dh[d, b, k]


@cuda.jit
def step_backward_fused(s, dy, gates, cs, c0, w_hh, dh, dc, dgates, lengths):
    """Backward step s without a projection (H_out == H): thread (j, b, d).

    First ``dh`` of this thread's unit from the previous step's gate gradients (recurrent
    product), then this step's gate gradients and ``dc``. ``s == T`` only finishes ``dh`` (dh0).
    """
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    d = cuda.blockIdx.z
    T = dy.shape[0]
    B = dy.shape[1]
    H = dc.shape[2]
    if j >= H:
        return
    t = s if d == 1 else T - 1 - s
    for b in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, B,
                   cuda.gridDim.y * cuda.blockDim.y):
        dhv = _dh_from_prev(s, T, b, j, d, dgates, w_hh, dh, lengths)
        if s < T:
            if t < lengths[b]:
                d_h = dy[t, b, d * H + j] + dhv
                _cell_backward(t, b, j, d, d_h, gates, cs, c0, dc, dgates, lengths)
            else:
                _zero_gates(t, b, j, d, dgates, H)


@cuda.jit
def step_backward_dh(s, dy, w_hh, dh, dhp, dgates, lengths):
    """With a projection: thread (k, b, d) updates ``dh`` and writes the step's gradient of the
    projected output ``dhp[t, b, d*P + k]`` (0 on padded steps). ``s == T`` only finishes dh0."""
    k = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    d = cuda.blockIdx.z
    T = dy.shape[0]
    B = dy.shape[1]
    P = dh.shape[2]
    if k >= P:
        return
    t = s if d == 1 else T - 1 - s
    for b in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, B,
                   cuda.gridDim.y * cuda.blockDim.y):
        dhv = _dh_from_prev(s, T, b, k, d, dgates, w_hh, dh, lengths)
        if s < T:
            if t < lengths[b]:
                dhp[t, b, d * P + k] = dy[t, b, d * P + k] + dhv
            else:
                dhp[t, b, d * P + k] = _ZERO


@cuda.jit
def step_backward_cell(s, dhp, w_hr, gates, cs, c0, dc, dgates, lengths):
    """With a projection: thread (j, b, d): ``dL/d(o*tanh c) = dhp W_hr`` then the gate gradients."""
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    d = cuda.blockIdx.z
    T = dhp.shape[0]
    B = dhp.shape[1]
    H = dc.shape[2]
    P = w_hr.shape[1]
    if j >= H:
        return
    t = s if d == 1 else T - 1 - s
    for b in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, B,
                   cuda.gridDim.y * cuda.blockDim.y):
        if t < lengths[b]:
            acc = _ZERO
            for p in range(P):
                acc += dhp[t, b, d * P + p] * w_hr[d, p, j]
            _cell_backward(t, b, j, d, acc, gates, cs, c0, dc, dgates, lengths)
        else:
            _zero_gates(t, b, j, d, dgates, H)


# ---------------------------------------------------------------------------------- launchers
#: Most blocks along y in a step-kernel grid (CUDA's limit for gridDim.y is 65535). The step
#: kernels loop over sequences with a stride of gridDim.y * blockDim.y, so any batch size works.
MAX_GRID_Y = 65535


def _grid(nx: int, ny: int, nz: int):
    """(grid, block) for the step kernels: x covers the nx units (one thread each, partial last
    block guarded in the kernels), y strides over the ny sequences, z is the direction."""
    if _simulating():
        # Small blocks and a capped y grid, so that the simulator runs the same code paths as a
        # GPU launch: several blocks along x with a partial last one, and sequences strided.
        bx, by, gy_max = 4, 2, 1
    else:
        bx = 32 if nx <= 32 else (64 if nx <= 64 else 128)
        by = max(1, min(ny, 256 // bx))
        gy_max = MAX_GRID_Y
    gy = max(1, min((ny + by - 1) // by, gy_max))
    return (max(1, (nx + bx - 1) // bx), gy, nz), (bx, by, 1)


class PersistentPlan:
    """How ``persistent_forward`` is launched: slice sizes and one entry per launch
    ``(d_first, nd, kernel, grid, threads, shared_bytes)``."""

    def __init__(self, JB, KS, NV, launches):
        self.JB, self.KS, self.NV, self.launches = JB, KS, NV, launches

    def __repr__(self):
        return (f"PersistentPlan(JB={self.JB}, KS={self.KS}, NV={self.NV}, "
                f"launches={[(l[0], l[1], l[3], l[4], l[5]) for l in self.launches]})")


#: Shared memory a persistent block may use without opting in to more (bytes).
PERSISTENT_SMEM_LIMIT = 48 * 1024


def plan_persistent(args, D, B, H, P, smem_limit=PERSISTENT_SMEM_LIMIT):
    """``(plan, reason)``: a :class:`PersistentPlan` for ``persistent_forward`` with these
    kernel ``args`` (the arrays and flags of ``recurrence_forward``) and None, or None and why
    not (the GPU cannot launch it cooperatively, or the W_hh slices do not fit in
    ``smem_limit`` bytes per block of one co-resident grid).

    Real GPU: 128 threads per block; ``JB`` hidden units per slice (8, 4, 2 or 1; larger first)
    with ``KS = 32 // JB`` threads per gate row; ``NV`` slices per block (1, 2 or 4). Both
    directions in one launch when they fit together, else one launch per direction.
    Simulator: one block (the simulator's grid barrier only spans one block), ``JB = KS = 2``.
    """
    if _simulating():
        JB, KS = 2, 2
        NV = D * ((H + JB - 1) // JB)
        smem = persistent_smem_bytes(JB, KS, NV, B, P)
        return PersistentPlan(JB, KS, NV, [(0, D, persistent_forward, 1, 4 * JB * KS, smem)]), None
    dev = cuda.get_current_device()
    if not getattr(dev, "COOPERATIVE_LAUNCH", 1):
        return None, "the GPU does not support cooperative launch"
    # Errors below (e.g. no libcudadevrt to link the grid barrier) are real errors and surface;
    # only "does not fit" falls back to the multi-launch path.
    (xg, w_hh_t, w_hr_t, hbuf, c, hh, y, gates, cs, lengths, has_proj, training) = args
    spec = persistent_forward.specialize(xg, w_hh_t, w_hr_t, hbuf, c, hh, y, gates, cs,
                                         lengths, 0, D, 1, 1, 1, has_proj, training)
    kern = next(iter(spec.overloads.values()))
    for split in ((D,) if D == 1 else (2, 1)):
        for JB in (8, 4, 2, 1):
            KS = 32 // JB
            nt = 4 * JB * KS
            NJ = (H + JB - 1) // JB
            for NV in (1, 2, 4):
                smem = persistent_smem_bytes(JB, KS, NV, B, P)
                if smem > smem_limit:
                    continue
                blocks = (split * NJ + NV - 1) // NV
                if blocks <= kern.max_cooperative_grid_blocks(nt, smem):
                    launches = [(d0, split, spec, blocks, nt, smem) for d0 in range(0, D, split)]
                    return PersistentPlan(JB, KS, NV, launches), None
    return None, (
        f"W_hh ({D} x {4 * H} x {P} float32) does not fit in the shared memory of one co-resident "
        f"cooperative grid ({smem_limit} bytes per block)")


def recurrence_forward(xg, w_hh_t, w_hr_t, h0, c0, lengths, y, h_n, c_n, gates, cs, hh,
                       training, path="multi", smem_limit=PERSISTENT_SMEM_LIMIT):
    """Run one layer (all directions) over all steps. Writes ``y``, ``h_n`` and ``c_n`` (D, B, .).

    ``h0``, ``c0`` (D, B, H_out), (D, B, H) are read only. ``hh`` (D, B, H) is scratch for the
    projection (any (1, 1, 1) array without one). ``gates``, ``cs`` are written only when
    ``training`` (else (1, 1, 1) placeholders). ``path``: ``"multi"`` (launches per step),
    ``"persistent"`` (one cooperative launch; RuntimeError when it cannot run here) or
    ``"auto"`` (persistent when it fits in ``smem_limit`` bytes of shared memory per block,
    else multi). Returns the path that ran.
    """
    T, B = xg.shape[0], xg.shape[1]
    D, H, P = c0.shape[0], c0.shape[2], h0.shape[2]
    has_proj = P != H
    training = bool(training)
    c_n.copy_to_device(c0)
    if path in ("persistent", "auto"):
        hbuf = cuda.device_array((2, D, B, P), np.float32)
        plan, why = plan_persistent((xg, w_hh_t, w_hr_t, hbuf, c_n, hh, y, gates, cs, lengths,
                                     has_proj, training), D, B, H, P, smem_limit)
        if plan is None and path == "persistent":
            raise RuntimeError(f"the persistent recurrence kernel cannot run here: {why}")
        if plan is not None:
            hbuf[0].copy_to_device(h0)
            for d_first, nd, kern, grid, nt, smem in plan.launches:
                kern[grid, nt, 0, smem](xg, w_hh_t, w_hr_t, hbuf, c_n, hh, y, gates, cs, lengths,
                                        d_first, nd, plan.JB, plan.KS, plan.NV, has_proj, training)
            h_n.copy_to_device(hbuf[T % 2])
            return "persistent"
    elif path != "multi":
        raise ValueError(f"path must be 'multi', 'persistent' or 'auto', got {path!r}")
    bufs = (cuda.device_array((D, B, P), np.float32), cuda.device_array((D, B, P), np.float32))
    bufs[0].copy_to_device(h0)
    g1, b1 = _grid(H, B, D)
    g2, b2 = _grid(P, B, D)
    fwd = step_forward[g1, b1]  # launch configurations built once, not per step
    proj = step_project[g2, b2]
    for s in range(T):
        h_in, h_out = bufs[s % 2], bufs[1 - s % 2]
        fwd(s, xg, w_hh_t, h_in, h_out, c_n, hh, y, gates, cs, lengths, has_proj, training)
        if has_proj:
            proj(s, hh, w_hr_t, h_in, h_out, y, lengths)
    h_n.copy_to_device(bufs[T % 2])
    return "multi"


def recurrence_backward(dy, gates, cs, c0, dh_n, dc_n, w_hh, w_hr, lengths, dgates, dhp,
                        dh0, dc0):
    """Backward through one layer (all directions). Writes ``dgates`` (T, B, D*4H), ``dhp``
    (T, B, D*P) with a projection, and ``dh0``, ``dc0`` (D, B, .). Reads the rest."""
    T, B = dy.shape[0], dy.shape[1]
    D, H, P = c0.shape[0], c0.shape[2], dh_n.shape[2]
    dh0.copy_to_device(dh_n)
    dc0.copy_to_device(dc_n)
    gh, bh = _grid(H, B, D)
    if P == H:
        fused = step_backward_fused[gh, bh]
        for s in range(T + 1):
            fused(s, dy, gates, cs, c0, w_hh, dh0, dc0, dgates, lengths)
        return
    gp, bp = _grid(P, B, D)
    bdh, bcell = step_backward_dh[gp, bp], step_backward_cell[gh, bh]
    for s in range(T + 1):
        bdh(s, dy, w_hh, dh0, dhp, dgates, lengths)
        if s < T:
            bcell(s, dhp, w_hr, gates, cs, c0, dc0, dgates, lengths)
