"""An Elman (tanh) RNN with ``torch.nn.RNN``'s math, on the package's compiled CPU kernels.

Per layer ``k`` (one direction, ``nonlinearity="tanh"``)::

    h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)

Parameters are named and shaped as ``torch.nn.RNN(...).state_dict()``: ``weight_ih_l{k}``
(H, I or H), ``weight_hh_l{k}`` (H, H), ``bias_ih_l{k}`` and ``bias_hh_l{k}`` (H,).

Shapes (time-major, batched)::

    x  (T, B, I)    y  (T, B, H)  (the last layer's outputs)
    h0, h_n  (L, B, H)

Usage::

    params = RNNParams.init(8, 32, num_layers=2, dtype=np.float64, seed=0)
    y, h_n, cache = rnn_forward(x, params, training=True)
    dx, dh0, dparams = rnn_backward(cache, dy)        # dparams under torch's names

``reference_forward`` / ``reference_backward`` are the same computation in plain NumPy, one
step at a time: the oracle the kernels are tested against.
"""
from __future__ import annotations

import math
import re
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from ._coerce import to_numpy
from .kernels.cpu.parallel import single_threaded_blas
from .kernels.cpu.rnn import rnn_layer_backward, rnn_layer_forward

__all__ = ["RNNParams", "RNNCache", "rnn_forward", "rnn_backward", "reference_forward",
           "reference_backward"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_NAME = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)$")


def _float_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in _FLOATS:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _positive_int(v, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _as_float_array(a, name: str) -> np.ndarray:
    arr = to_numpy(a, name)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    return arr


class RNNParams:
    """The parameters of a tanh RNN: a dict of arrays under ``torch.nn.RNN``'s names."""

    def __init__(self, arrays: dict, input_size: int, hidden_size: int, num_layers: int,
                 bias: bool, dtype):
        self.input_size = _positive_int(input_size, "input_size")
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        self.num_layers = _positive_int(num_layers, "num_layers")
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be True or False, got {bias!r}")
        self.bias = bool(bias)
        self.dtype = _float_dtype(dtype)
        expected = self.expected_shapes()
        missing = [k for k in expected if k not in arrays]
        extra = [k for k in arrays if k not in expected]
        if missing or extra:
            raise KeyError(f"RNN parameters: missing {missing}, unexpected {extra}")
        self._arrays = {}
        for name, shape in expected.items():
            a = _as_float_array(arrays[name], name)
            if a.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
            self._arrays[name] = np.array(a, dtype=self.dtype, order="C", copy=True)

    def expected_shapes(self) -> dict:
        I, H = self.input_size, self.hidden_size
        shapes = {}
        for k in range(self.num_layers):
            shapes[f"weight_ih_l{k}"] = (H, I if k == 0 else H)
            shapes[f"weight_hh_l{k}"] = (H, H)
            if self.bias:
                shapes[f"bias_ih_l{k}"] = (H,)
                shapes[f"bias_hh_l{k}"] = (H,)
        return shapes

    @classmethod
    def init(cls, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
             dtype=np.float32, seed=None) -> "RNNParams":
        """PyTorch's initialisation: every parameter ~ uniform(-1/sqrt(H), 1/sqrt(H))."""
        shell = cls.__new__(cls)
        shell.input_size = _positive_int(input_size, "input_size")
        shell.hidden_size = _positive_int(hidden_size, "hidden_size")
        shell.num_layers = _positive_int(num_layers, "num_layers")
        shell.bias = bool(bias)
        dt = _float_dtype(dtype)
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(hidden_size)
        arrays = {n: rng.uniform(-k, k, size=s) for n, s in shell.expected_shapes().items()}
        return cls(arrays, input_size, hidden_size, num_layers, bias, dt)

    @classmethod
    def from_state_dict(cls, mapping, dtype=None) -> "RNNParams":
        """From ``torch.nn.RNN(...).state_dict()`` (tensors or arrays); the configuration is
        inferred from names and shapes, the dtype defaults to ``weight_ih_l0``'s (float64
        stays float64, anything else becomes float32)."""
        if not hasattr(mapping, "keys"):
            raise TypeError(f"mapping must be a mapping of names to arrays, got {type(mapping).__name__}")
        arrays = {}
        for name in mapping.keys():
            if not isinstance(name, str) or not _NAME.match(name):
                raise KeyError(f"mapping: {name!r} is not a torch.nn.RNN parameter name "
                               f"(single direction: weight_ih_l<k>, weight_hh_l<k>, bias_ih_l<k>, bias_hh_l<k>)")
            arrays[name] = _as_float_array(mapping[name], name)
        if "weight_ih_l0" not in arrays:
            raise KeyError("mapping has no weight_ih_l0")
        H, I = arrays["weight_ih_l0"].shape
        L = 1 + max(int(_NAME.match(n).group(2)) for n in arrays)
        bias = "bias_ih_l0" in arrays
        if dtype is None:
            dtype = np.float64 if arrays["weight_ih_l0"].dtype == np.float64 else np.float32
        return cls(arrays, I, H, L, bias, dtype)

    def state_dict(self) -> dict:
        """Copies of the parameters under torch's names, in torch's order."""
        return {n: a.copy() for n, a in self._arrays.items()}

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def keys(self):
        return self._arrays.keys()

    def layer(self, k: int):
        """``w_ih, w_hh, b_ih, b_hh`` of layer ``k`` (biases None without bias)."""
        a = self._arrays
        if self.bias:
            return a[f"weight_ih_l{k}"], a[f"weight_hh_l{k}"], a[f"bias_ih_l{k}"], a[f"bias_hh_l{k}"]
        return a[f"weight_ih_l{k}"], a[f"weight_hh_l{k}"], None, None

    def update_(self, grads, lr: float) -> "RNNParams":
        """One gradient-descent step in place, ``p -= lr * g``, for every entry of ``grads``."""
        lr = float(lr)
        if not math.isfinite(lr):
            raise ValueError(f"lr must be finite, got {lr}")
        checked = {}
        for name in grads.keys():
            if name not in self._arrays:
                raise KeyError(f"grads: unknown parameter {name!r}")
            g = _as_float_array(grads[name], f"grads[{name!r}]")
            if g.shape != self._arrays[name].shape:
                raise ValueError(f"grads[{name!r}] must have shape {self._arrays[name].shape}, got {g.shape}")
            checked[name] = g
        for name, g in checked.items():
            self._arrays[name] -= (lr * g).astype(self.dtype, copy=False)
        return self

    def __repr__(self) -> str:
        return (f"RNNParams(input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"num_layers={self.num_layers}, bias={self.bias}, dtype={self.dtype.name})")


@dataclass(frozen=True, eq=False)
class RNNCache:
    """What :func:`rnn_backward` needs: each layer's input and output, ``h0``, the weights
    (copies: later parameter updates do not change it)."""
    params: RNNParams
    weights: tuple       # per layer (w_ih, w_hh)
    xs: tuple            # per layer input (T, B, I_k)
    ys: tuple            # per layer output (T, B, H)
    h0: np.ndarray       # (L, B, H)
    reference: bool = False


# ---------------------------------------------------------------------------- checks
def _check_params(params) -> RNNParams:
    if not isinstance(params, RNNParams):
        raise TypeError(f"params must be an RNNParams, got {type(params).__name__}")
    return params


def _check_x(x, params: RNNParams) -> np.ndarray:
    x = _as_float_array(x, "x")
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D (T, B, I), got {x.ndim}-D shape {x.shape}")
    T, B, I = x.shape
    if T < 1 or B < 1:
        raise ValueError(f"x must have T >= 1 steps and B >= 1 sequences, got shape {x.shape}")
    if I != params.input_size:
        raise ValueError(f"x must have shape (T, B, {params.input_size}) (input_size), got {x.shape}")
    return np.ascontiguousarray(x, dtype=params.dtype)  # a copy where the dtype differs


def _check_state(a, name: str, shape: tuple, dtype) -> np.ndarray:
    a = _as_float_array(a, name)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (num_layers, B, hidden_size), got {a.shape}")
    return np.ascontiguousarray(a, dtype=dtype)


def _check_flag(v, name: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def _prepare(x, params, h0, training):
    params = _check_params(params)
    training = _check_flag(training, "training")
    x = _check_x(x, params)
    T, B, _ = x.shape
    L, H = params.num_layers, params.hidden_size
    if h0 is None:
        h0 = np.zeros((L, B, H), params.dtype)
    else:
        h0 = _check_state(h0, "h0", (L, B, H), params.dtype)
    return params, x, h0, training


def _check_cache(cache) -> RNNCache:
    if not isinstance(cache, RNNCache):
        raise TypeError(f"cache must be the RNNCache of a forward with training=True, "
                        f"got {type(cache).__name__}")
    return cache


def _grads_in(cache: RNNCache, dy, dh):
    T, B, H = cache.ys[-1].shape
    L, dt = cache.params.num_layers, cache.params.dtype
    dy = np.zeros((T, B, H), dt) if dy is None else _check_state_named(dy, "dy", (T, B, H), dt)
    dh = np.zeros((L, B, H), dt) if dh is None else _check_state_named(dh, "dh", (L, B, H), dt)
    return dy, dh


def _check_state_named(a, name, shape, dt):
    a = _as_float_array(a, name)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return np.ascontiguousarray(a, dtype=dt)


def _layer_grads(L, bias, per_layer) -> dict:
    out = {}
    for k in range(L):
        dw_ih, dw_hh, db = per_layer[k]
        out[f"weight_ih_l{k}"] = dw_ih
        out[f"weight_hh_l{k}"] = dw_hh
        if bias:
            out[f"bias_ih_l{k}"] = db
            out[f"bias_hh_l{k}"] = db.copy()
    return out


# ---------------------------------------------------------------------------- compiled path
#: Per-step products ``h @ W_hh^T`` below this many multiply-adds (B * H * H) run on the
#: calling thread: a threaded OpenBLAS call costs more than it saves there, and its idle
#: threads spin between the steps (measured ~30x slower at B = 64, H = 32 on 2 cores).
SERIAL_BLAS_BELOW = 1 << 21


def _blas_threads(B: int, H: int):
    return single_threaded_blas() if B * H * H < SERIAL_BLAS_BELOW else nullcontext()


def rnn_forward(x, params: RNNParams, h0=None, *, training: bool = False):
    """Forward over a whole sequence, ``torch.nn.RNN(nonlinearity="tanh")`` semantics.

    ``x`` (T, B, I) time-major; ``h0`` (L, B, H) or None (zeros). Inputs of another float
    dtype are converted to the parameters' dtype; inputs are never modified. Returns
    ``(y, h_n, cache)``: ``y`` (T, B, H) the last layer's outputs, ``h_n`` (L, B, H), and the
    cache for :func:`rnn_backward` (None unless ``training``)."""
    params, x, h0, training = _prepare(x, params, h0, training)
    T, B, _ = x.shape
    L, H, dt = params.num_layers, params.hidden_size, params.dtype
    h_n = np.empty((L, B, H), dt)
    xs, ys, weights = [], [], []
    inp = x
    with _blas_threads(B, H):
        for k in range(L):
            w_ih, w_hh, b_ih, b_hh = params.layer(k)
            bias = (b_ih + b_hh) if b_ih is not None else np.zeros(H, dt)
            y = np.empty((T, B, H), dt)
            rnn_layer_forward(inp, np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T),
                              bias, h0[k], y)
            h_n[k] = y[T - 1]
            if training:
                xs.append(inp)
                ys.append(y)
                weights.append((w_ih.copy(), w_hh.copy()))
            inp = y
    cache = RNNCache(params, tuple(weights), tuple(xs), tuple(ys), h0.copy()) if training else None
    return inp, h_n, cache


def rnn_backward(cache: RNNCache, dy=None, dh=None):
    """Gradients through the forward that made ``cache``: ``(dx, dh0, dparams)``.

    ``dy`` (T, B, H) gradient of ``y``, ``dh`` (L, B, H) of ``h_n`` (each optional, zero).
    ``dparams`` holds every parameter's gradient under torch's names."""
    cache = _check_cache(cache)
    if cache.reference:
        return reference_backward(cache, dy, dh)
    dy, dh = _grads_in(cache, dy, dh)
    p = cache.params
    L, dt = p.num_layers, p.dtype
    dh0 = np.empty_like(dh)
    per_layer = [None] * L
    dy_k = dy
    _, B, H = dy.shape
    with _blas_threads(B, H):
        for k in reversed(range(L)):
            x, y = cache.xs[k], cache.ys[k]
            w_ih, w_hh = cache.weights[k]
            T, B, I = x.shape
            dx = np.empty((T, B, I), dt)
            dw_ih, dw_hh, db = np.empty((H, I), dt), np.empty((H, H), dt), np.empty(H, dt)
            dh0[k] = rnn_layer_backward(x, y, cache.h0[k], w_ih, w_hh, dy_k, dh[k], True,
                                        dx, dw_ih, dw_hh, db)
            per_layer[k] = (dw_ih, dw_hh, db)
            dy_k = dx
    return dy_k, dh0, _layer_grads(L, p.bias, per_layer)


# ---------------------------------------------------------------------------- NumPy reference
def reference_forward(x, params: RNNParams, h0=None, *, training: bool = False):
    """:func:`rnn_forward` in plain NumPy, one step at a time (same signature and results)."""
    params, x, h0, training = _prepare(x, params, h0, training)
    T, B, _ = x.shape
    L, H, dt = params.num_layers, params.hidden_size, params.dtype
    h_n = np.empty((L, B, H), dt)
    xs, ys, weights = [], [], []
    inp = x
    for k in range(L):
        w_ih, w_hh, b_ih, b_hh = params.layer(k)
        y = np.empty((T, B, H), dt)
        h = h0[k]
        for t in range(T):
            z = inp[t] @ w_ih.T + h @ w_hh.T
            if b_ih is not None:
                z = z + b_ih + b_hh
            h = np.tanh(z)
            y[t] = h
        h_n[k] = h
        xs.append(inp)
        ys.append(y)
        weights.append((w_ih.copy(), w_hh.copy()))
        inp = y
    cache = RNNCache(params, tuple(weights), tuple(xs), tuple(ys), h0.copy(), reference=True) \
        if training else None
    return inp, h_n, cache


def reference_backward(cache: RNNCache, dy=None, dh=None):
    """:func:`rnn_backward` in plain NumPy, one step at a time."""
    cache = _check_cache(cache)
    dy, dh = _grads_in(cache, dy, dh)
    p = cache.params
    L = p.num_layers
    dh0 = np.empty_like(dh)
    per_layer = [None] * L
    dy_k = dy
    for k in reversed(range(L)):
        x, y = cache.xs[k], cache.ys[k]
        w_ih, w_hh = cache.weights[k]
        T = x.shape[0]
        dx = np.zeros_like(x)
        dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
        db = np.zeros(w_hh.shape[0], x.dtype)
        g = dh[k].copy()
        for t in range(T - 1, -1, -1):
            dz = (dy_k[t] + g) * (1 - y[t] * y[t])
            h_prev = cache.h0[k] if t == 0 else y[t - 1]
            dw_ih += dz.T @ x[t]
            dw_hh += dz.T @ h_prev
            db += dz.sum(axis=0)
            dx[t] = dz @ w_ih
            g = dz @ w_hh
        dh0[k] = g
        per_layer[k] = (dw_ih, dw_hh, db)
        dy_k = dx
    return dy_k, dh0, _layer_grads(L, p.bias, per_layer)
