"""The default job of ``python -m fastlstm``: one forward+backward (and one inference forward)
on a default configuration on every available backend, errors against the NumPy reference
with PASS/FAIL, median times and speedups."""
from __future__ import annotations

import argparse
import sys
import time

from .. import __version__, harness
from ..testing import tolerance
from .common import (EXIT_MISMATCH, EXIT_OK, Measured, add_timing_options, parse_size,
                     resolve_backends, setup_torch)
from .format import (fmt_err, fmt_time, fmt_x, load_warning, speedup_legend, spread_warnings,
                     table)

DEFAULT_SIZE = (100, 8, 64, 128)

DESCRIPTION = ("Check every fastlstm backend against the NumPy reference and time it. "
               "Without a command: one forward+backward on a default configuration "
               f"(T,B,I,H = {','.join(map(str, DEFAULT_SIZE))}, float32) on every available "
               "backend (reference, cpu, cuda with a GPU, torch when installed), printing "
               "errors with PASS/FAIL, median times and speedups.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=parse_size, metavar="T,B,I,H",
                   help="configuration of the default job")
    p.add_argument("--layers", type=int, default=1, help="layers of the default job (default 1)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default float32")
    add_timing_options(p, 0.5)


def main(args) -> int:
    dtype = args.dtype or "float32"
    case = harness.Case.from_size(*(args.size or DEFAULT_SIZE), num_layers=args.layers,
                                  dtype=dtype)
    backends = resolve_backends(args.backends, need_reference=True)
    load = harness.machine_load()  # before our own threads add to it
    tthreads = setup_torch(backends)
    print(f"fastlstm {__version__}: forward+backward of an LSTM, {case.describe()}")
    print(f"backends: {', '.join(backends)} (errors and speedups vs the NumPy reference)")
    t_start = time.perf_counter()
    inputs = case.make_inputs(seed=0)
    ref = harness.reference_outputs(case, inputs)
    checks = Measured(case, "fwd_bwd", backends, inputs, ref, tthreads)
    fwd_bwd = checks.time(rounds=args.repeat, budget=args.budget)
    infer = Measured(case, "infer", [b for b in backends if checks.rows[b]["status"] != "FAIL"],
                     inputs, ref, tthreads).time(rounds=args.repeat, budget=args.budget)
    rows, failed = [], False
    for be in backends:
        fr = fwd_bwd[be]
        ir = infer.get(be, {})
        if fr["status"] == "FAIL" or ir.get("status") == "FAIL":
            failed = True
        both = (fr["status"], ir.get("status"))
        status = "FAIL" if "FAIL" in both else ("PASS" if "PASS" in both else "n/a")
        rows.append([be, fmt_time(fr["first_call_s"]), fmt_err(fr["fwd_err"]),
                     fmt_err(fr["grad_err"]), status,
                     fmt_time(ir.get("median_s")), fmt_x(ir.get("speedup_vs_reference")),
                     fmt_time(fr.get("median_s")), fmt_x(fr.get("speedup_vs_reference"))])
    print()
    print(table(["backend", "first call", "fwd err", "grad err", "check", "infer", "vs ref",
                 "fwd+bwd", "vs ref"], rows))
    print()
    print(f"errors: max relative norm error of y/h/c (fwd) and of dx/dh0/dc0/every weight gradient "
          f"(grad); tolerance {tolerance(case.np_dtype, 'forward'):.0e} / "
          f"{tolerance(case.np_dtype, 'grad'):.0e} ({dtype}, fastlstm.testing)")
    print("times: medians of per-backend blocks of calls (A B C, then C B A); first call includes "
          "compilation or cache loading")
    print(speedup_legend())
    timed = [r for res in (infer, fwd_bwd) for r in res.values()]
    warnings = spread_warnings(timed, label=lambda r: f"{r['backend']} {r['mode']}")
    for w in [load_warning(*load), *warnings]:
        if w:
            print(w)
    for be in backends:
        for r in (fwd_bwd[be], infer.get(be, {})):
            if r.get("status") == "FAIL":
                print(f"FAIL {be} {r['mode']}: {r['error']}", file=sys.stderr)
    print(f"done in {time.perf_counter() - t_start:.1f} s")
    return EXIT_MISMATCH if failed else EXIT_OK
