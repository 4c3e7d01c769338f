#!/usr/bin/env python3
"""Compare a benchmark run against the committed baseline; fail on a speed regression.

    python ci/compare.py NEW.json [NEW2.json ...] --baseline ci/baseline.json
                         [--tolerance 0.35] [--summary FILE] [--history DIR] [--update]

What is compared: for every (case, mode, backend) other than the reference, the *speedup over
the NumPy reference measured in the same run* (reference median / backend median). A ratio of
two timings taken minutes apart on the same machine cancels the machine's speed, so a slower or
faster CI runner does not move it; a change to one backend does.

Exit status:
  0  every baseline entry is present and none fell by more than the tolerance (relative:
     now < baseline * (1 - tolerance)); improvements and new entries pass
  1  a regression, or a baseline entry missing from NEW.json
  2  a missing or malformed input file, or bad options

Several NEW files (runs of the same code) are combined: per entry, the fastest of their medians,
for the reference and each backend separately. Use it to build a baseline from several runs
(``--update`` with 3 runs) and to confirm a failure with a second run before failing CI (see
bench/NOTES.md). The thread count the runs were measured with must match the baseline's.

Inputs: NEW.json is pytest-benchmark JSON (ci/bench.sh) or the JSON of
``python -m fastlstm bench --json``. The baseline is a summary written by ``--update`` (or
either of those formats). ``--update`` rewrites the baseline from NEW.json and exits 0.
``--history DIR`` also writes NEW.json's summary to DIR/<date>_<commit>.json (one per commit;
ci/plot_history.py draws them). ``--summary FILE`` writes the markdown table to FILE (e.g.
``$GITHUB_STEP_SUMMARY``). Standard library only.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import re
import sys
from pathlib import Path

SUMMARY_FORMAT = "fastlstm-bench-summary/1"
REFERENCE = "reference"
#: Only our own backends can regress through a change to this code; other backends (torch,
#: onnxruntime) are reported for information and never fail the gate (nor does their absence).
GATED_PREFIXES = ("cpu", "cuda")


def gated(backend: str) -> bool:
    return backend.startswith(GATED_PREFIXES)


class InputError(Exception):
    """A missing or malformed input: message, exit code 2."""


# ---------------------------------------------------------------------------- loading
def load_json(path, what: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} {str(p)!r} does not exist (or is not a file)")
    try:
        doc = json.loads(p.read_text())
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {str(p)!r} is not text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {str(p)!r} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{what} {str(p)!r}: expected a JSON object at the top level, "
                         f"got {type(doc).__name__}")
    return doc


def key_of(case, mode, backend) -> str:
    return f"{case}|{mode}|{backend}"


def split_key(key: str) -> tuple[str, str, str]:
    parts = key.split("|")
    if len(parts) != 3:
        raise InputError(f"bad entry name {key!r}: expected 'case|mode|backend'")
    return parts[0], parts[1], parts[2]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _medians_pytest_benchmark(doc: dict, what: str) -> tuple[dict, float | None]:
    benches = doc["benchmarks"]
    if not isinstance(benches, list):
        raise InputError(f"{what}: 'benchmarks' must be a list")
    medians, sgemm, threads = {}, None, set()
    for i, b in enumerate(benches):
        if not isinstance(b, dict):
            raise InputError(f"{what}: benchmarks[{i}] is not an object")
        info = b.get("extra_info") or {}
        stats = b.get("stats") or {}
        med = stats.get("median") if isinstance(stats, dict) else None
        name = b.get("fullname") or b.get("name") or f"benchmarks[{i}]"
        if info.get("mode") == "sgemm":
            if _positive(med) and _positive(info.get("gflops")):
                sgemm = info["gflops"] / med
            continue
        if not all(isinstance(info.get(k), str) for k in ("case", "mode", "backend")):
            raise InputError(f"{what}: {name} has no extra_info case/mode/backend "
                             f"(not written by fastlstm's bench suite?)")
        if not _positive(med):
            raise InputError(f"{what}: {name} has no positive stats.median "
                             f"(was the run made with --benchmark-disable?)")
        medians[key_of(info["case"], info["mode"], info["backend"])] = float(med)
        if isinstance(info.get("threads"), int):
            threads.add(info["threads"])
    if len(threads) > 1:
        raise InputError(f"{what}: benchmarks measured with different thread counts {sorted(threads)}")
    return medians, sgemm, (threads.pop() if threads else None)


def _medians_cli(doc: dict, what: str) -> tuple[dict, float | None]:
    results = doc["results"]
    if not isinstance(results, list):
        raise InputError(f"{what}: 'results' must be a list")
    medians = {}
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("case", "mode", "backend")):
            raise InputError(f"{what}: results[{i}] has no case/mode/backend")
        if r.get("status") == "PASS" and _positive(r.get("median_s")):
            medians[key_of(r["case"], r["mode"], r["backend"])] = float(r["median_s"])
    machine = doc.get("machine") or {}
    sgemm = machine.get("sgemm_gflop_per_s")
    threads = machine.get("threads")
    return medians, (sgemm if _positive(sgemm) else None), (threads if isinstance(threads, int) else None)


def speedups_from_medians(medians: dict) -> dict:
    """Speedup over the reference of the same case and mode, for every non-reference entry."""
    out = {}
    for key, med in medians.items():
        case, mode, backend = split_key(key)
        if backend == REFERENCE:
            continue
        ref = medians.get(key_of(case, mode, REFERENCE))
        if ref:
            out[key] = ref / med
    return out


def summarize(doc: dict, what: str) -> dict:
    """A run (pytest-benchmark JSON, CLI JSON or an existing summary) as a summary dict."""
    if doc.get("format") == SUMMARY_FORMAT:
        sp = doc.get("speedups")
        if not isinstance(sp, dict) or not all(_positive(v) for v in sp.values()):
            raise InputError(f"{what}: 'speedups' must map 'case|mode|backend' to positive numbers")
        for k in sp:
            split_key(k)
        return doc
    if "benchmarks" in doc:
        medians, sgemm, threads = _medians_pytest_benchmark(doc, what)
        ci = doc.get("commit_info") or {}
        mi = doc.get("machine_info") or {}
        cpu = (mi.get("cpu") or {}) if isinstance(mi, dict) else {}
        meta = dict(commit=ci.get("id"), branch=ci.get("branch"), commit_time=ci.get("time"),
                    dirty=ci.get("dirty"), created=doc.get("datetime"),
                    machine=dict(cpu=cpu.get("brand_raw"), cores=cpu.get("count"),
                                 node=mi.get("node") if isinstance(mi, dict) else None))
    elif "results" in doc:
        medians, sgemm, threads = _medians_cli(doc, what)
        m = doc.get("machine") or {}
        meta = dict(commit=None, branch=None, commit_time=None, dirty=None,
                    created=doc.get("created"),
                    machine=dict(cpu=m.get("cpu"), cores=m.get("logical_cpus"), node=None))
    else:
        raise InputError(f"{what}: not a benchmark result (no 'benchmarks' list of pytest-benchmark "
                         f"JSON, no 'results' of `python -m fastlstm bench --json`, and not a "
                         f"{SUMMARY_FORMAT} summary)")
    if not medians:
        raise InputError(f"{what}: contains no benchmark timings")
    meta["machine"]["sgemm_gflop_per_s"] = sgemm
    return dict(format=SUMMARY_FORMAT, **meta, threads=threads,
                speedups=dict(sorted(speedups_from_medians(medians).items())),
                medians_s=dict(sorted(medians.items())))


def combine(runs: list[dict]) -> dict:
    """Several runs of the same code as one: per entry, the fastest of the runs' medians (for the
    reference and each backend separately), then the speedups. Noise on a shared machine only
    ever adds time, so the fastest median is the least disturbed estimate of each."""
    if len(runs) == 1:
        return runs[0]
    threads = {r.get("threads") for r in runs}
    if len(threads) > 1:
        raise InputError(f"the runs were measured with different thread counts {sorted(map(str, threads))}")
    if not all(r.get("medians_s") for r in runs):
        raise InputError("combining runs needs their timings (medians_s); summaries without them "
                         "cannot be combined")
    medians: dict = {}
    for r in runs:
        for k, v in r["medians_s"].items():
            medians[k] = min(v, medians.get(k, v))
    sg = [(r.get("machine") or {}).get("sgemm_gflop_per_s") for r in runs]
    sg = [v for v in sg if v]
    last = runs[-1]
    out = dict(last, combined_runs=len(runs), machine=dict(last.get("machine") or {},
               sgemm_gflop_per_s=max(sg) if sg else None))
    out["speedups"] = dict(sorted(speedups_from_medians(medians).items()))
    out["medians_s"] = dict(sorted(medians.items()))
    return out


# ---------------------------------------------------------------------------- comparing
def compare(baseline: dict, new: dict, tolerance: float) -> list[dict]:
    """One row per baseline or new entry: case, mode, backend, baseline, now, change, status.

    status: ok | faster | SLOWER (beyond tolerance: fails) | MISSING (fails) | new;
    for backends that are not ours (torch, onnxruntime): slower / missing (informational,
    never fail)
    """
    base_sp, new_sp = baseline["speedups"], new["speedups"]
    rows = []
    for key in list(base_sp) + [k for k in new_sp if k not in base_sp]:
        case, mode, backend = split_key(key)
        b, n = base_sp.get(key), new_sp.get(key)
        row = dict(case=case, mode=mode, backend=backend, baseline=b, now=n, change=None)
        if b is None:
            row["status"] = "new"
        elif n is None:
            row["status"] = "MISSING" if gated(backend) else "missing"
        else:
            row["change"] = n / b - 1.0
            if n < b * (1.0 - tolerance):
                row["status"] = "SLOWER" if gated(backend) else "slower"
            elif n > b * (1.0 + tolerance):
                row["status"] = "faster"
            else:
                row["status"] = "ok"
        rows.append(row)
    return rows


def failed(rows) -> list[dict]:
    return [r for r in rows if r["status"] in ("SLOWER", "MISSING")]


def markdown(rows, tolerance: float, baseline: dict, new: dict) -> str:
    bad = failed(rows)
    verdict = "FAIL" if bad else "PASS"
    n_cmp = sum(r["change"] is not None for r in rows)
    lines = [f"### Benchmark vs baseline: {verdict}", "",
             f"Speedup over the NumPy reference measured in the same run; an entry fails when it "
             f"falls more than {tolerance:.0%} below the baseline. {n_cmp} compared, "
             f"{sum(r['status'] == 'SLOWER' for r in rows)} slower, "
             f"{sum(r['status'] == 'MISSING' for r in rows)} missing, "
             f"{sum(r['status'] == 'faster' for r in rows)} faster, "
             f"{sum(r['status'] == 'new' for r in rows)} new.", ""]
    sg_b = (baseline.get("machine") or {}).get("sgemm_gflop_per_s")
    sg_n = (new.get("machine") or {}).get("sgemm_gflop_per_s")
    if sg_b or sg_n:
        f = lambda v: f"{v:.1f}" if v else "-"  # noqa: E731
        lines += [f"Machine BLAS sgemm: {f(sg_n)} GFLOP/s now, {f(sg_b)} in the baseline "
                  f"(informational).", ""]
    lines += ["| case | mode | backend | baseline | now | change | status |",
              "|---|---|---|---:|---:|---:|---|"]
    x = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
    for r in rows:
        ch = "-" if r["change"] is None else f"{r['change']:+.1%}"
        st = f"**{r['status']}**" if r in bad else r["status"]
        lines.append(f"| {r['case']} | {r['mode']} | {r['backend']} | {x(r['baseline'])} | "
                     f"{x(r['now'])} | {ch} | {st} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- history
def history_name(summary: dict) -> str:
    when = summary.get("commit_time") or summary.get("created") or \
        _dt.datetime.now(_dt.timezone.utc).isoformat()
    stamp = re.sub(r"[^0-9T]", "", str(when).replace(" ", "T"))[:15] or "unknown"
    commit = re.sub(r"[^0-9a-zA-Z]", "", str(summary.get("commit") or "nocommit"))[:12]
    return f"{stamp}_{commit}.json"


def write_history(summary: dict, directory) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    name = history_name(summary)
    commit = name.split("_", 1)[1]
    if commit != "nocommit.json":
        for old in d.glob(f"*_{commit}"):  # one file per commit: the latest run replaces it
            old.unlink()
    path = d / name
    path.write_text(json.dumps(summary, indent=1, sort_keys=False) + "\n")
    return path


# ---------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ci/compare.py",
        description="Compare the speedups over the reference in NEW.json with the baseline; "
                    "exit 1 on a regression beyond the tolerance or a missing entry, 2 on a "
                    "missing/malformed file.")
    p.add_argument("new", metavar="NEW.json", nargs="+",
                   help="pytest-benchmark JSON from ci/bench.sh (or `python -m fastlstm bench "
                        "--json`); several runs are combined: per entry, the fastest median")
    p.add_argument("--baseline", default="ci/baseline.json", help="default ci/baseline.json")
    p.add_argument("--tolerance", type=float, default=0.35,
                   help="relative fall of a speedup that fails (default 0.35 = 35%%, chosen from "
                        "the run-to-run spread on a shared 2-core machine: bench/NOTES.md)")
    p.add_argument("--summary", metavar="FILE", help="also write the markdown table to FILE")
    p.add_argument("--history", metavar="DIR", help="also write NEW.json's summary into DIR")
    p.add_argument("--update", action="store_true",
                   help="rewrite the baseline from NEW.json (after printing the comparison); exit 0")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not (0.0 <= args.tolerance < 1.0):
            raise InputError(f"--tolerance must be in [0, 1), got {args.tolerance}")
        runs = [summarize(load_json(f, "benchmark results"), f"benchmark results {f!r}")
                for f in args.new]
        new = combine(runs)
        if args.update and not Path(args.baseline).exists():
            baseline = dict(new, speedups={})
        else:
            baseline = summarize(load_json(args.baseline, "baseline"), f"baseline {args.baseline!r}")
        tb, tn = baseline.get("threads"), new.get("threads")
        if not args.update and tb is not None and tn is not None and tb != tn:
            raise InputError(f"the baseline was measured with {tb} thread(s) and the new results "
                             f"with {tn}: speedups are not comparable (run ci/bench.sh with "
                             f"BENCH_THREADS={tb}, or regenerate the baseline)")
    except InputError as exc:
        print(f"compare.py: error: {exc}", file=sys.stderr)
        return 2
    rows = compare(baseline, new, args.tolerance)
    md = markdown(rows, args.tolerance, baseline, new)
    print(md)
    if args.summary:
        Path(args.summary).write_text(md)
    if args.history:
        print(f"history: wrote {write_history(new, args.history)}")
    if args.update:
        Path(args.baseline).write_text(json.dumps(new, indent=1) + "\n")
        print(f"baseline: wrote {args.baseline} ({len(new['speedups'])} entries)")
        return 0
    bad = failed(rows)
    for r in bad:
        what = "missing from the new results" if r["status"] == "MISSING" else \
            f"speedup {r['baseline']:.2f}x -> {r['now']:.2f}x ({r['change']:+.1%})"
        print(f"REGRESSION {r['case']} {r['mode']} {r['backend']}: {what}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
