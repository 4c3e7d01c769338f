"""The CPU kernels under unusual Numba environments, each in a fresh interpreter (the
``jit`` fallback also in process):

* ``NUMBA_DISABLE_JIT=1`` (users debugging their own Numba code in the same process): the
  kernels run as plain Python and still give the reference's results;
* no writable directory for Numba's disk cache: the kernels compile without it, with one
  line on stderr saying so;
* compiling from scratch raises none of Numba's internal ``NumbaIRAssumptionWarning``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from fastlstm.kernels.cpu import activations as act
from fastlstm.kernels.cpu.jit import NO_CACHE_NOTICE

_COMPARE = r"""
import json, sys
import numpy as np
import fastlstm
from fastlstm.testing import assert_close


def compare(dtypes, training):
    errs = {}
    for name in dtypes:
        dt = np.dtype(name)
        p = fastlstm.LSTMParams.init(3, 4, dtype=dt, seed=0)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((3, 2, 3)).astype(dt)
        h0 = rng.standard_normal((1, 2, 4)).astype(dt)
        c0 = rng.standard_normal((1, 2, 4)).astype(dt)
        lengths = np.array([3, 2])
        got = {}
        for dev in ("cpu", "reference"):
            f = fastlstm.forward(x, p, h0, c0, lengths=lengths, training=training, device=dev)
            out = {"y": f.y, "h": f.h, "c": f.c}
            if training:
                g = np.random.default_rng(1)
                b = fastlstm.backward(f.cache, g.standard_normal(f.y.shape).astype(dt),
                                      g.standard_normal(f.h.shape).astype(dt),
                                      g.standard_normal(f.c.shape).astype(dt))
                out.update(dx=b.dx, dh0=b.dh0, dc0=b.dc0,
                           **{"d" + k: v for k, v in b.dparams.items()})
            got[dev] = out
        for k, expected in got["reference"].items():
            kind = "forward" if k in ("y", "h", "c") else "grad"
            errs[f"{name} {k}"] = assert_close(got["cpu"][k], expected, dt, kind, f"{name} {k}")
    return errs
"""


def _child_env(**set_vars):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_DISABLE_JIT", "NUMBA_ENABLE_CUDASIM")}
    env.update(set_vars)
    return env


def _run(code, tmp_path, timeout, *args, **set_vars):
    """Run ``code`` in a fresh interpreter (cwd ``tmp_path``); the result and its wall time."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=_child_env(**set_vars),
                       cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    return r, time.perf_counter() - t0


# ---------------------------------------------------------------------------- NUMBA_DISABLE_JIT
_DISABLED = _COMPARE + r"""
import numba
from fastlstm.kernels.cpu import activations as act
assert numba.config.DISABLE_JIT
errs = compare(["float64", "float32"], training=True)
# a serial layer large enough for the second core: one core does it all (no atomics in Python)
from fastlstm import config
with config.options("cpu", threads=2, overlap_min_flop=0, overlap_min_rows=1):
    p = fastlstm.LSTMParams.init(3, 4, dtype="float64", seed=1)
    x = np.random.default_rng(2).standard_normal((6, 2, 3))
    got = fastlstm.forward(x, p, training=True)
    g = fastlstm.backward(got.cache, np.ones_like(got.y))
    want = fastlstm.forward(x, p, training=True, device="reference")
    gw = fastlstm.backward(want.cache, np.ones_like(want.y))
    np.testing.assert_allclose(got.y, want.y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.dparams["weight_hh_l0"], gw.dparams["weight_hh_l0"], rtol=1e-10,
                               atol=1e-12)
grid = np.load(sys.argv[1])
out = {}
for name in ("float64", "float32"):
    x = grid.astype(name)
    row = np.empty_like(x)
    act.tanh_row(x, row, np.empty_like(x))
    inplace = x.copy()
    act.tanh_row(inplace, inplace, np.empty_like(x))
    np.testing.assert_array_equal(inplace, row)
    out[f"tanh_row_{name}"] = row
    out[f"tanh_{name}"] = act.tanh(x)
    out[f"sigmoid_{name}"] = act.sigmoid(x)
    for f, v in ((act.half_like, 0.5), (act.one_like, 1.0)):
        r = f(x[0])
        assert r.dtype == np.dtype(name) and r == v, (f.__name__, name, r)
np.savez(sys.argv[2], **out)
print(json.dumps(errs))
"""


def test_numba_disable_jit_runs_the_kernels_as_python(tmp_path):
    """With ``NUMBA_DISABLE_JIT=1`` a training forward and backward (with ``lengths``) run as
    plain Python and match the reference; the activations' NumPy fallbacks match the compiled
    ones (float32: the same arithmetic; float64: ``np.tanh``)."""
    grid = np.concatenate([np.linspace(-30, 30, 20_001), np.geomspace(1e-30, 1, 500),
                           -np.geomspace(1e-30, 1, 500),
                           [0.0, -0.0, 0.625, -0.625, 9.011, -9.011, np.inf, -np.inf, np.nan]])
    np.save(tmp_path / "grid.npy", grid)
    r, wall = _run(_DISABLED, tmp_path, 60, tmp_path / "grid.npy", tmp_path / "out.npz",
                   NUMBA_DISABLE_JIT="1")
    assert r.returncode == 0, f"{wall:.1f} s\n{r.stderr}"
    errs = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(errs) >= 2 * 9, errs
    got = np.load(tmp_path / "out.npz")
    for name in ("float64", "float32"):
        x = grid.astype(name)
        row = np.empty_like(x)
        act.tanh_row(x, row, np.empty_like(x))
        compiled = {"tanh_row": row, "tanh": act.tanh(x), "sigmoid": act.sigmoid(x)}
        for k, v in compiled.items():
            py = got[f"{k}_{name}"]
            assert py.dtype == v.dtype, (k, name)
            if name == "float32":  # the same float32 operations in the same order
                np.testing.assert_array_equal(py, v, err_msg=f"{k} {name}")
            else:  # libm's or our tanh against np.tanh; sigmoid's 0.5 + 0.5 * tanh cancels
                atol = np.finfo(np.float64).eps if k == "sigmoid" else 0.0
                np.testing.assert_allclose(py, v, rtol=2 * act.TANH_F64_MAX_REL_ERR, atol=atol,
                                           err_msg=f"{k} {name}")


# ---------------------------------------------------------------------------- no disk cache
_NO_CACHE = _COMPARE + r"""
import re

# Every cache locator declines, as when no candidate directory is writable.
from numba.core import caching
impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")
for cls in impl._locator_classes:
    cls.from_function = classmethod(lambda cls, py_func, py_file: None)

from fastlstm.kernels.cpu import activations as act
x = np.linspace(-3, 3, 61)
row = np.empty_like(x)
act.tanh_row(x, row, np.empty_like(x))
np.testing.assert_allclose(row, np.tanh(x), rtol=1e-15, atol=0)
np.testing.assert_allclose(act.tanh(x.astype(np.float32)), np.tanh(x), rtol=0, atol=4e-7)
print("ACTIVATIONS OK", flush=True)
try:
    errs = compare(["float32"], training=False)
except RuntimeError as exc:
    m = re.search(r"no locator available for file '([^']*)'", str(exc))
    if m is None:
        raise
    print("CACHED ELSEWHERE", m.group(1))
    sys.exit(0)
print(json.dumps(errs))
"""


def test_no_writable_cache_directory_compiles_without_it(tmp_path):
    """Numba finds nowhere to cache: the kernels compile in memory, match the reference, and
    one line on stderr says why every process compiles again."""
    r, wall = _run(_NO_CACHE, tmp_path, 300)
    assert r.returncode == 0, f"{wall:.1f} s\n{r.stderr}"
    assert "ACTIVATIONS OK" in r.stdout, r.stdout
    assert r.stderr.count(NO_CACHE_NOTICE) == 1, r.stderr
    assert "CACHED ELSEWHERE" not in r.stdout, r.stdout  # every kernel uses jit
    assert "compiling the CPU kernels (first use; no disk cache" in r.stderr, r.stderr
    json.loads(r.stdout.strip().splitlines()[-1])


_PLAIN = _COMPARE + r"""
print(json.dumps(compare(["float32"], training=False)))
"""


def test_writable_cache_directory_prints_no_notice(tmp_path):
    r, wall = _run(_PLAIN, tmp_path, 300)
    assert r.returncode == 0, f"{wall:.1f} s\n{r.stderr}"
    assert NO_CACHE_NOTICE not in r.stderr, r.stderr


# ---------------------------------------------------------------------------- IR warnings
_STRICT = r"""
import sys, warnings
from numba.core.errors import NumbaIRAssumptionWarning
warnings.simplefilter("error", NumbaIRAssumptionWarning)
import numpy as np
"""

_KERNELS = _STRICT + r"""
import fastlstm
name = sys.argv[1]
out = fastlstm.warmup(dtypes=[name], devices=["cpu"])  # every specialisation a call may use
assert set(out) == {("cpu", name)}, out
print("OK")
"""


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cpu_kernels_compile_without_ir_assumption_warnings(tmp_path, dtype):
    """Every CPU kernel, compiled from scratch (a fresh cache directory) with Numba's pedantic
    IR check as an error. (tests/test_activations.py checks the activations inlined twice into
    one function in process.)"""
    cache = str(tmp_path / "cache")
    r, wall = _run(_KERNELS, tmp_path, 300, dtype, NUMBA_CACHE_DIR=cache)
    assert r.returncode == 0 and "OK" in r.stdout, f"{wall:.1f} s\n{r.stderr}"
    assert "NumbaIRAssumptionWarning" not in r.stderr, r.stderr
    # a cold cache says so in one line (a first call that takes seconds does not look hung) ...
    assert r.stderr.count("compiling the CPU kernels (first use; cached afterwards)") == 1, r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    # ... and a warm one is silent
    r, wall = _run(_KERNELS, tmp_path, 300, dtype, NUMBA_CACHE_DIR=cache)
    assert r.returncode == 0 and "OK" in r.stdout and r.stderr == "", r.stderr


# ---------------------------------------------------------------------------- jit, in process
def test_jit_falls_back_to_no_disk_cache_with_one_notice(monkeypatch, capsys):
    import numba
    from numba.core import caching

    from fastlstm.kernels.cpu import jit as jitmod

    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")
    for cls in impl._locator_classes:
        monkeypatch.setattr(cls, "from_function", classmethod(lambda cls, py_func, py_file: None))
    monkeypatch.setattr(jitmod, "_noticed", [False])

    def inc(x):
        return x + 1

    def dbl(x):
        return 2 * x

    with pytest.raises(RuntimeError, match="no locator available"):
        numba.njit(cache=True)(inc)  # what jit works around
    f = jitmod.jit(cache=True, nogil=True, error_model="numpy")(inc)
    g = jitmod.jit("float64(float64)", cache=True)(dbl)  # eager, with a signature
    assert f(1.5) == 2.5 and g(1.5) == 3.0
    assert capsys.readouterr().err.count(NO_CACHE_NOTICE) == 1
    h = jitmod.jit(dbl)  # bare, no cache: nothing to say
    assert h(2) == 4 and capsys.readouterr().err == ""
