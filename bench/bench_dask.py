"""Scaling of ``fastlstm.dask.forward`` over worker processes (a plain script, not collected as
benchmarks: ``pytest bench`` finds no test here).

    python bench/bench_dask.py                       # T,B,I,H = 1000,512,128,256; 1 and 2 workers
    python bench/bench_dask.py --size 200,256,64,128 --workers 1,2,4 --chunks 16 --json out.json

What it measures, float32 inference:

1. one ``fastlstm.forward`` on the whole batch in this process on one core (one Numba thread,
   SciPy's BLAS pinned to one thread): the single-core baseline, meant to take >= 5 s;
2. for each worker count n: a ``distributed.LocalCluster(n_workers=n, threads_per_worker=1,
   processes=True)``; the input is persisted on the workers first (not timed), the params are
   scattered and every worker has loaded the compiled kernels (a warm-up call, not timed); then
   ``fastlstm.dask.forward(x, params)`` persisted on the cluster, best of ``--repeat`` runs.

Reports each time, the speedup of n workers over one worker and over the baseline, and checks
that the cluster's ``y`` equals the baseline's bitwise. Needs ``pip install "fastlstm[dask]"``;
meaningful only with at least as many free cores as workers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _size(text: str) -> tuple[int, int, int, int]:
    vals = tuple(int(v) for v in text.replace("x", ",").split(","))
    if len(vals) != 4 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected T,B,I,H, got {text!r}")
    return vals  # type: ignore[return-value]


def _same(block):
    return block


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=_size, default=(1000, 512, 128, 256), metavar="T,B,I,H")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    ap.add_argument("--chunks", type=int, default=8, help="batch chunks (default 8)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per worker count (best kept)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)

    import warnings

    import numpy as np
    try:
        import dask.array as da
        from distributed import Client, LocalCluster, wait
    except ImportError:
        print('needs dask and distributed: pip install "fastlstm[dask]"', file=sys.stderr)
        return 2
    import fastlstm
    import fastlstm.dask
    from fastlstm import config
    from fastlstm.kernels.cpu.parallel import single_threaded_blas

    warnings.filterwarnings("ignore", message="Sending large graph")  # the input, untimed
    T, B, I, H = args.size
    workers = [int(w) for w in args.workers.split(",")]
    params = fastlstm.LSTMParams.init(I, H, args.layers, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    gflop = 2.0 * T * B * 4 * H * (I + H) * args.layers / 1e9
    print(f"fastlstm {fastlstm.__version__}, {os.cpu_count()} CPUs (load average "
          f"{os.getloadavg()[0]:.1f}: other processes' load slows every worker); "
          f"T,B,I,H = {T},{B},{I},{H}, {args.layers} layer(s), float32, {args.chunks} batch "
          f"chunks, {gflop:.0f} GFLOP")

    with config.options("cpu", threads=1), single_threaded_blas():
        fastlstm.forward(x[:, :8], params)  # compile / load the kernels
        t0 = time.perf_counter()
        ref = fastlstm.forward(x, params).y
        base = time.perf_counter() - t0
    print(f"one core, fastlstm.forward on the whole batch: {base:.2f} s ({gflop / base:.1f} "
          f"GFLOP/s)" + ("" if base >= 5 else "  (under 5 s: use a larger --size)"))

    results = {"size": [T, B, I, H], "layers": args.layers, "chunks": args.chunks,
               "cpus": os.cpu_count(), "baseline_s": base, "workers": {}}
    chunk = -(-B // args.chunks)
    for n in workers:
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            xd = client.persist(da.from_array(x, chunks=(T, chunk, I)))
            wait(xd)
            warm = fastlstm.dask.forward(xd[:, :n * 4].rechunk((T, 4, I)), params)
            client.compute(warm[:1, :, :1], sync=True)  # params scattered, kernels loaded
            client.run(lambda: __import__("fastlstm").warmup(dtypes=("float32",)))
            times, load = [], os.getloadavg()[0]
            for r in range(args.repeat):
                # a new name each run: the cluster would otherwise hand back the last result
                xr = xd.map_blocks(_same, name=f"bench-x-{n}-{r}", dtype=xd.dtype)
                t0 = time.perf_counter()
                y = client.persist(fastlstm.dask.forward(xr, params))
                wait(y)
                times.append(time.perf_counter() - t0)
                if r < args.repeat - 1:
                    del y
            same = bool(np.array_equal(y.compute(), ref))
            del y
        best, median = min(times), statistics.median(times)
        results["workers"][n] = {"seconds": times, "best_s": best, "median_s": median,
                                 "bitwise_equal": same, "load_before": load}
        print(f"{n} worker(s): best {best:.2f} s, median {median:.2f} s of "
              f"{', '.join(f'{t:.2f}' for t in times)} "
              f"(load average before: {load:.1f}); "
              f"{base / best:.2f}x the one-core baseline; y {'equals' if same else 'DIFFERS FROM'}"
              f" the baseline bitwise")
    if 1 in results["workers"]:
        one = results["workers"][1]["best_s"]
        one_med = results["workers"][1]["median_s"]
        for n, r in results["workers"].items():
            if n != 1:
                r["speedup_vs_1_worker"] = one / r["best_s"]
                r["median_speedup_vs_1_worker"] = one_med / r["median_s"]
                print(f"speedup {n} workers vs 1: {one / r['best_s']:.2f}x best to best "
                      f"(parallel efficiency {one / r['best_s'] / n:.0%}), "
                      f"{one_med / r['median_s']:.2f}x median to median")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if all(r["bitwise_equal"] for r in results["workers"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
