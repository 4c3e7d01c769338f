"""Benchmark cases and runners, shared by ``bench/`` (pytest-benchmark), the tests and
``python -m fastlstm``.

The case registry lives here, inside the installed package, so that the command-line tool works
from a wheel; ``bench/cases.py`` re-exports it for the pytest-benchmark suite.

A :class:`Case` is one LSTM configuration. A *mode* is what one timed call does:

``infer``      ``forward(..., training=False)``
``train_fwd``  ``forward(..., training=True)`` (saves what backward needs)
``fwd_bwd``    a training forward followed by ``backward(cache, dy, dh, dc)``

A *backend* is ``reference``, ``cpu``, ``cuda`` (fastlstm devices) or ``torch``
(``torch.nn.LSTM`` with the same weights, packed sequences for variable lengths).

Useful FLOPs of a call (:meth:`Case.flops`), counting a multiply-add as 2 and ignoring pointwise
work (activations, cell update: O(T*B*H), negligible beside the products)::

    N        = valid (step, sequence) pairs: T*B, or sum(lengths) with variable lengths
    I_l      = I for layer 0, D*H_out for the layers above
    forward  = sum over layers l and directions of  2*N*4H*(I_l + H_out)  [+ 2*N*H*P with proj]
    backward = 2 * forward   (per product: one for the input gradient, one for the weight
                              gradient: dgates W_hh and dgates^T h, dgates W_ih and dgates^T x,
                              and the same pair for W_hr)
    infer, train_fwd: forward;   fwd_bwd: 3 * forward
"""
from __future__ import annotations

import importlib.util
import statistics
import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

MODES = ("infer", "train_fwd", "fwd_bwd")
BACKENDS = ("reference", "cpu", "cuda", "torch")
FORWARD_KEYS = ("y", "h", "c")

__all__ = ["Case", "Inputs", "CASES", "QUICK", "CHECK_CASES", "MODES", "BACKENDS", "get_case",
           "available_backends", "torch_available", "make_runner", "reference_outputs",
           "compare_outputs", "time_backends", "measure_sgemm", "supports"]


@dataclass
class Inputs:
    """Everything one call needs, time-major. ``lengths`` is None for full-length sequences."""
    params: object          # fastlstm.LSTMParams
    x: np.ndarray           # (T, B, I)
    h0: np.ndarray          # (L*D, B, H_out)
    c0: np.ndarray          # (L*D, B, H)
    lengths: np.ndarray | None  # (B,) int64
    dy: np.ndarray          # (T, B, D*H_out)
    dh: np.ndarray          # (L*D, B, H_out)
    dc: np.ndarray          # (L*D, B, H)


@dataclass(frozen=True)
class Case:
    """One LSTM configuration of the benchmark grid (shapes as ``torch.nn.LSTM``)."""
    name: str
    T: int
    B: int
    I: int
    H: int
    num_layers: int = 1
    bidirectional: bool = False
    proj_size: int = 0
    lengths: bool = False
    dtype: str = "float32"
    quick: bool = False     # in the CI / `python -m fastlstm bench` quick preset

    # ------------------------------------------------------------------ derived sizes
    @property
    def D(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def H_out(self) -> int:
        return self.proj_size if self.proj_size > 0 else self.H

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def length_array(self) -> np.ndarray | None:
        """The fixed, deterministic lengths of a variable-length case (None otherwise).

        Evenly spread from T down to ~T/4, in a fixed shuffled order (unsorted, as real
        batches are); the longest is T.
        """
        if not self.lengths:
            return None
        B, T = self.B, self.T
        lens = np.round(T * (1.0 - 0.75 * np.arange(B) / max(B - 1, 1))).astype(np.int64)
        lens = np.clip(lens, 1, T)
        return lens[np.random.default_rng(12345).permutation(B)]

    def valid_steps(self) -> int:
        lens = self.length_array()
        return int(self.T * self.B if lens is None else lens.sum())

    def flops(self, mode: str) -> float:
        """Useful floating-point operations of one call in ``mode`` (see the module docstring)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        n = self.valid_steps()
        H, P, Ho = self.H, self.proj_size, self.H_out
        fwd = 0.0
        for layer in range(self.num_layers):
            i_l = self.I if layer == 0 else self.D * Ho
            per_dir = 2.0 * n * 4 * H * (i_l + Ho)
            if P:
                per_dir += 2.0 * n * H * P
            fwd += self.D * per_dir
        return 3.0 * fwd if mode == "fwd_bwd" else fwd

    def gflop(self, mode: str) -> float:
        return self.flops(mode) / 1e9

    def describe(self) -> str:
        parts = [f"T={self.T} B={self.B} I={self.I} H={self.H}"]
        if self.num_layers > 1:
            parts.append(f"layers={self.num_layers}")
        if self.bidirectional:
            parts.append("bidirectional")
        if self.proj_size:
            parts.append(f"proj={self.proj_size}")
        if self.lengths:
            parts.append("variable lengths")
        parts.append(self.dtype)
        return " ".join(parts)

    def info(self) -> dict:
        """The fields every benchmark record carries."""
        return dict(case=self.name, dtype=self.dtype, T=self.T, B=self.B, I=self.I, H=self.H,
                    num_layers=self.num_layers, bidirectional=self.bidirectional,
                    proj_size=self.proj_size, lengths=self.lengths)

    # ------------------------------------------------------------------ inputs
    def make_params(self, seed: int = 0):
        from .params import LSTMParams
        return LSTMParams.init(self.I, self.H, self.num_layers, bidirectional=self.bidirectional,
                               proj_size=self.proj_size, dtype=self.np_dtype, seed=seed)

    def make_inputs(self, seed: int = 0) -> Inputs:
        """Random parameters, inputs, initial states and output gradients (never zeros)."""
        dt = self.np_dtype
        rng = np.random.default_rng(seed + 1)
        LD = self.num_layers * self.D

        def rand(*shape, scale=1.0):
            return (scale * rng.standard_normal(shape)).astype(dt)

        return Inputs(
            params=self.make_params(seed),
            x=rand(self.T, self.B, self.I),
            h0=rand(LD, self.B, self.H_out, scale=0.5),
            c0=rand(LD, self.B, self.H, scale=0.5),
            lengths=self.length_array(),
            dy=rand(self.T, self.B, self.D * self.H_out),
            dh=rand(LD, self.B, self.H_out),
            dc=rand(LD, self.B, self.H),
        )

    @classmethod
    def from_size(cls, T: int, B: int, I: int, H: int, **kw) -> "Case":
        """A case named after its configuration, e.g. ``T100_B8_I64_H128_L2_bi_len_f64``."""
        probe = cls("", T, B, I, H, **kw)
        name = f"T{T}_B{B}_I{I}_H{H}"
        if probe.num_layers > 1:
            name += f"_L{probe.num_layers}"
        if probe.bidirectional:
            name += "_bi"
        if probe.proj_size:
            name += f"_P{probe.proj_size}"
        if probe.lengths:
            name += "_len"
        if probe.dtype != "float32":
            name += "_f" + probe.dtype.replace("float", "")
        return replace(probe, name=name)


_c = Case.from_size
#: The benchmark grid. ``quick=True`` marks the CI subset (about 1-2 minutes with timing on).
CASES: list[Case] = [
    _c(100, 1, 32, 64, quick=True),
    _c(200, 1, 64, 128, quick=True),
    _c(100, 4, 128, 128, quick=True),
    _c(100, 16, 128, 256, quick=True),
    _c(100, 64, 256, 256),
    _c(50, 64, 512, 512),
    _c(20, 128, 1024, 1024),
    _c(50, 8, 64, 128, num_layers=2, bidirectional=True, quick=True),
    _c(100, 16, 64, 128, lengths=True, quick=True),
    _c(100, 8, 128, 256, proj_size=64),
    _c(100, 4, 128, 128, dtype="float64", quick=True),
]
QUICK: list[Case] = [c for c in CASES if c.quick]

#: Small configurations for `python -m fastlstm check`: every feature, both dtypes.
CHECK_CASES: list[Case] = [
    _c(7, 3, 5, 8),
    _c(7, 3, 5, 8, dtype="float64"),
    _c(6, 1, 4, 16),
    _c(9, 4, 5, 8, lengths=True),
    _c(9, 4, 5, 8, lengths=True, dtype="float64"),
    _c(7, 3, 5, 8, proj_size=3),
    _c(7, 3, 5, 8, proj_size=3, dtype="float64"),
    _c(6, 3, 4, 8, num_layers=2, bidirectional=True),
    _c(8, 4, 4, 8, num_layers=2, bidirectional=True, lengths=True),
    _c(8, 4, 4, 8, num_layers=2, bidirectional=True, proj_size=5, lengths=True, dtype="float64"),
    _c(5, 2, 3, 32, num_layers=3),
]
del _c


def get_case(name: str) -> Case:
    for c in CASES + CHECK_CASES:
        if c.name == name:
            return c
    raise KeyError(f"no case named {name!r}; known: {', '.join(c.name for c in CASES)}")


# ---------------------------------------------------------------------------- backends
def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def available_backends() -> list[str]:
    """reference, cpu, cuda (with a usable GPU) and torch (when installed), in that order."""
    from .dispatch import available_devices
    out = list(available_devices())
    if torch_available():
        out.append("torch")
    return out


def supports(backend: str, case: Case) -> str | None:
    """None when ``backend`` can run ``case``, else the reason it cannot."""
    if backend == "cuda" and case.dtype != "float32":
        return "the CUDA backend computes in float32 only"
    return None


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    if hasattr(a, "get") and not isinstance(a, np.ndarray):  # CuPy
        return a.get()
    return np.asarray(a)


class _FastLSTMRunner:
    """A fastlstm device (reference, cpu, cuda). Calling it performs the timed work."""

    def __init__(self, case: Case, mode: str, device: str, inputs: Inputs):
        import fastlstm
        self._fl = fastlstm
        self.case, self.mode, self.device, self.inp = case, mode, device, inputs

    def __call__(self):
        fl, inp = self._fl, self.inp
        r = fl.forward(inp.x, inp.params, inp.h0, inp.c0, lengths=inp.lengths,
                       training=self.mode != "infer", device=self.device)
        g = fl.backward(r.cache, inp.dy, inp.dh, inp.dc) if self.mode == "fwd_bwd" else None
        return r, g

    def outputs(self, ret) -> dict[str, np.ndarray]:
        r, g = ret
        out = {"y": _to_numpy(r.y), "h": _to_numpy(r.h), "c": _to_numpy(r.c)}
        if g is not None:
            out.update(dx=_to_numpy(g.dx), dh0=_to_numpy(g.dh0), dc0=_to_numpy(g.dc0))
            out.update({"d" + k: _to_numpy(v) for k, v in g.dparams.items()})
        return out


class _TorchRunner:
    """``torch.nn.LSTM`` with the case's weights; packed sequences for variable lengths."""

    def __init__(self, case: Case, mode: str, inputs: Inputs, threads: int | None = None):
        import torch
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
        self.torch = torch
        self._pack, self._pad = pack_padded_sequence, pad_packed_sequence
        if threads is not None:
            torch.set_num_threads(threads)
        tdt = {"float32": torch.float32, "float64": torch.float64}[case.dtype]
        self.case, self.mode = case, mode
        self.lstm = torch.nn.LSTM(case.I, case.H, case.num_layers, bias=True,
                                  bidirectional=case.bidirectional, proj_size=case.proj_size,
                                  dtype=tdt)
        # torch falls back from oneDNN for projections and says so once per process; noise here.
        warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
        self.lstm.load_state_dict({k: torch.tensor(v) for k, v in inputs.params.state_dict().items()})
        self.lstm.train(mode != "infer")
        t = lambda a: torch.tensor(a)  # noqa: E731  (copies: the inputs stay NumPy-owned)
        self.x, self.h0, self.c0 = t(inputs.x), t(inputs.h0), t(inputs.c0)
        self.dy, self.dh, self.dc = t(inputs.dy), t(inputs.dh), t(inputs.dc)
        self.lengths = None if inputs.lengths is None else torch.as_tensor(inputs.lengths)

    def _forward(self, x, h0, c0):
        if self.lengths is None:
            y, (h, c) = self.lstm(x, (h0, c0))
            return y, h, c
        packed = self._pack(x, self.lengths, enforce_sorted=False)
        out, (h, c) = self.lstm(packed, (h0, c0))
        y, _ = self._pad(out, total_length=self.case.T)
        return y, h, c

    def __call__(self):
        torch = self.torch
        if self.mode == "infer":
            with torch.inference_mode():
                return self._forward(self.x, self.h0, self.c0) + (None,)
        for p in self.lstm.parameters():
            p.grad = None
        leaves = tuple(a.detach().requires_grad_(True) for a in (self.x, self.h0, self.c0))
        y, h, c = self._forward(*leaves)
        if self.mode == "fwd_bwd":
            torch.autograd.backward([y, h, c], [self.dy, self.dh, self.dc])
        return y, h, c, leaves

    def outputs(self, ret) -> dict[str, np.ndarray]:
        y, h, c, leaves = ret
        out = {"y": _to_numpy(y), "h": _to_numpy(h), "c": _to_numpy(c)}
        if self.mode == "fwd_bwd":
            x, h0, c0 = leaves
            out.update(dx=_to_numpy(x.grad), dh0=_to_numpy(h0.grad), dc0=_to_numpy(c0.grad))
            out.update({"d" + k: _to_numpy(p.grad) for k, p in self.lstm.named_parameters()})
        return out


def make_runner(case: Case, mode: str, backend: str, inputs: Inputs, *, torch_threads=None):
    """A callable doing one call of ``mode`` on ``backend``; ``runner.outputs(runner())`` gives
    the results as NumPy arrays keyed y, h, c (and dx, dh0, dc0, d<param name> for fwd_bwd)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if backend == "torch":
        return _TorchRunner(case, mode, inputs, threads=torch_threads)
    if backend in ("reference", "cpu", "cuda"):
        return _FastLSTMRunner(case, mode, backend, inputs)
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def default_torch_threads() -> int:
    """The thread count the CPU backend uses (Numba's), so torch is compared on equal terms."""
    import numba
    return numba.get_num_threads()


# ---------------------------------------------------------------------------- correctness
def reference_outputs(case: Case, inputs: Inputs) -> dict[str, np.ndarray]:
    """Every output and gradient of the NumPy reference (the oracle), from one fwd_bwd call."""
    r = make_runner(case, "fwd_bwd", "reference", inputs)
    return r.outputs(r())


def expected_keys(mode: str, ref: dict) -> list[str]:
    """The outputs a call of ``mode`` must produce: y, h, c, plus every gradient for fwd_bwd."""
    return list(ref) if mode == "fwd_bwd" else list(FORWARD_KEYS)


def compare_outputs(out: dict, ref: dict, dtype, mode: str) -> list[tuple[str, float, float, bool]]:
    """``(key, relative error, tolerance, ok)`` for every output ``mode`` produces, against the
    reference ``ref`` (the one tolerance rule of :mod:`fastlstm.testing`). A missing output or a
    shape mismatch counts as an infinite error; non-finite values fail."""
    from .testing import rel_err, tolerance
    rows = []
    for key in expected_keys(mode, ref):
        tol = tolerance(dtype, "forward" if key in FORWARD_KEYS else "grad")
        if key not in out:
            rows.append((key, float("inf"), tol, False))
            continue
        try:
            err = rel_err(out[key], ref[key])
        except AssertionError:  # shape mismatch
            err = float("inf")
        finite = bool(np.all(np.isfinite(np.asarray(out[key], np.float64))))
        rows.append((key, err, tol, finite and err <= tol))
    return rows


def max_errors(rows) -> tuple[float, float]:
    """(max forward error over y/h/c, max gradient error) of :func:`compare_outputs` rows."""
    fwd = [e for k, e, _, _ in rows if k in FORWARD_KEYS]
    grad = [e for k, e, _, _ in rows if k not in FORWARD_KEYS]
    return (max(fwd) if fwd else float("nan"), max(grad) if grad else float("nan"))


# ---------------------------------------------------------------------------- timing
def time_backends(fns: dict[str, Callable], *, rounds: int | None = None, budget: float = 0.3,
                  min_rounds: int = 3, max_rounds: int = 200,
                  estimate: dict[str, float] | None = None) -> dict[str, list[float]]:
    """Time each callable ``rounds`` times, in blocks of consecutive calls per backend, in the
    order A B C then C B A (half the rounds each), so slow drifts of a shared machine hit
    every backend alike. Not call-by-call round-robin: after one backend's call, its BLAS or
    OpenMP worker threads keep spinning for a while and take a core from the next backend's
    call (measured: it understated torch by up to 2x at 2 threads, bench/NOTES.md). Each block
    starts after a pause and one untimed call. With ``rounds=None`` the count is what fits in
    ``budget`` seconds given one-call ``estimate`` s (clamped to min/max_rounds)."""
    if rounds is None:
        per_round = sum((estimate or {}).values()) or 1e-3
        rounds = int(min(max_rounds, max(min_rounds, budget / per_round)))
    times: dict[str, list[float]] = {k: [] for k in fns}
    clock = time.perf_counter
    first = (rounds + 1) // 2
    order = list(fns.items())
    for block, n in ((order, first), (order[::-1], rounds - first)):
        for k, fn in block:
            if n <= 0:
                continue
            time.sleep(0.02)  # let the previous backend's worker threads go idle
            fn()  # untimed
            for _ in range(n):
                t0 = clock()
                fn()
                times[k].append(clock() - t0)
    return times


def median(xs) -> float:
    return float(statistics.median(xs))


def measure_sgemm(n: int = 2048, rounds: int = 5) -> float:
    """GFLOP/s of the machine's BLAS: median of float32 ``(n, n) @ (n, n)`` (the practical
    ceiling of every GEMM-bound phase)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        ts.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / median(ts) / 1e9
