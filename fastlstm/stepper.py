"""Streaming inference one step at a time: :class:`Stepper`.

A :class:`Stepper` holds the state ``(h, c)`` of every layer of a unidirectional LSTM and
advances it by one input step per :meth:`Stepper.step` call, or by a chunk of steps per
:meth:`Stepper.steps` call, with the math of :func:`fastlstm.forward` over the concatenated
sequence::

    s = fastlstm.Stepper(params, batch_size=4)
    for x_t in stream:                 # x_t (4, I): the params' dtype, C-contiguous
        y_t = s.step(x_t)              # (4, H_out): the top layer's new h, a new array
    s.h, s.c                           # (L, 4, H_out), (L, 4, H): copies of the state
    s.reset()                          # back to zeros (or to given h0, c0)

CPU (``device="cpu"``): every buffer is allocated at construction; a step is one compiled call
(``kernels/cpu/step.py``) over all layers, with the weights packed once per parameter version
(``LSTMParams.derived``) in the layout that call reads: ``[W_ih^T ; W_hh^T]`` stacked, so each
layer's step is one small BLAS product, and ``b_ih + b_hh`` summed. The checks of a call are a
few attribute comparisons, and the compiled code is entered directly (the dispatcher's typing
of each argument skipped: those checks guarantee the types). An in-place update of the
parameters (``LSTMParams.update_``, ``copy_``) is used from the next step on (one integer
comparison per step).

GPU (``device="cuda"``, float32): one fused launch per layer and step
(``kernels/cuda/step.py``), the weights and the state resident on the device.

Not thread-safe: a Stepper is mutable state; use one per thread (they may share the params).
"""
from __future__ import annotations

import functools

import numpy as np

from . import config, dispatch, layout
from ._coerce import to_numpy
from .params import LSTMParams

__all__ = ["Stepper"]

_ndarray = np.ndarray
_empty = np.empty
_F32 = np.dtype(np.float32)



def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def _spec(params: LSTMParams, B: int) -> layout.CallSpec:
    """The shapes of a one-step call of ``B`` sequences, for the state rules of
    :mod:`fastlstm.layout`."""
    L, H, P, I = params.num_layers, params.hidden_size, params.output_size, params.input_size
    return layout.CallSpec(T=1, B=B, I=I, unbatched=False, batch_first=False, training=False,
                           dropout=0.0, x_shape=(1, B, I), h_shape=(L, B, P), c_shape=(L, B, H),
                           y_shape=(1, B, P))


def _dtype_error(name: str, got, want: np.dtype) -> TypeError:
    got = np.dtype(got)
    msg = (f"{name} must have dtype {want.name} (the params' dtype), got {got}; convert it with "
           f"{name}.astype(np.{want.name})")
    if got.kind == "f" and got.itemsize in (4, 8) and got.newbyteorder("=") != want:
        msg += f", or use params.astype(np.{got.name}) to compute in {got.name}"
    return TypeError(msg)


def _host_array(a, name: str, shape: tuple, dtype: np.dtype, what: str, *,
                contiguous: bool = True, writeable: bool = False) -> np.ndarray:
    """``a`` as a plain NumPy array of exactly ``shape`` and ``dtype`` (never converted), or an
    error naming ``name`` and what was expected (``what`` explains the shape)."""
    if hasattr(a, "__cuda_array_interface__"):
        raise TypeError(f"{name} is a GPU array but this Stepper runs on the CPU; build it with "
                        f"device='cuda', or pass a host array")
    if not isinstance(a, _ndarray):
        a = to_numpy(a, name)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape} {what}, got {a.shape}")
    if a.dtype != dtype:
        raise _dtype_error(name, a.dtype, dtype)
    if contiguous and not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous; pass np.ascontiguousarray({name})")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return a if type(a) is _ndarray else a.view(_ndarray)


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an integer, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


class Stepper:
    """The state of a unidirectional LSTM, advanced one input step per :meth:`step` call.

    Parameters
    ----------
    params : LSTMParams
        Any number of layers, with or without biases and projection, float32 or float64; not
        bidirectional (a reverse direction needs the whole sequence before its first output).
        Shared, not copied: an in-place update (``params.update_``, ``params.copy_``) is used
        from the next step on.
    batch_size : int
        B, the number of sequences stepped together (>= 1).
    h0 : array (L, B, H_out), optional
        The initial hidden state of every layer (zeros when omitted).
    c0 : array (L, B, H), optional
        The initial cell state (zeros when omitted); needs ``h0``, as in
        :func:`fastlstm.forward`. States of another float dtype are converted.
    device : "cpu" or "cuda"
        ``"cuda"`` (float32 params only) keeps the weights and the state on the GPU; its
        inputs may be host or GPU arrays.

    Attributes
    ----------
    params : LSTMParams
    batch_size : int
    device : str
    h : ndarray (L, B, H_out)
        The current hidden state: a new NumPy array (a copy) at every access.
    c : ndarray (L, B, H)
        The current cell state, a copy likewise.

    Notes
    -----
    The results equal :func:`fastlstm.forward` over the concatenated inputs (same ``h0``,
    ``c0``) within the tolerance of :mod:`fastlstm.testing`: only the order of the sums in the
    gate pre-activations differs. The product blocking is the CPU backend's
    (:class:`fastlstm.config.CPUConfig`), read at construction.

    Not thread-safe: use one Stepper per thread (they may share ``params``).
    """

    def __new__(cls, *args, device="cpu", **kwargs):
        if cls is Stepper and isinstance(device, str) and device == "cuda":
            return object.__new__(_CUDAStepper)
        return object.__new__(cls)

    def __init__(self, params, batch_size=1, h0=None, c0=None, *, device="cpu"):
        if not isinstance(device, str) or device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        params = layout.check_params(params)
        if params.bidirectional:
            raise ValueError(
                "Stepper needs unidirectional params: a bidirectional LSTM's reverse direction "
                "reads the whole sequence before its first output (use fastlstm.forward)")
        self.params = params
        self.batch_size = B = _check_batch_size(batch_size)
        self.device = device
        # NumPy's own instance (params.dtype is equal but another object): step() compares
        # dtypes by identity
        self._dt = np.dtype(params.dtype.name)
        self._L, self._H, self._P = params.num_layers, params.hidden_size, params.output_size
        self._I = params.input_size
        self._xshape = (B, self._I)
        self._yshape = (B, self._P)
        self._spec = _spec(params, B)
        h, c = self._initial_state(h0, c0)
        self._init_buffers()
        self._set_state(h, c)

    def _initial_state(self, h0, c0):
        """``h0``, ``c0`` as new host arrays of the params' dtype (zeros for None), by the rules
        of :func:`fastlstm.forward`: ``h0`` alone means ``c0 = 0``, ``c0`` alone is an error,
        other float dtypes are converted."""
        layout.check_states(h0, c0)
        spec, dt = self._spec, self._dt
        return (layout.host_state(h0, "h0", spec.h_shape, spec, dt),
                layout.host_state(c0, "c0", spec.c_shape, spec, dt))

    # ------------------------------------------------------------------ CPU buffers
    def _init_buffers(self):
        from .backends.cpu import block_shape
        from .kernels.cpu import step as kstep
        from .kernels.cpu.smallgemm import aligned_zeros
        p, B, dt = self.params, self.batch_size, self._dt
        L, H, P = self._L, self._H, self._P
        G = 4 * H
        a = 64 // dt.itemsize  # elements per 64 bytes
        cfg = config.current("cpu")
        # the weights: per layer [W_ih^T ; W_hh^T] and W_hr^T in column blocks, the bias
        wlay, n = [], 0
        for layer in range(L):
            I = p.layer_input_size(layer)
            # columns per block, rows per chunk (0: the register-blocked kernel)
            cols, mb_w = block_shape(B, I + P, G, True, cfg, dt.itemsize)
            n_w = G // cols
            o_w, n = n, _align(n + (I + P) * G, a)
            o_b, n = n, _align(n + G, a)
            cols, mb_r = block_shape(B, H, P, True, cfg, dt.itemsize) if p.proj_size else (P, B)
            n_r = P // cols
            o_r, n = n, _align(n + (H * P if p.proj_size else 0), a)
            wlay.append((I, o_w, n_w, mb_w, o_b, o_r, n_r, mb_r))
        self._wlayout, self._wsize = tuple(wlay), max(n, 1)
        # the state, the scratch, and each layer's [x | h_prev] rows
        n = 0
        offs = []
        for size in (L * B * P, L * B * H, B * G, B * G, B * H, B * P, G, G):
            offs.append(n)
            n = _align(n + size, a)
        o_h, o_c = offs[0], offs[1]
        per_layer = []
        for I, o_w, n_w, mb_w, o_b, o_r, n_r, mb_r in wlay:
            per_layer += [I, o_w, n_w, mb_w, o_b, o_r, n_r, mb_r, n]
            n = _align(n + B * (I + P), a)
        self._s = aligned_zeros(n, dt)
        self._meta = np.array([L, B, H, P, int(p.proj_size > 0)] + offs + per_layer, np.int64)
        assert len(offs) + 5 == kstep.META_HEADER and len(per_layer) == L * kstep.META_PER_LAYER
        self._h_view = self._s[o_h:o_h + L * B * P].reshape(L, B, P)
        self._c_view = self._s[o_c:o_c + L * B * H].reshape(L, B, H)
        self._k = kstep
        self._step_entry = self._steps_entry = None
        self._calls = None
        self._sync()

    def _pack(self) -> np.ndarray:
        """The weights in the layout ``kernels/cpu/step.py`` reads (see ``_init_buffers``)."""
        p, H, P = self.params, self._H, self._P
        G = 4 * H
        from .kernels.cpu.smallgemm import aligned_zeros
        buf = aligned_zeros(self._wsize, self._dt)
        for layer, (I, o_w, n_w, _, o_b, o_r, n_r, _) in enumerate(self._wlayout):
            w_ih, w_hh, b_ih, b_hh, w_hr = p.layer_weights(layer, 0)
            K = I + P
            wcat = np.concatenate([w_ih.T, w_hh.T])  # (K, 4H)
            buf[o_w:o_w + K * G].reshape(n_w, K, G // n_w)[:] = \
                wcat.reshape(K, n_w, G // n_w).transpose(1, 0, 2)
            if b_ih is not None:
                np.add(b_ih, b_hh, out=buf[o_b:o_b + G])
            if w_hr is not None:
                buf[o_r:o_r + H * P].reshape(n_r, H, P // n_r)[:] = \
                    w_hr.T.reshape(H, n_r, P // n_r).transpose(1, 0, 2)
        return buf

    def _sync(self):
        """Bind the packed weights of the params' current version (built once per version and
        block layout, shared by the Steppers of the same params)."""
        p = self.params
        version = p.version
        key = ("cpu", "stepper", tuple((l[2], l[6]) for l in self._wlayout))
        w = p.derived(key, self._pack)
        if self._step_entry is None:
            x, y = np.empty(self._xshape, self._dt), np.empty(self._yshape, self._dt)
            self._step_entry = _entry_point(self._k.step_forward, (w, self._s, self._meta, x, y))
        self._w = w
        self._call = functools.partial(self._step_entry, w, self._s, self._meta)
        self._calls = None
        self._version = version

    def _steps_call(self):
        if self._calls is None:
            if self._steps_entry is None:
                B, I, P, dt = self.batch_size, self._I, self._P, self._dt
                self._steps_entry = _entry_point(
                    self._k.steps_forward, (self._w, self._s, self._meta,
                                            np.empty((1, B, I), dt), np.empty((1, B, P), dt)))
            self._calls = functools.partial(self._steps_entry, self._w, self._s, self._meta)
        return self._calls

    def _set_state(self, h, c):
        self._h_view[...] = h
        self._c_view[...] = c

    # ------------------------------------------------------------------ state
    @property
    def h(self) -> np.ndarray:
        """The hidden state (L, B, H_out) of every layer: a new array (a copy)."""
        return self._h_view.copy()

    @property
    def c(self) -> np.ndarray:
        """The cell state (L, B, H) of every layer: a new array (a copy)."""
        return self._c_view.copy()

    def reset(self, h0=None, c0=None) -> None:
        """Set the state to ``h0`` (L, B, H_out), ``c0`` (L, B, H): zeros when omitted, and the
        rules of the constructor. A call that raises leaves the state unchanged."""
        self._set_state(*self._initial_state(h0, c0))

    # ------------------------------------------------------------------ stepping
    def step(self, x_t, out=None):
        """Advance every layer by one step.

        Parameters
        ----------
        x_t : ndarray (B, I)
            This step's input: the params' dtype (never converted: another dtype is refused,
            with a hint), C-contiguous. Not modified.
        out : ndarray (B, H_out), optional
            Receives the result (the params' dtype, C-contiguous, writeable) instead of a new
            array.

        Returns
        -------
        ndarray (B, H_out)
            The top layer's new hidden state: a new array the caller owns, or ``out``.

        Raises
        ------
        ValueError, TypeError
            For a wrong shape, dtype or layout of ``x_t`` or ``out``; the state is unchanged.
        """
        dt = self._dt
        try:  # the fast path: attribute comparisons only (ndarray subclasses pass too)
            if (x_t.dtype is dt and x_t.shape == self._xshape and x_t.flags.c_contiguous
                    and self.params.version == self._version):
                if out is None:
                    out = _empty(self._yshape, dt)
                    self._call(x_t, out)
                    return out
                flags = out.flags
                if (out.dtype is dt and out.shape == self._yshape and flags.c_contiguous
                        and flags.writeable):
                    self._call(x_t, out)
                    return out
        except AttributeError:  # not an array: the checks below say what is wrong
            pass
        return self._step_checked(x_t, out)

    def _step_checked(self, x_t, out):
        B, I = self._xshape
        x_t = _host_array(x_t, "x_t", self._xshape, self._dt, f"(batch_size={B}, input_size={I})")
        if out is None:
            out = _empty(self._yshape, self._dt)
        else:
            out = _host_array(out, "out", self._yshape, self._dt,
                              f"(batch_size={B}, output_size={self._P})", writeable=True)
        if self.params.version != self._version:
            self._sync()
        self._call(x_t, out)
        return out

    def _forward_chunk(self, x, h0, c0):
        """``forward``'s small inference call on this Stepper's buffers: the state set from
        ``h0``, ``c0`` (None: zeros), the chunk ``x`` (T, B, I; the checks are the caller's)
        stepped through in one compiled call. Returns new arrays ``y, h, c``."""
        if self.params.version != self._version:
            self._sync()
        self._set_state(0.0 if h0 is None else h0, 0.0 if c0 is None else c0)
        y = np.empty((x.shape[0], self.batch_size, self._P), self._dt)
        self._steps_call()(x, y)
        return y, self._h_view.copy(), self._c_view.copy()

    def _chunk_shape(self, shape):
        B, I = self._xshape
        if len(shape) != 3 or tuple(shape[1:]) != (B, I):
            raise ValueError(f"x must have shape (T, {B}, {I}) (steps, batch_size, input_size), "
                             f"got {tuple(shape)}")
        return shape[0]

    def steps(self, x) -> np.ndarray:
        """Advance every layer by ``T`` steps: a chunk of the stream (chunked streaming,
        truncated-BPTT windows).

        Parameters
        ----------
        x : ndarray (T, B, I)
            The params' dtype (another dtype is refused, as by :meth:`step`); any strides.
            Not modified.

        Returns
        -------
        ndarray (T, B, H_out)
            The top layer's outputs, a new array. The state carries over: chunk after chunk
            gives what :func:`fastlstm.forward` gives for their concatenation, to rounding.

        Chunks of at most 64 rows (T * B) run the step kernel, all steps in one compiled call;
        longer ones the whole-sequence CPU backend (one input GEMM for all steps, its threads)
        with the carried state as ``h0``, ``c0``.
        """
        if hasattr(x, "__cuda_array_interface__"):
            _host_array(x, "x", (), self._dt, "")  # raises: a GPU array
        xa = x if isinstance(x, _ndarray) else to_numpy(x, "x")
        T = self._chunk_shape(xa.shape)
        if xa.dtype != self._dt:
            raise _dtype_error("x", xa.dtype, self._dt)
        B, P = self.batch_size, self._P
        if T == 0:
            return np.empty((0, B, P), self._dt)
        xc = np.ascontiguousarray(xa).view(_ndarray)
        if self.params.version != self._version:
            self._sync()
        if T * B <= config.current("cpu").stepper_kernel_max_rows:
            y = np.empty((T, B, P), self._dt)
            self._steps_call()(xc, y)
            return y
        from .backends import cpu
        if not xc.flags.writeable:  # the backend's kernels are compiled for writable arrays
            xc = xc.copy()
        y, h_n, c_n, _, _ = cpu.lstm_forward(xc, self.params, self.h, self.c,
                                             np.full(B, T, np.int64), None, False)
        self._set_state(h_n, c_n)
        return y

    def __repr__(self) -> str:
        p = self.params
        return (f"Stepper(input_size={p.input_size}, hidden_size={p.hidden_size}, "
                f"num_layers={p.num_layers}, proj_size={p.proj_size}, "
                f"batch_size={self.batch_size}, dtype={self._dt.name}, device={self.device!r})")


def _entry_point(kernel, args):
    """The compiled entry point of ``kernel`` for the types of ``args``. Called directly it skips
    the dispatcher's typing and lookup of the five arguments (0.2-0.4 us of a 3.5 us step at
    B = 1, I = 32, H = 64 on a 2-core VM); the caller guarantees the types (the checks of
    :meth:`Stepper.step`: the compiled code relies on the dtype, the number of dimensions and
    C-contiguity). Under ``NUMBA_DISABLE_JIT`` the Python function itself."""
    compile_ = getattr(kernel, "compile", None)
    if compile_ is None:
        return kernel
    import numba
    return compile_(tuple(numba.typeof(a) for a in args))


# ---------------------------------------------------------------------------- CUDA
class _LayerWeights:
    """One layer's weights on the device, in the layout ``kernels/cuda/step.py`` reads."""
    __slots__ = ("wcat_t", "bias", "whr_t")


def _finish_on_device():
    """Wait for this call's launches before handing device arrays back (the CUDA backend's rule:
    numba's arrays export no stream, so a consumer on another stream would not be ordered after
    them)."""
    from .backends.cuda import _finish_on_device as finish
    finish()


class _CUDAStepper(Stepper):
    """:class:`Stepper` on the GPU: ``Stepper(..., device="cuda")`` builds one (float32).

    ``step``/``steps`` take host or GPU arrays (numba device arrays, CuPy, torch CUDA tensors)
    and return NumPy arrays for host inputs, numba device arrays for GPU ones (complete: the
    call waits for its launches, as ``fastlstm.forward`` does); ``h``, ``c`` are NumPy copies."""

    def _init_buffers(self):
        dispatch.require("cuda")
        if self._dt != _F32:
            raise TypeError(
                f"device='cuda' computes in float32 only, but the parameters are "
                f"{self._dt.name}; convert them with params.astype(np.float32)")
        from numba import cuda

        from .kernels.cuda import step as kstep
        p = self.params
        L, B, H, P = self._L, self.batch_size, self._H, self._P
        I_max = max(p.layer_input_size(layer) for layer in range(L))
        grid, block, smem = kstep.launch_config(B, H, P, I_max)
        if smem > 48 * 1024:
            raise ValueError(f"device='cuda': a step of this LSTM needs {smem} bytes of shared "
                             f"memory per block (input, output and hidden sizes "
                             f"{I_max}, {P}, {H}), more than 48 KiB")
        self._cuda = cuda
        self._kernel = kstep.step_layer[grid, block, 0, smem]
        self._hd = cuda.to_device(np.zeros((L, B, P), _F32))
        self._cd = cuda.to_device(np.zeros((L, B, H), _F32))
        self._xd = cuda.device_array((B, self._I), _F32)  # host inputs are copied here
        self._yd = cuda.device_array((B, P), _F32)         # and results computed here
        self._below = [None] + [self._hd[layer - 1] for layer in range(1, L)]
        self._sync()

    def _sync(self):
        p = self.params
        version = p.version
        self._layers = p.derived(("cuda", "stepper", "weights"), self._upload)
        self._version = version

    def _upload(self):
        cuda, p = self._cuda, self.params
        out = []
        for layer in range(self._L):
            w_ih, w_hh, b_ih, b_hh, w_hr = p.layer_weights(layer, 0)
            lw = _LayerWeights()
            lw.wcat_t = cuda.to_device(np.ascontiguousarray(np.concatenate([w_ih.T, w_hh.T])))
            lw.bias = cuda.to_device(b_ih + b_hh if b_ih is not None
                                     else np.zeros(4 * self._H, _F32))
            lw.whr_t = cuda.to_device(np.ascontiguousarray(w_hr.T) if w_hr is not None
                                      else np.zeros((1, 1), _F32))
            out.append(lw)
        return out

    def _set_state(self, h, c):
        self._hd.copy_to_device(np.ascontiguousarray(h, _F32))
        self._cd.copy_to_device(np.ascontiguousarray(c, _F32))

    @property
    def h(self) -> np.ndarray:
        """The hidden state (L, B, H_out): a new host array."""
        return self._hd.copy_to_host()

    @property
    def c(self) -> np.ndarray:
        """The cell state (L, B, H): a new host array."""
        return self._cd.copy_to_host()

    def _initial_state(self, h0, c0):
        """As on the CPU, from host or GPU arrays."""
        from .backends.cuda import _host
        return super()._initial_state(_host(h0), _host(c0))

    def reset(self, h0=None, c0=None) -> None:
        """Set the state to ``h0``, ``c0`` (host or GPU arrays; zeros when omitted)."""
        self._set_state(*self._initial_state(h0, c0))

    @staticmethod
    def _on_device(a) -> bool:
        from .backends.cuda import is_device_array
        return is_device_array(a)

    def _device_array(self, a, name, shape, what):
        """A GPU array as a C-contiguous float32 device array of ``shape`` (no copy)."""
        from .backends.cuda import _as_device
        da = _as_device(a)
        if tuple(da.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)} {what}, got {tuple(da.shape)}")
        if np.dtype(da.dtype) != _F32:
            raise _dtype_error(name, da.dtype, _F32)
        if not da.is_c_contiguous():
            raise ValueError(f"{name} must be C-contiguous")
        return da

    def _run(self, xd, yd):
        """One step of every layer: one launch each."""
        has_proj = self._P != self._H
        top = self._L - 1
        for layer, lw in enumerate(self._layers):
            self._kernel(xd if layer == 0 else self._below[layer], self._hd, self._cd, layer,
                         lw.wcat_t, lw.bias, lw.whr_t, yd, has_proj, layer == top)

    def step(self, x_t, out=None):
        """Advance every layer by one step (see :meth:`Stepper.step`).

        ``x_t`` (B, I) float32, host or GPU. Returns a new NumPy array for a host ``x_t``, a new
        device array for a GPU one; ``out`` (B, H_out) float32, host or GPU, receives the result
        instead."""
        B, I = self._xshape
        what = f"(batch_size={B}, input_size={I})"
        on_device = self._on_device(x_t)
        if on_device:
            xd = self._device_array(x_t, "x_t", self._xshape, what)
        else:
            xh = _host_array(x_t, "x_t", self._xshape, _F32, what)
        out_what = f"(batch_size={B}, output_size={self._P})"
        out_dev = out is not None and self._on_device(out)
        if out_dev:
            yd = self._device_array(out, "out", self._yshape, out_what)
        elif out is not None:
            out = _host_array(out, "out", self._yshape, _F32, out_what, writeable=True)
        if self.params.version != self._version:
            self._sync()
        if not on_device:
            self._xd.copy_to_device(xh)
            xd = self._xd
        if not out_dev:
            yd = self._cuda.device_array(self._yshape, _F32) if (on_device and out is None) \
                else self._yd
        self._run(xd, yd)
        if out is not None and not out_dev:
            yd.copy_to_host(out)
            return out
        if not (on_device or out_dev):
            return yd.copy_to_host()
        _finish_on_device()
        return out if out_dev else yd

    def steps(self, x):
        """Advance by ``T`` steps (see :meth:`Stepper.steps`): ``x`` (T, B, I) float32, host or
        GPU, one launch per layer and step. Returns a NumPy array for a host ``x``, a device
        array for a GPU one."""
        B, I = self._xshape
        on_device = self._on_device(x)
        if on_device:
            from .backends.cuda import _as_device
            T = self._chunk_shape(tuple(_as_device(x).shape))
            xd = self._device_array(x, "x", (T, B, I), "")
        else:
            xa = to_numpy(x, "x")
            T = self._chunk_shape(xa.shape)
            if xa.dtype != _F32:
                raise _dtype_error("x", xa.dtype, _F32)
            xd = self._cuda.to_device(np.ascontiguousarray(xa)) if T else None
        if self.params.version != self._version:
            self._sync()
        yd = self._cuda.device_array((T, B, self._P), _F32)
        for t in range(T):
            self._run(xd[t], yd[t])
        if not on_device:
            return yd.copy_to_host()
        _finish_on_device()
        return yd
