"""ONNX Runtime as a benchmark peer: the harness's ``onnxruntime`` backend, its place in
``python -m fastlstm bench``, in bench/report.py and in the CI gate (informational only).

The tests that run ONNX Runtime skip where onnxruntime or onnx is not installed; the rules
(what it supports, the usage error when it is missing, the report and the gate) run everywhere.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from fastlstm import harness as fb
from fastlstm.cli import EXIT_OK, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parents[1]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_runner_matches_the_reference(ort, bidirectional):
    case = fb.Case.from_size(9, 4, 5, 8, num_layers=2, bidirectional=bidirectional, lengths=True)
    inputs = case.make_inputs(seed=0)
    ref = fb.reference_outputs(case, inputs)
    runner = fb.make_runner(case, "infer", "onnxruntime", inputs)
    assert isinstance(runner, fb.OnnxRuntimeRunner)
    assert runner.threads == fb.default_torch_threads()  # the CPU backend's count
    out = runner.outputs(runner())
    assert list(out) == list(fb.FORWARD_KEYS)
    assert out["y"].shape == ref["y"].shape == (9, 4, case.D * 8)  # time-major
    assert out["h"].shape == out["c"].shape == (2 * case.D, 4, 8)
    rows = fb.compare_outputs(out, ref, case.np_dtype, "infer")
    assert [k for k, *_ in rows] == list(fb.FORWARD_KEYS)
    assert all(ok for *_, ok in rows), rows
    for b, n in enumerate(inputs.lengths):  # past each sequence's end: exactly zero, as ours
        assert not out["y"][n:, b].any()
    assert inputs.lengths.min() < 9  # the case does have padded steps


def test_runner_session_threads_and_full_lengths(ort):
    case = fb.Case.from_size(6, 3, 4, 8)
    inputs = case.make_inputs(seed=1)
    runner = fb.make_runner(case, "infer", "onnxruntime", inputs, torch_threads=1)
    opts = runner.session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert "sequence_lens" not in runner.feeds  # no lengths input without variable lengths
    ref = fb.reference_outputs(case, inputs)
    rows = fb.compare_outputs(runner.outputs(runner()), ref, case.np_dtype, "infer")
    assert all(ok for *_, ok in rows), rows
    x0 = inputs.x.copy()
    runner()
    np.testing.assert_array_equal(inputs.x, x0)  # the inputs are not touched


def test_supports_reasons():
    plain = fb.Case.from_size(6, 3, 4, 8)
    assert fb.supports("onnxruntime", plain, "infer") is None
    for mode in ("train_fwd", "fwd_bwd", None):  # None: every mode
        assert "no LSTM training" in fb.supports("onnxruntime", plain, mode)
    f64 = fb.supports("onnxruntime", fb.Case.from_size(6, 3, 4, 8, dtype="float64"), "infer")
    assert "float32 only" in f64 and "float64" in f64
    proj = fb.supports("onnxruntime", fb.Case.from_size(6, 3, 4, 8, proj_size=3), "infer")
    assert "proj_size=3" in proj and "no output projection" in proj
    # the other backends are unaffected by the mode
    for be in ("reference", "cpu", "torch"):
        assert all(fb.supports(be, fb.Case.from_size(6, 3, 4, 8, proj_size=3, dtype="float64"),
                               m) is None for m in (*fb.MODES, None))
    with pytest.raises(ValueError, match="unknown mode"):
        fb.supports("onnxruntime", plain, "train")
    assert "onnxruntime" in fb.BACKENDS and fb.PEERS["onnxruntime"] == "ort"


@pytest.mark.parametrize("case, mode, words", [
    (fb.Case.from_size(6, 3, 4, 8), "fwd_bwd", "no LSTM training"),
    (fb.Case.from_size(6, 3, 4, 8, dtype="float64"), "infer", "float32 only"),
    (fb.Case.from_size(6, 3, 4, 8, proj_size=3), "infer", "no output projection"),
], ids=["training", "float64", "proj"])
def test_runner_refuses_what_it_cannot_run(case, mode, words):
    with pytest.raises(ValueError, match=words):  # before importing onnxruntime
        fb.make_runner(case, mode, "onnxruntime", case.make_inputs(seed=0))


def test_cli_bench_onnxruntime(ort, tmp_path, capsys):
    path = tmp_path / "b.json"
    assert main(["bench", "--size", "6,3,4,8", "--layers", "2", "--bidirectional", "--lengths",
                 "--backends", "onnxruntime", "--repeat", "2", "--no-sgemm", "-q",
                 "--json", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("case"))
    assert header.split()[-4:] == ["vs", "ref", "vs", "ort"] and "vs torch" not in header
    rows = {tuple(line.split()[1:3]): line for line in out.splitlines()
            if line.startswith("T6_B3_I4_H8")}
    assert set(rows) == {(m, b) for m in fb.MODES for b in ("reference", "onnxruntime")}
    assert rows[("infer", "onnxruntime")].endswith("1.00x")  # vs itself
    assert "n/a" in rows[("fwd_bwd", "onnxruntime")]
    assert "vs ref / vs ort:" in out and "ONNX Runtime runs the weights exported" in out
    assert "n/a onnxruntime: ONNX Runtime has no LSTM training" in out
    doc = json.loads(path.read_text())
    by = {(r["mode"], r["backend"]): r for r in doc["results"]}
    assert by[("infer", "onnxruntime")]["status"] == "PASS"
    assert by[("infer", "onnxruntime")]["fwd_err"] < 2e-5
    assert by[("infer", "reference")]["speedup_vs_onnxruntime"] > 0
    assert by[("train_fwd", "onnxruntime")]["status"] == "n/a"
    assert doc["settings"]["backends"] == ["reference", "onnxruntime"]


def test_cli_bench_every_peer(ort, capsys):
    backends = ",".join(["reference", "cpu", *(["torch"] if fb.torch_available() else []),
                         "onnxruntime"])
    assert main(["bench", "--size", "5,2,3,4", "--modes", "infer", "--backends", backends,
                 "--repeat", "2", "--no-sgemm", "-q"]) == EXIT_OK
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("case")).split()
    assert header[-1] == "ort" and ("torch" in header) == fb.torch_available()
    cpu = next(line for line in out.splitlines() if line.split()[2:3] == ["cpu"])
    assert cpu.split()[-1].endswith("x") and cpu.split()[-1] != "-"  # cpu vs ort, a number


def test_missing_onnxruntime_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(fb, "onnxruntime_available", lambda: False)
    monkeypatch.setattr(fb, "_onnxruntime_missing",
                        lambda: "onnxruntime cannot be imported (pip install onnxruntime onnx)")
    assert "onnxruntime" not in fb.available_backends()
    assert main(["bench", "--size", "5,2,3,4", "--backends", "onnxruntime"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "backend 'onnxruntime' is not available: onnxruntime cannot be imported" in err


def test_report_has_onnxruntime_columns():
    report = _load("bench_report", "bench/report.py")
    rows = {("c", "infer"): {"reference": (1e-2, 0.1), "cpu": (1e-3, 0.1), "torch": (2e-3, 0.1),
                             "onnxruntime": (1.5e-3, 0.1)},
            ("c", "fwd_bwd"): {"reference": (3e-2, 0.3), "cpu": (3e-3, 0.3), "torch": (6e-3, 0.3)}}
    lines = report.table(rows, None).splitlines()
    assert lines[0].split(" | ")[-3:] == ["cpu vs reference", "cpu vs torch",
                                          "cpu vs onnxruntime |"]
    assert lines[2].endswith("| 10.00x | 2.00x | 1.50x |") and "1.5 ms" in lines[2]
    assert lines[3].endswith("| 10.00x | 2.00x | - |")
    del rows[("c", "infer")]["onnxruntime"]  # a run without it: the columns as before
    assert "onnxruntime" not in report.table(rows, None)


def test_ci_gate_treats_onnxruntime_as_informational(tmp_path):
    compare = _load("ci_compare_ort", "ci/compare.py")
    assert not compare.gated("onnxruntime") and not compare.gated("torch")
    assert compare.gated("cpu") and compare.gated("cuda")
    def run(medians, what):  # the JSON of `python -m fastlstm bench`
        return compare.summarize({"results": [
            dict(case="c", mode="infer", backend=b, status="PASS", median_s=t)
            for b, t in medians.items()]}, what)

    med = {"reference": 1e-2, "cpu": 1e-3, "onnxruntime": 2e-3}
    base = run(med, "base")
    rows = compare.compare(base, run(dict(med, onnxruntime=2e-2), "new"), 0.35)  # 10x slower
    assert {r["backend"]: r["status"] for r in rows} == {"cpu": "ok", "onnxruntime": "slower"}
    assert not compare.failed(rows)
    rows = compare.compare(base, run({k: v for k, v in med.items() if k != "onnxruntime"},
                                     "gone"), 0.35)
    assert {r["backend"]: r["status"] for r in rows}["onnxruntime"] == "missing"
    assert not compare.failed(rows)
