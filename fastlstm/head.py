"""The output head: a dense layer on the LSTM's output, then softmax cross-entropy (or squared
error), fused, with its backward.

::

    out = fastlstm.forward(x, params, lengths=lengths, training=True)       # y (T, B, H)
    res = fastlstm.head.dense_softmax_xent(out.y, W, b, targets, lengths=lengths)
    res.loss                                                                 # a float
    dy, dW, db = fastlstm.head.dense_softmax_xent_backward(res.cache)
    grads = fastlstm.backward(out.cache, dy=dy)

    probs = fastlstm.head.dense_softmax(y_t, W, b)                           # sampling

``W`` (V, H) and ``b`` (V,) are ``torch.nn.Linear(H, V)``'s ``weight`` and ``bias``; the loss
is ``torch.nn.functional.cross_entropy(linear(y).reshape(-1, V), targets.reshape(-1))``.

CPU (``kernels/cpu/head.py``): the forward runs blocks of rows on the backend's threads
(``fastlstm.config`` / Numba's thread count), each a BLAS GEMM for its logits (on that thread)
and one compiled pass per row, while the row is in cache, for the numerically stable
log-softmax, the cross-entropy and the logits' gradient ``(softmax - onehot) * scale``, written
over the logits (no second (N, V) array), with ``db``. The backward is the two GEMMs ``dy`` and
``dW``, again per block of rows on the threads (the blocks' shares of ``dW`` added); all without
the GIL, BLAS on the calling thread. Small heads (``PARALLEL_MIN_FLOP``) run on one thread. GPU (``device="cuda"``, float32, ``kernels/cuda/head.py``): numba.cuda kernels.
``device="reference"``: plain NumPy, the oracle.

The cache holds the (N, V) buffer (the gradient on the CPU, the exponentials for the reference
and the GPU, where the backward turns it into the gradient in place); a cache serves one
backward call. On the CPU the backward keeps that buffer for the next forward (one buffer, no
first-touch page faults in a training loop); :func:`release_workspace` frees it.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = ["HeadResult", "HeadCache", "dense_softmax_xent", "dense_softmax_xent_backward",
           "dense_softmax", "dense_mse", "dense_mse_backward", "dense", "release_workspace"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class HeadResult(NamedTuple):
    """``loss``: a Python float; ``cache``: what the backward needs (:class:`HeadCache`)."""
    loss: float
    cache: Any


@dataclass
class HeadCache:
    """What a head's backward reads. ``out`` (N, V): the logits buffer (cross-entropy, turned into
    the gradient by the backward) or the predictions (squared error); ``y_shape``: the caller's
    ``y`` shape, which ``dy`` takes."""
    kind: str
    device: str
    y2: Any
    W: Any
    out: Any
    aux: Any          # cross-entropy: db (CPU; ``out`` already holds the gradient), 1/sum(exp)
    #                   per row (reference) or the log-sum-exp (GPU); squared error: the targets
    targets: Any
    scale: Any
    y_shape: tuple
    used: bool = False

    @property
    def pred(self) -> np.ndarray:
        """The squared-error head's predictions, ``y W^T + b``, shaped ``y.shape[:-1] + (V,)``."""
        if self.kind != "mse":
            raise AttributeError("pred: only the squared-error head keeps its predictions")
        return self.out.reshape(self.y_shape[:-1] + (self.out.shape[1],))


# ------------------------------------------------------------------------------ checking


def _is_gpu(a) -> bool:
    """A GPU array: anything exporting ``__cuda_array_interface__``, or a numba device array
    (also the simulator's, which exports nothing)."""
    return type(a) is not np.ndarray and (
        hasattr(a, "__cuda_array_interface__")
        or type(a).__name__ in ("DeviceNDArray", "FakeCUDAArray", "MappedNDArray"))


def _device_of(device, *arrays) -> str:
    if device not in ("auto", "cpu", "cuda", "reference"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'reference', got {device!r}")
    if device == "auto":
        return "cuda" if any(_is_gpu(a) for a in arrays) else "cpu"
    return device


def _host(a, name):
    if type(a) is np.ndarray:
        return a
    if _is_gpu(a):
        if hasattr(a, "copy_to_host"):
            return a.copy_to_host()
        from numba import cuda
        return cuda.as_cuda_array(a).copy_to_host()
    if type(a).__module__.startswith("torch"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _check_yWb(y, W, b):
    y, W, b = _host(y, "y"), _host(W, "W"), _host(b, "b")
    if y.dtype not in _FLOATS:
        raise TypeError(f"y must be float32 or float64, got {y.dtype}")
    for name, a in (("W", W), ("b", b)):
        if a.dtype != y.dtype:
            raise TypeError(f"{name} must have y's dtype {y.dtype}, got {a.dtype}; convert it "
                            f"with {name}.astype(np.{y.dtype.name})")
    if y.ndim not in (2, 3):
        raise ValueError(f"y must be (T, B, H) or (N, H), got shape {y.shape}")
    H = y.shape[-1]
    if W.ndim != 2 or W.shape[1] != H or W.shape[0] < 1:
        raise ValueError(f"W must be (V, H) = (V, {H}) (torch.nn.Linear's weight layout), "
                         f"got shape {W.shape}")
    V = W.shape[0]
    if b.shape != (V,):
        raise ValueError(f"b must be (V,) = ({V},), got shape {b.shape}")
    return y, np.ascontiguousarray(W), np.ascontiguousarray(b)


def _row_scale(y_shape, lengths, reduction, per_row: int):
    """(N,) float64 weights of the rows in the loss, and the (N,) mask of the valid rows (None
    when all are valid)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    N = math.prod(y_shape[:-1])
    if lengths is None:
        if N == 0:
            return np.zeros(0), None
        return np.full(N, 1.0 / (N * per_row) if reduction == "mean" else 1.0), None
    else:
        if len(y_shape) != 3:
            raise ValueError(f"lengths needs time-major y (T, B, H), got y of shape {y_shape}")
        T, B = y_shape[:2]
        lengths = np.asarray(_host(lengths, "lengths"))
        if lengths.shape != (B,) or lengths.dtype.kind not in "iu":
            raise ValueError(f"lengths must be ({B},) integers, got {lengths.shape} {lengths.dtype}")
        if np.any(lengths < 0) or np.any(lengths > T):
            raise ValueError(f"lengths must lie in 0..T = 0..{T}, got {lengths.tolist()}")
        valid = (np.arange(T)[:, None] < lengths[None, :]).reshape(-1)
    count = int(valid.sum())
    scale = np.zeros(N, np.float64)
    if count:
        scale[valid] = 1.0 / (count * per_row) if reduction == "mean" else 1.0
    return scale, valid


def _check_targets(targets, y_shape, V, valid, check_range=True):
    """(N,) int64 targets; ``check_range=False`` leaves the 0..V-1 check to the caller (the
    CPU kernel checks each valid row's target as it reads it: :func:`_target_error`)."""
    t = _host(targets, "targets")
    if t.dtype.kind not in "iu":
        raise TypeError(f"targets must be integer class indices, got dtype {t.dtype}")
    if t.shape != tuple(y_shape[:-1]):
        raise ValueError(f"targets must have shape {tuple(y_shape[:-1])} (y's shape without H), "
                         f"got {t.shape}")
    t = np.ascontiguousarray(t.reshape(-1), dtype=np.int64)
    if check_range:
        tv = t if valid is None else t[valid]
        if tv.size and (tv.min() < 0 or tv.max() >= V):
            raise _target_error(tv, V)
    return t


def _target_error(tv, V):
    return ValueError(f"targets must lie in 0..V-1 = 0..{V - 1} (at valid steps), got values "
                      f"from {int(tv.min())} to {int(tv.max())}")


def _prepare(y, W, b, lengths, reduction, per_row):
    y, W, b = _check_yWb(y, W, b)
    y2 = np.ascontiguousarray(y.reshape(-1, y.shape[-1]))
    scale, valid = _row_scale(y.shape, lengths, reduction, per_row)
    return y, y2, W, b, scale, valid


# ------------------------------------------------------------------------- cross-entropy


def dense_softmax_xent(y, W, b, targets, lengths=None, reduction: str = "mean", *,
                       device: str = "auto") -> HeadResult:
    """Softmax cross-entropy of a dense layer on ``y``: ``cross_entropy(y W^T + b, targets)``.

    Parameters
    ----------
    y : array (T, B, H) time-major, or (N, H)
        float32 or float64; not modified.
    W : array (V, H)
        The dense weight, ``torch.nn.Linear(H, V).weight``'s layout; y's dtype.
    b : array (V,)
        The dense bias.
    targets : int array (T, B) or (N,)
        Class indices in 0..V-1 (at the valid steps; others are not read).
    lengths : int array (B,), optional
        Valid steps per sequence (with (T, B, H) input): steps ``t >= lengths[b]`` contribute
        nothing; "mean" averages over the valid rows.
    reduction : "mean" or "sum"
    device : "auto", "cpu", "cuda" or "reference"
        "auto": "cuda" for GPU arrays, else "cpu". "cuda" computes in float32 on the GPU.

    Returns
    -------
    HeadResult
        ``loss`` (float) and ``cache`` for :func:`dense_softmax_xent_backward` (one call).
    """
    dev = _device_of(device, y, W, b)
    if dev == "cuda":
        return _cuda_xent(y, W, b, targets, lengths, reduction)
    y, y2, W, b, scale, valid = _prepare(y, W, b, lengths, reduction, 1)
    V = W.shape[0]
    t = _check_targets(targets, y.shape, V, valid, check_range=dev == "reference")
    if dev == "reference":
        loss, buf, aux = _ref_xent(y2, W, b, t, scale)
    else:
        loss, buf, aux = _cpu_xent(y2, W, b, t, scale)
        if loss is None:
            raise _target_error(t if valid is None else t[valid], V)
    return HeadResult(float(loss), HeadCache("xent", dev, y2, W, buf, aux, t, scale, y.shape))


_spare_lock = threading.Lock()
_spare: list = []  # at most one flat buffer a CPU backward handed back, for the next forward


def _gradient_buffer(N, V, dtype) -> np.ndarray:
    """An (N, V) array for a CPU forward: the spare buffer when it is large enough (a fresh
    array costs first-touch page faults, ~20 ms per 160 MB here), else a new one."""
    with _spare_lock:
        if _spare and _spare[0].dtype == dtype and _spare[0].size >= N * V:
            return _spare.pop()[:N * V].reshape(N, V)
    return np.empty(N * V, dtype).reshape(N, V)


def _give_back(buf) -> None:
    """A CPU backward is done with its cache's (N, V) buffer: keep it for the next forward."""
    base = buf.base
    if isinstance(base, np.ndarray) and base.ndim == 1 and base.flags.c_contiguous:
        with _spare_lock:
            _spare[:] = [base]


def release_workspace() -> None:
    """Free the (N, V) buffer the CPU head keeps between a backward and the next forward."""
    with _spare_lock:
        _spare.clear()


#: Products of the head (``2 N H V`` flop, the forward's GEMM) below which it runs on one thread:
#: under it the two tasks' hand-offs (~75 us per call for two tasks here) cost more than the
#: second core saves.
PARALLEL_MIN_FLOP = 16e6


def _threads(N, H, V) -> int:
    """Threads for a CPU head call: the backend's count (``fastlstm.config`` / Numba's), 1 for
    small products or where SciPy's OpenBLAS cannot be pinned to one thread per task."""
    if 2.0 * N * H * V < PARALLEL_MIN_FLOP:
        return 1
    from .backends.cpu import num_threads
    from .kernels.cpu.parallel import can_pin
    n = num_threads()
    if n < 2 or N < 2 * n or not can_pin():
        return 1
    return n


def _cpu_xent(y2, W, b, t, scale):
    """The CPU forward: blocks of rows on the threads, each its GEMM (BLAS on that thread) and
    its rows' pass while they are in cache. Returns (loss, G (N, V) the logits' gradient, db),
    or three None where a valid row's target is outside 0..V-1.

    BLAS is pinned to the calling thread even for a one-task call: OpenBLAS's own threads
    (which spin and wait on each other) turn sub-millisecond products into 8-24 ms ones when
    another process holds a core (measured on a loaded 2-core machine)."""
    from .kernels.cpu.head import xent_forward
    from .kernels.cpu.parallel import run_tasks, single_threaded_blas, split_rows
    N, H = y2.shape
    V = W.shape[0]
    g = _gradient_buffer(N, V, y2.dtype)
    P = _threads(N, H, V)
    acc = np.zeros((P, V))
    if P == 1:
        with single_threaded_blas():
            out = [xent_forward(y2, W, b, t, scale, g, acc[0])] if N else []
    else:
        def task(i, r0, r1):
            return xent_forward(y2[r0:r1], W, b, t[r0:r1], scale[r0:r1], g[r0:r1], acc[i])
        with single_threaded_blas():
            out = run_tasks(task, [(i, r0, r1) for i, (r0, r1) in enumerate(split_rows(N, P))])
    if any(bad for _, bad in out):
        return None, None, None
    loss = sum(part for part, _ in out)
    db = (acc[0] if P == 1 else acc.sum(axis=0)).astype(y2.dtype)
    return loss, g, db


def _dw_transposed(V, H, dtype) -> bool:
    """Whether the weight gradient goes through its transpose ``y^T G`` (then one (H, V) -> (V, H)
    copy) rather than ``G^T y``. Measured with SciPy's OpenBLAS (SkylakeX kernels, one thread,
    16 384 rows): ``y^T G`` is 1.45-1.85x faster in float32 at V <= H/4 (H = 256, V = 16-64;
    neutral at H = 64 and 512) and 1.2-1.9x faster in float64 at V >= 4H (H = 64-512), slower
    (0.6-0.9x) in float64 at small V and in float32 at V >= H."""
    if dtype == np.float32:
        return 4 * V <= H
    return V >= 4 * H


def _cpu_grad_gemms(g, W, y2):
    """``dy = g W`` and ``dW = g^T y2``: each thread takes a block of rows, its rows of ``dy``
    and its rows' share of the sum in ``dW`` (the shares added after: ``V H`` additions per
    extra thread, against ``2 N V H`` flop of product). The same shapes on every thread keep
    them balanced (one thread on ``dy`` and another on ``dW`` differ by up to 1.5x, as
    OpenBLAS runs the two shapes at different rates)."""
    from .kernels.cpu.head import grad_gemms
    from .kernels.cpu.parallel import run_tasks, single_threaded_blas, split_rows
    N, V = g.shape
    H = y2.shape[1]
    dt = y2.dtype
    dy = np.empty((N, H), dt)
    if N == 0:
        return dy, np.zeros((V, H), dt)
    P = _threads(N, H, V)
    shape = (H, V) if _dw_transposed(V, H, dt) else (V, H)
    dW_parts = [np.empty(shape, dt) for _ in range(P)]
    if P == 1:
        with single_threaded_blas():
            grad_gemms(g, W, y2, dy, dW_parts[0])
    else:
        def task(r0, r1, dw):
            grad_gemms(g[r0:r1], W, y2[r0:r1], dy[r0:r1], dw)
        with single_threaded_blas():
            run_tasks(task, [(r0, r1, d) for (r0, r1), d in zip(split_rows(N, P), dW_parts)])
    dW = dW_parts[0]
    for d in dW_parts[1:]:
        dW += d
    if shape != (V, H):
        dW = np.ascontiguousarray(dW.T)
    return dy, dW


def _take(cache, kind):
    if not isinstance(cache, HeadCache) or cache.kind != kind:
        raise TypeError(f"cache must be the .cache of a {'dense_softmax_xent' if kind == 'xent' else 'dense_mse'} "
                        f"result, got {type(cache).__name__}")
    if cache.used:
        raise RuntimeError("this head cache was already used by a backward call (the backward "
                           "overwrites its buffer); run the forward again")
    cache.used = True
    return cache


def dense_softmax_xent_backward(cache: HeadCache):
    """Gradients of :func:`dense_softmax_xent`'s loss.

    Returns
    -------
    dy : array, y's shape
    dW : array (V, H)
    db : array (V,)
        In y's dtype (GPU arrays for a GPU forward given GPU arrays).
    """
    c = _take(cache, "xent")
    if c.device == "cuda":
        return _cuda_xent_backward(c)
    if c.device == "reference":
        dy, dW, db = _ref_xent_backward(c.out, c.aux, c.targets, c.scale, c.W, c.y2)
    else:
        dy, dW = _cpu_grad_gemms(c.out, c.W, c.y2)
        db = c.aux
        _give_back(c.out)
        c.out = None
    return dy.reshape(c.y_shape), dW, db


def dense_softmax(y, W, b, *, temperature: float = 1.0, device: str = "auto") -> np.ndarray:
    """``softmax((y W^T + b) / temperature)`` over the last axis: probabilities, shape
    ``y.shape[:-1] + (V,)`` (e.g. a :class:`fastlstm.Stepper` output (B, H) -> (B, V))."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dev = _device_of(device, y, W, b)
    y, W, b = _check_yWb(y, W, b)
    y2 = np.ascontiguousarray(y.reshape(-1, y.shape[-1]))
    if dev == "reference" or dev == "cuda":
        z = (y2 @ W.T + b) / temperature
        z = np.exp(z - z.max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
    else:
        from .kernels.cpu.head import softmax_rows
        probs = np.empty((y2.shape[0], W.shape[0]), y.dtype)
        softmax_rows(y2, W, b, probs, float(temperature))
    return probs.reshape(y.shape[:-1] + (W.shape[0],))


def dense(y, W, b) -> np.ndarray:
    """``y W^T + b``: the dense layer alone (e.g. the regression head's forecasts)."""
    y, W, b = _check_yWb(y, W, b)
    return y @ W.T + b


# ----------------------------------------------------------------------------- regression


def _check_float_targets(targets, y_shape, V, dtype):
    t = _host(targets, "targets")
    want = tuple(y_shape[:-1]) + (V,)
    if t.shape == tuple(y_shape[:-1]) and V == 1:
        t = t.reshape(want)
    if t.shape != want:
        raise ValueError(f"targets must have shape {want} (y's shape with H -> V), got {t.shape}")
    if t.dtype.kind not in "fiu":
        raise TypeError(f"targets must be real numbers, got dtype {t.dtype}")
    return np.ascontiguousarray(t.reshape(-1, V), dtype=dtype)


def dense_mse(y, W, b, targets, lengths=None, reduction: str = "mean", *,
              device: str = "auto") -> HeadResult:
    """Squared error of a dense layer on ``y``: ``mse_loss(y W^T + b, targets)``.

    Parameters
    ----------
    y : array (T, B, H) or (N, H)
    W : array (V, H), b : array (V,)
    targets : array ``y.shape[:-1] + (V,)`` (or ``y.shape[:-1]`` when V == 1)
    lengths : int array (B,), optional
        As in :func:`dense_softmax_xent`; "mean" averages over the valid elements.
    reduction : "mean" or "sum"
    device : "auto", "cpu" or "reference" (the GPU path is not implemented for this head:
        GPU arrays are copied to the host)

    Returns
    -------
    HeadResult
        ``loss`` and ``cache``; ``cache.pred`` holds the predictions ``y W^T + b``.
    """
    dev = _device_of(device, y, W, b)
    y, y2, W, b, scale, valid = _prepare(y, W, b, lengths, reduction, _host(W, "W").shape[0])
    V = W.shape[0]
    t = _check_float_targets(targets, y.shape, V, y.dtype)
    if dev == "reference":
        pred = y2 @ W.T + b
        loss = float(np.sum(((pred - t) ** 2).sum(axis=1) * scale))
        dev = "reference"
    else:
        from .kernels.cpu.head import mse_forward
        pred = np.empty((y2.shape[0], V), y.dtype)
        loss = mse_forward(y2, W, b, t, scale, pred)
        dev = "cpu"
    return HeadResult(float(loss), HeadCache("mse", dev, y2, W, pred, t, None, scale, y.shape))


def dense_mse_backward(cache: HeadCache):
    """Gradients of :func:`dense_mse`'s loss: ``(dy, dW, db)`` as in
    :func:`dense_softmax_xent_backward`."""
    c = _take(cache, "mse")
    N, H = c.y2.shape
    V = c.W.shape[0]
    if c.device == "reference":
        g = 2.0 * (c.out - c.aux) * c.scale[:, None]
        g = g.astype(c.y2.dtype)
        dy, dW, db = g @ c.W, g.T @ c.y2, g.sum(axis=0)
    else:
        from .kernels.cpu.head import mse_backward
        g = np.empty((N, V), c.y2.dtype)
        dy = np.empty((N, H), c.y2.dtype)
        dW = np.empty((V, H), c.y2.dtype)
        db = np.empty(V, c.y2.dtype)
        mse_backward(c.out, c.aux, c.scale, c.W, c.y2, g, dy, dW, db)
    return dy.reshape(c.y_shape), dW, db


# ------------------------------------------------------------------------ NumPy reference


def _ref_xent(y2, W, b, t, scale):
    z = y2 @ W.T + b
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1)
    lse = m[:, 0] + np.log(s)
    rows = np.arange(len(t))
    tt = np.where(scale > 0, t, 0)
    loss = float(np.sum((lse - z[rows, tt]) * scale))
    return loss, e, (1.0 / s).astype(y2.dtype)


def _ref_xent_backward(e, inv, t, scale, W, y2):
    g = e * (inv * scale)[:, None]
    valid = scale > 0
    rows = np.flatnonzero(valid)
    g[rows, t[rows]] -= scale[rows]
    g[~valid] = 0
    g = g.astype(y2.dtype, copy=False)
    return g @ W, g.T @ y2, g.sum(axis=0)


def _cuda_prepare(y, W, b, targets, lengths, reduction):
    """Host-side checks for the GPU path: ``(y_shape, V, t (N,) int64, scale (N,) float64)``."""
    shape = tuple(y.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"y must be (T, B, H) or (N, H), got shape {shape}")
    V = W.shape[0]
    if W.shape != (V, shape[-1]):
        raise ValueError(f"W must be (V, H) = (V, {shape[-1]}), got shape {tuple(W.shape)}")
    if tuple(b.shape) != (V,):
        raise ValueError(f"b must be (V,) = ({V},), got shape {tuple(b.shape)}")
    scale, valid = _row_scale(shape, lengths, reduction, 1)
    t = _check_targets(targets, shape, V, valid)
    return shape, V, t, scale


def _to_device(a, name):
    from numba import cuda
    if hasattr(a, "copy_to_host"):
        d = a
    elif _is_gpu(a):
        d = cuda.as_cuda_array(a)
    else:
        d = cuda.to_device(np.ascontiguousarray(_host(a, name)))
    if d.dtype != np.float32:
        raise TypeError(f"{name} must be float32 on the GPU (device='cuda'), got {d.dtype}")
    return d


def _cuda_xent(y, W, b, targets, lengths, reduction):
    from numba import cuda

    from .kernels.cuda import head as kc
    on_gpu = _is_gpu(y)
    yd, Wd, bd = _to_device(y, "y"), _to_device(W, "W"), _to_device(b, "b")
    shape, V, t, scale = _cuda_prepare(yd, Wd, bd, targets, lengths, reduction)
    y2 = yd.reshape(-1, shape[-1]) if yd.is_c_contiguous() else cuda.to_device(
        np.ascontiguousarray(yd.copy_to_host()).reshape(-1, shape[-1]))
    td, sd = cuda.to_device(t), cuda.to_device(scale.astype(np.float32))
    loss, logits, lse = kc.xent_forward(y2, Wd, bd, td, sd)
    cache = HeadCache("xent", "cuda", y2, Wd, logits, lse, td, sd, shape)
    cache.on_gpu = on_gpu
    return HeadResult(loss, cache)


def _cuda_xent_backward(c):
    from .kernels.cuda import head as kc
    dy, dW, db = kc.xent_backward(c.out, c.aux, c.targets, c.scale, c.W, c.y2)
    dy = dy.reshape(c.y_shape)
    if getattr(c, "on_gpu", False):
        return dy, dW, db
    return dy.copy_to_host(), dW.copy_to_host(), db.copy_to_host()
