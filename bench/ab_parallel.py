"""Serial path against parallel tasks (and torch), same process, each backend in its own block.

    python bench/ab_parallel.py [infer|train] [case index ...]

The CPU backend's two paths are selected by its ``parallel_min_flop`` knob
(``fastlstm.config.options("cpu", ...)``; infinite: every layer serial; 0: the tasks wherever
``fastlstm/backends/cpu.py::plan_tasks`` finds two); ``unfused`` is the tasks with
``fuse_input=False`` (every task computes its input projection as one GEMM first, and its input
gradient as one GEMM after the backward recurrence). Each backend runs
its calls in a block (A B C D, then D C B A: bench/NOTES.md, ``fastlstm.harness.time_backends``),
medians in ms; torch (``fastlstm.harness.TorchRunner``) gets Numba's thread count; ``train``
times a training forward plus backward. This produced the tables of bench/NOTES.md, items 9,
11, 14 and 17.
"""
import sys
import time

import numba

from fastlstm import config
from fastlstm.harness import Case, TorchRunner, make_runner, median, time_backends, torch_available

CASES = [(100, 4, 128, 128, 1, False), (100, 16, 128, 256, 1, False),
         (100, 64, 256, 256, 1, False), (50, 64, 512, 512, 1, False),
         (20, 128, 1024, 1024, 1, False), (50, 8, 64, 128, 2, True)]


def main(argv):
    mode = argv[0] if argv else "infer"
    picked = [CASES[int(i)] for i in argv[1:]] or CASES
    run_mode = "infer" if mode == "infer" else "fwd_bwd"
    threads = numba.get_num_threads() if torch_available() else None
    for T, B, I, H, L, bi in picked:
        case = Case.from_size(T, B, I, H, num_layers=L, bidirectional=bi)
        inputs = case.make_inputs(seed=0)
        cpu = make_runner(case, run_mode, "cpu", inputs)

        def ours(min_flop, fuse=True):
            def call():
                with config.options("cpu", parallel_min_flop=min_flop, fuse_input=fuse):
                    cpu()
            return call

        fns = {"serial": ours(float("inf")), "tasks": ours(0.0), "unfused": ours(0.0, False)}
        if threads is not None:
            fns["torch"] = TorchRunner(run_mode, inputs, threads=threads)
        n = max(3, min(30, int(0.5 / _once(fns["serial"]))))
        times = time_backends(fns, rounds=2 * n)
        med = {k: median(v) * 1e3 for k, v in times.items()}
        line = " ".join(f"{k} {v:.3g} ms" for k, v in med.items())
        if "torch" in med:
            line += (f" | vs torch: serial {med['torch'] / med['serial']:.2f}x,"
                     f" unfused {med['torch'] / med['unfused']:.2f}x,"
                     f" tasks {med['torch'] / med['tasks']:.2f}x")
        print(f"{mode} T{T} B{B} I{I} H{H} L{L}{' bi' if bi else ''}: {line}", flush=True)


def _once(fn) -> float:
    """Seconds of one call (after a first, untimed one)."""
    fn()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main(sys.argv[1:])
