"""ci/compare.py and ci/plot_history.py on synthetic benchmark JSON (no timing is run here)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"ci_{name}", ROOT / "ci" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


compare = _load("compare")
plot_history = _load("plot_history")

CASES = ("T100_B1_I32_H64", "T100_B16_I128_H256")
MODES = ("infer", "fwd_bwd")
# reference, cpu, torch medians (seconds) per case: cpu 10x and torch 2x faster than the reference
BASE = {(c, m, b): t * (1 + i) * (3 if m == "fwd_bwd" else 1)
        for i, c in enumerate(CASES) for m in MODES
        for b, t in (("reference", 1e-2), ("cpu", 1e-3), ("torch", 5e-3))}


def bench_doc(medians: dict, *, commit="abc123def4567890", time="2026-11-24T05:00:00+00:00",
              sgemm_s=0.2) -> dict:
    """A pytest-benchmark JSON document as ci/bench.sh writes it."""
    benches = [{"group": c, "name": f"test_lstm[{c}-{m}-{b}]",
                "fullname": f"bench/bench_lstm.py::test_lstm[{c}-{m}-{b}]",
                "extra_info": {"case": c, "mode": m, "backend": b, "dtype": "float32", "gflops": 0.1},
                "stats": {"median": t, "min": t * 0.9, "rounds": 10}}
               for (c, m, b), t in medians.items()]
    if sgemm_s:
        benches.append({"group": "sgemm", "name": "test_sgemm", "extra_info": {
            "case": "sgemm_2048", "mode": "sgemm", "backend": "numpy", "gflops": 17.18},
            "stats": {"median": sgemm_s}})
    return {"machine_info": {"node": "ci", "cpu": {"brand_raw": "Test CPU", "count": 2}},
            "commit_info": {"id": commit, "time": time, "branch": "main", "dirty": False},
            "benchmarks": benches, "datetime": "2026-11-24T05:10:00", "version": "5.3.1"}


def write(tmp_path, name, doc) -> str:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(p)


def run(tmp_path, new, base=None, *extra, capsys=None):
    base_path = write(tmp_path, "base.json", bench_doc(BASE) if base is None else base)
    new_path = write(tmp_path, "new.json", new)
    return compare.main([new_path, "--baseline", base_path, *extra])


def scaled(factor_of) -> dict:
    return {k: t * factor_of(*k) for k, t in BASE.items()}


def test_identical_run_passes(tmp_path, capsys):
    assert run(tmp_path, bench_doc(BASE)) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "| case | mode | backend | baseline | now | change | status |" in out


def test_slowdown_of_our_backend_fails(tmp_path, capsys):
    new = scaled(lambda c, m, b: 2.0 if (b == "cpu" and c == CASES[0] and m == "infer") else 1.0)
    assert run(tmp_path, bench_doc(new)) == 1
    cap = capsys.readouterr()
    assert "SLOWER" in cap.out and "FAIL" in cap.out
    assert f"REGRESSION {CASES[0]} infer cpu" in cap.err
    assert cap.err.count("REGRESSION") == 1


def test_slowdown_within_tolerance_passes(tmp_path):
    new = scaled(lambda c, m, b: 1.4 if b == "cpu" else 1.0)  # speedup falls 29% < 35%
    assert run(tmp_path, bench_doc(new)) == 0


def test_tolerance_option(tmp_path):
    new = scaled(lambda c, m, b: 1.2 if b == "cpu" else 1.0)
    assert run(tmp_path, bench_doc(new), None, "--tolerance", "0.1") == 1


def test_uniform_machine_slowdown_passes(tmp_path, capsys):
    new = scaled(lambda c, m, b: 2.5)  # a slower runner: every timing 2.5x, ratios unchanged
    assert run(tmp_path, bench_doc(new, sgemm_s=0.5)) == 0
    assert "SLOWER" not in capsys.readouterr().out


def test_reference_got_faster_is_a_regression(tmp_path):
    # Speedups are relative to the reference: a faster reference lowers every ratio.
    new = scaled(lambda c, m, b: 0.5 if b == "reference" else 1.0)
    assert run(tmp_path, bench_doc(new)) == 1


def test_improvement_passes(tmp_path, capsys):
    new = scaled(lambda c, m, b: 0.4 if b == "cpu" else 1.0)
    assert run(tmp_path, bench_doc(new)) == 0
    assert "faster" in capsys.readouterr().out


def test_missing_case_fails(tmp_path, capsys):
    new = {k: t for k, t in BASE.items() if k[0] != CASES[1]}
    assert run(tmp_path, bench_doc(new)) == 1
    cap = capsys.readouterr()
    assert "MISSING" in cap.out and "missing from the new results" in cap.err


def test_missing_reference_makes_entries_missing(tmp_path):
    new = {k: t for k, t in BASE.items() if not (k[0] == CASES[0] and k[2] == "reference")}
    assert run(tmp_path, bench_doc(new)) == 1


def test_new_entry_passes(tmp_path, capsys):
    new = dict(BASE)
    new[("T5_B1_I2_H3", "infer", "reference")] = 1e-3
    new[("T5_B1_I2_H3", "infer", "cpu")] = 1e-4
    assert run(tmp_path, bench_doc(new)) == 0
    assert "| T5_B1_I2_H3 | infer | cpu | - | 10.00x | - | new |" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"hello": 1}', "not a benchmark result"),
    (json.dumps({"benchmarks": [{"stats": {"median": 1.0}}]}), "no extra_info case/mode/backend"),
    (json.dumps({"benchmarks": [{"extra_info": {"case": "a", "mode": "infer", "backend": "cpu"},
                                 "stats": {}}]}), "--benchmark-disable"),
    (json.dumps({"benchmarks": []}), "no benchmark timings"),
])
def test_malformed_new_file_is_a_clear_error(tmp_path, capsys, content, message):
    assert run(tmp_path, content) == 2
    err = capsys.readouterr().err
    assert "compare.py: error:" in err and message in err


def test_malformed_baseline_is_a_clear_error(tmp_path, capsys):
    assert run(tmp_path, bench_doc(BASE), "{}") == 2
    assert "baseline" in capsys.readouterr().err


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    base = write(tmp_path, "base.json", bench_doc(BASE))
    assert compare.main([str(tmp_path / "nope.json"), "--baseline", base]) == 2
    assert "does not exist" in capsys.readouterr().err
    new = write(tmp_path, "new.json", bench_doc(BASE))
    assert compare.main([new, "--baseline", str(tmp_path / "nobase.json")]) == 2


def test_update_then_compare(tmp_path, capsys):
    base = tmp_path / "baseline.json"
    new = write(tmp_path, "new.json", bench_doc(scaled(lambda c, m, b: 0.5 if b == "cpu" else 1.0)))
    assert compare.main([new, "--baseline", str(base), "--update"]) == 0
    doc = json.loads(base.read_text())
    assert doc["format"] == compare.SUMMARY_FORMAT
    assert doc["speedups"][f"{CASES[0]}|infer|cpu"] == pytest.approx(20.0)
    assert doc["machine"]["sgemm_gflop_per_s"] == pytest.approx(17.18 / 0.2)
    assert compare.main([new, "--baseline", str(base)]) == 0
    # the old, slower run now fails against the updated baseline
    old = write(tmp_path, "old.json", bench_doc(BASE))
    assert compare.main([old, "--baseline", str(base)]) == 1


def test_summary_file(tmp_path):
    summary = tmp_path / "summary.md"
    assert run(tmp_path, bench_doc(BASE), None, "--summary", str(summary)) == 0
    text = summary.read_text()
    assert text.startswith("### Benchmark vs baseline: PASS")
    assert f"| {CASES[0]} | infer | cpu | 10.00x | 10.00x | +0.0% | ok |" in text


def test_cli_json_is_accepted(tmp_path):
    results = [{"case": c, "mode": m, "backend": b, "status": "PASS", "median_s": t}
               for (c, m, b), t in BASE.items()]
    doc = {"format": "fastlstm-bench/1", "machine": {"cpu": "x", "sgemm_gflop_per_s": 50.0},
           "results": results}
    assert run(tmp_path, doc) == 0


def test_history_one_file_per_commit_and_plot(tmp_path, capsys):
    hist = tmp_path / "history"
    for i, commit in enumerate(["1111111111111111", "2222222222222222"]):
        doc = bench_doc(scaled(lambda c, m, b: 1.0 / (1 + i) if b == "cpu" else 1.0), commit=commit,
                        time=f"2026-11-2{4 + i}T05:00:00+00:00")
        assert run(tmp_path, doc, None, "--history", str(hist)) == 0
    # the same commit again replaces its file
    assert run(tmp_path, bench_doc(BASE, commit="2222222222222222", time="2026-11-25T05:00:00+00:00"),
               None, "--history", str(hist)) == 0
    files = sorted(p.name for p in hist.glob("*.json"))
    assert files == ["20261124T050000_111111111111.json", "20261125T050000_222222222222.json"]
    capsys.readouterr()
    assert plot_history.main([str(hist), "--mode", "infer", "--backend", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "11111111" in out and f"{CASES[0]}|infer|cpu" in out and "10.00x" in out


def test_plot_history_without_matplotlib(tmp_path, capsys, monkeypatch):
    hist = tmp_path / "history"
    assert run(tmp_path, bench_doc(BASE), None, "--history", str(hist)) == 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert plot_history.main([str(hist), "--out", str(tmp_path / "h.png")]) == 2
    assert "needs matplotlib" in capsys.readouterr().err


def test_committed_baseline_is_valid():
    doc = compare.summarize(compare.load_json(ROOT / "ci" / "baseline.json", "baseline"), "baseline")
    assert doc["speedups"] and all(v > 0 for v in doc["speedups"].values())


def test_command_line_exit_codes(tmp_path):
    new = write(tmp_path, "new.json", "{broken")
    r = subprocess.run([sys.executable, str(ROOT / "ci" / "compare.py"), new, "--baseline", new],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not valid JSON" in r.stderr


def test_several_runs_combine_to_the_fastest_medians(tmp_path, capsys):
    # run 1: the reference was disturbed (cpu speedup inflated); run 2: the cpu was disturbed.
    r1 = write(tmp_path, "r1.json", bench_doc(scaled(lambda c, m, b: 3.0 if b == "reference" else 1.0)))
    r2 = write(tmp_path, "r2.json", bench_doc(scaled(lambda c, m, b: 3.0 if b == "cpu" else 1.0)))
    base = tmp_path / "baseline.json"
    assert compare.main([r1, r2, "--baseline", str(base), "--update"]) == 0
    doc = json.loads(base.read_text())
    assert doc["speedups"][f"{CASES[0]}|infer|cpu"] == pytest.approx(10.0)  # undisturbed value
    assert doc["combined_runs"] == 2
    # alone, run 2 fails against it; combined with a clean run it passes
    assert compare.main([r2, "--baseline", str(base)]) == 1
    clean = write(tmp_path, "clean.json", bench_doc(BASE))
    assert compare.main([r2, clean, "--baseline", str(base)]) == 0


def _with_threads(doc, n):
    for b in doc["benchmarks"]:
        if b["extra_info"]["mode"] != "sgemm":
            b["extra_info"]["threads"] = n
    return doc


def test_thread_count_mismatch_is_refused(tmp_path, capsys):
    assert run(tmp_path, _with_threads(bench_doc(BASE), 2), _with_threads(bench_doc(BASE), 1)) == 2
    assert "thread" in capsys.readouterr().err
    assert run(tmp_path, _with_threads(bench_doc(BASE), 1), _with_threads(bench_doc(BASE), 1)) == 0


def test_torch_slowdown_or_absence_is_informational(tmp_path, capsys):
    """Only our backends gate: torch getting slower, or not being installed, never fails."""
    slower_torch = scaled(lambda c, m, b: 3.0 if b == "torch" else 1.0)
    assert run(tmp_path, bench_doc(slower_torch)) == 0
    out = capsys.readouterr().out
    assert "| slower |" in out and "SLOWER" not in out
    no_torch = {k: t for k, t in BASE.items() if k[2] != "torch"}
    assert run(tmp_path, bench_doc(no_torch)) == 0
    assert "| missing |" in capsys.readouterr().out
    no_cpu_case = {k: t for k, t in BASE.items() if not (k[2] == "cpu" and k[1] == "infer")}
    assert run(tmp_path, bench_doc(no_cpu_case)) == 1  # our own entry missing still fails
