"""LSTM parameters under ``torch.nn.LSTM``'s names, shapes and gate order.

Names, per layer ``k`` and direction (suffix ``""`` forward, ``"_reverse"`` backward)::

    weight_ih_l{k}{sfx}  (4H, I)       layer 0: I = input_size; later layers: I = D * H_out
    weight_hh_l{k}{sfx}  (4H, H_out)
    bias_ih_l{k}{sfx}    (4H,)         only with bias=True
    bias_hh_l{k}{sfx}    (4H,)         only with bias=True
    weight_hr_l{k}{sfx}  (P, H)        only with proj_size P > 0

``H_out = P if P > 0 else H``, ``D = 2 if bidirectional else 1``. The rows of the
4H axis are the gates in the order ``i, f, g, o``.

The arrays are read-only to users and change only through :meth:`LSTMParams.update_` and
:meth:`LSTMParams.copy_`, which bump :attr:`LSTMParams.version` and drop the layouts that
backends derived from the weights (:meth:`LSTMParams.derived`).
"""
from __future__ import annotations

import functools
import math
import os
import threading
from typing import Callable, Hashable, Iterator, Mapping

import numpy as np

from . import params_io
from .params_io import SUPPORTED_DTYPES
from ._coerce import check_bool, to_numpy

__all__ = ["LSTMParams", "SUPPORTED_DTYPES", "check_allocation"]


_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


@functools.lru_cache(maxsize=1)
def _physical_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 40


def check_allocation(nbytes: int, what: str) -> None:
    """Refuse (``MemoryError``) an allocation larger than this machine's physical memory.

    Called before allocating, so absurd sizes fail fast with a clear message instead of
    swapping or being killed.
    """
    limit = _physical_memory_bytes()
    if nbytes > limit:
        raise MemoryError(
            f"{what} would need {nbytes / 2**30:.1f} GiB, more than this machine's "
            f"{limit / 2**30:.1f} GiB of physical memory"
        )


def _normalize_dtype(dtype) -> np.dtype:
    """float32 or float64 in native byte order, from any spelling or byte order."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt.kind != "f" or dt.itemsize not in (4, 8):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt.newbyteorder("=")


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _checked_array(name: str, value, shape: tuple[int, ...]) -> np.ndarray:
    """``value`` as a floating-point NumPy array of ``shape`` (a view where possible)."""
    arr = to_numpy(value, name)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr


_BLOCK = 1 << 15  # elements per block of update_'s step (the scaled block stays in cache)


def _subtract_scaled(p: np.ndarray, g: np.ndarray, lr: float) -> None:
    """``p -= lr * g`` in place, block by block: no temporary the size of ``p`` (a large one
    costs more in page faults than the arithmetic)."""
    pf, gf = p.reshape(-1), g.reshape(-1)
    buf = np.empty(min(_BLOCK, pf.size), p.dtype)
    for start in range(0, pf.size, _BLOCK):
        stop = min(start + _BLOCK, pf.size)
        np.multiply(gf[start:stop], lr, out=buf[:stop - start])
        np.subtract(pf[start:stop], buf[:stop - start], out=pf[start:stop])


_FAILED = object()  # a build that raised (LSTMParams.derived)


class LSTMParams:
    """The weights of a (multi-layer, optionally bidirectional, optionally projected) LSTM.

    Build with :meth:`init` (PyTorch's initialisation), :meth:`from_state_dict` or
    :meth:`load`. The arrays are held read-only; :meth:`state_dict` returns copies. They change
    in place only through :meth:`update_` and :meth:`copy_`, each of which increments
    :attr:`version`. ``copy.copy``, ``copy.deepcopy`` and ``pickle`` give independent params
    with copied arrays, ``version`` 0 and nothing derived.

    Attributes
    ----------
    input_size, hidden_size, num_layers, proj_size : int
    bidirectional, bias : bool
    dtype : numpy.dtype (float32 or float64, native byte order)
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], *, input_size: int, hidden_size: int,
                 num_layers: int = 1, bias: bool = True, bidirectional: bool = False,
                 proj_size: int = 0, dtype=np.float32):
        self._configure(input_size, hidden_size, num_layers, bias, bidirectional, proj_size, dtype)
        expected = self.expected_shapes()
        missing = [k for k in expected if k not in arrays]
        unexpected = [k for k in arrays if k not in expected]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise KeyError("parameters do not match the configuration: " + "; ".join(parts))
        self._arrays: dict[str, np.ndarray] = {}
        for name, shape in expected.items():
            # always a copy the params own: never a view of the caller's memory
            arr = np.array(_checked_array(name, arrays[name], shape), dtype=self.dtype, order="C")
            arr.setflags(write=False)
            self._arrays[name] = arr
        self._lock = threading.Lock()
        self._version = 0
        self._derived: dict = {}
        self._stale: dict = {}
        self._by_layer: dict = {}
        self._building: dict = {}

    @classmethod
    def _shared(cls, arrays: Mapping[str, np.ndarray], **config) -> "LSTMParams":
        """Parameters over the caller's arrays, without copying (for framework integrations
        whose tensors own the weights). Each array must already be C-contiguous with the
        configuration's shape and dtype; the views are made read-only (the memory is not). The
        caller must treat a change of that memory as a new version (build anew)."""
        self = cls.__new__(cls)
        self._configure(**config)
        expected = self.expected_shapes()
        if set(arrays) != set(expected):
            raise KeyError(f"parameters do not match the configuration: expected {list(expected)}")
        self._arrays = {}
        for name, shape in expected.items():
            arr = np.asarray(arrays[name]).view()
            if arr.shape != shape or arr.dtype != self.dtype or not arr.flags.c_contiguous:
                raise ValueError(f"{name} must be a C-contiguous {self.dtype.name} array of shape "
                                 f"{shape}, got {arr.dtype} {arr.shape}")
            arr.setflags(write=False)
            self._arrays[name] = arr
        self._lock = threading.Lock()
        self._version = 0
        self._derived = {}
        self._stale = {}
        self._by_layer = {}
        self._building = {}
        return self

    def _configure(self, input_size, hidden_size, num_layers, bias, bidirectional, proj_size,
                   dtype) -> None:
        self.input_size = _positive_int(input_size, "input_size")
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        self.num_layers = _positive_int(num_layers, "num_layers")
        self.proj_size = _positive_int(proj_size, "proj_size", minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size (got proj_size={self.proj_size}, "
                f"hidden_size={self.hidden_size})"
            )
        self.bias = check_bool(bias, "bias")
        self.bidirectional = check_bool(bidirectional, "bidirectional")
        self.dtype = _normalize_dtype(dtype)

    # ------------------------------------------------------------------ configuration
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """``H_out``: the size of ``h`` (``proj_size`` if set, else ``hidden_size``)."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def config(self) -> dict:
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, bias=self.bias,
                    bidirectional=self.bidirectional, proj_size=self.proj_size,
                    dtype=self.dtype.name)

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.num_directions * self.output_size

    @staticmethod
    def suffix(direction: int) -> str:
        return "_reverse" if direction == 1 else ""

    @staticmethod
    def param_name(kind: str, layer: int, direction: int = 0) -> str:
        """PyTorch's name of one parameter: ``param_name("weight_hh", 1, 1)`` is
        ``"weight_hh_l1_reverse"``.

        Parameters
        ----------
        kind : {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"}
        layer : int
        direction : {0, 1}
            0 forward, 1 reverse.
        """
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {', '.join(_KINDS)}; got {kind!r}")
        if direction not in (0, 1):
            raise ValueError(f"direction must be 0 or 1, got {direction!r}")
        return f"{kind}_l{layer}{LSTMParams.suffix(direction)}"

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter name (in ``torch.nn.LSTM``'s order) and its shape."""
        H, P = self.hidden_size, self.proj_size
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            per_kind = {"weight_ih": (4 * H, self.layer_input_size(layer)),
                        "weight_hh": (4 * H, self.output_size)}
            if self.bias:
                per_kind.update(bias_ih=(4 * H,), bias_hh=(4 * H,))
            if P > 0:
                per_kind["weight_hr"] = (P, H)
            for d in range(self.num_directions):
                shapes.update((self.param_name(k, layer, d), s) for k, s in per_kind.items())
        return shapes

    def layer_weights(self, layer: int, direction: int):
        """``(w_ih, w_hh, b_ih, b_hh, w_hr)`` for one layer and direction; absent ones are None.
        Memoised: the arrays are the params' own for their whole life (updates write into them)."""
        key = (layer, direction)
        got = self._by_layer.get(key)
        if got is None:
            got = self._by_layer[key] = tuple(
                self._arrays.get(self.param_name(kind, layer, direction)) for kind in _KINDS)
        return got

    def named_grads(self, per_layer) -> dict[str, np.ndarray]:
        """Gradients under PyTorch's names, in :meth:`keys` order, from per-layer results.

        Parameters
        ----------
        per_layer : sequence or mapping
            ``per_layer[layer][direction] = (dw_ih, dw_hh, db, dw_hr)`` for every layer and
            direction: ``dw_ih`` (4H, I_layer), ``dw_hh`` (4H, H_out), ``db`` (4H,) the gradient
            of either bias (None without biases), ``dw_hr`` (P, H) (None without a projection).

        Returns
        -------
        dict
            ``bias_ih`` is ``db`` itself and ``bias_hh`` a copy of it; the others are the
            arrays given.
        """
        out = {}
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                dw_ih, dw_hh, db, dw_hr = per_layer[layer][d]
                parts = {"weight_ih": dw_ih, "weight_hh": dw_hh}
                if self.bias:
                    parts.update(bias_ih=db, bias_hh=None if db is None else db.copy())
                if self.proj_size:
                    parts["weight_hr"] = dw_hr
                for kind, g in parts.items():
                    name = self.param_name(kind, layer, d)
                    shape = self._arrays[name].shape
                    if getattr(g, "shape", None) != shape:
                        got = None if g is None else getattr(g, "shape", type(g).__name__)
                        raise ValueError(
                            f"the gradient of {name} must have shape {shape}, got {got}")
                    out[name] = g
        return out

    # ------------------------------------------------------------------ derived data, updates
    @property
    def version(self) -> int:
        """The number of in-place changes (:meth:`update_`, :meth:`copy_`) so far; 0 when built."""
        return self._version

    def derived(self, key: Hashable, build: Callable[[], object]):
        """Data derived from the parameters (e.g. a backend's weight layout), built once per
        :attr:`version`.

        Returns the value stored under ``key``; when there is none, calls ``build()``, stores its
        result and returns it. Thread-safe: one caller builds, concurrent callers for the same
        key and version wait for its value (parallel tasks would otherwise each build the same
        layout, fighting over the GIL); if that build raises, a waiter builds itself. Every
        in-place change empties the store; copies and pickles never carry it.
        """
        with self._lock:
            if key in self._derived:
                return self._derived[key]
            version = self._version
            pending = self._building.get((key, version))
            if pending is None:
                self._building[(key, version)] = mine = threading.Event()
        if pending is not None:
            pending.wait()
            return self.derived(key, build) if pending.value is _FAILED else pending.value
        try:
            value = build()
        except BaseException:
            mine.value = _FAILED
            raise
        else:
            mine.value = value
        finally:
            with self._lock:
                del self._building[(key, version)]
                if self._version == version and mine.value is not _FAILED:
                    mine.value = value = self._derived.setdefault(key, value)
            mine.set()
        return value  # built across a change of the weights: handed out, not kept

    def previous(self, key: Hashable):
        """The value :meth:`derived` held under ``key`` for the version before this one (None
        if none), handed out once: a builder may refill its arrays in place instead of
        allocating new ones. Nothing may read it as the previous version's data any more."""
        with self._lock:
            return self._stale.pop(key, None)

    def forget_derived(self, drop: Callable[[Hashable], bool]) -> None:
        """Remove the derived data whose key ``drop(key)`` is true (e.g. per-thread buffers of
        threads that have ended)."""
        with self._lock:
            for key in [k for k in self._derived if drop(k)]:
                del self._derived[key]

    def update_(self, grads: Mapping, lr: float) -> "LSTMParams":
        """One plain gradient-descent step in place: ``p -= lr * g`` for each entry of ``grads``.

        Parameters
        ----------
        grads : mapping of str to array
            Gradients under PyTorch's names (any subset of :meth:`keys`), each of its
            parameter's shape; NumPy arrays or CPU tensors of any float dtype, applied in the
            params' dtype.
        lr : float
            The learning rate (finite).

        Returns
        -------
        LSTMParams
            ``self``. The arrays are updated where they are (an array taken from the params
            before is the updated one), :attr:`version` grows by one and derived data is rebuilt
            on next use (the CPU backend refills the previous version's layouts in place).

        Raises
        ------
        KeyError, ValueError, TypeError
            For an unknown name, a wrong shape, a non-float array or a non-finite ``lr``; every
            entry is checked before any array changes, so a call that raises changes nothing.

        Notes
        -----
        Calls that read the arrays (``forward``, ``backward``) must not run on other threads
        meanwhile.
        """
        if isinstance(lr, (str, bytes)) or not hasattr(lr, "__float__"):
            raise TypeError(f"lr must be a real number, got {lr!r}")
        lr = float(lr)
        if not math.isfinite(lr):
            raise ValueError(f"lr must be finite, got {lr}")
        return self._assign(self._checked_values(grads, "grads"),
                            lambda p, g: _subtract_scaled(p, g, lr))

    def copy_(self, values: Mapping) -> "LSTMParams":
        """Assign new values in place (e.g. a state dict, whole or in part); checked, counted and
        applied like :meth:`update_`.

        Parameters
        ----------
        values : mapping of str to array
            Values under PyTorch's names (any subset of :meth:`keys`; an :class:`LSTMParams`
            works too), each of its parameter's shape, any float dtype.

        Returns
        -------
        LSTMParams
            ``self``.
        """
        return self._assign(self._checked_values(values, "values"), np.copyto)

    def _checked_values(self, values, what: str) -> dict[str, np.ndarray]:
        if not hasattr(values, "keys"):
            raise TypeError(f"{what} must be a mapping of parameter names to arrays, "
                            f"got {type(values).__name__}")
        out = {}
        for name in values.keys():
            if name not in self._arrays:
                raise KeyError(f"{what}: {name!r} is not a parameter of this LSTM "
                               f"(its parameters: {', '.join(self._arrays)})")
            arr = _checked_array(name, values[name], self._arrays[name].shape)
            if any(np.may_share_memory(arr, a) for a in self._arrays.values()):
                arr = arr.copy()  # e.g. a parameter itself: read it before anything changes
            out[name] = arr.astype(self.dtype, copy=False)
        return out

    def _assign(self, values: dict[str, np.ndarray], op) -> "LSTMParams":
        with self._lock:
            for name, value in values.items():
                p = self._arrays[name]
                p.setflags(write=True)
                try:
                    op(p, value)
                finally:
                    p.setflags(write=False)
            self._new_version()
        return self

    def _new_version(self) -> None:
        """A new version (call with the lock held): the derived data is rebuilt on next use,
        and the previous version's stays available to :meth:`previous` until the one after."""
        self._version += 1
        self._stale, self._derived = self._derived, {}

    def _changed_outside(self) -> None:
        """The memory these params share (:meth:`_shared`) was changed by its owner, e.g. a
        framework's optimizer step on the tensors: a new version, as :meth:`update_` makes."""
        with self._lock:
            self._new_version()

    # ------------------------------------------------------------------ copies and pickles
    def __getstate__(self) -> dict:
        return {"config": self.config(), "arrays": self._arrays}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["arrays"], **state["config"])

    def __copy__(self) -> "LSTMParams":
        return type(self)(self._arrays, **self.config())

    def __deepcopy__(self, memo) -> "LSTMParams":
        memo[id(self)] = new = self.__copy__()
        return new

    # ------------------------------------------------------------------ construction
    @classmethod
    def init(cls, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
             bidirectional: bool = False, proj_size: int = 0, dtype=np.float32,
             seed=None) -> "LSTMParams":
        """PyTorch's initialisation: every parameter ~ uniform(-1/sqrt(H), 1/sqrt(H))."""
        shell = cls.__new__(cls)
        shell._configure(input_size, hidden_size, num_layers, bias, bidirectional, proj_size, dtype)
        dt = shell.dtype
        shapes = shell.expected_shapes()
        total = sum(math.prod(s) for s in shapes.values())
        check_allocation(total * dt.itemsize, "the parameters")
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(hidden_size)
        arrays = {name: rng.uniform(-k, k, size=shape).astype(dt) for name, shape in shapes.items()}
        return cls(arrays, **shell.config())

    @classmethod
    def from_state_dict(cls, mapping: Mapping, dtype=None, *, prefix: str = "") -> "LSTMParams":
        """Infer the configuration from PyTorch's names and shapes.

        Parameters
        ----------
        mapping : mapping of str to array
            NumPy arrays or CPU torch tensors: ``torch.nn.LSTM(...).state_dict()``, or
            ``torch.nn.LSTMCell(...).state_dict()`` (``weight_ih``, ``weight_hh``, ``bias_ih``,
            ``bias_hh``), read as a one-layer LSTM.
        dtype : float32 or float64, optional
            Defaults to the dtype of ``weight_ih_l0`` (float32 unless that is float64).
        prefix : str
            Only keys starting with ``prefix`` are read, with it stripped; the others are
            ignored. E.g. ``prefix="lstm."`` reads the LSTM out of a whole model's state dict.

        Raises
        ------
        KeyError
            No ``weight_ih_l0`` (the message names the prefix the keys carry, if they do), or
            keys that do not match the inferred configuration.
        ValueError
            Shapes that are not an LSTM's (a GRU's or an RNN's state dict says so).
        """
        sd, config = params_io.read_state_dict(mapping, dtype, prefix)
        return cls(sd, **config)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter as NumPy arrays under PyTorch's names, in PyTorch's order."""
        return {name: arr.copy() for name, arr in self._arrays.items()}

    def astype(self, dtype) -> "LSTMParams":
        return LSTMParams(self._arrays, **{**self.config(), "dtype": dtype})

    def save(self, path) -> None:
        """Write to ``path`` exactly as given (``.npz`` format: arrays plus the configuration, no
        pickles), or to a writable binary file object; :meth:`load` reads it back."""
        params_io.save_npz(self._arrays, self.config(), path)

    @classmethod
    def load(cls, path) -> "LSTMParams":
        """Read what :meth:`save` wrote, from a path or a readable binary file object.

        Raises
        ------
        FileNotFoundError
            No such file.
        ValueError
            The file is not a complete file written by :meth:`save` (truncated, not an ``.npz``
            archive, arrays missing or damaged, configuration unreadable); the message names
            the file and what is wrong.
        """
        name, arrays, cfg = params_io.load_npz(path)
        try:
            return cls(arrays, **cfg)
        except (KeyError, TypeError, ValueError) as exc:
            msg = exc.args[0] if exc.args else repr(exc)
            raise ValueError(f"{name}: the stored arrays and configuration do not make an "
                             f"LSTMParams: {msg}") from exc

    # ------------------------------------------------------------------ mapping protocol
    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __contains__(self, name) -> bool:
        return name in self._arrays

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def keys(self):
        return self._arrays.keys()

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"LSTMParams({cfg})"

    # ------------------------------------------------------------------ other frameworks
    @classmethod
    def from_keras(cls, layer_or_weights, *, forget_bias: float | None = None,
                   dtype=None) -> "LSTMParams":
        """From a Keras LSTM / Bidirectional layer, a model's stacked LSTM layers, or Keras /
        TF1 ``LSTMCell`` weight arrays: :func:`fastlstm.convert.from_keras`."""
        from .convert import from_keras
        return from_keras(layer_or_weights, forget_bias=forget_bias, dtype=dtype)

    @classmethod
    def from_onnx(cls, model_or_path, node=None, *, dtype=None) -> "LSTMParams":
        """From the ``LSTM`` node(s) of an ONNX model: :func:`fastlstm.convert.from_onnx`."""
        from .convert import from_onnx
        return from_onnx(model_or_path, node, dtype=dtype)

    def to_onnx(self, path=None, *, batch_first: bool = False, lengths: bool = False,
                initial_state: bool = False, opset: int = 17):
        """An ONNX model of this LSTM (one ``LSTM`` node per layer), written to ``path`` when
        given: :func:`fastlstm.convert.to_onnx`."""
        from .convert import to_onnx
        return to_onnx(self, path, batch_first=batch_first, lengths=lengths,
                       initial_state=initial_state, opset=opset)
