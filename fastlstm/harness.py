"""The benchmark and check harness: cases, runners, output comparison and timing, shared by
the command line (:mod:`fastlstm.cli`), the pytest-benchmark suite (``bench/``), the CI scripts
(``ci/``) and the tests.

The case registry lives here, inside the installed package, so that the command-line tool works
from a wheel; ``bench/cases.py`` re-exports it for the pytest-benchmark suite. The runners call
the public API only (``fastlstm.forward``, ``fastlstm.backward``, ``fastlstm.LSTMParams``,
``fastlstm.available_devices``, ``fastlstm.testing``); results become NumPy arrays through
``fastlstm._coerce.to_numpy``, and a missing GPU is explained by
``fastlstm.dispatch.cuda_unavailable_reason``.

A :class:`Case` is one LSTM configuration. A *mode* is what one timed call does:

``infer``      ``forward(..., training=False)``
``train_fwd``  ``forward(..., training=True)`` (saves what backward needs)
``fwd_bwd``    a training forward followed by ``backward(cache, dy, dh, dc)``

A *backend* is ``reference``, ``cpu``, ``cuda`` (fastlstm devices, :class:`FastLSTMRunner`),
``torch`` (``torch.nn.LSTM`` with the same weights, packed sequences for variable lengths,
:class:`TorchRunner`: the one place the package drives torch's LSTM) or ``onnxruntime`` (the
weights exported as an ONNX model and run by an ONNX Runtime CPU session,
:class:`OnnxRuntimeRunner`; inference only, float32, no ``proj_size``: :func:`supports`). torch
and ONNX Runtime are the *peers* (:data:`PEERS`): other libraries timed beside ours, with the
thread count the CPU backend uses (:func:`default_torch_threads`).

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

import functools
import importlib
import importlib.util
import os
import statistics
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ._coerce import to_numpy

MODES = ("infer", "train_fwd", "fwd_bwd")
BACKENDS = ("reference", "cpu", "cuda", "torch", "onnxruntime")
#: The other libraries timed beside ours, and the short name of their "vs" columns.
PEERS = {"torch": "torch", "onnxruntime": "ort"}
FORWARD_KEYS = ("y", "h", "c")
STATE_GRAD_KEYS = ("dx", "dh0", "dc0")
#: Timings of one backend whose slowest round is more than this many times its fastest are
#: flagged as unreliable (a busy machine, frequency scaling, swapping).
UNRELIABLE_SPREAD = 2.0
#: A 1-minute load average above this fraction of the usable CPUs, before a run starts, means
#: other processes compete for the cores the timed calls' threads need.
BUSY_LOAD = 0.5

__all__ = ["Case", "Inputs", "CASES", "QUICK", "CHECK_CASES", "MODES", "BACKENDS", "FORWARD_KEYS",
           "PEERS", "get_case", "available_backends", "unavailable_reason", "torch_available",
           "onnxruntime_available", "supports", "FastLSTMRunner", "TorchRunner",
           "OnnxRuntimeRunner", "make_runner", "host_array", "param_grads",
           "reference_outputs", "expected_keys", "compare_outputs", "max_errors",
           "time_backends", "Spread", "spread", "is_unreliable", "UNRELIABLE_SPREAD", "BUSY_LOAD",
           "machine_load", "median", "measure_sgemm", "default_torch_threads"]


@dataclass
class Inputs:
    """Everything one call needs, time-major. ``lengths`` is None for full-length sequences;
    the output gradients ``dy``, ``dh``, ``dc`` may be None where only forwards run."""
    params: object          # fastlstm.LSTMParams
    x: np.ndarray           # (T, B, I)
    h0: np.ndarray          # (L*D, B, H_out)
    c0: np.ndarray          # (L*D, B, H)
    lengths: np.ndarray | None  # (B,) int64
    dy: np.ndarray | None   # (T, B, D*H_out)
    dh: np.ndarray | None   # (L*D, B, H_out)
    dc: np.ndarray | None   # (L*D, B, H)

    @classmethod
    def for_forward(cls, params, x, h0=None, c0=None, lengths=None) -> "Inputs":
        """Inputs of forward-only calls (``infer``, ``train_fwd``) on time-major ``x``:
        zero initial states where none are given, no output gradients."""
        LD, B = params.num_layers * params.num_directions, x.shape[1]
        if h0 is None:
            h0 = np.zeros((LD, B, params.output_size), params.dtype)
        if c0 is None:
            c0 = np.zeros((LD, B, params.hidden_size), params.dtype)
        return cls(params, x, h0, c0, lengths, None, None, None)


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
        from . import LSTMParams
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


@functools.lru_cache(maxsize=None)
def _onnxruntime_missing() -> str | None:
    """None when ``onnxruntime`` and ``onnx`` (the exporter's dependency) import, else why not."""
    missing = []
    for name in ("onnxruntime", "onnx"):
        try:
            importlib.import_module(name)
        except Exception as exc:  # not installed, or a broken install
            missing.append(name if isinstance(exc, ImportError) and
                           importlib.util.find_spec(name) is None
                           else f"{name} ({type(exc).__name__}: {exc})")
    if not missing:
        return None
    return (f"{' and '.join(missing)} cannot be imported (pip install onnxruntime onnx, or "
            f"pip install 'fastlstm[onnx]')")


def onnxruntime_available() -> bool:
    """True when ONNX Runtime and onnx (which writes the model it runs) both import."""
    return _onnxruntime_missing() is None


def available_backends() -> list[str]:
    """reference, cpu, cuda (with a usable GPU), torch and onnxruntime (when installed), in
    that order."""
    import fastlstm
    out = list(fastlstm.available_devices())
    if torch_available():
        out.append("torch")
    if onnxruntime_available():
        out.append("onnxruntime")
    return out


def unavailable_reason(backend: str) -> str | None:
    """None when ``backend`` can run here, else a sentence saying why it cannot."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}"
    if backend in available_backends():
        return None
    if backend == "cuda":
        from .dispatch import cuda_unavailable_reason
        return cuda_unavailable_reason() or "no usable CUDA GPU"
    if backend == "torch":
        return "torch is not installed (pip install torch)"
    if backend == "onnxruntime":
        return _onnxruntime_missing() or "ONNX Runtime is not available"
    return f"backend {backend!r} is not available (is it installed?)"


def supports(backend: str, case: Case, mode: str | None = None) -> str | None:
    """None when ``backend`` can run ``case`` in ``mode`` (in every mode when ``mode`` is None),
    else the reason it cannot. Whether the backend is installed is :func:`unavailable_reason`."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if backend == "cuda" and case.dtype != "float32":
        return "the CUDA backend computes in float32 only"
    if backend == "onnxruntime":
        if mode != "infer":
            return ("ONNX Runtime has no LSTM training (no saved state, no backward): it runs "
                    "inference (mode infer) only")
        if case.proj_size > 0:
            return (f"proj_size={case.proj_size}: ONNX's LSTM operator has no output projection, "
                    f"so the case has no ONNX equivalent")
        if case.dtype != "float32":
            return (f"ONNX Runtime's CPU LSTM kernel computes in float32 only (this case is "
                    f"{case.dtype})")
    return None


def host_array(a, name: str = "array") -> np.ndarray:
    """A NumPy array of a result: GPU arrays (numba device arrays, CuPy) are copied to the host
    first; everything else, torch tensors on any device included, goes through
    :func:`fastlstm._coerce.to_numpy`."""
    if hasattr(a, "copy_to_host"):  # numba device array
        a = a.copy_to_host()
    elif hasattr(a, "__cuda_array_interface__") and hasattr(a, "get") and not hasattr(a, "detach"):
        a = a.get()  # CuPy
    return to_numpy(a, name)


def param_grads(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The parameter gradients of a runner's outputs, under the parameters' own names."""
    skip = set(FORWARD_KEYS) | set(STATE_GRAD_KEYS)
    return {k[1:]: v for k, v in out.items() if k not in skip and k.startswith("d")}


def _check_call(mode: str, inputs: Inputs) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if mode == "fwd_bwd" and any(g is None for g in (inputs.dy, inputs.dh, inputs.dc)):
        raise ValueError("mode 'fwd_bwd' needs inputs with dy, dh and dc")


class FastLSTMRunner:
    """One call of ``mode`` on a fastlstm device (reference, cpu, cuda); calling the runner
    performs exactly the work that is timed.

    ``resident=True`` (``cuda`` only) copies the inputs to the GPU once, so calls take and return
    GPU arrays, and synchronises the device after each call; otherwise host arrays go in and
    out (for ``cuda``, the copies over and back are part of the call).
    """

    def __init__(self, case: Case, mode: str, device: str, inputs: Inputs, *,
                 resident: bool = False):
        import fastlstm
        _check_call(mode, inputs)
        if resident and device != "cuda":
            raise ValueError("resident=True needs device='cuda'")
        self._fl = fastlstm
        self.case, self.mode, self.device, self.inp = case, mode, device, inputs
        self._sync = None
        arrays = dict(x=inputs.x, h0=inputs.h0, c0=inputs.c0, dy=inputs.dy, dh=inputs.dh,
                      dc=inputs.dc)
        if resident:
            from numba import cuda
            arrays = {k: None if v is None else cuda.to_device(np.ascontiguousarray(v))
                      for k, v in arrays.items()}
            self._sync = cuda.synchronize
        self._a = arrays

    def __call__(self):
        fl, a, inp = self._fl, self._a, self.inp
        r = fl.forward(a["x"], inp.params, a["h0"], a["c0"], lengths=inp.lengths,
                       training=self.mode != "infer", device=self.device)
        g = fl.backward(r.cache, a["dy"], a["dh"], a["dc"]) if self.mode == "fwd_bwd" else None
        if self._sync is not None:
            self._sync()
        return r, g

    def outputs(self, ret) -> dict[str, np.ndarray]:
        """y, h, c (and dx, dh0, dc0, d<param name> for fwd_bwd) as NumPy arrays, time-major."""
        r, g = ret
        out = {k: host_array(getattr(r, k), k) for k in FORWARD_KEYS}
        if g is not None:
            out.update({k: host_array(getattr(g, k), k) for k in STATE_GRAD_KEYS})
            out.update({"d" + k: host_array(v, k) for k, v in g.dparams.items()})
        return out


def make_runner(case: Case, mode: str, backend: str, inputs: Inputs, *, torch_threads=None):
    """A callable doing one call of ``mode`` on ``backend``; ``runner.outputs(runner())`` gives
    the results as NumPy arrays keyed y, h, c (and dx, dh0, dc0, d<param name> for fwd_bwd).

    ``torch_threads`` is the peers' thread count: torch's ``set_num_threads`` (None leaves
    torch's setting) and ONNX Runtime's intra-op threads (None: :func:`default_torch_threads`).
    A backend that cannot run ``case`` in ``mode`` (:func:`supports`) raises ``ValueError``."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if backend == "torch":
        return TorchRunner(mode, inputs, threads=torch_threads)
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(mode, inputs, threads=torch_threads)
    if backend in ("reference", "cpu", "cuda"):
        return FastLSTMRunner(case, mode, backend, inputs)
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def default_torch_threads() -> int:
    """The thread count the CPU backend uses (Numba's), which the peers (torch, ONNX Runtime)
    are given too, so every library is compared on equal terms."""
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


@dataclass(frozen=True)
class Spread:
    """How one backend's timed rounds are spread (seconds)."""
    min_s: float
    median_s: float
    max_s: float
    rounds: int

    @property
    def ratio(self) -> float:
        """Slowest round over fastest (1.0 for perfectly steady timings)."""
        return self.max_s / self.min_s if self.min_s > 0 else float("inf")

    @property
    def unreliable(self) -> bool:
        """True when the rounds vary by more than :data:`UNRELIABLE_SPREAD` (max/min)."""
        return is_unreliable(self.ratio)


def is_unreliable(ratio: float) -> bool:
    """True when timed rounds whose slowest is ``ratio`` times their fastest are too unsteady
    to trust (more than :data:`UNRELIABLE_SPREAD`)."""
    return ratio > UNRELIABLE_SPREAD


def machine_load() -> tuple[float | None, int]:
    """(1-minute load average or None where the OS has none, CPUs this process may use)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return load, cpus


def spread(times) -> Spread:
    """The :class:`Spread` of a non-empty series of per-call times."""
    ts = [float(t) for t in times]
    if not ts:
        raise ValueError("no timings")
    return Spread(min(ts), median(ts), max(ts), len(ts))


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


from .harness_peers import OnnxRuntimeRunner, TorchRunner  # noqa: E402  (they use the above)
