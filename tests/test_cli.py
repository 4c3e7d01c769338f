"""``python -m fastlstm`` (fastlstm/__main__.py) and the case registry it shares with bench/.

Tiny sizes and short timing budgets keep these fast; no timing is asserted.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastlstm
from fastlstm import bench as fb
from fastlstm.__main__ import main

TINY = "5,2,3,4"


def test_help_runs_as_a_module():
    for args in ([], ["bench"], ["info"], ["check"]):
        r = subprocess.run([sys.executable, "-m", "fastlstm", *args, "--help"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "usage:" in r.stdout


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("fastlstm", "numba", "llvmlite", "numpy", "scipy", "BLAS", "numba threading",
                 "numba cache", "cpu", "gpu", "backends"):
        assert word in out


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["fastlstm"].startswith(fastlstm.__version__)
    assert "cpu" in doc["backends"]


def test_check(capsys):
    # cpu and torch here; the CUDA backend's checks live in tests/cuda (in the simulator a
    # full `check` of it takes minutes).
    import importlib.util
    backends = "cpu,torch" if importlib.util.find_spec("torch") else "cpu"
    assert main(["check", "--backends", backends]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "PASS" in out
    assert "variable lengths" in out and "bidirectional" in out and "float64" in out


def test_default_job_tiny(capsys):
    assert main(["--size", TINY, "--budget", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "T=5 B=2 I=3 H=4" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "PASS" in lines["reference"] and "PASS" in lines["cpu"]
    assert "x" in lines["cpu"]  # a speedup column


def test_default_job_float64_two_layers(capsys):
    assert main(["--size", TINY, "--layers", "2", "--dtype", "float64", "--repeat", "2",
                 "--backends", "cpu"]) == 0
    assert "layers=2" in capsys.readouterr().out


def test_bench_json(tmp_path, capsys):
    path = tmp_path / "b.json"
    assert main(["bench", "--size", TINY, "--size", "4,3,2,8", "--lengths", "--budget", "0.01",
                 "--no-sgemm", "-q", "--json", str(path), "--backends", "reference,cpu"]) == 0
    out = capsys.readouterr().out
    assert "GFLOP/s" in out and "vs ref" in out
    doc = json.loads(path.read_text())
    assert doc["format"] == "fastlstm-bench/1"
    rows = doc["results"]
    assert {(r["case"], r["mode"], r["backend"]) for r in rows} == {
        (c, m, b) for c in ("T5_B2_I3_H4_len", "T4_B3_I2_H8_len") for m in fb.MODES
        for b in ("reference", "cpu")}
    for r in rows:
        assert r["status"] == "PASS" and r["median_s"] > 0 and r["gflops"] > 0
        assert r["speedup_vs_reference"] > 0
    # the CI comparison script reads this format too
    spec = importlib.util.spec_from_file_location(
        "ci_compare", Path(__file__).resolve().parents[1] / "ci" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    summary = compare.summarize(doc, "cli json")
    assert set(summary["speedups"]) == {f"{c}|{m}|cpu" for c in ("T5_B2_I3_H4_len", "T4_B3_I2_H8_len")
                                        for m in fb.MODES}


def test_bench_plot_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["bench", "--size", TINY, "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and "pip install" in err
    assert not (tmp_path / "p.png").exists()


def test_bench_list(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(c.name in out for c in fb.CASES)


@pytest.mark.parametrize("argv, message", [
    (["bench", "--backends", "gpu"], "unknown backend"),
    (["bench", "--modes", "train"], "unknown mode"),
    (["bench", "--case", "no-such-case"], "no registry case"),
])
def test_usage_errors(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_size_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--size", "1,2,3"])
    assert exc.value.code == 2


def test_unavailable_cuda_is_named(capsys):
    if "cuda" in fb.available_backends():
        pytest.skip("a CUDA backend is available here")
    assert main(["--size", TINY, "--backends", "cuda"]) == 2
    assert "cuda" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the registry
def test_registry_names_unique_and_quick_subset():
    names = [c.name for c in fb.CASES + fb.CHECK_CASES]
    assert len(names) == len(set(names))
    assert fb.QUICK and set(fb.QUICK) <= set(fb.CASES)
    assert any(c.lengths for c in fb.CASES) and any(c.bidirectional and c.num_layers == 2 for c in fb.CASES)
    assert any(c.dtype == "float64" for c in fb.CASES)


def test_flops_formula():
    c = fb.Case.from_size(10, 2, 3, 4)
    fwd = 2 * 10 * 2 * 16 * (3 + 4)
    assert c.flops("infer") == c.flops("train_fwd") == fwd
    assert c.flops("fwd_bwd") == 3 * fwd
    p = fb.Case.from_size(10, 2, 3, 4, num_layers=2, bidirectional=True, proj_size=2)
    n = 20
    layer0 = 2 * (2 * n * 16 * (3 + 2) + 2 * n * 4 * 2)
    layer1 = 2 * (2 * n * 16 * (4 + 2) + 2 * n * 4 * 2)
    assert p.flops("infer") == layer0 + layer1
    v = fb.Case.from_size(10, 4, 3, 4, lengths=True)
    lens = v.length_array()
    assert lens.max() == 10 and lens.min() >= 1 and v.valid_steps() == lens.sum() < 40
    assert v.flops("infer") == 2 * lens.sum() * 16 * (3 + 4)


def test_make_inputs_random_and_reproducible():
    c = fb.Case.from_size(4, 3, 2, 8, num_layers=2, bidirectional=True, proj_size=3, lengths=True,
                          dtype="float64")
    a, b = c.make_inputs(1), c.make_inputs(1)
    for name in ("x", "h0", "c0", "dy", "dh", "dc"):
        arr = getattr(a, name)
        assert arr.dtype == np.float64 and np.all(arr != 0)
        np.testing.assert_array_equal(arr, getattr(b, name))
    assert a.x.shape == (4, 3, 2) and a.h0.shape == (4, 3, 3) and a.c0.shape == (4, 3, 8)
    assert a.dy.shape == (4, 3, 6)
    assert not np.array_equal(c.make_inputs(2).x, a.x)
