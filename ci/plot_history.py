#!/usr/bin/env python3
"""Speedups over the reference across tracked commits, from ci/history/*.json.

    python ci/plot_history.py [DIR] [--out history.png] [--mode fwd_bwd] [--backend cpu]
                              [--case SUBSTRING] [--text]

Each file in DIR is one commit's summary, written by ``ci/compare.py NEW.json --history DIR``.
Files are ordered by commit time (their names start with it). ``--out`` draws one line per
(case, mode, backend) with matplotlib (optional: without it, a clear message and exit 2);
``--text`` (or no ``--out``) prints the same numbers as a table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_history(directory) -> list[dict]:
    d = Path(directory)
    if not d.is_dir():
        raise SystemExit(f"plot_history.py: error: {str(d)!r} is not a directory")
    out = []
    for p in sorted(d.glob("*.json")):
        try:
            doc = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"plot_history.py: skipping {p.name}: {exc}", file=sys.stderr)
            continue
        if isinstance(doc, dict) and isinstance(doc.get("speedups"), dict):
            doc["_label"] = (doc.get("commit") or p.stem.split("_", 1)[-1])[:8]
            doc["_file"] = p.name
            out.append(doc)
    return out


def series(history, mode=None, backend=None, case=None) -> dict[str, list]:
    keys = []
    for h in history:
        for k in h["speedups"]:
            c, m, b = k.split("|")
            if (mode and m != mode) or (backend and b != backend) or (case and case not in c):
                continue
            if k not in keys:
                keys.append(k)
    return {k: [h["speedups"].get(k) for h in history] for k in keys}


def print_table(history, data) -> None:
    labels = [h["_label"] for h in history]
    width = max([len(k) for k in data] + [5])
    print("entry".ljust(width) + "  " + "  ".join(lab.rjust(8) for lab in labels))
    for k, vals in data.items():
        print(k.ljust(width) + "  " + "  ".join(("-" if v is None else f"{v:.2f}x").rjust(8)
                                                  for v in vals))


def plot(history, data, out) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [h["_label"] for h in history]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) + 4), 5))
    xs = list(range(len(labels)))
    for k, vals in data.items():
        pts = [(x, v) for x, v in zip(xs, vals) if v is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=k.replace("|", " "), ms=3)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("speedup vs NumPy reference (same run)")
    ax.set_xlabel("commit")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ci/plot_history.py", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", nargs="?", default=str(Path(__file__).resolve().parent / "history"))
    p.add_argument("--out", metavar="PNG", help="draw the plot to this file (needs matplotlib)")
    p.add_argument("--mode", help="only this mode (infer, train_fwd, fwd_bwd)")
    p.add_argument("--backend", help="only this backend (cpu, torch, cuda)")
    p.add_argument("--case", help="only cases whose name contains this")
    p.add_argument("--text", action="store_true", help="print the table (the default without --out)")
    args = p.parse_args(argv)
    history = load_history(args.dir)
    if not history:
        print(f"plot_history.py: no summaries in {args.dir}", file=sys.stderr)
        return 1
    data = series(history, args.mode, args.backend, args.case)
    if args.text or not args.out:
        print_table(history, data)
    if args.out:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("plot_history.py: error: --out needs matplotlib, which is not installed "
                  "(pip install matplotlib); use --text for a table", file=sys.stderr)
            return 2
        plot(history, data, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
