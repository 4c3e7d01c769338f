"""Training helpers: gradient clipping, SGD and Adam, and truncated BPTT over a long stream.

The parameters are an :class:`fastlstm.LSTMParams` (updated through ``update_`` / ``copy_``, so
its version grows and derived layouts are rebuilt) and/or plain NumPy arrays (a head's ``W``,
``b``), updated in place. Gradients come in the same structure: a mapping of PyTorch names
for the LSTM (``backward(...).dparams``), arrays for the rest::

    opt = fastlstm.train.Adam([params, W, b], lr=2e-3)
    ...
    g = fastlstm.backward(out.cache, dy=dy)
    fastlstm.train.clip_grad_norm([g.dparams, dW, db], max_norm=1.0)
    opt.step([g.dparams, dW, db])
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .params import LSTMParams

__all__ = ["clip_grad_norm", "SGD", "Adam", "tbptt_chunks"]


def _leaves(grads) -> list[np.ndarray]:
    """The arrays of a gradient structure: arrays, mappings of arrays, or sequences of both."""
    if isinstance(grads, np.ndarray):
        return [grads]
    if isinstance(grads, Mapping):
        return [np.asarray(grads[k]) for k in grads]
    if isinstance(grads, (list, tuple)):
        return [a for g in grads for a in _leaves(g)]
    raise TypeError(f"gradients must be arrays, mappings of arrays or sequences of them, "
                    f"got {type(grads).__name__}")


def clip_grad_norm(grads, max_norm: float) -> float:
    """Scale all gradients in place so that their global L2 norm is at most ``max_norm``
    (``torch.nn.utils.clip_grad_norm_``'s rule: factor ``max_norm / (norm + 1e-6)`` when below 1).

    Parameters
    ----------
    grads : array, mapping of arrays, or sequence of these
        E.g. ``[grads.dparams, dW, db]``; every array is scaled in place.
    max_norm : float

    Returns
    -------
    float
        The total norm before clipping.
    """
    leaves = _leaves(grads)
    total = math.sqrt(sum(float(np.dot(a.ravel().astype(np.float64, copy=False),
                                       a.ravel().astype(np.float64, copy=False))) for a in leaves))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for a in leaves:
            a *= a.dtype.type(coef)
    return total


def _check_params(params) -> list:
    params = list(params) if isinstance(params, (list, tuple)) else [params]
    for p in params:
        if not isinstance(p, (LSTMParams, np.ndarray)):
            raise TypeError(f"params must be LSTMParams or NumPy arrays, got {type(p).__name__}")
        if isinstance(p, np.ndarray) and (p.dtype.kind != "f" or not p.flags.writeable):
            raise TypeError("array params must be writeable float arrays")
    return params


def _pairs(params, grads):
    grads = list(grads) if isinstance(grads, (list, tuple)) else [grads]
    if len(grads) != len(params):
        raise ValueError(f"step needs one gradient entry per parameter entry: {len(params)} "
                         f"params, {len(grads)} gradients")
    for i, (p, g) in enumerate(zip(params, grads)):
        if isinstance(p, LSTMParams):
            if not isinstance(g, Mapping):
                raise TypeError(f"gradient {i}: LSTMParams need a mapping of names to arrays "
                                f"(backward(...).dparams), got {type(g).__name__}")
        elif np.shape(g) != p.shape:
            raise ValueError(f"gradient {i}: shape {np.shape(g)} does not match the "
                             f"parameter's {p.shape}")
    return zip(params, grads)


class SGD:
    """Plain gradient descent (optionally with momentum): ``p -= lr * g``.

    Parameters
    ----------
    params : LSTMParams, array, or a list of them
    lr : float
    momentum : float
        0 (default): ``LSTMParams.update_`` directly; else torch's rule ``v = mu v + g``,
        ``p -= lr v``.
    """

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.0):
        self.params = _check_params(params)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self._v: dict = {}

    def step(self, grads) -> None:
        """Apply one update; ``grads`` has ``params``' structure."""
        for i, (p, g) in enumerate(_pairs(self.params, grads)):
            if isinstance(p, LSTMParams):
                if self.momentum:
                    g = {k: self._velocity((i, k), np.asarray(v)) for k, v in g.items()}
                p.update_(g, self.lr)
            else:
                g = np.asarray(g)
                if self.momentum:
                    g = self._velocity(i, g)
                p -= p.dtype.type(self.lr) * g.astype(p.dtype, copy=False)

    def _velocity(self, key, g):
        v = self._v.get(key)
        if v is None:
            v = self._v[key] = g.astype(np.float64).copy()
        else:
            v *= self.momentum
            v += g
        return v


class Adam:
    """Adam (Kingma & Ba), torch.optim.Adam's update (no weight decay, no amsgrad)::

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    The moments are kept in float64. LSTMParams are updated through ``copy_``.

    Parameters
    ----------
    params : LSTMParams, array, or a list of them
    lr : float
    betas : (float, float)
    eps : float
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = _check_params(params)
        self.lr = float(lr)
        self.b1, self.b2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.t = 0
        self._m: dict = {}
        self._v: dict = {}

    def _delta(self, key, g):
        g = np.asarray(g, dtype=np.float64)
        m = self._m.get(key)
        if m is None:
            m = self._m[key] = np.zeros_like(g)
            self._v[key] = np.zeros_like(g)
        v = self._v[key]
        m *= self.b1
        m += (1 - self.b1) * g
        v *= self.b2
        v += (1 - self.b2) * g * g
        bc1 = 1 - self.b1 ** self.t
        bc2 = 1 - self.b2 ** self.t
        return (self.lr / bc1) * m / (np.sqrt(v) / math.sqrt(bc2) + self.eps)

    def step(self, grads) -> None:
        """Apply one update; ``grads`` has ``params``' structure."""
        self.t += 1
        for i, (p, g) in enumerate(_pairs(self.params, grads)):
            if isinstance(p, LSTMParams):
                arrays = p.state_dict()
                p.copy_({k: arrays[k] - self._delta((i, k), gk) for k, gk in g.items()})
            else:
                p -= self._delta(i, g).astype(p.dtype)


def tbptt_chunks(stream: np.ndarray, chunk: int, targets: np.ndarray | None = None):
    """Truncated BPTT over a long time-major stream: yields ``(t0, x_chunk[, y_chunk])`` for
    consecutive chunks of ``chunk`` steps (the last may be shorter). Carry the state across
    chunks, without gradients through it::

        h = c = None
        for t0, x, tgt in tbptt_chunks(stream, 64, targets):
            out = fastlstm.forward(x, params, h, c, training=True)
            ... loss, backward, step ...
            h, c = out.h, out.c            # the next chunk starts from this state

    Parameters
    ----------
    stream : array (T, B, I)
    chunk : int
    targets : array (T, B, ...), optional
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    T = stream.shape[0]
    if targets is not None and targets.shape[0] != T:
        raise ValueError(f"targets must have the stream's {T} steps, got {targets.shape[0]}")
    for t0 in range(0, T, chunk):
        sl = slice(t0, min(T, t0 + chunk))
        if targets is None:
            yield t0, stream[sl]
        else:
            yield t0, stream[sl], targets[sl]
