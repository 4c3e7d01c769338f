"""fastlstm.dask.forward: one task per batch chunk, results equal to one call on the whole
batch (bitwise, one thread), the params shipped once, and the optional import."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import fastlstm
from fastlstm import LSTMParams, config
from fastlstm.testing import assert_close

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
fdask = pytest.importorskip("fastlstm.dask")


def _problem(T=9, B=23, I=5, H=6, L=2, bidirectional=True, dtype=np.float32, seed=0):
    p = LSTMParams.init(I, H, L, bidirectional=bidirectional, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = rng.integers(1, T + 1, B)
    LD = L * p.num_directions
    h0 = rng.standard_normal((LD, B, H)).astype(dtype)
    c0 = rng.standard_normal((LD, B, H)).astype(dtype)
    return p, x, lengths, h0, c0


def _reference(x, p, **kw):
    with config.options("cpu", threads=1):
        return fastlstm.forward(x, p, **kw)


def _equal(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batch_first", [False, True])
def test_matches_whole_batch_bitwise(batch_first):
    p, x, _, h0, c0 = _problem()
    xc = x.transpose(1, 0, 2).copy() if batch_first else x
    bax = 0 if batch_first else 1
    xd = da.from_array(xc, chunks={bax: 7, 1 - bax: 4, 2: 3})  # time, features split too
    y, h, c = fdask.forward(xd, p, batch_first=batch_first, h0=h0, c0=c0, return_state=True)
    assert y.chunks[bax] == (7, 7, 7, 2) and y.numblocks[1 - bax] == 1 and y.numblocks[2] == 1
    assert h.chunks[1] == (7, 7, 7, 2) and c.chunks[1] == (7, 7, 7, 2)
    with dask.config.set(scheduler="sync"):
        yv, hv, cv = dask.compute(y, h, c)
    ref = _reference(xc, p, h0=h0, c0=c0, batch_first=batch_first)
    _equal(yv, ref.y)
    _equal(hv, ref.h)
    _equal(cv, ref.c)


@pytest.mark.parametrize("dtype,scheduler", [(np.float32, "sync"), (np.float64, "threads")])
def test_lengths_per_chunk(dtype, scheduler):
    """Each chunk's lengths go to its own call: bitwise that call's result. Against one call
    on the whole batch, equal within the dtype's tolerance (with variable lengths, a step's
    products span the sequences still running, so their sizes, and BLAS's rounding, depend
    on the batch)."""
    p, x, lengths, h0, c0 = _problem(T=11, B=30, dtype=dtype)
    xd = da.from_array(x, chunks=(11, 8, 5))
    for lens in (lengths, da.from_array(lengths, chunks=5)):  # dask lengths: other chunks
        y, h, c = fdask.forward(xd, p, lens, h0=h0, c0=c0, return_state=True)
        assert y.dtype == dtype
        yv, hv, cv = dask.compute(y, h, c, scheduler=scheduler, num_workers=3)
        parts = [_reference(x[:, b:b + 8], p, h0=h0[:, b:b + 8], c0=c0[:, b:b + 8],
                            lengths=lengths[b:b + 8]) for b in range(0, 30, 8)]
        _equal(yv, np.concatenate([r.y for r in parts], axis=1))
        _equal(hv, np.concatenate([r.h for r in parts], axis=1))
        _equal(cv, np.concatenate([r.c for r in parts], axis=1))
    whole = _reference(x, p, h0=h0, c0=c0, lengths=lengths)
    for got, ref in ((yv, whole.y), (hv, whole.h), (cv, whole.c)):
        assert_close(got, ref, dtype, "forward", "dask vs whole batch")
    for b, n in enumerate(lengths):
        assert not yv[n:, b].any()


def test_params_shipped_once():
    """The graph holds the params once; every task refers to that node."""
    p, x, _, _, _ = _problem(B=12)
    y = fdask.forward(da.from_array(x, chunks=(9, 3, 5)), p)
    graph = dict(y.__dask_graph__())
    keys = [k for k in graph if isinstance(k, str) and k.startswith("fastlstm-params-")]
    assert len(keys) == 1
    held = sum(isinstance(getattr(v, "value", v), LSTMParams) for v in graph.values())
    assert held == 1
    # equal params, same key (no second copy on a cluster); changed params, another key
    q = LSTMParams.from_state_dict(p.state_dict())
    assert fdask._params_key(q) == keys[0]
    q.update_({"bias_ih_l0": np.ones_like(q["bias_ih_l0"])}, lr=1.0)
    assert fdask._params_key(q) != keys[0]


def test_input_errors():
    p, x, lengths, h0, c0 = _problem(B=6)
    xd = da.from_array(x, chunks=(9, 3, 5))
    with pytest.raises(ValueError, match="3-D"):
        fdask.forward(xd[:, 0], p)
    with pytest.raises(ValueError, match="features per step"):
        fdask.forward(xd[..., :4], p)
    with pytest.raises(ValueError, match="lengths must lie in"):
        fdask.forward(xd, p, np.full(6, 10))
    with pytest.raises(ValueError, match="c0 was given without h0"):
        fdask.forward(xd, p, c0=c0)
    with pytest.raises(ValueError, match="h0 must have shape"):
        fdask.forward(xd, p, h0=h0[:, :3])
    with pytest.raises(TypeError, match="LSTMParams"):
        fdask.forward(xd, p.state_dict())


def test_optional_import():
    """``import fastlstm`` never imports dask; without dask, fastlstm.dask says how to get it."""
    code = ("import sys; import fastlstm; assert 'dask' not in sys.modules, 'dask imported'\n"
            "sys.modules['dask'] = None\n"
            "try:\n    import fastlstm.dask\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'pip install "fastlstm[dask]"' in out.stdout


def test_distributed_local_cluster():
    distributed = pytest.importorskip("distributed")
    p, x, lengths, _, _ = _problem(T=8, B=20)
    # the scheduler's active memory manager drops replicas no task waits for (every 2 s): off,
    # so the check below sees what the broadcast placed, however long the compute took
    with dask.config.set({"distributed.scheduler.active-memory-manager.start": False}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        client.wait_for_workers(2)  # both up before the parameters are broadcast
        y, h, c = fdask.forward(da.from_array(x, chunks=(8, 5, 5)), p, lengths,
                                return_state=True)
        yv, hv = dask.compute(y, h)
        key = fdask._params_key(p)
        holders = [w for w, keys in client.has_what().items() if key in keys]
        assert len(holders) == 2  # scattered to (broadcast on) both workers
    ref = _reference(x, p, lengths=lengths)
    _equal(yv, ref.y)
    _equal(hv, ref.h)
