"""Text output of the command line: numbers, tables, the progress bar, timing-spread warnings
and the legend of the speedup columns."""
from __future__ import annotations

import sys
import time

from .. import harness


def fmt_err(e: float) -> str:
    if e != e:  # nan
        return "-"
    if e == float("inf"):
        return "inf"
    return "0" if e == 0 else f"{e:.1e}"


def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A plain-text table; columns in ``right`` (default: all but the first) right-aligned."""
    right = right if right is not None else set(range(1, len(headers)))
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def spread_warning(label: str, spread: harness.Spread) -> str | None:
    """A warning line when ``spread``'s rounds vary by more than
    :data:`fastlstm.harness.UNRELIABLE_SPREAD` (max/min), else None."""
    if not spread.unreliable:
        return None
    return (f"warning: {label}: runs vary {spread.ratio:.1f}x (fastest {fmt_time(spread.min_s)}, "
            f"slowest {fmt_time(spread.max_s)} over {spread.rounds} rounds): timings unreliable "
            f"(machine busy?)")


def fmt_spread(ratio: float | None) -> str:
    """max/min of a backend's rounds; ``!`` marks an unreliable one."""
    if ratio is None:
        return "-"
    return f"{ratio:.1f}x" + ("!" if harness.is_unreliable(ratio) else "")


def unreliable_summary(n_flagged: int, n_timed: int) -> str | None:
    """One closing line when some timings were flagged, else None."""
    if not n_flagged:
        return None
    return (f"{n_flagged} of {n_timed} timings vary more than {harness.UNRELIABLE_SPREAD:.0f}x "
            f"between rounds: rerun on an idle machine before quoting them")


def load_warning(load: float | None, cpus: int) -> str | None:
    """A warning line when the 1-minute load average ``load`` exceeds
    :data:`fastlstm.harness.BUSY_LOAD` per usable CPU, else None."""
    if load is None or load <= harness.BUSY_LOAD * cpus:
        return None
    return (f"warning: the machine is busy (1-minute load average {load:.1f} on {cpus} "
            f"CPU{'s' if cpus != 1 else ''}): other processes compete for the cores, timings "
            f"may be slow and unsteady")


def spread_warnings(rows, label=lambda r: f"{r['backend']}") -> list[str]:
    """The :func:`spread_warning` lines of timed result rows (dicts with min_s, median_s,
    max_s, rounds)."""
    out = []
    for r in rows:
        if r.get("min_s") is None:
            continue
        w = spread_warning(label(r), harness.Spread(r["min_s"], r["median_s"], r["max_s"],
                                                    r["rounds"]))
        if w:
            out.append(w)
    return out


#: How the legend names each peer of :data:`fastlstm.harness.PEERS`, and what it adds about it.
PEER_NAMES = {"torch": "torch", "onnxruntime": "ONNX Runtime"}
PEER_NOTES = {"torch": "",
              "onnxruntime": "ONNX Runtime runs the weights exported as an ONNX model (one LSTM "
                             "node per layer) in a CPU InferenceSession: inference only, float32, "
                             "no proj_size (n/a elsewhere)."}


def speedup_legend(vs_torch: bool = False, peers=()) -> str:
    """How the "vs" columns read: vs ref, and one per peer (``vs_torch`` adds torch; ``peers``
    names backends of :data:`fastlstm.harness.PEERS`)."""
    names = [p for p in harness.PEERS if p in peers or (p == "torch" and vs_torch)]
    cols = " / ".join(["vs ref", *(f"vs {harness.PEERS[p]}" for p in names)])
    than = " / ".join(["the reference", *(PEER_NAMES.get(p, p) for p in names)])
    text = (f"{cols}: how many times faster this backend is than {than} (ratio of median "
            f"times): cpu 2.00x in vs ref = cpu is 2.0 times faster than the reference (takes "
            f"half the time); below 1.00x = slower")
    if not names:
        return text
    who = " and ".join(PEER_NAMES.get(p, p) for p in names)
    notes = " ".join(PEER_NOTES[p] for p in names if PEER_NOTES.get(p))
    return (f"{text}. {who} run{'s' if len(names) == 1 else ''} with the CPU backend's thread "
            f"count." + (f" {notes}" if notes else ""))


SPREAD_LEGEND = (f"min / median: fastest and median of the timed rounds; max/min: slowest round "
                 f"over fastest (! above {harness.UNRELIABLE_SPREAD:.0f}x: the timings are "
                 f"unreliable)")


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
