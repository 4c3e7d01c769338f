"""``python -m fastlstm`` (fastlstm/cli/) and the harness it shares with bench/ and ci/.

Tiny sizes and short timing budgets keep these fast; no timing is asserted.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastlstm
from fastlstm import harness as fb
from fastlstm.cli import EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, main
from fastlstm.cli.format import (SPREAD_LEGEND, fmt_spread, load_warning, speedup_legend,
                                 spread_warning, spread_warnings, unreliable_summary)

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


def test_bench_prints_spread_and_legend(tmp_path, capsys):
    path = tmp_path / "b.json"
    assert main(["bench", "--size", TINY, "--modes", "infer", "--repeat", "4", "--no-sgemm", "-q",
                 "--backends", "reference,cpu", "--json", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("case"))
    assert header.split()[3:6] == ["min", "median", "max/min"]
    assert SPREAD_LEGEND in out and speedup_legend() in out
    assert "2.0 times faster" in out
    for r in json.loads(path.read_text())["results"]:
        assert r["rounds"] == 4 and 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["spread"] == pytest.approx(r["max_s"] / r["min_s"])
        assert r["unreliable"] == (r["spread"] > fb.UNRELIABLE_SPREAD)


def test_peer_columns_and_legend():
    """A "vs" column per peer among the results (torch: "vs torch", ONNX Runtime: "vs ort"),
    explained by the legend; none for peers that were not run."""
    from fastlstm.cli.bench import result_table
    assert speedup_legend(peers=["reference", "cpu"]) == speedup_legend()
    assert speedup_legend(vs_torch=True) == speedup_legend(peers=["torch"])
    both = speedup_legend(peers=["cpu", "onnxruntime", "torch"])
    assert both.startswith("vs ref / vs torch / vs ort: how many times faster this backend is "
                           "than the reference / torch / ONNX Runtime")
    assert "the CPU backend's thread count" in both and "inference only, float32" in both

    def row(be, med, **speedups):
        return dict(case="c", mode="infer", backend=be, status="PASS", min_s=med, median_s=med,
                    spread=1.0, gflop_per_s=1.0,
                    **{f"speedup_vs_{k}": v for k, v in speedups.items()})

    rows = [row("reference", 4e-3, reference=1.0, onnxruntime=0.5),
            row("cpu", 1e-3, reference=4.0, onnxruntime=2.0),
            row("onnxruntime", 2e-3, reference=2.0, onnxruntime=1.0)]
    lines = result_table(rows).splitlines()
    assert lines[0].split()[-4:] == ["vs", "ref", "vs", "ort"]
    assert lines[3].split()[-2:] == ["4.00x", "2.00x"]
    assert result_table(rows[:2]).splitlines()[0].split()[-2:] == ["vs", "ref"]


def test_spread_warning_decision():
    steady = fb.spread([1.0e-3, 1.2e-3, 1.1e-3, 1.9e-3])
    assert steady.min_s == 1.0e-3 and steady.max_s == 1.9e-3 and steady.rounds == 4
    assert steady.median_s == pytest.approx(1.15e-3)
    assert not steady.unreliable and spread_warning("cpu", steady) is None
    assert spread_warning("cpu", fb.spread([1e-3, 2e-3])) is None  # exactly 2x: not flagged
    noisy = fb.spread([1.0e-3, 1.1e-3, 3.3e-3])
    assert noisy.unreliable and noisy.ratio == pytest.approx(3.3)
    w = spread_warning("T5 infer cpu", noisy)
    assert w.startswith("warning: T5 infer cpu: runs vary 3.3x")
    assert "unreliable" in w and "machine busy?" in w and "1.00 ms" in w and "3.30 ms" in w
    assert fmt_spread(None) == "-" and fmt_spread(2.0) == "2.0x" and fmt_spread(2.04) == "2.0x!"
    assert unreliable_summary(0, 9) is None
    rows = [dict(backend="cpu", min_s=1e-3, median_s=1.1e-3, max_s=3.3e-3, rounds=3),
            dict(backend="torch", min_s=1e-3, median_s=1.1e-3, max_s=1.5e-3, rounds=3),
            dict(backend="cuda", status="n/a")]  # never timed
    assert spread_warnings(rows) == [spread_warning("cpu", noisy)]


def test_load_warning_decision():
    assert load_warning(None, 2) is None  # no load average on this OS
    assert load_warning(0.9, 2) is None and load_warning(1.0, 2) is None
    w = load_warning(3.46, 2)
    assert w.startswith("warning: the machine is busy (1-minute load average 3.5 on 2 CPUs)")
    assert load_warning(20.0, 64) is None
    assert "1 CPU)" in load_warning(0.8, 1)
    load, cpus = fb.machine_load()
    assert cpus >= 1 and (load is None or load >= 0)


def test_bench_warns_about_unsteady_timings(capsys, monkeypatch):
    # synthetic timings: the cpu rounds vary 5x, the reference's 1.5x
    fake = {"reference": [0.010, 0.012, 0.015], "cpu": [0.001, 0.002, 0.005]}
    monkeypatch.setattr(fb, "time_backends", lambda fns, **kw: {k: fake[k] for k in fns})
    monkeypatch.setattr(fb, "machine_load", lambda: (0.1, 2))  # an idle machine
    assert main(["bench", "--size", TINY, "--modes", "fwd_bwd", "--no-sgemm", "-q",
                 "--backends", "reference,cpu"]) == EXIT_OK
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "T5_B2_I3_H4 fwd_bwd cpu" in warnings[0] and "5.0x" in warnings[0]
    assert "unreliable" in warnings[0]
    cpu_row = next(line for line in out.splitlines() if line.split()[2:3] == ["cpu"])
    assert "1.00 ms" in cpu_row and "2.00 ms" in cpu_row and "5.0x!" in cpu_row  # min, median, spread
    assert "6.00x" in cpu_row  # vs ref: 12 ms / 2 ms
    ref_row = next(line for line in out.splitlines() if line.split()[2:3] == ["reference"])
    assert "1.5x" in ref_row and "1.5x!" not in ref_row
    assert "1 of 2 timings vary more than 2x between rounds" in out


def test_default_job_legend_and_warning(capsys, monkeypatch):
    fake = {"reference": [0.010, 0.011, 0.012], "cpu": [0.001, 0.001, 0.004]}
    monkeypatch.setattr(fb, "time_backends", lambda fns, **kw: {k: fake[k] for k in fns})
    monkeypatch.setattr(fb, "machine_load", lambda: (3.5, 2))  # a busy machine
    assert main(["--size", TINY, "--backends", "cpu"]) == EXIT_OK
    out = capsys.readouterr().out
    assert load_warning(3.5, 2) in out
    assert speedup_legend() in out
    assert "warning: cpu fwd_bwd: runs vary 4.0x" in out
    assert "warning: cpu infer: runs vary 4.0x" in out
    assert "warning: reference" not in out


def test_mismatch_exits_1(capsys, monkeypatch):
    real = fb.make_runner

    class Wrong:  # the cpu backend's results, with y off by 1%
        def __init__(self, runner):
            self.runner = runner

        def __call__(self):
            return self.runner()

        def outputs(self, ret):
            out = self.runner.outputs(ret)
            out["y"] = out["y"] * 1.01
            return out

    def make_runner(case, mode, backend, inputs, **kw):
        r = real(case, mode, backend, inputs, **kw)
        return Wrong(r) if backend == "cpu" else r

    monkeypatch.setattr(fb, "make_runner", make_runner)
    assert EXIT_MISMATCH == 1
    assert main(["--size", TINY, "--backends", "cpu", "--repeat", "2"]) == EXIT_MISMATCH
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "mismatch in y" in captured.err


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
        why = ("the CUDA simulator is on in this process (NUMBA_ENABLE_CUDASIM=1, set by "
               "tests/cuda/conftest.py)" if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
               else "this machine has a usable CUDA GPU")
        pytest.skip(f"the CUDA backend can run here ({why}), so asking for it is no usage error; "
                    "test_unavailable_cuda_is_named_simulated checks the message")
    assert main(["--size", TINY, "--backends", "cuda"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "backend 'cuda' is not available" in err


def test_unavailable_cuda_is_named_simulated(capsys, monkeypatch):
    # the same usage error on any machine: the CUDA backend reported as missing
    import fastlstm.dispatch
    monkeypatch.setattr(fb, "available_backends", lambda: ["reference", "cpu"])
    monkeypatch.setattr(fastlstm.dispatch, "cuda_unavailable_reason", lambda: "no GPU in this test")
    assert main(["--size", TINY, "--backends", "cuda"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "backend 'cuda' is not available: no GPU in this test" in err


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
