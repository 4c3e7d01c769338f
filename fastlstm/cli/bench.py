"""``python -m fastlstm bench``: time a grid of cases in every mode on every backend, each
result checked against the reference first; a table (min / median time, spread, GFLOP/s,
speedups), warnings for unsteady timings, optional JSON and plot."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .. import __version__, harness
from .common import (EXIT_MISMATCH, EXIT_OK, Measured, UsageError, add_timing_options,
                     parse_size, resolve_backends, resolve_modes, setup_peers)
from .format import (PEER_NAMES, SPREAD_LEGEND, Progress, fmt_spread, fmt_time, fmt_x, load_warning,
                     speedup_legend, spread_warnings, table, unreliable_summary)
from .info import cpu_name

JSON_FORMAT = "fastlstm-bench/1"


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="time a grid of cases on every backend",
                       description="Time a grid of cases (the quick preset of the registry in "
                                   "fastlstm.harness, --full for all of it, or --size) in the "
                                   "modes infer, train_fwd and fwd_bwd on every available "
                                   "backend (torch and ONNX Runtime, the peers, when installed; "
                                   "ONNX Runtime in infer only). Each result is checked against the reference "
                                   "before it is timed; backends are timed in blocks of calls "
                                   "(A B C, then C B A). Prints the fastest and median time, "
                                   "the spread of the rounds (warning when it exceeds "
                                   f"{harness.UNRELIABLE_SPREAD:.0f}x), GFLOP/s (useful FLOPs, "
                                   "see fastlstm.harness) and speedups.")
    b.add_argument("--full", action="store_true", help="the whole registry (default: quick preset)")
    b.add_argument("--list", action="store_true", help="list the registry's cases and exit")
    b.add_argument("--case", action="append", metavar="NAME",
                   help="a registry case by name or substring (repeatable)")
    b.add_argument("--size", type=parse_size, action="append", metavar="T,B,I,H",
                   help="an ad-hoc case (repeatable); with --layers, --bidirectional, --proj, "
                        "--lengths, --dtype")
    b.add_argument("--layers", type=int, default=1, help="layers of --size cases")
    b.add_argument("--bidirectional", action="store_true", help="--size cases are bidirectional")
    b.add_argument("--proj", type=int, default=0, metavar="P", help="proj_size of --size cases")
    b.add_argument("--lengths", action="store_true", help="--size cases have variable lengths")
    b.add_argument("--dtype", choices=["float32", "float64"],
                   help="dtype of --size cases (default float32); filters registry cases")
    b.add_argument("--modes", metavar="LIST",
                   help="comma-separated subset of infer,train_fwd,fwd_bwd")
    add_timing_options(b, 0.3)
    b.add_argument("--json", metavar="PATH", help="write the results as JSON")
    b.add_argument("--plot", metavar="PATH.png",
                   help="draw speedup vs hidden size per backend (needs matplotlib)")
    b.add_argument("--no-sgemm", action="store_true", help="skip the BLAS sgemm measurement")
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def select_cases(args) -> list:
    if args.size:
        kw = dict(num_layers=args.layers, bidirectional=args.bidirectional, proj_size=args.proj,
                  lengths=args.lengths, dtype=args.dtype or "float32")
        return [harness.Case.from_size(*s, **kw) for s in args.size]
    if args.case:
        cases = []
        for name in args.case:
            hits = ([c for c in harness.CASES if c.name == name]
                    or [c for c in harness.CASES if name in c.name])
            if not hits:
                raise UsageError(f"no registry case matches {name!r} (see --list)")
            cases.extend(h for h in hits if h not in cases)
    else:
        cases = list(harness.CASES if args.full else harness.QUICK)
    if args.dtype:
        cases = [c for c in cases if c.dtype == args.dtype]
    return cases


def _check_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed: pip install matplotlib "
                         "(or pip install 'fastlstm[bench]')") from None


def plot_speedups(results: list[dict], path: str) -> None:
    """Speedup over the reference vs hidden size, one line per backend, one panel per mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    modes = [m for m in harness.MODES if any(r["mode"] == m for r in results)]
    backends = [b for b in harness.BACKENDS
                if b != "reference" and any(r["backend"] == b for r in results)]
    n = max(len(modes), 1)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for be in backends:
            pts = [(r["H"], r["speedup_vs_reference"]) for r in results
                   if r["mode"] == mode and r["backend"] == be and r.get("speedup_vs_reference")]
            if not pts:
                continue
            line = ax.plot(*zip(*pts), "o", alpha=0.5, ms=4)[0]  # every case
            hs = sorted({h for h, _ in pts})  # the line: median over the cases of each H
            meds = [float(np.median([s for h2, s in pts if h2 == h])) for h in hs]
            ax.plot(hs, meds, "-", color=line.get_color(), label=be)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("hidden size H")
        ax.set_ylabel("speedup vs NumPy reference")
        ax.set_title(mode)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"fastlstm {__version__} speedups ({platform.machine()}, "
                 f"{harness.default_torch_threads()} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def jsonable(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            v = None
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def result_table(results: list[dict]) -> str:
    """One row per (case, mode, backend); a "vs" column for the reference and for each peer
    (torch, ONNX Runtime) that is among the results' backends."""
    peers = [p for p in harness.PEERS if any(r["backend"] == p for r in results)]
    rows = []
    for r in results:
        ok = r["status"] == "PASS"
        rows.append([r["case"], r["mode"], r["backend"],
                     fmt_time(r.get("min_s")) if ok else r["status"],
                     fmt_time(r.get("median_s")) if ok else "-",
                     fmt_spread(r.get("spread")) if ok else "-",
                     f"{r['gflop_per_s']:.2f}" if r.get("gflop_per_s") else "-",
                     fmt_x(r.get("speedup_vs_reference")),
                     *(fmt_x(r.get(f"speedup_vs_{p}")) for p in peers)])
    headers = ["case", "mode", "backend", "min", "median", "max/min", "GFLOP/s", "vs ref",
               *(f"vs {harness.PEERS[p]}" for p in peers)]
    return table(headers, rows, right=set(range(3, len(headers))))


def main(args) -> int:
    if args.list:
        rows = [[c.name, c.describe(), "yes" if c.quick else "",
                 f"{c.gflop('fwd_bwd'):.3g}"] for c in harness.CASES]
        print(table(["case", "configuration", "quick", "GFLOP fwd_bwd"], rows, right={3}))
        return EXIT_OK
    if args.plot:
        _check_matplotlib()
    cases = select_cases(args)
    if not cases:
        raise UsageError("no case selected")
    modes = resolve_modes(args.modes)
    backends = resolve_backends(args.backends, need_reference=True)
    load = harness.machine_load()  # before our own threads add to it
    tthreads = setup_peers(backends)
    sgemm = None if args.no_sgemm else harness.measure_sgemm()
    print(f"fastlstm {__version__} bench: {len(cases)} case(s) x {len(modes)} mode(s) on "
          f"{', '.join(backends)}; {harness.default_torch_threads()} threads"
          + (f" (Numba's; {' and '.join(PEER_NAMES[b] for b in harness.PEERS if b in backends)}"
             f" the same)" if tthreads else "")
          + (f"; BLAS sgemm {sgemm:.1f} GFLOP/s" if sgemm else ""))
    progress = Progress(len(cases) * len(modes), enabled=not args.quiet)
    results, failed = [], False
    t_start = time.perf_counter()
    for case in cases:
        inputs = case.make_inputs(seed=0)
        ref = harness.reference_outputs(case, inputs)
        for mode in modes:
            rows = Measured(case, mode, backends, inputs, ref, tthreads).time(
                rounds=args.repeat, budget=args.budget)
            for be in backends:
                row = rows[be]
                row.update(case.info(), gflops=case.gflop(mode))
                failed |= row["status"] == "FAIL"
                results.append(row)
            progress.step(f"{case.name} {mode}")
    progress.close()
    print(result_table(results))
    print()
    print(SPREAD_LEGEND)
    print(speedup_legend(peers=backends))
    na = sorted({(r["backend"], r["error"]) for r in results if r["status"] == "n/a"})
    for be, why in na:
        print(f"n/a {be}: {why}")
    warnings = spread_warnings(results, label=lambda r: f"{r['case']} {r['mode']} {r['backend']}")
    n_timed = sum(r.get("min_s") is not None for r in results)
    for w in [load_warning(*load), *warnings, unreliable_summary(len(warnings), n_timed)]:
        if w:
            print(w)
    for r in results:
        if r["status"] == "FAIL":
            print(f"FAIL {r['case']} {r['mode']} {r['backend']}: {r['error']}", file=sys.stderr)
    print(f"done in {time.perf_counter() - t_start:.1f} s")
    if args.json:
        doc = dict(format=JSON_FORMAT, fastlstm=__version__,
                   created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   machine=dict(cpu=cpu_name(), logical_cpus=os.cpu_count(),
                                threads=harness.default_torch_threads(), sgemm_gflop_per_s=sgemm,
                                load_average_1min=load[0]),
                   settings=dict(modes=modes, backends=backends, repeat=args.repeat,
                                 budget_s=args.budget),
                   results=[jsonable(r) for r in results])
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot_speedups(results, args.plot)
        print(f"wrote {args.plot}")
    return EXIT_MISMATCH if failed else EXIT_OK
