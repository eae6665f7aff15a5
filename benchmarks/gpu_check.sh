#!/usr/bin/env bash
# The CUDA path on a real NVIDIA GPU, in one prepared run of under 5 minutes (see docs/cuda.md).
#
# Run from the repository root on a machine with a GPU, numba-cuda, numpy and pandas (the workplace's
# H100/H200 image has them all; nothing is installed unless numba-cuda is missing AND wheels were
# carried in .whl/):
#     OUT=/some/dir bash benchmarks/gpu_check.sh
# It writes into $OUT (at most 4 files, all small):
#     summary.txt    the card, versions, every step's exit status and seconds, the headline numbers
#     tests.log      tests/test_cuda.py on the GPU (the simulator tests, without the simulator)
#     runs.log       everything the benchmark and training runs printed
#     results.jsonl  one JSON object per timed run (cuda_timing.py lines, then bench's --json reports)
# Real ML-100k: read from $MFSCRATCH_DATA/ml-100k (default ./.data/ml-100k). A GPU machine without
# network needs it carried: here, once, `mkdir -p .data && cp -r <data>/ml-100k .data/ &&
# echo /.data/ >> .git/info/exclude`, then name .data in the run's carry. Without it, the seed-recipe
# training is skipped and the ML-100k timings use an ML-100k-shaped synthetic set (same cost).
set -uo pipefail   # no -e: a failing step is recorded and the next one still runs
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
unset NUMBA_ENABLE_CUDASIM           # the whole point: real kernels on the real GPU
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MFSCRATCH_DATA="${MFSCRATCH_DATA:-$PWD/.data}"
PY="${PYTHON:-python3}"
SUMMARY="$OUT/summary.txt" RUNS="$OUT/runs.log" RESULTS="$OUT/results.jsonl"
: >"$SUMMARY"; : >"$RUNS"; : >"$RESULTS"
DEADLINE=$((SECONDS + ${BUDGET_S:-285}))   # stop starting steps so that the whole script ends in < 5 min
say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_S LOGFILE CMD...: run CMD with a timeout that also respects the overall deadline.
step() {
  local name=$1 limit=$2 log=$3; shift 3
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 20 ]; then say "SKIP  $name (out of time)"; return 0; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  echo "===== $name: $*" >>"$log"
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  say "$( [ $rc -eq 0 ] && echo "ok  " || echo "FAIL" )  $name  rc=$rc  $((SECONDS - t0)) s"
  return 0
}

# --- the machine ----------------------------------------------------------------------------------
say "gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
say "card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found')"
if ! "$PY" -c "from numba import cuda; import numba_cuda" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    say "numba-cuda missing: installing the carried wheels from .whl/"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH="/tmp/site:$PYTHONPATH"
  else
    say "numba-cuda missing and no wheels in .whl/: see /work/.library/device/README.md (carry wheels)"
  fi
fi
say "$("$PY" -c "import sys, numpy, numba; from numba import cuda; import importlib.metadata as m; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'numba', numba.__version__, 'numba-cuda', m.version('numba-cuda'), 'cuda available:', cuda.is_available())" 2>&1 | tail -1)"
HAVE_ML100K=0; [ -f "$MFSCRATCH_DATA/ml-100k/u.data" ] && HAVE_ML100K=1
say "real ML-100k at \$MFSCRATCH_DATA: $([ $HAVE_ML100K = 1 ] && echo yes || echo 'no (synthetic ML-100k shape instead)')"

# --- 1. correctness on the GPU: the simulator tests, run for real --------------------------------------
step "tests (tests/test_cuda.py on the GPU)" 150 "$OUT/tests.log" \
  "$PY" -m pytest -q -m cudasim tests/test_cuda.py -W ignore::numba.core.errors.NumbaPerformanceWarning
tail -n 3 "$OUT/tests.log" | sed 's/^/      /' | tee -a "$SUMMARY"

# --- 2. the seed recipe end to end on the GPU (valid MSE should be ~0.81-0.82, as on the CPU) ----------
if [ $HAVE_ML100K = 1 ]; then
  step "train seed recipe --backend cuda" 60 "$RUNS" \
    "$PY" -m mfscratch train --backend cuda --json "$OUT/train.json"
  "$PY" - "$OUT/train.json" >>"$SUMMARY" 2>&1 <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
e = r["epochs"]
print("      seed recipe on cuda: valid_loss", [round(x["valid_loss"], 4) for x in e],
      "epoch seconds", [round(x["seconds"], 4) for x in e], "compile", round(r["compile_seconds"], 1), "s")
EOF
  [ -f "$OUT/train.json" ] && { cat "$OUT/train.json" | tr -d '\n' >>"$RESULTS"; echo >>"$RESULTS"; rm -f "$OUT/train.json"; }
fi

# --- 3. timings straight through the backend (works with or without `mfscratch bench`) -----------------
ML100K=(--data synthetic --ratings 100000 --users 944 --items 1665)
[ $HAVE_ML100K = 1 ] && ML100K=(--data ml-100k)
ML25M=(--data synthetic --ratings 25000095 --users 162541 --items 59047)
timing() { step "cuda_timing $*" "$1" "$RUNS" "$PY" benchmarks/cuda_timing.py --json-lines "$RESULTS" "${@:2}"; }
timing 60 "${ML100K[@]}" --mode exact --bs 64 --epochs 3 --loop device     # the exact seed recipe's shape
timing 45 "${ML25M[@]}" --mode sparse --bs 65536 --epochs 2 --loop device  # ML-25M-shaped, large batches

# --- 4. `mfscratch bench --backend cuda`, when this build has it ----------------------------------------
if "$PY" -m mfscratch bench --help >/dev/null 2>&1; then
  BENCH_DATA=(); "$PY" -m mfscratch bench --help 2>/dev/null | grep -q -- "--data" && BENCH_DATA=(--data ml-100k)
  [ $HAVE_ML100K = 1 ] || BENCH_DATA=(--ratings 100000 --users 944 --items 1665)
  bench() { local tag=$1; shift; step "bench $tag" 60 "$RUNS" "$PY" -m mfscratch bench --backend cuda --json "$OUT/b.json" "$@";
            [ -f "$OUT/b.json" ] && { tr -d '\n' <"$OUT/b.json" >>"$RESULTS"; echo >>"$RESULTS"; rm -f "$OUT/b.json"; }; }
  bench "ml-100k exact" "${BENCH_DATA[@]}" --mode exact --epochs 3
  bench "ml-100k sparse" "${BENCH_DATA[@]}" --mode sparse --epochs 3
  bench "ml-25m-shaped sparse" --ratings 25000095 --users 162541 --items 59047 --factors 50 --mode sparse --epochs 2
else
  say "SKIP  mfscratch bench (not in this build): the cuda_timing runs above stand in for it"
fi

# --- 5. extras while time is left: the host-loop fallback, sparse ML-100k, the batch-size sweep ------------
timing 45 "${ML100K[@]}" --mode exact --bs 64 --epochs 1 --loop host       # launch cost per step, for contrast
timing 40 "${ML100K[@]}" --mode exact --bs 64 --epochs 1 --group 1         # one thread per rating, for contrast
timing 40 "${ML100K[@]}" --mode exact --bs 64 --epochs 1 --max-blocks 264  # a smaller grid: cheaper barriers
timing 40 "${ML100K[@]}" --mode sparse --bs 64 --epochs 2 --loop device
timing 45 "${ML25M[@]}" --mode sparse --bs 8192 --epochs 1 --loop device
timing 60 "${ML25M[@]}" --mode sparse --bs 1024 --epochs 1 --loop device

# --- headline numbers ---------------------------------------------------------------------------------------
"$PY" - "$RESULTS" >>"$SUMMARY" 2>&1 <<'EOF'
import json, sys
print("results (kernel_seconds_estimate = one epoch through the backend runner minus the order upload):")
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "kernel_seconds_estimate" in r:
        print(f"  {r['card']}: {r['data']} {r['n_train']} train ratings, {r['mode']}, bs {r['bs']}, loop {r['loop']}, "
              f"group {r['group']}, {r['blocks']} blocks of {r['threads_per_block']}: "
              f"epoch {1e3 * r['kernel_seconds_estimate']:.1f} ms kernels ({r['us_per_step']} us/step, "
              f"{r['ratings_per_second'] / 1e6:.1f} M ratings/s); learner epoch {r['epoch_train_seconds']} s; "
              f"valid {[round(v, 4) for v in r['valid_loss']]}")
    else:
        print("  bench/train report:", json.dumps(r)[:400])
EOF
say "total $SECONDS s"
