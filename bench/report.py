#!/usr/bin/env python3
"""Markdown tables from a pytest-benchmark JSON of ``pytest bench`` (used for bench/NOTES.md).

    pytest bench --benchmark-json=run.json        # 2 threads: the machine's cores
    python bench/report.py run.json

Per case and mode: the median time of each backend, our GFLOP/s, our share of the BLAS sgemm
rate measured in the same run, and the ratios cpu-vs-reference, cpu-vs-torch and, when the run
has ONNX Runtime timings, cpu-vs-onnxruntime (each a ratio of medians taken in that one run;
ONNX Runtime runs inference only, float32, no proj_size: "-" elsewhere). Standard library only.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def load(path):
    with open(path) as f:
        doc = json.load(f)
    rows = defaultdict(dict)
    sgemm = None
    for b in doc.get("benchmarks", []):
        info = b.get("extra_info") or {}
        med = b["stats"]["median"]
        if info.get("mode") == "sgemm":
            sgemm = info["gflops"] / med
            continue
        if "case" not in info or "backend" not in info:
            continue
        rows[(info["case"], info["mode"])][info["backend"]] = (med, info.get("gflops"))
    return rows, sgemm, doc


#: The other libraries the CPU backend is compared with: torch always has its columns,
#: ONNX Runtime when the run timed it.
PEERS = ("torch", "onnxruntime")


def table(rows, sgemm) -> str:
    peers = [p for p in PEERS if p == "torch" or any(p in by for by in rows.values())]
    head = (["case", "mode", "reference", "cpu", *peers, "cpu GFLOP/s", "% of sgemm",
             "cpu vs reference", *(f"cpu vs {p}" for p in peers)])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    ms = lambda v: "-" if v is None else (f"{v * 1e3:.3g} ms")  # noqa: E731
    for (case, mode), by in rows.items():
        cpu = by.get("cpu")
        ref = by.get("reference")
        gf = cpu[1] / cpu[0] if cpu and cpu[1] else None
        out.append("| " + " | ".join([
            case, mode, ms(ref and ref[0]), ms(cpu and cpu[0]),
            *(ms(by[p][0] if p in by else None) for p in peers),
            "-" if gf is None else f"{gf:.1f}",
            "-" if (gf is None or not sgemm) else f"{100 * gf / sgemm:.0f}%",
            "-" if not (cpu and ref) else f"{ref[0] / cpu[0]:.2f}x",
            *("-" if not (cpu and p in by) else f"{by[p][0] / cpu[0]:.2f}x" for p in peers),
        ]) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    rows, sgemm, doc = load(argv[0])
    cpu = (doc.get("machine_info") or {}).get("cpu") or {}
    print(f"Machine: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} cores; "
          f"BLAS sgemm (2048^3, same run): {sgemm:.1f} GFLOP/s\n" if sgemm else "")
    print(table(rows, sgemm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
