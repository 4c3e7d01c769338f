"""What every command shares: exit codes, the usage error, option parsing and the
check-then-time measurement of one (case, mode) on several backends."""
from __future__ import annotations

import argparse
import time

from .. import harness

#: Exit status: success, a result that does not match the reference, a usage error.
EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2
PROG = "python -m fastlstm"


class UsageError(Exception):
    """A bad option or an unavailable backend: message and exit code 2."""


def parse_size(text: str) -> tuple[int, int, int, int]:
    """``T,B,I,H`` (or ``TxBxIxH``) as four positive integers; an argparse type."""
    try:
        vals = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected T,B,I,H (four positive integers), got {text!r}")
    return vals  # type: ignore[return-value]


def split(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def resolve_backends(text: str | None, *, need_reference: bool = False) -> list[str]:
    """The backends a comma-separated list names (every available one when empty), checked."""
    avail = harness.available_backends()
    if not text:
        return avail
    wanted = split(text)
    for b in wanted:
        if b not in harness.BACKENDS:
            raise UsageError(f"unknown backend {b!r}; expected some of "
                             f"{', '.join(harness.BACKENDS)}")
        if b not in avail:
            raise UsageError(f"backend {b!r} is not available: {harness.unavailable_reason(b)}")
    if need_reference and "reference" not in wanted:
        wanted.insert(0, "reference")
    return list(dict.fromkeys(wanted))


def resolve_modes(text: str | None) -> list[str]:
    modes = split(text) or list(harness.MODES)
    for m in modes:
        if m not in harness.MODES:
            raise UsageError(f"unknown mode {m!r}; expected some of {', '.join(harness.MODES)}")
    return modes


def setup_peers(backends: list[str]) -> int | None:
    """The thread count of the peers (torch, ONNX Runtime) among ``backends``: the CPU
    backend's, set as torch's now (when torch is among them); None when neither is."""
    if not any(b in harness.PEERS for b in backends):
        return None
    n = harness.default_torch_threads()
    if "torch" in backends:
        import torch
        torch.set_num_threads(n)
    return n


setup_torch = setup_peers  # the same function under its first name


def add_timing_options(p: argparse.ArgumentParser, default_budget: float) -> None:
    p.add_argument("--repeat", type=int, metavar="N",
                   help="timed rounds per measurement (default: as many as fit in --budget, "
                        "3..100)")
    p.add_argument("--budget", type=float, default=default_budget, metavar="S",
                   help=f"seconds of timed rounds per measurement when --repeat is not given "
                        f"(default {default_budget})")
    p.add_argument("--backends", metavar="LIST",
                   help="comma-separated subset of " + ",".join(harness.BACKENDS) + " (default: "
                        "every available one; the reference always runs, as the oracle; torch "
                        "and onnxruntime get the CPU backend's thread count)")


class Measured:
    """Check one (case, mode) on several backends, then time the ones that passed (blocks per
    backend, A B C then C B A: see :func:`fastlstm.harness.time_backends`).

    ``rows[backend]`` holds status (PASS, FAIL, n/a: the backend cannot run this case in this
    mode, ``error`` says why), error, fwd_err, grad_err, first_call_s and, after :meth:`time`,
    min_s, median_s, max_s, rounds, spread (max/min), unreliable, gflop_per_s,
    speedup_vs_reference and speedup_vs_<peer> for every peer of :data:`fastlstm.harness.PEERS`
    (speedup_vs_torch, speedup_vs_onnxruntime): the other's median time over this one's.
    ``torch_threads`` is the peers' thread count (:func:`setup_peers`).
    """

    def __init__(self, case, mode, backends, inputs, ref, torch_threads):
        self.case, self.mode = case, mode
        self.rows: dict[str, dict] = {}
        runners, estimates = {}, {}
        for be in backends:
            row = dict(case=case.name, mode=mode, backend=be, status="PASS", error=None,
                       fwd_err=float("nan"), grad_err=float("nan"), first_call_s=None)
            self.rows[be] = row
            reason = harness.supports(be, case, mode)
            if reason:
                row.update(status="n/a", error=reason)
                continue
            try:
                runner = harness.make_runner(case, mode, be, inputs, torch_threads=torch_threads)
                t0 = time.perf_counter()
                ret = runner()
                row["first_call_s"] = time.perf_counter() - t0
                cmp = harness.compare_outputs(runner.outputs(ret), ref, case.np_dtype, mode)
                row["fwd_err"], row["grad_err"] = harness.max_errors(cmp)
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
        times = harness.time_backends(self.runners, rounds=rounds, budget=budget,
                                      min_rounds=min_rounds, max_rounds=max_rounds,
                                      estimate=self.estimates)
        gflop = self.case.gflop(self.mode)
        for be, ts in times.items():
            s = harness.spread(ts)
            self.rows[be].update(median_s=s.median_s, min_s=s.min_s, max_s=s.max_s,
                                 rounds=s.rounds, spread=s.ratio, unreliable=s.unreliable,
                                 gflop_per_s=gflop / s.median_s if s.median_s > 0 else None)
        others = {be: self.rows.get(be, {}).get("median_s") for be in ("reference", *harness.PEERS)}
        for row in self.rows.values():
            med = row.get("median_s")
            for be, other in others.items():
                row[f"speedup_vs_{be}"] = other / med if (other and med) else None
        return self.rows
