"""Shared test helpers: random problems, torch oracle, input-unchanged checks."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

import fastlstm
from fastlstm import LSTMParams
from fastlstm.harness import Inputs, TorchRunner, param_grads
from fastlstm.testing import assert_close

try:  # torch is an optional test oracle
    import torch
except ImportError:  # pragma: no cover - exercised in environments without torch
    torch = None


@dataclass(frozen=True)
class Config:
    T: int = 5
    B: int = 3
    I: int = 4
    H: int = 6
    L: int = 1
    bidirectional: bool = False
    proj: int = 0
    bias: bool = True
    lengths: bool = False
    given_state: bool = True

    @property
    def D(self):
        return 2 if self.bidirectional else 1

    @property
    def P(self):
        return self.proj or self.H

    def __str__(self):
        parts = [f"T{self.T}B{self.B}I{self.I}H{self.H}L{self.L}"]
        if self.bidirectional:
            parts.append("bi")
        if self.proj:
            parts.append(f"P{self.proj}")
        if not self.bias:
            parts.append("nobias")
        if self.lengths:
            parts.append("len")
        if not self.given_state:
            parts.append("zerostate")
        return "-".join(parts)


@dataclass
class Problem:
    cfg: Config
    params: LSTMParams
    x: np.ndarray
    h0: np.ndarray | None
    c0: np.ndarray | None
    lengths: np.ndarray | None
    dy: np.ndarray
    dh: np.ndarray
    dc: np.ndarray


def make_problem(cfg: Config, dtype=np.float64, seed=0) -> Problem:
    rng = np.random.default_rng(seed)
    params = LSTMParams.init(cfg.I, cfg.H, cfg.L, bias=cfg.bias, bidirectional=cfg.bidirectional,
                             proj_size=cfg.proj, dtype=dtype, seed=seed)
    # Larger-than-init weights make the gates leave the linear regime.
    sd = {k: v * 1.5 for k, v in params.state_dict().items()}
    params = LSTMParams.from_state_dict(sd, dtype=dtype)
    T, B, D, P, H, L = cfg.T, cfg.B, cfg.D, cfg.P, cfg.H, cfg.L
    x = rng.standard_normal((T, B, cfg.I)).astype(dtype)
    h0 = rng.standard_normal((L * D, B, P)).astype(dtype) if cfg.given_state else None
    c0 = rng.standard_normal((L * D, B, H)).astype(dtype) if cfg.given_state else None
    lengths = None
    if cfg.lengths:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[rng.integers(B)] = T  # keep one full-length sequence
        if B > 1:
            lengths[(np.argmax(lengths) + 1) % B] = 1  # and one of length 1
    dy = rng.standard_normal((T, B, D * P)).astype(dtype)
    dh = rng.standard_normal((L * D, B, P)).astype(dtype)
    dc = rng.standard_normal((L * D, B, H)).astype(dtype)
    return Problem(cfg, params, x, h0, c0, lengths, dy, dh, dc)


def run(problem: Problem, device: str, **kw):
    """Forward (training) and backward on one backend; returns (ForwardResult, BackwardResult)."""
    p = problem
    fwd = fastlstm.forward(p.x, p.params, p.h0, p.c0, lengths=p.lengths, training=True,
                           device=device, **kw)
    bwd = fastlstm.backward(fwd.cache, p.dy, p.dh, p.dc)
    return fwd, bwd


def compare(fwd, bwd, fwd_ref, bwd_ref, dtype, what=""):
    for name in ("y", "h", "c"):
        assert_close(getattr(fwd, name), getattr(fwd_ref, name), dtype, "forward", f"{what} {name}")
    for name in ("dx", "dh0", "dc0"):
        assert_close(getattr(bwd, name), getattr(bwd_ref, name), dtype, "grad", f"{what} {name}")
    assert list(bwd.dparams) == list(bwd_ref.dparams)
    for name in bwd_ref.dparams:
        assert_close(bwd.dparams[name], bwd_ref.dparams[name], dtype, "grad", f"{what} {name}")


def snapshot(*arrays):
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def assert_unchanged(before, *arrays):
    for b, a in zip(before, arrays):
        if b is not None:
            np.testing.assert_array_equal(a, b)


def torch_run(problem: Problem, dtype, batch_first=False):
    """torch.nn.LSTM forward + autograd with the same weights (packed when lengths are given),
    through the harness's torch runner (``batch_first`` drives torch's batch-first layout).

    Returns a dict of NumPy arrays, time-major: y, h, c, dx, dh0, dc0 and dparams (a dict by
    parameter name). Missing initial states are zeros; dh0/dc0 are their gradients.
    """
    p = problem
    assert p.params.dtype == np.dtype(dtype)
    inputs = Inputs(params=p.params, x=p.x,
                    h0=p.h0 if p.h0 is not None else np.zeros_like(p.dh),
                    c0=p.c0 if p.c0 is not None else np.zeros_like(p.dc),
                    lengths=p.lengths, dy=p.dy, dh=p.dh, dc=p.dc)
    runner = TorchRunner("fwd_bwd", inputs, batch_first=batch_first)
    out = runner.outputs(runner())
    res = {k: out[k] for k in ("y", "h", "c", "dx", "dh0", "dc0")}
    res["dparams"] = param_grads(out)
    return res


def run_in_threads(work, n, timeout=None):
    """``work(i)`` for i in range(n), each on its own thread, all at once; returns the
    exceptions they raised and the threads (joined, ``timeout`` seconds each at most)."""
    errors = []

    def guarded(i):
        try:
            work(i)
        except BaseException as exc:  # the caller reports it
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return errors, threads


def rel_err(a, b) -> float:
    """``|a - b| / |b|`` (Frobenius) of two torch tensors, gradients detached."""
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / max(float(b.norm()), 1e-300))
