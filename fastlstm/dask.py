"""LSTM inference over Dask arrays: one compiled forward per batch chunk, on any scheduler.

    import dask.array as da
    import fastlstm.dask

    x = da.from_zarr(...)                                   # (T, B, I), chunked along B
    y = fastlstm.dask.forward(x, params, lengths)           # a dask array (T, B, D*H_out)
    y, h, c = fastlstm.dask.forward(x, params, return_state=True)

Sequences are independent, so the batch axis splits freely: each chunk of sequences is one
task that runs :func:`fastlstm.forward` on one core (one Numba thread, SciPy's BLAS pinned to
one thread), and the scheduler's workers supply the parallelism. The time and feature axes
are brought to one chunk each (a recurrence needs every step of its sequence).

The parameters travel once per worker, not once per task: with an active ``distributed``
client they are scattered to every worker (``client.scatter(..., broadcast=True)``) and the
tasks refer to that one copy; with the local schedulers they are a single node of the graph.
Their key is a hash of their values, so repeated calls with unchanged params reuse them.

Needs ``dask[array]`` (and ``distributed`` for a cluster): ``pip install "fastlstm[dask]"``.
``import fastlstm`` never imports dask.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as exc:  # pragma: no cover - exercised without dask installed
    raise ImportError('fastlstm.dask needs dask: pip install "fastlstm[dask]" (from a checkout: '
                      'pip install -e ".[dask]")') from exc

from . import config, dispatch, layout
from ._coerce import check_bool
from .params import LSTMParams

__all__ = ["forward"]


def forward(x, params: LSTMParams, lengths=None, *, batch_first: bool = False, h0=None,
            c0=None, return_state: bool = False, device: str = "cpu"):
    """LSTM forward (inference) over a Dask array, one task per chunk of sequences.

    Parameters
    ----------
    x : dask.array.Array (T, B, I), or (B, T, I) with ``batch_first``
        Chunked along the batch axis (any other array-like is wrapped with
        ``dask.array.asarray``); the time and feature axes are rechunked to one chunk each
        where they are not already.
    params : LSTMParams
    lengths : int array (B,), optional
        NumPy (checked now) or Dask (checked in the tasks); valid steps of each sequence, as
        in :func:`fastlstm.forward`.
    batch_first : bool
    h0 : array (L*D, B, H_out), optional (zeros)
    c0 : array (L*D, B, H), optional (zeros); needs ``h0``
    return_state : bool
        Also return the final states.
    device : "cpu" | "reference" | "cuda" | "auto"
        Where each task runs (on its worker).

    Returns
    -------
    y : dask.array.Array
        (T, B, D*H_out), or (B, T, D*H_out) with ``batch_first``, in ``params.dtype``; chunked
        along B as ``x``, one chunk along the other axes.
    h, c : dask.array.Array, only with ``return_state``
        (L*D, B, H_out) and (L*D, B, H), chunked along B as ``x``.

    Notes
    -----
    Each chunk's result equals, bitwise, :func:`fastlstm.forward` on that chunk alone with
    one thread (and without ``lengths``, the whole batch's in one call). A task holds about
    ``itemsize * T * chunk * (I + 4*D*H + 2*D*H_out)`` bytes (its input, the input projection,
    two layers' outputs); the input projection's buffer stays with the worker thread for its
    next task (``fastlstm.release_workspace()`` frees it). With a ``distributed`` client, the
    returned arrays refer to the params scattered on its workers: compute them on that client.
    """
    params = layout.check_params(params)
    if device not in dispatch.DEVICES:
        raise ValueError(f"device must be one of {', '.join(dispatch.DEVICES)}; got {device!r}")
    batch_first = check_bool(batch_first, "batch_first")
    return_state = check_bool(return_state, "return_state")
    x = x if isinstance(x, da.Array) else da.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D, (T, B, I) or (B, T, I) with batch_first (an unbatched "
                         f"(T, I) sequence has no batch axis to split), got shape {x.shape}")
    if any(np.isnan(s) for s in x.shape):
        raise ValueError("x has unknown chunk sizes; call x.compute_chunk_sizes() first")
    if x.dtype.kind != "f":
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
    bax, tax = (0, 1) if batch_first else (1, 0)
    T, B, I = x.shape[tax], x.shape[bax], x.shape[2]
    if I != params.input_size:
        raise ValueError(f"x has {I} features per step but params.input_size is "
                         f"{params.input_size}")
    if T == 0:
        raise ValueError(f"x must have at least one step, got shape {x.shape}")
    if x.numblocks[tax] > 1 or x.numblocks[2] > 1:
        x = x.rechunk({tax: -1, 2: -1})
    bchunks = x.chunks[bax]
    L, D, H, P = params.num_layers, params.num_directions, params.hidden_size, params.output_size
    layout.check_states(h0, c0)

    lens = _lengths(lengths, B, T, bchunks)
    h0d = _state(h0, "h0", (L * D, B, P), bchunks)
    c0d = _state(c0, "c0", (L * D, B, H), bchunks)
    x_ind = "bti" if batch_first else "tbi"
    key = _params_key(params)
    args = [x, x_ind,
            lens, None if lens is None else "b",
            h0d, None if h0d is None else "lbp",
            c0d, None if c0d is None else "lbh",
            _ship(params, key), None]
    token = dask.base.tokenize(x, lens, h0d, c0d, key, batch_first, device)
    results = da.blockwise(_forward_block, "b", *args, batch_first=batch_first, device=device,
                           concatenate=True, dtype=object, meta=np.empty((0,), object),
                           adjust_chunks={"b": 1}, name="fastlstm-forward-" + token)
    dt = params.dtype
    y = _pick(results, 0, "bto" if batch_first else "tbo", {"t": T, "o": D * P}, bchunks, dt,
              "fastlstm-y-" + token)
    if not return_state:
        return y
    h = _pick(results, 1, "lbp", {"l": L * D, "p": P}, bchunks, dt, "fastlstm-h-" + token)
    c = _pick(results, 2, "lbh", {"l": L * D, "h": H}, bchunks, dt, "fastlstm-c-" + token)
    return y, h, c


# ---------------------------------------------------------------------------- the graph
def _lengths(lengths, B: int, T: int, bchunks):
    if lengths is None:
        return None
    if isinstance(lengths, da.Array):
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape ({B},) (one per sequence), got "
                             f"{lengths.shape}")
        if lengths.dtype.kind not in "iu":
            raise TypeError(f"lengths must be an integer array, got dtype {lengths.dtype}")
        return lengths.rechunk((bchunks,))
    return da.from_array(layout.check_lengths(lengths, B, T), chunks=(bchunks,))


def _state(a, name: str, shape: tuple, bchunks):
    if a is None:
        return None
    arr = a if isinstance(a, da.Array) else da.asarray(a)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    return arr.rechunk(((shape[0],), bchunks, (shape[2],)))


def _pick(results, which: int, ind: str, new_axes: dict, bchunks, dtype, name: str):
    """One of each task's outputs as a dask array chunked along B as the input."""
    return da.blockwise(_item, ind, results, "b", which=which, new_axes=new_axes, name=name,
                        adjust_chunks={"b": tuple(bchunks)}, dtype=dtype,
                        meta=np.empty((0,) * len(ind), dtype))


def _item(block, which):
    return block[0][which]


def _forward_block(x, lengths, h0, c0, params, batch_first, device):
    """One task: the forward of one chunk of sequences on one core. Returns a (1,) object
    array holding ``(y, h, c)``."""
    from .api import forward as forward_
    with config.options("cpu", threads=1), _blas_pinned(device):
        r = forward_(x, params, h0, c0, lengths=lengths, batch_first=batch_first,
                     device=device)
    out = np.empty(1, object)
    out[0] = (r.y, r.h, r.c)
    return out


class _blas_pinned:
    """SciPy's OpenBLAS on the calling thread while a CPU task runs (tasks of a threaded
    scheduler would otherwise each spread their products over every core)."""

    def __init__(self, device):
        self._pin = None
        if device in ("cpu", "auto"):
            from .kernels.cpu.parallel import single_threaded_blas
            self._pin = single_threaded_blas()

    def __enter__(self):
        if self._pin is not None:
            self._pin.__enter__()
        return self

    def __exit__(self, *exc):
        if self._pin is not None:
            self._pin.__exit__(*exc)
        return False


# ---------------------------------------------------------------------------- the params
def _params_key(params: LSTMParams) -> str:
    """A key that names these values: equal params give the same key, changed ones another."""
    h = hashlib.blake2b(json.dumps(params.config(), sort_keys=True).encode(), digest_size=16)
    for name in params.keys():
        h.update(name.encode())
        h.update(params[name].tobytes())
    return "fastlstm-params-" + h.hexdigest()


def _client():
    """The ``distributed`` client that computes dask collections now, or None."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        client = default_client()
    except ValueError:
        return None
    scheduler = dask.base.get_scheduler()
    if getattr(scheduler, "__self__", None) is not client or client.asynchronous:
        return None
    return client


def _ship(params: LSTMParams, key: str):
    """What the tasks receive as params: a future of their copy on every worker when a
    ``distributed`` client is active, else one delayed node shared by all tasks."""
    client = _client()
    if client is not None:
        return client.scatter({key: params}, broadcast=True)[key]
    return dask.delayed(params, name=key, traverse=False)
