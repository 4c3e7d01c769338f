"""``python -m fastlstm``: check every backend against the reference and time it.

    python -m fastlstm            forward+backward on a default configuration, every backend:
                                  errors vs the reference (PASS/FAIL), median times, speedups
    python -m fastlstm bench      a benchmark grid (quick preset; --full for the whole registry)
    python -m fastlstm info       versions, BLAS, Numba threading and cache, CPU, GPU
    python -m fastlstm check      every backend vs the reference on small configurations

Exit status: 0 success, 1 a result did not match the reference, 2 a usage error (or a missing
optional dependency such as matplotlib for --plot).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from . import bench as fb

DEFAULT_SIZE = (100, 8, 64, 128)


class UsageError(Exception):
    """A bad option or an unavailable backend: message and exit code 2."""


# ---------------------------------------------------------------------------- helpers
def _parse_size(text: str) -> tuple[int, int, int, int]:
    try:
        vals = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected T,B,I,H (four positive integers), got {text!r}")
    return vals  # type: ignore[return-value]


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def _resolve_backends(text: str | None, *, need_reference: bool = False) -> list[str]:
    avail = fb.available_backends()
    if not text:
        return avail
    wanted = _split(text)
    for b in wanted:
        if b not in fb.BACKENDS:
            raise UsageError(f"unknown backend {b!r}; expected some of {', '.join(fb.BACKENDS)}")
        if b not in avail:
            if b == "cuda":
                from .dispatch import cuda_unavailable_reason
                raise UsageError(f"backend 'cuda' is not available: {cuda_unavailable_reason()}")
            raise UsageError(f"backend {b!r} is not available (is it installed?)")
    if need_reference and "reference" not in wanted:
        wanted.insert(0, "reference")
    return list(dict.fromkeys(wanted))


def _resolve_modes(text: str | None) -> list[str]:
    modes = _split(text) or list(fb.MODES)
    for m in modes:
        if m not in fb.MODES:
            raise UsageError(f"unknown mode {m!r}; expected some of {', '.join(fb.MODES)}")
    return modes


def _fmt_err(e: float) -> str:
    if e != e:  # nan
        return "-"
    if e == float("inf"):
        return "inf"
    return "0" if e == 0 else f"{e:.1e}"


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _fmt_x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right if right is not None else set(range(1, len(headers)))
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


class Progress:
    """A one-line progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.enabled = total, 0, enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def step(self, label: str):
        self.done += 1
        if not self.enabled:
            return
        width = 24
        fill = int(width * self.done / max(self.total, 1))
        bar = "#" * fill + "." * (width - fill)
        msg = f"[{bar}] {self.done}/{self.total} {time.perf_counter() - self.t0:5.1f}s {label}"
        if self.tty:
            sys.stderr.write("\r" + msg[:120].ljust(120))
        else:
            sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    def close(self):
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _setup_torch(backends: list[str]) -> int | None:
    if "torch" not in backends:
        return None
    import torch
    n = fb.default_torch_threads()
    torch.set_num_threads(n)
    return n


class _Measured:
    """Check one (case, mode) on several backends, then time the ones that passed (blocks per
    backend, A B C then C B A: see fastlstm.bench.time_backends)."""

    def __init__(self, case, mode, backends, inputs, ref, torch_threads):
        self.case, self.mode = case, mode
        self.rows: dict[str, dict] = {}
        runners, estimates = {}, {}
        for be in backends:
            row = dict(case=case.name, mode=mode, backend=be, status="PASS", error=None,
                       fwd_err=float("nan"), grad_err=float("nan"), first_call_s=None)
            self.rows[be] = row
            reason = fb.supports(be, case)
            if reason:
                row.update(status="n/a", error=reason)
                continue
            try:
                runner = fb.make_runner(case, mode, be, inputs, torch_threads=torch_threads)
                t0 = time.perf_counter()
                ret = runner()
                row["first_call_s"] = time.perf_counter() - t0
                cmp = fb.compare_outputs(runner.outputs(ret), ref, case.np_dtype, mode)
                row["fwd_err"], row["grad_err"] = fb.max_errors(cmp)
                bad = [k for k, _, _, ok in cmp if not ok]
                if bad:
                    row.update(status="FAIL", error="mismatch in " + ", ".join(bad))
                    continue
                t0 = time.perf_counter()
                runner()
                estimates[be] = time.perf_counter() - t0
                runners[be] = runner
            except Exception as exc:  # a backend that raises is a failure, reported, not a crash
                row.update(status="FAIL", error=f"{type(exc).__name__}: {exc}")
        self.runners, self.estimates = runners, estimates

    def time(self, rounds=None, budget=0.5, min_rounds=3, max_rounds=100):
        times = fb.time_backends(self.runners, rounds=rounds, budget=budget,
                                    min_rounds=min_rounds, max_rounds=max_rounds,
                                    estimate=self.estimates)
        gflop = self.case.gflop(self.mode)
        for be, ts in times.items():
            med = fb.median(ts)
            self.rows[be].update(median_s=med, min_s=min(ts), rounds=len(ts),
                                 gflop_per_s=gflop / med if med > 0 else None)
        ref = self.rows.get("reference", {}).get("median_s")
        torch_med = self.rows.get("torch", {}).get("median_s")
        for row in self.rows.values():
            med = row.get("median_s")
            row["speedup_vs_reference"] = ref / med if (ref and med) else None
            row["speedup_vs_torch"] = torch_med / med if (torch_med and med) else None
        return self.rows


# ---------------------------------------------------------------------------- default job
def cmd_default(args) -> int:
    dtype = args.dtype or "float32"
    case = fb.Case.from_size(*(args.size or DEFAULT_SIZE), num_layers=args.layers, dtype=dtype)
    backends = _resolve_backends(args.backends, need_reference=True)
    tthreads = _setup_torch(backends)
    print(f"fastlstm {__version__}: forward+backward of an LSTM, {case.describe()}")
    print(f"backends: {', '.join(backends)} (errors and speedups vs the NumPy reference)")
    t_start = time.perf_counter()
    inputs = case.make_inputs(seed=0)
    ref = fb.reference_outputs(case, inputs)
    checks = _Measured(case, "fwd_bwd", backends, inputs, ref, tthreads)
    fwd_bwd = checks.time(rounds=args.repeat, budget=args.budget)
    infer = _Measured(case, "infer", [b for b in backends if checks.rows[b]["status"] == "PASS"],
                      inputs, ref, tthreads).time(rounds=args.repeat, budget=args.budget)
    rows, failed = [], False
    for be in backends:
        fr = fwd_bwd[be]
        ir = infer.get(be, {})
        if fr["status"] == "FAIL" or ir.get("status") == "FAIL":
            failed = True
        status = ir.get("status") if ir.get("status") == "FAIL" else fr["status"]
        rows.append([be, _fmt_time(fr["first_call_s"]), _fmt_err(fr["fwd_err"]),
                     _fmt_err(fr["grad_err"]), status,
                     _fmt_time(ir.get("median_s")), _fmt_x(ir.get("speedup_vs_reference")),
                     _fmt_time(fr.get("median_s")), _fmt_x(fr.get("speedup_vs_reference"))])
    print()
    print(_table(["backend", "first call", "fwd err", "grad err", "check", "infer", "vs ref",
                  "fwd+bwd", "vs ref"], rows))
    print()
    from .testing import tolerance
    print(f"errors: max relative norm error of y/h/c (fwd) and of dx/dh0/dc0/every weight gradient "
          f"(grad); tolerance {tolerance(case.np_dtype, 'forward'):.0e} / "
          f"{tolerance(case.np_dtype, 'grad'):.0e} ({dtype}, fastlstm.testing)")
    print("times: medians of per-backend blocks of calls (A B C, then C B A); first call includes "
          "compilation or cache loading")
    for be in backends:
        for r in (fwd_bwd[be], infer.get(be, {})):
            if r.get("status") == "FAIL":
                print(f"FAIL {be} {r['mode']}: {r['error']}", file=sys.stderr)
    print(f"done in {time.perf_counter() - t_start:.1f} s")
    return 1 if failed else 0


# ---------------------------------------------------------------------------- bench
def _bench_cases(args) -> list:
    if args.size:
        kw = dict(num_layers=args.layers, bidirectional=args.bidirectional, proj_size=args.proj,
                  lengths=args.lengths, dtype=args.dtype or "float32")
        return [fb.Case.from_size(*s, **kw) for s in args.size]
    if args.case:
        cases = []
        for name in args.case:
            hits = [c for c in fb.CASES if c.name == name] or [c for c in fb.CASES if name in c.name]
            if not hits:
                raise UsageError(f"no registry case matches {name!r} (see --list)")
            cases.extend(h for h in hits if h not in cases)
    else:
        cases = list(fb.CASES if args.full else fb.QUICK)
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
    modes = [m for m in fb.MODES if any(r["mode"] == m for r in results)]
    backends = [b for b in fb.BACKENDS if b != "reference" and any(r["backend"] == b for r in results)]
    fig, axes = plt.subplots(1, max(len(modes), 1), figsize=(5 * max(len(modes), 1), 4), squeeze=False)
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
                 f"{fb.default_torch_threads()} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_bench(args) -> int:
    if args.list:
        rows = [[c.name, c.describe(), "yes" if c.quick else "",
                 f"{c.gflop('fwd_bwd'):.3g}"] for c in fb.CASES]
        print(_table(["case", "configuration", "quick", "GFLOP fwd_bwd"], rows, right={3}))
        return 0
    if args.plot:
        _check_matplotlib()
    cases = _bench_cases(args)
    if not cases:
        raise UsageError("no case selected")
    modes = _resolve_modes(args.modes)
    backends = _resolve_backends(args.backends, need_reference=True)
    tthreads = _setup_torch(backends)
    sgemm = None if args.no_sgemm else fb.measure_sgemm()
    print(f"fastlstm {__version__} bench: {len(cases)} case(s) x {len(modes)} mode(s) on "
          f"{', '.join(backends)}; {fb.default_torch_threads()} threads"
          + (f"; BLAS sgemm {sgemm:.1f} GFLOP/s" if sgemm else ""))
    progress = Progress(len(cases) * len(modes), enabled=not args.quiet)
    results, failed = [], False
    t_start = time.perf_counter()
    for case in cases:
        inputs = case.make_inputs(seed=0)
        ref = fb.reference_outputs(case, inputs)
        for mode in modes:
            m = _Measured(case, mode, backends, inputs, ref, tthreads)
            rows = m.time(rounds=args.repeat, budget=args.budget)
            for be in backends:
                row = rows[be]
                row.update(case.info(), gflops=case.gflop(mode))
                failed |= row["status"] == "FAIL"
                results.append(row)
            progress.step(f"{case.name} {mode}")
    progress.close()
    table = []
    for r in results:
        table.append([r["case"], r["mode"], r["backend"],
                      _fmt_time(r.get("median_s")) if r["status"] == "PASS" else r["status"],
                      f"{r['gflop_per_s']:.2f}" if r.get("gflop_per_s") else "-",
                      _fmt_x(r.get("speedup_vs_reference")), _fmt_x(r.get("speedup_vs_torch"))])
    print(_table(["case", "mode", "backend", "median", "GFLOP/s", "vs ref", "vs torch"], table,
                 right={3, 4, 5, 6}))
    for r in results:
        if r["status"] == "FAIL":
            print(f"FAIL {r['case']} {r['mode']} {r['backend']}: {r['error']}", file=sys.stderr)
    print(f"done in {time.perf_counter() - t_start:.1f} s")
    if args.json:
        doc = dict(format="fastlstm-bench/1", fastlstm=__version__,
                   created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   machine=dict(cpu=_cpu_name(), logical_cpus=os.cpu_count(),
                                threads=fb.default_torch_threads(), sgemm_gflop_per_s=sgemm),
                   settings=dict(modes=modes, backends=backends, repeat=args.repeat,
                                 budget_s=args.budget),
                   results=[_jsonable(r) for r in results])
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot_speedups(results, args.plot)
        print(f"wrote {args.plot}")
    return 1 if failed else 0


def _jsonable(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            v = None
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


# ---------------------------------------------------------------------------- check
def cmd_check(args) -> int:
    backends = [b for b in _resolve_backends(args.backends) if b != "reference"]
    tthreads = _setup_torch(backends)
    cases = [c for c in fb.CHECK_CASES if not args.dtype or c.dtype == args.dtype]
    print(f"fastlstm {__version__} check: {', '.join(backends)} vs the NumPy reference on "
          f"{len(cases)} configurations (modes {', '.join(fb.MODES)})")
    rows, failures = [], []
    for case in cases:
        inputs = case.make_inputs(seed=0)
        ref = fb.reference_outputs(case, inputs)
        for be in backends:
            reason = fb.supports(be, case)
            if reason:
                rows.append([case.describe(), be, "-", "-", "n/a"])
                continue
            fwd, grad, bad = 0.0, 0.0, []
            for mode in fb.MODES:
                try:
                    r = fb.make_runner(case, mode, be, inputs, torch_threads=tthreads)
                    cmp = fb.compare_outputs(r.outputs(r()), ref, case.np_dtype, mode)
                except Exception as exc:
                    bad.append(f"{mode}: {type(exc).__name__}: {exc}")
                    continue
                f, g = fb.max_errors(cmp)
                fwd = max(fwd, f)
                grad = max(grad, g) if g == g else grad
                bad.extend(f"{mode} {k} ({e:.2e} > {t:.0e})" for k, e, t, ok in cmp if not ok)
            status = "FAIL" if bad else "PASS"
            rows.append([case.describe(), be, _fmt_err(fwd), _fmt_err(grad), status])
            if bad:
                failures.append(f"{case.name} {be}: " + "; ".join(bad[:6]))
    print(_table(["configuration", "backend", "fwd err", "grad err", "check"], rows, right={2, 3}))
    for f in failures:
        print("FAIL " + f, file=sys.stderr)
    n = sum(r[4] == "PASS" for r in rows)
    print(f"{n} passed, {len(failures)} failed" + (f", {len(rows) - n - len(failures)} n/a"
                                                  if len(rows) - n - len(failures) else ""))
    return 1 if failures else 0


# ---------------------------------------------------------------------------- info
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                        if f in flags]
    except OSError:
        pass
    return []


def _dist_version(name: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _blas_info() -> list[str]:
    lines = []
    try:
        cfg = np.show_config(mode="dicts")
        deps = cfg.get("Build Dependencies", {})
        for key in ("blas", "lapack"):
            d = deps.get(key, {})
            if d:
                extra = d.get("openblas configuration") or ""
                lines.append(f"numpy {key}: {d.get('name')} {d.get('version', '')} {extra}".rstrip())
    except Exception:  # older numpy: no mode="dicts"
        lines.append("numpy BLAS: see numpy.show_config()")
    try:
        from threadpoolctl import threadpool_info
        for p in threadpool_info():
            lines.append(f"threadpool: {p.get('internal_api')} {p.get('version', '')} "
                         f"threads={p.get('num_threads')} arch={p.get('architecture', '-')} "
                         f"({Path(p.get('filepath', '')).name})")
    except ImportError:
        lines.append("threadpool: threadpoolctl not installed (runtime BLAS threads not shown)")
    return lines


def _numba_threading() -> tuple[str, int]:
    import numba
    try:
        return numba.threading_layer(), numba.get_num_threads()
    except ValueError:  # no parallel region has run yet: run a tiny one
        pass
    try:
        @numba.njit(parallel=True, cache=False)
        def _touch(n):
            s = 0
            for i in numba.prange(n):
                s += i
            return s

        _touch(4)
        return numba.threading_layer(), numba.get_num_threads()
    except Exception as exc:
        return f"unavailable ({type(exc).__name__}: {exc})", numba.get_num_threads()


def _cache_location() -> str:
    import numba
    from .kernels import cpu as kcpu
    configured = numba.config.CACHE_DIR
    if configured:
        base = Path(configured)
        where = f"{base} (NUMBA_CACHE_DIR)"
    else:
        base = Path(kcpu.__file__).resolve().parent / "__pycache__"
        where = f"{base} (beside the kernels; set NUMBA_CACHE_DIR to move it)"
    if base.exists():
        n = len(list(base.rglob("*.nbi")))
        state = "writable" if os.access(base, os.W_OK) else "read-only: Numba falls back to a per-user cache"
        return f"{where}; {n} cached kernel index file(s), {state}"
    parent_ok = os.access(base.parent if base.parent.exists() else Path.cwd(), os.W_OK)
    return f"{where}; empty (created on first compile){'' if parent_ok else ', parent not writable'}"


def gather_info() -> list[tuple[str, str]]:
    import numba
    info: list[tuple[str, str]] = []
    add = lambda k, v: info.append((k, str(v)))  # noqa: E731
    add("fastlstm", f"{__version__} ({Path(__file__).resolve().parent})")
    add("python", f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})")
    add("platform", platform.platform())
    for name in ("numpy", "scipy", "numba", "llvmlite", "torch", "numba-cuda", "cupy",
                 "pytest-benchmark", "matplotlib"):
        v = _dist_version(name)
        if v is not None or name in ("numpy", "scipy", "numba", "llvmlite"):
            add(name, v or "not installed")
    for line in _blas_info():
        add("BLAS", line)
    layer, nthreads = _numba_threading()
    add("numba threading", f"layer {layer}, {nthreads} threads (NUMBA_NUM_THREADS default "
        f"{numba.config.NUMBA_DEFAULT_NUM_THREADS})")
    from .kernels.cpu import parallel as cpu_parallel
    add("cpu tasks", f"up to {nthreads} threads per layer" if cpu_parallel.can_pin() else
        "one thread per layer (SciPy's OpenBLAS not found, so it cannot be pinned)")
    add("numba cache", _cache_location())
    add("cpu", f"{_cpu_name()}; {os.cpu_count()} logical CPUs"
        + (f", {len(os.sched_getaffinity(0))} usable" if hasattr(os, "sched_getaffinity") else ""))
    try:
        import llvmlite.binding as llvm
        add("cpu (llvm target)", llvm.get_host_cpu_name())
    except Exception:
        pass
    flags = _cpu_flags()
    if flags:
        add("cpu features", " ".join(flags))
    from .dispatch import cuda_unavailable_reason
    reason = cuda_unavailable_reason()
    if reason is None and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        add("gpu", "CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct but slow, not a GPU")
    elif reason is None:
        try:
            from numba import cuda
            dev = cuda.get_current_device()
            cc = ".".join(map(str, dev.compute_capability))
            name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
            free, total = cuda.current_context().get_memory_info()
            add("gpu", f"{name}, compute capability {cc}, {total / 2**30:.1f} GiB")
        except Exception as exc:
            add("gpu", f"usable, but details unavailable ({exc})")
    else:
        add("gpu", f"none: {reason}")
    add("backends", ", ".join(fb.available_backends()))
    env = [f"{k}={os.environ[k]}" for k in ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER",
                                           "NUMBA_CACHE_DIR", "NUMBA_ENABLE_CUDASIM",
                                           "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                           "MKL_NUM_THREADS") if k in os.environ]
    add("environment", " ".join(env) if env else "(no thread/cache variables set)")
    return info


def cmd_info(args) -> int:
    info = gather_info()
    if args.json:
        out: dict = {}
        for k, v in info:
            out.setdefault(k, []).append(v)
        print(json.dumps({k: v[0] if len(v) == 1 else v for k, v in out.items()}, indent=1))
        return 0
    width = max(len(k) for k, _ in info)
    for k, v in info:
        print(f"{k.ljust(width)}  {v}")
    return 0


# ---------------------------------------------------------------------------- parser
def _add_timing(p, default_budget):
    p.add_argument("--repeat", type=int, metavar="N",
                   help="timed rounds per measurement (default: as many as fit in --budget, 3..100)")
    p.add_argument("--budget", type=float, default=default_budget, metavar="S",
                   help=f"seconds of timed rounds per measurement when --repeat is not given "
                        f"(default {default_budget})")
    p.add_argument("--backends", metavar="LIST",
                   help="comma-separated subset of reference,cpu,cuda,torch (default: every "
                        "available one; the reference always runs, as the oracle)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastlstm",
        description="Check every fastlstm backend against the NumPy reference and time it. "
                    "Without a command: one forward+backward on a default configuration "
                    f"(T,B,I,H = {','.join(map(str, DEFAULT_SIZE))}, float32) on every available "
                    "backend (reference, cpu, cuda with a GPU, torch when installed), printing "
                    "errors with PASS/FAIL, median times and speedups.",
        epilog="Exit status: 0 ok, 1 a mismatch against the reference, 2 a usage error.")
    p.add_argument("--version", action="version", version=f"fastlstm {__version__}")
    p.add_argument("--size", type=_parse_size, metavar="T,B,I,H",
                   help="configuration of the default job")
    p.add_argument("--layers", type=int, default=1, help="layers of the default job (default 1)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default float32")
    _add_timing(p, 0.5)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    b = sub.add_parser("bench", help="time a grid of cases on every backend",
                       description="Time a grid of cases (the quick preset of the registry in "
                                   "fastlstm.bench, --full for all of it, or --size) in the modes "
                                   "infer, train_fwd and fwd_bwd on every available backend. Each "
                                   "result is checked against the reference before it is timed; "
                                   "backends are timed in blocks of calls (A B C, then C B A). Prints median time, "
                                   "GFLOP/s (useful FLOPs, see fastlstm.bench) and speedups.")
    b.add_argument("--full", action="store_true", help="the whole registry (default: quick preset)")
    b.add_argument("--list", action="store_true", help="list the registry's cases and exit")
    b.add_argument("--case", action="append", metavar="NAME",
                   help="a registry case by name or substring (repeatable)")
    b.add_argument("--size", type=_parse_size, action="append", metavar="T,B,I,H",
                   help="an ad-hoc case (repeatable); with --layers, --bidirectional, --proj, "
                        "--lengths, --dtype")
    b.add_argument("--layers", type=int, default=1, help="layers of --size cases")
    b.add_argument("--bidirectional", action="store_true", help="--size cases are bidirectional")
    b.add_argument("--proj", type=int, default=0, metavar="P", help="proj_size of --size cases")
    b.add_argument("--lengths", action="store_true", help="--size cases have variable lengths")
    b.add_argument("--dtype", choices=["float32", "float64"],
                   help="dtype of --size cases (default float32); filters registry cases")
    b.add_argument("--modes", metavar="LIST", help="comma-separated subset of infer,train_fwd,fwd_bwd")
    _add_timing(b, 0.3)
    b.add_argument("--json", metavar="PATH", help="write the results as JSON")
    b.add_argument("--plot", metavar="PATH.png",
                   help="draw speedup vs hidden size per backend (needs matplotlib)")
    b.add_argument("--no-sgemm", action="store_true", help="skip the BLAS sgemm measurement")
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    i = sub.add_parser("info", help="versions, BLAS, threading, compile cache, CPU and GPU",
                       description="Print versions of fastlstm and its dependencies, the BLAS "
                                   "NumPy uses, Numba's threading layer and thread count, the "
                                   "compile-cache location, the CPU and the GPU (if any).")
    i.add_argument("--json", action="store_true", help="print as JSON")

    c = sub.add_parser("check", help="every backend vs the reference on small configurations",
                       description="Run every available backend (cpu, cuda, torch) against the "
                                   "NumPy reference in every mode on small configurations "
                                   "(variable lengths, bidirectional, projection, several layers, "
                                   "float32 and float64); exit 1 on any mismatch.")
    c.add_argument("--backends", metavar="LIST", help="comma-separated subset of cpu,cuda,torch")
    c.add_argument("--dtype", choices=["float32", "float64"], help="only this dtype")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "info":
            return cmd_info(args)
        if args.command == "check":
            return cmd_check(args)
        return cmd_default(args)
    except UsageError as exc:
        print(f"python -m fastlstm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
