#!/usr/bin/env bash
# The CI benchmark: the quick subset of bench/bench_lstm.py (cases with quick=True in the registry, plus the
# sgemm ceiling), timed with pytest-benchmark, written as pytest-benchmark JSON.
#
#   ci/bench.sh [OUT.json]            default OUT: bench-quick.json
#
# Then: python ci/compare.py OUT.json --baseline ci/baseline.json   (see bench/NOTES.md)
#
# Environment knobs:
#   BENCH_THREADS     threads for every pool: Numba, OpenBLAS/MKL/OpenMP and torch (default 1;
#                     multi-threaded timings on a shared 2-core runner are bimodal, see NOTES.md).
#                     The baseline records its thread count; compare.py refuses a mismatch.
#   BENCH_BUDGET      seconds of timed calls per benchmark (default 1.0)
#   BENCH_MIN_ROUNDS  fewest timed rounds (default 7); BENCH_MAX_ROUNDS most (default 200)
#   BENCH_SELECT      pytest -m expression (default "quick"; "" for the whole grid)
set -euo pipefail
OUT="${1:-bench-quick.json}"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
cd "$(dirname "$0")/.."

THREADS="${BENCH_THREADS:-1}"
export NUMBA_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" \
       MKL_NUM_THREADS="$THREADS"

SELECT=("-m" "${BENCH_SELECT-quick}")
[ -z "${BENCH_SELECT-quick}" ] && SELECT=()

python -m pytest bench/bench_lstm.py bench/bench_sgemm.py "${SELECT[@]}" -q -p no:cacheprovider \
    --benchmark-json="$OUT" \
    --benchmark-columns=median,iqr,rounds \
    --benchmark-sort=name \
    --bench-budget="${BENCH_BUDGET:-1.0}" \
    --bench-min-rounds="${BENCH_MIN_ROUNDS:-7}" \
    --bench-max-rounds="${BENCH_MAX_ROUNDS:-200}"
echo "wrote $OUT ($THREADS thread(s))" >&2
