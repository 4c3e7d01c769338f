"""A parallel layer's two tasks through the partner thread against a thread pool, same process.

    python bench/ab_pair.py [--busy]

``pair``: the default (``kernels/cpu/pair.py``); ``pool``: ``CPUConfig.pair_tasks=False``.
Blocks of 15 calls alternate between the two (8 blocks, 20 ms apart), for inference and for a
training forward plus backward; medians in µs and the ratio pool / pair. ``--busy`` runs a
busy-looping process beside it. This produced the table of bench/NOTES.md, "Parallel layers
without the pool".
"""
import multiprocessing
import sys
import time

import numba
import numpy as np

import fastlstm
from fastlstm import config

#: (T, B, I, H, knobs)
CASES = [(50, 8, 32, 128, {}), (100, 8, 32, 128, {}), (50, 16, 32, 256, {}),
         (1, 64, 32, 256, {}), (10, 32, 32, 128, {})]


def _spin(seconds):
    end = time.time() + seconds
    while time.time() < end:
        pass


def main(argv):
    numba.set_num_threads(2)
    busy = None
    if "--busy" in argv:
        busy = multiprocessing.Process(target=_spin, args=(600,), daemon=True)
        busy.start()
    try:
        for T, B, I, H, knobs in CASES:
            p = fastlstm.LSTMParams.init(I, H, seed=0)
            rng = np.random.default_rng(0)
            x = rng.standard_normal((T, B, I)).astype(np.float32)
            dy = rng.standard_normal((T, B, H)).astype(np.float32)
            variants = {"pool": dict(knobs, pair_tasks=False), "pair": dict(knobs)}
            times = {k: {"infer": [], "fwd_bwd": []} for k in variants}
            for _ in range(8):
                for name, kw in variants.items():
                    with config.options("cpu", **kw):
                        time.sleep(0.02)
                        for _ in range(3):
                            fastlstm.forward(x, p)
                        for _ in range(15):
                            t = time.perf_counter()
                            fastlstm.forward(x, p)
                            times[name]["infer"].append(time.perf_counter() - t)
                        for _ in range(15):
                            t = time.perf_counter()
                            out = fastlstm.forward(x, p, training=True)
                            fastlstm.backward(out.cache, dy)
                            times[name]["fwd_bwd"].append(time.perf_counter() - t)
            med = {k: {m: np.median(v) * 1e6 for m, v in d.items()} for k, d in times.items()}
            print((T, B, I, H), out.paths[0], "  ".join(
                f"{m} pool {med['pool'][m]:.0f} pair {med['pair'][m]:.0f} "
                f"({med['pool'][m] / med['pair'][m]:.2f}x)" for m in ("infer", "fwd_bwd")),
                flush=True)
    finally:
        if busy is not None:
            busy.terminate()


if __name__ == "__main__":
    main(sys.argv[1:])
