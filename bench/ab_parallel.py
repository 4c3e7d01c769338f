"""Serial path against parallel tasks (and torch), same process, each backend in its own block.

    python bench/ab_parallel.py [infer|train] [case index ...]

The CPU backend's two paths are selected by ``fastlstm.kernels.cpu.lstm.PARALLEL_MIN_FLOP``
(infinite: every layer serial; 0: the tasks wherever ``plan_tasks`` finds two); ``unfused`` is
the tasks with ``FUSE_INPUT = False`` (every task computes its input projection as one GEMM
first, and its input gradient as one GEMM after the backward recurrence). Each backend runs
its calls in a block (A B C D, then D C B A: bench/NOTES.md), medians in ms; torch gets
Numba's thread count. This produced the tables of bench/NOTES.md, items 9, 11, 14 and 17.
"""
import sys
import time

import numba
import numpy as np

import fastlstm
from fastlstm.kernels.cpu import lstm as cpu_lstm

CASES = [(100, 4, 128, 128, 1, False), (100, 16, 128, 256, 1, False),
         (100, 64, 256, 256, 1, False), (50, 64, 512, 512, 1, False),
         (20, 128, 1024, 1024, 1, False), (50, 8, 64, 128, 2, True)]


def main(argv):
    mode = argv[0] if argv else "infer"
    picked = [CASES[int(i)] for i in argv[1:]] or CASES
    try:
        import torch
        torch.set_num_threads(numba.get_num_threads())
    except ImportError:
        torch = None
    for T, B, I, H, L, bi in picked:
        p = fastlstm.LSTMParams.init(I, H, L, bidirectional=bi, seed=0)
        x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)

        def ours(min_flop, fuse=True):
            def call():
                cpu_lstm.PARALLEL_MIN_FLOP = min_flop
                cpu_lstm.FUSE_INPUT = fuse
                if mode == "infer":
                    fastlstm.forward(x, p, device="cpu")
                else:
                    out = fastlstm.forward(x, p, training=True, device="cpu")
                    fastlstm.backward(out.cache, np.ones_like(out.y))
            return call

        fns = {"serial": ours(float("inf")), "tasks": ours(0.0), "unfused": ours(0.0, False)}
        if torch is not None:
            tl = torch.nn.LSTM(I, H, L, bidirectional=bi)
            tl.load_state_dict({k: torch.from_numpy(np.array(v))
                                for k, v in p.state_dict().items()})
            xt = torch.from_numpy(x)

            def call_torch():
                if mode == "infer":
                    with torch.no_grad():
                        tl(xt)
                else:
                    y, _ = tl(xt.clone().requires_grad_(True))
                    y.backward(torch.ones_like(y))
            fns["torch"] = call_torch
        t0 = time.perf_counter()
        fns["serial"]()
        n = max(3, min(30, int(0.5 / (time.perf_counter() - t0))))
        times = {k: [] for k in fns}
        for order in (list(fns), list(fns)[::-1]):
            for k in order:
                fns[k]()
                fns[k]()
                for _ in range(n):
                    t0 = time.perf_counter()
                    fns[k]()
                    times[k].append(time.perf_counter() - t0)
        cpu_lstm.PARALLEL_MIN_FLOP = 20e6
        cpu_lstm.FUSE_INPUT = True
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        line = " ".join(f"{k} {v:.3g} ms" for k, v in med.items())
        if "torch" in med:
            line += (f" | vs torch: serial {med['torch'] / med['serial']:.2f}x,"
                     f" unfused {med['torch'] / med['unfused']:.2f}x,"
                     f" tasks {med['torch'] / med['tasks']:.2f}x")
        print(f"{mode} T{T} B{B} I{I} H{H} L{L}{' bi' if bi else ''}: {line}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
