"""The public calls: :func:`forward`, :func:`backward`, :func:`warmup` and the :class:`LSTM`
module. Thin: the input rules are :mod:`fastlstm.layout`'s, the work is a backend's
(:mod:`fastlstm.dispatch`).
"""
from __future__ import annotations

import threading
import time
import weakref

import numpy as np

from . import config, dispatch, layout
from ._coerce import check_bool
from .backends.state import TrainingState
from .layout import BackwardResult, ForwardResult, LSTMCache
from .params import LSTMParams
from .stepper import Stepper

__all__ = ["forward", "backward", "warmup", "LSTM", "ForwardResult", "BackwardResult",
           "LSTMCache"]


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
    ``c`` (L*D, B, H), ``cache`` (None unless ``training``) and ``paths`` (the recurrence
    path each layer took).

    Small inference calls (unidirectional, at most ``CPUConfig.stepper_kernel_max_rows``
    rows ``T*B``, host arrays already of the params' dtype, no ``lengths``) run the streaming
    step kernel (:class:`fastlstm.Stepper`'s) in one compiled call, path ``"step"``.
    """
    if (training is False and lengths is None and type(x) is np.ndarray
            and (device == "auto" or device == "cpu")):
        res = thin_forward(x, params, h0, c0, batch_first)
        if res is not None:
            return res
    params = layout.check_params(params)
    dev = dispatch.resolve_device(device, x)
    mod = dispatch.backend(dev)
    if dev == "cuda":  # GPU arrays stay on the GPU; host arrays are copied over and back
        return mod.forward(x, params, h0, c0, lengths=lengths, batch_first=batch_first,
                           training=training, dropout=dropout, seed=seed)
    inp = layout.host_inputs(x, params, h0, c0, lengths=lengths, batch_first=batch_first,
                             training=training, dropout=dropout, seed=seed)
    if inp.spec.B == 0:
        return _empty_forward(dev, params, inp)
    y, h, c, state, paths = mod.lstm_forward(inp.x, params, inp.h0, inp.c0, inp.lengths,
                                             inp.masks, inp.spec.training)
    state = layout.own_kept_input(state, inp)
    return layout.host_result(dev, y, h, c, state, paths, inp.spec)


_thin = threading.local()


def thin_forward(x, params, h0, c0, batch_first) -> ForwardResult | None:
    """The inference call of a few rows, on a per-thread :class:`Stepper` kept with the params
    (built once per params version, batch size and thread); None when the call does not
    qualify (then the general path runs, with its checks and conversions)."""
    if type(params) is not LSTMParams or params.bidirectional or x.ndim != 3:
        return None
    dt = params.dtype
    if x.dtype != dt or not x.flags.c_contiguous or x.shape[2] != params.input_size:
        return None
    if batch_first is False:
        T, B = x.shape[0], x.shape[1]
    elif batch_first is True and (x.shape[0] == 1 or x.shape[1] == 1):
        B, T = x.shape[0], x.shape[1]  # (B, T, I) with T or B = 1: the time-major memory
    else:
        return None
    rows = T * B
    cfg = config.current("cpu")
    if rows == 0:
        return None
    L, H, P = params.num_layers, params.hidden_size, params.output_size
    if h0 is None:
        if c0 is not None:
            return None  # the general path says why
    elif not (_plain(h0, dt, (L, B, P)) and (c0 is None or _plain(c0, dt, (L, B, H)))):
        return None
    if rows > cfg.stepper_kernel_max_rows:
        return _thin_serial(x, params, h0, c0, batch_first, T, B, cfg)
    flop = 8.0 * rows * H * (params.input_size + P)
    if flop >= cfg.parallel_min_flop and dispatch.backend("cpu").plan_tasks(1, B, flop, cfg):
        return None  # the general path would run this layer on both cores
    last = getattr(_thin, "last", None)  # this thread's previous call: one comparison
    s = None
    if last is not None and last[0]() is params and last[1] == params.version and last[2] == B \
            and last[3] is cfg:
        s = last[4]()
    if s is None:
        key = ("cpu", "thin", B, threading.get_ident(), cfg)  # the blocking is cfg's
        s = params.derived(key, lambda: _new_thin_stepper(params, B))
        _thin.last = (weakref.ref(params), params.version, B, cfg, weakref.ref(s))  # no leak
    y, h, c = s._forward_chunk(x.reshape(T, B, x.shape[2]), h0, c0)
    if batch_first:
        y = y.reshape(B, T, P)
    return ForwardResult(y, h, c, None, ("step",) * L)


def _plain(a, dtype, shape) -> bool:
    """Whether a state given to a thin call is an ndarray of the params' dtype and its shape."""
    return type(a) is np.ndarray and a.dtype == dtype and a.shape == shape


def _thin_serial(x, params, h0, c0, batch_first, T, B, cfg) -> ForwardResult | None:
    """A longer call whose layers all run serially: the CPU backend's plan for its shape
    (``backends/cpu_serial.py``), with only the checks :func:`thin_forward` made (the kernels
    read the states in place: they must be C-contiguous too); None when the call does not
    qualify."""
    plan = dispatch.backend("cpu").serial_plan(params, T, B, False, cfg)
    if plan is None or not all(a is None or a.flags.c_contiguous for a in (h0, c0)):
        return None
    zeros_h, zeros_c = plan.zeros
    y, h, c, _ = plan.forward(x.reshape(T, B, x.shape[2]), zeros_h if h0 is None else h0,
                              zeros_c if c0 is None else c0, None)
    if batch_first:
        y = y.reshape(B, T, params.output_size)
    return ForwardResult(y, h, c, None, ("serial",) * params.num_layers)


def _new_thin_stepper(params, B) -> Stepper:
    """A Stepper for this thread's small calls; the ones of threads that have ended go."""
    live = {t.ident for t in threading.enumerate()}
    params.forget_derived(lambda k: isinstance(k, tuple) and k[:2] == ("cpu", "thin")
                          and k[3] not in live)
    return Stepper(params, B)


def _empty_forward(dev, params, inp) -> ForwardResult:
    """A batch of no sequences: empty outputs of the right shapes (as torch.nn.LSTM)."""
    spec, dt = inp.spec, params.dtype
    state = None
    if spec.training:
        state = TrainingState(dev, params, params.version, (), inp.h0, inp.c0, inp.lengths)
    return layout.host_result(dev, np.zeros(spec.y_shape, dt), inp.h0.copy(), inp.c0.copy(),
                              state, (), spec)


def _check_version(state: TrainingState) -> None:
    if state.params.version != state.version:
        raise RuntimeError(
            f"the parameters were updated in place after the forward that made this cache "
            f"(version {state.version}, now {state.params.version}); run the forward again")


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
            f"got {type(cache).__name__}")
    state = cache.state
    _check_version(state)
    mod = dispatch.backend(cache.device)
    if cache.device == "cuda":
        return mod.backward(cache, dy, dh, dc)
    dya, dha, dca = layout.host_grads(cache, dy, dh, dc)
    if not state.layers:  # an empty batch: every gradient is zero
        params = state.params
        dx = np.zeros((dya.shape[0], 0, params.input_size), params.dtype)
        zero = {name: np.zeros_like(params[name]) for name in params.keys()}
        return layout.host_backward_result(cache, dx, dha * 0, dca * 0, zero)
    dx, dh0, dc0, dparams = mod.lstm_backward(state, dya, dha, dca)
    return layout.host_backward_result(cache, dx, dh0, dc0, dparams)


def warmup(dtypes=("float32", "float64"), devices=("cpu",)) -> dict:
    """Compile (or load from the disk cache) every kernel a call may use, now rather than on
    the first real call. Returns the seconds each ``(device, dtype)`` took.

    ``devices``: any of "cpu", "cuda" (float32 only; skipped with a clear error if no GPU),
    "reference" (nothing to compile)."""
    out = {}
    for dev in devices:
        if dev not in ("cpu", "cuda", "reference"):
            raise ValueError(f"devices: unknown device {dev!r}; expected 'cpu', 'cuda' or 'reference'")
        dispatch.require(dev)
        for dt in dtypes:
            dt = np.dtype(dt)
            if dev == "cuda" and dt != np.float32:
                continue
            t0 = time.perf_counter()
            _warm(dev, dt)
            out[(dev, dt.name)] = time.perf_counter() - t0
    return out


def _warm(dev, dt):
    rng = np.random.default_rng(0)
    configs = [dict(num_layers=2, bidirectional=True, proj_size=3), {}]
    for cfg in configs:
        p = LSTMParams.init(5, 8, dtype=dt, seed=0, **cfg)
        B = 8
        x = rng.standard_normal((4, B, 5)).astype(dt)
        lengths = np.array([4, 3, 4, 2, 4, 1, 4, 4])
        runs = [config.options("cpu")]
        if dev == "cpu":  # the parallel path's specialisations too
            runs.append(config.options("cpu", parallel_min_flop=0, threads=2))
        for ctx in runs:
            with ctx:
                res = forward(x, p, lengths=lengths, training=True, device=dev)
                backward(res.cache, dy=np.ones_like(res.y))
                forward(x, p, device=dev)
        if dev == "cpu" and not cfg:  # small-batch inference on two cores
            with config.options("cpu", duo_min_hidden=0, duo_min_steps=1,
                                stepper_kernel_max_rows=0, threads=2):
                forward(x[:, :3], p, device=dev)


# ---------------------------------------------------------------------------- module
class LSTM:
    """A stateful convenience wrapper in ``torch.nn.LSTM``'s shape.

    ``y, (h, c) = lstm(x, (h0, c0), lengths=...)``; after a call in training mode (the default,
    as in torch), ``grads = lstm.backward(dy, dh, dc)``. ``.eval()`` switches to inference
    (no cache, no dropout). ``device="cuda"`` fails here, at construction, when no GPU can
    run it.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, dtype=np.float32,
                 device="auto", seed=None):
        _, dropout = layout.check_dropout(True, dropout)  # forward's rule
        dev = dispatch.resolve_device(device, None)
        dispatch.require(dev)
        self.params = LSTMParams.init(input_size, hidden_size, num_layers,
                                      bias=check_bool(bias, "bias"),
                                      bidirectional=check_bool(bidirectional, "bidirectional"),
                                      proj_size=proj_size, dtype=dtype, seed=seed)
        self.batch_first = check_bool(batch_first, "batch_first")
        self.dropout = dropout
        self.device = device
        self.training = True
        self._rng = np.random.default_rng(seed)
        self._cache = None

    def train(self, mode: bool = True) -> "LSTM":
        self.training = check_bool(mode, "mode")
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
