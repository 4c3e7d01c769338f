"""The input rules, written once: validation, the caller's layout <-> time-major, unbatched
input, and the result types. The host path (``reference``, ``cpu``) and the GPU path
(``fastlstm.backends.cuda``) both check their inputs here; only the copying differs.

Layouts accepted (as ``torch.nn.LSTM``)::

    x        (T, B, I), or (B, T, I) with batch_first=True, or unbatched (T, I)
    h0, c0   (L*D, B, H_out), (L*D, B, H)   unbatched: (L*D, H_out), (L*D, H)
    lengths  (B,) integers in 1..T (packed-sequence semantics)

Outputs: ``y`` in the layout of ``x`` with last dimension ``D*H_out``; ``h``, ``c`` in the
layout of ``h0``, ``c0``. The compute dtype is the parameters' dtype; inputs of another float
dtype are converted (inputs are never modified).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._coerce import check_bool, to_numpy
from .backends.state import TrainingState
from .params import LSTMParams, check_allocation

__all__ = ["ForwardResult", "BackwardResult", "LSTMCache", "CallSpec", "check_params",
           "check_call", "check_lengths", "check_state_shape", "check_grad_shape",
           "check_dropout", "host_inputs", "host_result", "dropout_masks", "estimate_bytes"]


# ---------------------------------------------------------------------------- result types
@dataclass(frozen=True, eq=False)
class LSTMCache:
    """What :func:`fastlstm.backward` needs from a training forward. Never modified.

    ``state`` is the backend's :class:`~fastlstm.backends.state.TrainingState` (flattenable to
    arrays and ints); the rest records the caller's layout.
    """
    device: str
    state: TrainingState
    batch_first: bool
    unbatched: bool
    x_shape: tuple
    y_shape: tuple
    h_shape: tuple   # time-major, batched: (L*D, B, H_out)
    c_shape: tuple
    dtype: np.dtype
    on_device: bool = False  # the forward's input was a GPU array: gradients stay there

    @property
    def paths(self) -> tuple:
        return self.state.paths


@dataclass(frozen=True, eq=False)
class ForwardResult:
    """``y``, ``h``, ``c`` (and ``cache`` for a training call); unpacks as ``y, (h, c)``.

    ``paths``: the recurrence path each layer took (``"serial"``/``"parallel"`` on the CPU,
    ``"step"`` for a small inference call on the streaming step kernel,
    ``"multi"``/``"persistent"`` on the GPU, ``"reference"``)."""
    y: Any
    h: Any
    c: Any
    cache: LSTMCache | None = None
    paths: tuple = ()

    def __iter__(self):  # y, (h, c) = forward(...)
        return iter((self.y, (self.h, self.c)))


@dataclass(frozen=True, eq=False)
class BackwardResult:
    dx: Any
    dh0: Any
    dc0: Any
    dparams: dict


# ---------------------------------------------------------------------------- checks
def check_params(params) -> LSTMParams:
    if isinstance(params, LSTMParams):
        return params
    raise TypeError(
        f"params must be an LSTMParams (use LSTMParams.from_state_dict for a mapping), "
        f"got {type(params).__name__}")


def check_dropout(training, dropout) -> tuple[bool, float]:
    training = check_bool(training, "training")
    if isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, (int, float, np.floating, np.integer)) \
            or math.isnan(float(dropout)) or not (0.0 <= float(dropout) <= 1.0):
        raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
    return training, float(dropout)


def _dtype_kind(a) -> str:
    return np.dtype(a.dtype).kind


def float_host(a, name: str) -> np.ndarray:
    """A host array-like as a floating-point NumPy array (a view where possible)."""
    arr = to_numpy(a, name)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    return arr


def check_float(a, name: str):
    """``a`` (host or device array) has a floating-point dtype."""
    if _dtype_kind(a) != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {np.dtype(a.dtype)}")
    return a


@dataclass(frozen=True)
class CallSpec:
    """The shapes of one forward call, found by :func:`check_call`."""
    T: int
    B: int
    I: int
    unbatched: bool
    batch_first: bool
    training: bool
    dropout: float
    x_shape: tuple    # as the caller gave it
    h_shape: tuple    # time-major, batched: (L*D, B, H_out)
    c_shape: tuple    # (L*D, B, H)
    y_shape: tuple    # time-major: (T, B, D*H_out)

    def user(self, shape: tuple) -> tuple:
        """A state's shape as the caller sees it (no batch axis for unbatched input)."""
        return (shape[0], shape[2]) if self.unbatched else shape

    @property
    def user_y_shape(self) -> tuple:
        T, B, F = self.y_shape
        return (T, F) if self.unbatched else ((B, T, F) if self.batch_first else (T, B, F))


def check_call(x, params: LSTMParams, *, batch_first, training, dropout) -> CallSpec:
    """Check ``x`` (host or device array: anything with ``shape`` and ``dtype``) and the flags;
    the shapes of the call."""
    training, dropout = check_dropout(training, dropout)
    batch_first = check_bool(batch_first, "batch_first")
    check_float(x, "x")
    shape = tuple(int(n) for n in x.shape)
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
    if T == 0:
        raise ValueError(f"x must have at least one step, got shape {shape}")
    if I != params.input_size:
        raise ValueError(f"x has {I} features per step but params.input_size is {params.input_size}")
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    return CallSpec(T, B, I, unbatched, batch_first, training, dropout, shape,
                    (L * D, B, P), (L * D, B, H), (T, B, D * P))


def check_state_shape(a, name: str, shape: tuple, spec: CallSpec):
    """``h0`` / ``c0`` (host or device array) has the caller's shape of ``shape``."""
    check_float(a, name)
    want = spec.user(shape)
    if tuple(a.shape) != want:
        raise ValueError(f"{name} must have shape {want}, got {tuple(a.shape)}")
    return a


def check_states(h0, c0):
    if c0 is not None and h0 is None:
        raise ValueError("c0 was given without h0; pass both (or h0 alone, with c0 = 0)")


def check_lengths(lengths, B: int, T: int) -> np.ndarray:
    """``lengths`` (host array-like) as a new int64 array of shape (B,), values in 1..T."""
    if lengths is None:
        return np.full(B, T, dtype=np.int64)
    arr = to_numpy(lengths, "lengths")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            raise TypeError(f"lengths must be integers, got dtype {arr.dtype} (cast with .astype(int))")
        raise TypeError(f"lengths must be an integer array, got dtype {arr.dtype}")
    arr = arr.reshape(-1) if arr.ndim == 0 else arr
    if arr.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},) (one per sequence), got {arr.shape}")
    if arr.size and (arr.min() < 1 or arr.max() > T):
        raise ValueError(f"lengths must lie in 1..{T} (the sequence length), got min {arr.min()}, max {arr.max()}")
    return np.array(arr, dtype=np.int64)  # always a copy: a cache may keep it


def check_grad_shape(a, name: str, shape: tuple):
    """A gradient (host or device array) given in the caller's layout has ``shape``."""
    check_float(a, name)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (the shape of the output), "
                         f"got {tuple(a.shape)}")
    return a


def estimate_bytes(params: LSTMParams, T: int, B: int, training: bool) -> int:
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    per_layer_fwd = T * B * (D * 4 * H + D * P)  # input projection + output
    total = per_layer_fwd * (L if training else 1)
    if training:
        total += L * D * T * B * 5 * H  # saved gates and cell states
    return total * params.dtype.itemsize


def dropout_masks(params: LSTMParams, T: int, B: int, dropout: float, seed) -> list | None:
    """Inter-layer dropout masks, already scaled: L-1 arrays (T, B, D*H_out), or None."""
    if dropout == 0.0 or params.num_layers == 1:
        return None
    rng = np.random.default_rng(seed)
    shape = (T, B, params.num_directions * params.output_size)
    scale = 0.0 if dropout >= 1.0 else 1.0 / (1.0 - dropout)
    return [((rng.random(shape) >= dropout) * scale).astype(params.dtype)
            for _ in range(params.num_layers - 1)]


# ---------------------------------------------------------------------------- host arrays
def _as_compute(arr: np.ndarray, dtype) -> np.ndarray:
    """Writable C-contiguous array of the compute dtype; a copy unless already exactly that.
    (Read-only arrays are copied so the compiled kernels see one array type.)"""
    out = np.ascontiguousarray(arr, dtype=dtype)
    return out if out.flags.writeable else out.copy()


def time_major_view(a, spec: CallSpec):
    """A (T, B, F) view of an array in the caller's layout (host or device)."""
    if spec.unbatched:
        return a.reshape(a.shape[0], 1, a.shape[1])
    return a.transpose(1, 0, 2) if spec.batch_first else a


@dataclass(frozen=True)
class HostInputs:
    """Validated, time-major, C-contiguous host inputs of the compute dtype."""
    spec: CallSpec
    x: np.ndarray          # (T, B, I)
    h0: np.ndarray         # (L*D, B, H_out)
    c0: np.ndarray         # (L*D, B, H)
    lengths: np.ndarray    # (B,) int64, the call's own copy
    masks: list | None     # L-1 arrays (T, B, D*H_out) or None
    x_shared: bool         # x is (a view of) the caller's memory


def host_state(a, name: str, shape: tuple, spec: CallSpec, dtype) -> np.ndarray:
    """``h0`` / ``c0`` as a new (L*D, B, .) array of the compute dtype (zeros for None)."""
    if a is None:
        return np.zeros(shape, dtype)
    arr = check_state_shape(float_host(a, name), name, shape, spec)
    return np.array(arr.reshape(shape), dtype=dtype)  # always a copy: a cache may keep it


def host_inputs(x, params: LSTMParams, h0=None, c0=None, *, lengths=None, batch_first=False,
                training=False, dropout=0.0, seed=None) -> HostInputs:
    """Validate host inputs (clear errors for every bad input) and normalise their layout."""
    xa = float_host(x, "x")
    spec = check_call(xa, params, batch_first=batch_first, training=training, dropout=dropout)
    check_allocation(estimate_bytes(params, spec.T, spec.B, spec.training),
                     f"a forward of {spec.T}x{spec.B} steps")
    check_states(h0, c0)
    dt = params.dtype
    h0a = host_state(h0, "h0", spec.h_shape, spec, dt)
    c0a = host_state(c0, "c0", spec.c_shape, spec, dt)
    lens = check_lengths(lengths, spec.B, spec.T)
    xc = _as_compute(time_major_view(xa, spec), dt)
    masks = dropout_masks(params, spec.T, spec.B, spec.dropout, seed) if spec.training else None
    # may_share_memory: bounds only (exact overlap solving costs microseconds); a false
    # "shared" costs one copy of x for a training cache, never a wrong result
    return HostInputs(spec, xc, h0a, c0a, lens, masks, bool(np.may_share_memory(xc, xa)))


def zero_padding(x: np.ndarray, lengths: np.ndarray) -> None:
    """x (T, B, I): set every step past each sequence's length to 0, in place."""
    for b in np.flatnonzero(lengths < x.shape[0]):
        x[lengths[b]:, b] = 0.0


def own_kept_input(state: TrainingState | None, inp: HostInputs) -> TrainingState | None:
    """Make a host training state own the input it keeps (its first layer's ``x``, when that
    is ``inp.x``): a copy when ``inp.x`` is the caller's memory, with every step past each
    sequence's length zeroed. Padded steps take no part in the math (packed-sequence
    semantics), but the weight-gradient GEMMs run over every row: whatever the caller left
    there (NaN included) must not reach dW_ih. A state that keeps other arrays (the CPU
    backend's [x | h_prev] rows, written by its kernels) needs nothing."""
    if state is None or not state.layers or state.layers[0].x is not inp.x:
        return state
    padded = bool((inp.lengths < inp.x.shape[0]).any())
    if not (inp.x_shared or padded):
        return state  # already the call's own array, nothing to zero
    x = inp.x.copy() if inp.x_shared else inp.x
    if padded:
        zero_padding(x, inp.lengths)
    layers = (_with(state.layers[0], x=x),) + state.layers[1:]
    return _with(state, layers=layers)


def _with(obj, **changes):
    """``dataclasses.replace`` for the states' frozen dataclasses (fields only, no
    ``__post_init__``), without its per-field checks: a few microseconds less per call."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new


def _keeps(state: TrainingState, a: np.ndarray) -> bool:
    """Whether a host state holds (a view of) ``a``: a layer's saved input or output."""
    return any(isinstance(v, np.ndarray) and np.shares_memory(v, a)
               for layer in state.layers for v in (layer.x, layer.y))


def host_result(device: str, y, h, c, state, paths, spec: CallSpec) -> ForwardResult:
    """Wrap a backend's time-major host outputs in the caller's layout (and the cache)."""
    if spec.unbatched:
        y_out = y[:, 0, :]
    elif spec.batch_first:
        y_out = np.ascontiguousarray(y.transpose(1, 0, 2))
    else:
        y_out = y
    if state is not None and _keeps(state, y_out):
        y_out = y_out.copy()  # the caller owns y; the cache keeps its own
    cache = None
    if state is not None:
        cache = make_cache(device, state, spec, np.dtype(y.dtype))
    if spec.unbatched:
        h, c = h[:, 0, :], c[:, 0, :]
    return ForwardResult(y_out, h, c, cache, tuple(paths))


def make_cache(device: str, state: TrainingState, spec: CallSpec, dtype,
               on_device: bool = False) -> LSTMCache:
    return LSTMCache(device, state, spec.batch_first, spec.unbatched, spec.x_shape,
                     spec.user_y_shape, spec.h_shape, spec.c_shape, np.dtype(dtype), on_device)


def cache_spec(cache: LSTMCache) -> CallSpec:
    """The :class:`CallSpec` of the forward that produced ``cache``."""
    L_D, B, _ = cache.h_shape
    T = cache.x_shape[1] if (cache.batch_first and not cache.unbatched) else cache.x_shape[0]
    I = cache.x_shape[-1]
    return CallSpec(T, B, I, cache.unbatched, cache.batch_first, True, 0.0, cache.x_shape,
                    cache.h_shape, cache.c_shape, (T, B, cache.y_shape[-1]))


def host_grads(cache: LSTMCache, dy, dh, dc):
    """``dy``, ``dh``, ``dc`` (host, caller's layout; None = zero) as time-major arrays of the
    compute dtype."""
    spec, dt = cache_spec(cache), cache.dtype

    def one(a, name, user_shape, tm_shape):
        if a is None:
            return np.zeros(tm_shape, dt)
        arr = check_grad_shape(float_host(a, name), name, user_shape)
        if name == "dy":
            return _as_compute(time_major_view(arr, spec), dt)
        return _as_compute(arr.reshape(tm_shape), dt)

    return (one(dy, "dy", spec.user_y_shape, spec.y_shape),
            one(dh, "dh", spec.user(spec.h_shape), spec.h_shape),
            one(dc, "dc", spec.user(spec.c_shape), spec.c_shape))


def host_backward_result(cache: LSTMCache, dx, dh0, dc0, dparams) -> BackwardResult:
    """A backend's time-major host gradients in the caller's layout."""
    if cache.unbatched:
        dx, dh0, dc0 = dx[:, 0, :], dh0[:, 0, :], dc0[:, 0, :]
    elif cache.batch_first:
        dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
    return BackwardResult(dx, dh0, dc0, dparams)
