"""``python -m fastlstm check``: every backend against the NumPy reference, in every mode, on
the small configurations of :data:`fastlstm.harness.CHECK_CASES`; exit 1 on any mismatch."""
from __future__ import annotations

import sys

from .. import __version__, harness
from .common import EXIT_MISMATCH, EXIT_OK, resolve_backends, setup_torch
from .format import fmt_err, table


def add_parser(sub) -> None:
    c = sub.add_parser("check", help="every backend vs the reference on small configurations",
                       description="Run every available backend (cpu, cuda, torch) against the "
                                   "NumPy reference in every mode on small configurations "
                                   "(variable lengths, bidirectional, projection, several layers, "
                                   "float32 and float64); exit 1 on any mismatch.")
    c.add_argument("--backends", metavar="LIST", help="comma-separated subset of cpu,cuda,torch,onnxruntime")
    c.add_argument("--dtype", choices=["float32", "float64"], help="only this dtype")


def main(args) -> int:
    backends = [b for b in resolve_backends(args.backends) if b != "reference"]
    tthreads = setup_torch(backends)
    cases = [c for c in harness.CHECK_CASES if not args.dtype or c.dtype == args.dtype]
    print(f"fastlstm {__version__} check: {', '.join(backends)} vs the NumPy reference on "
          f"{len(cases)} configurations (modes {', '.join(harness.MODES)})")
    rows, failures = [], []
    for case in cases:
        inputs = case.make_inputs(seed=0)
        ref = harness.reference_outputs(case, inputs)
        for be in backends:
            modes = [m for m in harness.MODES if not harness.supports(be, case, m)]
            if not modes:
                rows.append([case.describe(), be, "-", "-", "n/a"])
                continue
            fwd, grad, bad = 0.0, None, []  # grad stays None for inference-only backends
            for mode in modes:
                try:
                    r = harness.make_runner(case, mode, be, inputs, torch_threads=tthreads)
                    cmp = harness.compare_outputs(r.outputs(r()), ref, case.np_dtype, mode)
                except Exception as exc:
                    bad.append(f"{mode}: {type(exc).__name__}: {exc}")
                    continue
                f, g = harness.max_errors(cmp)
                fwd = max(fwd, f)
                grad = max(grad or 0.0, g) if g == g else grad
                bad.extend(f"{mode} {k} ({e:.2e} > {t:.0e})" for k, e, t, ok in cmp if not ok)
            rows.append([case.describe(), be, fmt_err(fwd), "-" if grad is None else fmt_err(grad),
                         "FAIL" if bad else "PASS"])
            if bad:
                failures.append(f"{case.name} {be}: " + "; ".join(bad[:6]))
    print(table(["configuration", "backend", "fwd err", "grad err", "check"], rows, right={2, 3}))
    for f in failures:
        print("FAIL " + f, file=sys.stderr)
    n = sum(r[4] == "PASS" for r in rows)
    na = len(rows) - n - len(failures)
    print(f"{n} passed, {len(failures)} failed" + (f", {na} n/a" if na else ""))
    return EXIT_MISMATCH if failures else EXIT_OK
