"""The public functions: :func:`forward`, :func:`backward` and the :class:`LSTM` module.

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import dispatch
from .params import LSTMParams, check_allocation

__all__ = ["forward", "backward", "LSTM", "ForwardResult", "BackwardResult", "LSTMCache"]


@dataclass(frozen=True)
class LSTMCache:
    """What :func:`backward` needs from a training forward. Opaque; never modified."""
    device: str
    state: Any = field(repr=False)
    batch_first: bool
    unbatched: bool
    x_shape: tuple
    y_shape: tuple
    h_shape: tuple
    c_shape: tuple
    dtype: np.dtype


@dataclass(frozen=True)
class ForwardResult:
    y: Any
    h: Any
    c: Any
    cache: LSTMCache | None = None

    def __iter__(self):  # y, (h, c) = forward(...)
        return iter((self.y, (self.h, self.c)))


@dataclass(frozen=True)
class BackwardResult:
    dx: Any
    dh0: Any
    dc0: Any
    dparams: dict


# ---------------------------------------------------------------------------- validation
def _host_array(a, name: str) -> np.ndarray:
    """A NumPy view/array of a host array-like (NumPy, lists, CPU torch tensors)."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch.Tensor
        a = a.detach().cpu().numpy()
    try:
        arr = np.asarray(a)
    except Exception as exc:
        raise TypeError(f"{name} must be an array, got {type(a).__name__}") from exc
    return arr


def _float_array(a, name: str) -> np.ndarray:
    arr = _host_array(a, name)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    return arr


def _as_compute(arr: np.ndarray, dtype) -> np.ndarray:
    """Writable C-contiguous array of the compute dtype; a copy unless already exactly that.

    (Read-only arrays are copied so the compiled kernels see one array type.)
    """
    out = np.ascontiguousarray(arr, dtype=dtype)
    return out if out.flags.writeable else out.copy()


def _check_params(params) -> LSTMParams:
    if isinstance(params, LSTMParams):
        return params
    raise TypeError(
        f"params must be an LSTMParams (use LSTMParams.from_state_dict for a mapping), "
        f"got {type(params).__name__}"
    )


def _check_lengths(lengths, B: int, T: int) -> np.ndarray:
    if lengths is None:
        return np.full(B, T, dtype=np.int64)
    arr = _host_array(lengths, "lengths")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            raise TypeError(f"lengths must be integers, got dtype {arr.dtype} (cast with .astype(int))")
        raise TypeError(f"lengths must be an integer array, got dtype {arr.dtype}")
    arr = arr.reshape(-1) if arr.ndim == 0 else arr
    if arr.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},) (one per sequence), got {arr.shape}")
    if arr.size and (arr.min() < 1 or arr.max() > T):
        raise ValueError(f"lengths must lie in 1..{T} (the sequence length), got min {arr.min()}, max {arr.max()}")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    return out if out.flags.writeable else out.copy()


def _check_state(a, name: str, shape: tuple, unbatched: bool) -> np.ndarray:
    arr = _float_array(a, name)
    want = (shape[0], shape[2]) if unbatched else shape
    if arr.shape != want:
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    return arr


def _estimate_bytes(params: LSTMParams, T: int, B: int, training: bool) -> int:
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    per_layer_fwd = T * B * (D * 4 * H + D * P)  # input projection + output
    total = per_layer_fwd * (L if training else 1)
    if training:
        total += L * D * T * B * 5 * H  # saved gates and cell states
    return total * params.dtype.itemsize


def _dropout_masks(params: LSTMParams, T: int, B: int, dropout: float, seed) -> list | None:
    if dropout == 0.0 or params.num_layers == 1:
        return None
    rng = np.random.default_rng(seed)
    shape = (T, B, params.num_directions * params.output_size)
    scale = 0.0 if dropout >= 1.0 else 1.0 / (1.0 - dropout)
    return [((rng.random(shape) >= dropout) * scale).astype(params.dtype)
            for _ in range(params.num_layers - 1)]


# ---------------------------------------------------------------------------- forward
@dataclass(frozen=True)
class PreparedInputs:
    """Validated, time-major, C-contiguous inputs of the compute dtype (host arrays)."""
    x: np.ndarray          # (T, B, I)
    h0: np.ndarray         # (L*D, B, H_out)
    c0: np.ndarray         # (L*D, B, H)
    lengths: np.ndarray    # (B,) int64
    masks: list | None     # L-1 arrays (T, B, D*H_out) or None
    training: bool
    batch_first: bool
    unbatched: bool
    x_shape: tuple         # x's shape as the caller gave it
    x_shared: bool = True  # x is (a view of) the caller's memory


def check_training_and_dropout(training, dropout) -> float:
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    if isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, (int, float, np.floating, np.integer)) \
            or math.isnan(float(dropout)) or not (0.0 <= float(dropout) <= 1.0):
        raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
    return float(dropout)


def _zero_padding(x: np.ndarray, lengths: np.ndarray) -> None:
    """x (T, B, I): set every step past each sequence's length to 0, in place."""
    for b in np.flatnonzero(lengths < x.shape[0]):
        x[lengths[b]:, b] = 0.0


def prepare_host_inputs(x, params: LSTMParams, h0=None, c0=None, *, lengths=None,
                        batch_first=False, training=False, dropout=0.0, seed=None) -> PreparedInputs:
    """Validate host inputs (clear errors for every bad input) and normalise their layout."""
    dropout = check_training_and_dropout(training, dropout)

    xa = _float_array(x, "x")
    if xa.ndim not in (2, 3):
        raise ValueError(f"x must be 2-D (T, I) unbatched or 3-D (T, B, I)/(B, T, I), got {xa.ndim}-D shape {xa.shape}")
    unbatched = xa.ndim == 2
    x_shape = xa.shape
    if unbatched:
        xt = xa[:, None, :]
    elif batch_first:
        xt = xa.transpose(1, 0, 2)
    else:
        xt = xa
    T, B, I = xt.shape
    if T == 0 or B == 0:
        raise ValueError(f"x must have at least one step and one sequence, got shape {x_shape}")
    if I != params.input_size:
        raise ValueError(f"x has {I} features per step but params.input_size is {params.input_size}")
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    check_allocation(_estimate_bytes(params, T, B, bool(training)), f"a forward of {T}x{B} steps")
    dt = params.dtype

    h_shape, c_shape = (L * D, B, P), (L * D, B, H)
    if c0 is not None and h0 is None:
        raise ValueError("c0 was given without h0; pass both (or h0 alone, with c0 = 0)")
    h0_host = None if h0 is None else _check_state(h0, "h0", h_shape, unbatched)
    c0_host = None if c0 is None else _check_state(c0, "c0", c_shape, unbatched)
    h0a = np.zeros(h_shape, dt) if h0_host is None else _as_compute(h0_host.reshape(h_shape), dt)
    c0a = np.zeros(c_shape, dt) if c0_host is None else _as_compute(c0_host.reshape(c_shape), dt)
    lens = _check_lengths(lengths, B, T)

    xc = _as_compute(xt, dt)
    if training:  # the cache must own what it keeps: the caller may reuse its arrays
        if h0_host is not None and np.shares_memory(h0a, h0_host):
            h0a = h0a.copy()
        if c0_host is not None and np.shares_memory(c0a, c0_host):
            c0a = c0a.copy()
        if lengths is not None:
            lens = lens.copy()
    # x is copied after the forward, and only if the backend's cache keeps it (own_kept_input)
    masks = _dropout_masks(params, T, B, dropout, seed) if training else None
    return PreparedInputs(xc, h0a, c0a, lens, masks, bool(training), bool(batch_first),
                          unbatched, tuple(x_shape), bool(np.shares_memory(xc, xa)))


def own_kept_input(state, prep: PreparedInputs) -> None:
    """Make a host training cache own the input it keeps (``state["layers"][0]["x"]``, when
    that is ``prep.x``): a copy when ``prep.x`` is the caller's memory, with every step past
    each sequence's length zeroed. Padded steps take no part in the math (packed-sequence
    semantics), but the weight-gradient GEMMs run over every row: whatever the caller left
    there (NaN included) must not reach dW_ih. A backend whose cache keeps other arrays
    (the CPU backend's [x | h_prev] rows, written by its kernels) needs nothing here."""
    if state is None:
        return
    layer0 = state["layers"][0]
    if layer0.get("x") is not prep.x:
        return
    x = prep.x.copy() if prep.x_shared else prep.x
    if (prep.lengths < x.shape[0]).any():
        _zero_padding(x, prep.lengths)
    layer0["x"] = x


def forward(x, params: LSTMParams, h0=None, c0=None, *, lengths=None, batch_first: bool = False,
            training: bool = False, dropout: float = 0.0, seed=None,
            device: str = "auto") -> ForwardResult:
    """LSTM forward over a whole sequence, ``torch.nn.LSTM`` semantics.

    Parameters
    ----------
    x : array (T, B, I), (B, T, I) with ``batch_first``, or (T, I) unbatched
    params : LSTMParams
    h0 : array (L*D, B, H_out) or (L*D, H_out), optional (zeros)
    c0 : array (L*D, B, H) or (L*D, H), optional (zeros); needs ``h0``
    lengths : int array (B,), optional
        Valid steps of each sequence (packed-sequence semantics; outputs past the end are 0).
    training : bool
        Save what :func:`backward` needs (``result.cache``) and apply ``dropout``.
    dropout : float in [0, 1]
        Inter-layer dropout probability (training only), masks drawn from ``seed``.
    device : "auto" | "cpu" | "cuda" | "reference"

    Returns
    -------
    ForwardResult with ``y`` (x's layout, last dim D*H_out), ``h`` (L*D, B, H_out),
    ``c`` (L*D, B, H) and ``cache`` (None unless ``training``).
    """
    params = _check_params(params)
    dev = dispatch.resolve_device(device, x)
    if dev == "cuda":
        # The CUDA backend takes GPU arrays zero-copy and host arrays by copy; it validates
        # with the same rules (see fastlstm.kernels.cuda.lstm.forward).
        return dispatch.backend("cuda").forward(
            x, params, h0, c0, lengths=lengths, batch_first=batch_first, training=training,
            dropout=dropout, seed=seed)
    prep = prepare_host_inputs(x, params, h0, c0, lengths=lengths, batch_first=batch_first,
                               training=training, dropout=dropout, seed=seed)
    mod = dispatch.backend(dev)
    y, h, c, state = mod.lstm_forward(prep.x, params, prep.h0, prep.c0, prep.lengths, prep.masks,
                                      prep.training)
    own_kept_input(state, prep)
    return finish_forward(dev, y, h, c, state, prep)


def _user_layout_y(y, batch_first, unbatched):
    if unbatched:
        return y[:, 0, :]
    if batch_first:
        return np.ascontiguousarray(y.transpose(1, 0, 2))
    return y


def _keeps(state, a: np.ndarray) -> bool:
    """Whether a host cache's state holds (a view of) ``a``: a layer's saved input or output."""
    for layer in state.get("layers", ()):
        for k in ("x", "y"):
            v = layer.get(k)
            if isinstance(v, np.ndarray) and np.shares_memory(v, a):
                return True
    return False


def finish_forward(dev, y, h, c, state, prep: PreparedInputs) -> ForwardResult:
    """Wrap a backend's time-major outputs in the caller's layout (and the cache)."""
    y_out = _user_layout_y(y, prep.batch_first, prep.unbatched)
    if state is not None and _keeps(state, y_out):
        y_out = y_out.copy()  # the caller owns y; the cache keeps its own
    cache = None
    if state is not None:
        cache = LSTMCache(dev, state, prep.batch_first, prep.unbatched, prep.x_shape,
                          tuple(y_out.shape), tuple(h.shape), tuple(c.shape), np.dtype(y.dtype))
    if prep.unbatched:
        h, c = h[:, 0, :], c[:, 0, :]
    return ForwardResult(y_out, h, c, cache)


# ---------------------------------------------------------------------------- backward
def _grad(a, name: str, shape: tuple) -> np.ndarray:
    """Validate a gradient given in the caller's layout."""
    arr = _float_array(a, name)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (the shape of the output), got {arr.shape}")
    return arr


def backward(cache: LSTMCache, dy=None, dh=None, dc=None) -> BackwardResult:
    """Gradients of a scalar loss through the forward that produced ``cache``.

    Parameters
    ----------
    cache : LSTMCache from ``forward(..., training=True)``
    dy : array shaped like that forward's ``y``, optional (zero)
    dh, dc : arrays shaped like its ``h``, ``c``, optional (zero)

    Returns
    -------
    BackwardResult with ``dx`` (shape of x), ``dh0``, ``dc0`` (shapes of h, c) and ``dparams``
    (gradients under PyTorch's parameter names).
    """
    if not isinstance(cache, LSTMCache):
        raise TypeError(
            "backward needs the cache of a training forward: forward(..., training=True).cache, "
            f"got {type(cache).__name__}"
        )
    if cache.device == "cuda":
        return dispatch.backend("cuda").backward(cache, dy, dh, dc)
    dt = cache.dtype
    L_D, B, P = cache.h_shape
    H = cache.c_shape[2]
    user_h = (L_D, P) if cache.unbatched else cache.h_shape
    user_c = (L_D, H) if cache.unbatched else cache.c_shape
    tm_y = None
    if dy is None:
        T = cache.x_shape[0] if (cache.unbatched or not cache.batch_first) else cache.x_shape[1]
        tm_y = np.zeros((T, B, cache.y_shape[-1]), dt)
    else:
        dya = _grad(dy, "dy", cache.y_shape)
        if cache.unbatched:
            dya = dya[:, None, :]
        elif cache.batch_first:
            dya = dya.transpose(1, 0, 2)
        tm_y = _as_compute(dya, dt)
    dha = np.zeros(cache.h_shape, dt) if dh is None else _as_compute(
        _grad(dh, "dh", user_h).reshape(cache.h_shape), dt)
    dca = np.zeros(cache.c_shape, dt) if dc is None else _as_compute(
        _grad(dc, "dc", user_c).reshape(cache.c_shape), dt)
    mod = dispatch.backend(cache.device)
    dx, dh0, dc0, dparams = mod.lstm_backward(cache.state, tm_y, dha, dca)
    if cache.unbatched:
        dx, dh0, dc0 = dx[:, 0, :], dh0[:, 0, :], dc0[:, 0, :]
    elif cache.batch_first:
        dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
    return BackwardResult(dx, dh0, dc0, dparams)


# ---------------------------------------------------------------------------- module
class LSTM:
    """A stateful convenience wrapper in ``torch.nn.LSTM``'s shape.

    ``y, (h, c) = lstm(x, (h0, c0), lengths=...)``; after a call in training mode (the default,
    as in torch), ``grads = lstm.backward(dy, dh, dc)``. ``.eval()`` switches to inference
    (no cache, no dropout).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, dtype=np.float32,
                 device="auto", seed=None):
        dropout = check_training_and_dropout(True, dropout)  # forward's rule
        dispatch.resolve_device(device, None)
        self.params = LSTMParams.init(input_size, hidden_size, num_layers, bias=bias,
                                      bidirectional=bidirectional, proj_size=proj_size,
                                      dtype=dtype, seed=seed)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.device = device
        self.training = True
        self._rng = np.random.default_rng(seed)
        self._cache = None

    def train(self, mode: bool = True) -> "LSTM":
        self.training = bool(mode)
        return self

    def eval(self) -> "LSTM":
        return self.train(False)

    def __call__(self, x, hx=None, *, lengths=None):
        h0 = c0 = None
        if hx is not None:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError("hx must be a tuple (h0, c0)")
            h0, c0 = hx
        seed = int(self._rng.integers(2**63)) if (self.training and self.dropout > 0) else None
        res = forward(x, self.params, h0, c0, lengths=lengths, batch_first=self.batch_first,
                      training=self.training, dropout=self.dropout, seed=seed,
                      device=self.device)
        self._cache = res.cache
        return res.y, (res.h, res.c)

    forward = __call__

    def backward(self, dy=None, dh=None, dc=None) -> BackwardResult:
        if self._cache is None:
            raise RuntimeError("backward needs a preceding call in training mode (lstm.train())")
        return backward(self._cache, dy, dh, dc)

    def state_dict(self) -> dict:
        return self.params.state_dict()

    def load_state_dict(self, mapping) -> None:
        new = LSTMParams.from_state_dict(mapping, dtype=self.params.dtype)
        if new.config() != self.params.config():
            raise ValueError(f"state dict configuration {new.config()} does not match this "
                             f"module's {self.params.config()}")
        self.params = new
        self._cache = None

    def __repr__(self) -> str:
        p = self.params
        return (f"LSTM({p.input_size}, {p.hidden_size}, num_layers={p.num_layers}, "
                f"bidirectional={p.bidirectional}, proj_size={p.proj_size}, "
                f"batch_first={self.batch_first}, dtype={p.dtype.name}, device={self.device!r})")
