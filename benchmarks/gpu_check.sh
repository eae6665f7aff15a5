#!/usr/bin/env bash
# The CUDA path on a real NVIDIA GPU, in one prepared run of under 5 minutes (see docs/cuda.md).
#
# Run from the repository root on a machine with a GPU, numba-cuda, numpy and pandas (the workplace's
# H100/H200 image has them all; nothing is installed unless numba-cuda is missing AND wheels were
# carried in .whl/):
#     OUT=/some/dir bash benchmarks/gpu_check.sh
# or, with no GPU, the same script end to end under Numba's CUDA simulator on tiny sizes (checks the
# script and the kernels, not the speed; under 5 minutes):
#     OUT=/some/dir bash benchmarks/gpu_check.sh --simulator
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
SIM=0
case "${1:-}" in
  --simulator) SIM=1 ;;
  "") ;;
  *) echo "error: unknown option ${1} (use --simulator, or no option on a GPU machine)" >&2; exit 2 ;;
esac
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
if [ $SIM = 1 ]; then
  export NUMBA_ENABLE_CUDASIM=1      # every kernel as Python threads: tiny sizes, timings meaningless
else
  unset NUMBA_ENABLE_CUDASIM         # the whole point: real kernels on the real GPU
fi
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
say "gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$([ $SIM = 1 ] && echo ' UNDER THE SIMULATOR (tiny sizes)')"
say "load average at start: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
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
HAVE_ML100K=0; [ -f "$MFSCRATCH_DATA/ml-100k/u.data" ] && [ $SIM = 0 ] && HAVE_ML100K=1
say "real ML-100k at \$MFSCRATCH_DATA: $([ $HAVE_ML100K = 1 ] && echo yes || echo 'no (synthetic ML-100k shape instead)')"

# --- 1. correctness on the GPU: the simulator tests, run for real --------------------------------------
# (under the simulator: the per-rating kernels' tests only; test_cuda.py alone takes ~1.5 minutes there)
TESTS=(tests/test_cuda.py tests/test_cuda_per_rating.py); [ $SIM = 1 ] && TESTS=(tests/test_cuda_per_rating.py)
step "tests (${TESTS[*]} $([ $SIM = 1 ] && echo 'under the simulator' || echo 'on the GPU'))" 150 "$OUT/tests.log" \
  "$PY" -m pytest -q -m cudasim "${TESTS[@]}" -W ignore::numba.core.errors.NumbaPerformanceWarning
tail -n 3 "$OUT/tests.log" | sed 's/^/      /' | tee -a "$SUMMARY"

# --- 1b. per-rating SGD (kernels/cuda/per_rating.py): both schedules, fp32/fp16/bf16 storage ---------------
# ML-100k: the documented per-rating recipe (SGD, bs 1, lr 0.02, wd 0.08, 12 epochs): valid MSE per schedule and
# storage (stratified, 50 groups, on the CPU with kernels/cpu/half.py: 0.8147 fp32, 0.8150 fp16, 0.8171 bf16;
# bf16 is run for measuring only: it misses the accuracy bar); ML-25M shape: the epoch's kernels.
ML100K=(--data synthetic --ratings 100000 --users 944 --items 1665)
[ $HAVE_ML100K = 1 ] && ML100K=(--data ml-100k)
ML25M=(--data synthetic --ratings 25000095 --users 162541 --items 59047)
PR_EPOCHS=12
if [ $SIM = 1 ]; then   # the same rows, tiny: 60-80 ratings, k = 4, 1 epoch
  ML100K=(--data synthetic --ratings 60 --users 12 --items 15 --factors 4 --hogwild-per-worker 16)
  ML25M=(--data synthetic --ratings 80 --users 30 --items 11 --factors 4 --per-rating-groups 3 --hogwild-per-worker 16)
  PR_EPOCHS=1
fi
timing() { step "cuda_timing $*" "$1" "$RUNS" "$PY" benchmarks/cuda_timing.py --json-lines "$RESULTS" "${@:2}"; }
timing 100 "${ML100K[@]}" --mode per-rating --epochs $PR_EPOCHS --schedule stratified,hogwild --storage fp32,fp16,bf16
timing 150 "${ML25M[@]}" --mode per-rating --epochs 1 --schedule stratified,hogwild --storage fp32,fp16,bf16

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
if [ $SIM = 1 ]; then
  timing 60 "${ML100K[@]}" --mode exact --bs 16 --epochs 1 --loop device
  timing 60 "${ML25M[@]}" --mode sparse --bs 32 --epochs 1 --loop device
else
  timing 60 "${ML100K[@]}" --mode exact --bs 64 --epochs 3 --loop device     # the exact seed recipe's shape
  timing 45 "${ML25M[@]}" --mode sparse --bs 65536 --epochs 2 --loop device  # ML-25M-shaped, large batches
fi

# --- 4. `mfscratch bench --backend cuda`, when this build has it ----------------------------------------
if [ $SIM = 1 ]; then
  say "SKIP  mfscratch bench and the extras (the simulator: full-size runs would take hours)"
elif "$PY" -m mfscratch bench --help >/dev/null 2>&1; then
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
if [ $SIM = 0 ]; then
  timing 45 "${ML100K[@]}" --mode exact --bs 64 --epochs 1 --loop host       # launch cost per step, for contrast
  timing 40 "${ML100K[@]}" --mode exact --bs 64 --epochs 1 --group 1         # one thread per rating, for contrast
  timing 40 "${ML100K[@]}" --mode exact --bs 64 --epochs 1 --max-blocks 264  # a smaller grid: cheaper barriers
  timing 40 "${ML25M[@]}" --mode per-rating --epochs 1 --per-rating-groups 2048  # more groups: more blocks in flight
  timing 40 "${ML100K[@]}" --mode sparse --bs 64 --epochs 2 --loop device
  timing 45 "${ML25M[@]}" --mode sparse --bs 8192 --epochs 1 --loop device
  timing 60 "${ML25M[@]}" --mode sparse --bs 1024 --epochs 1 --loop device
fi

# --- headline numbers ---------------------------------------------------------------------------------------
"$PY" - "$RESULTS" 2>&1 <<'EOF' | tee -a "$SUMMARY"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print("results (kernel ms: per-rating, the epoch's kernels timed alone; other modes, one epoch through the")
print("backend runner minus the order upload):")
print()
print("| card | data | train ratings | k | mode | schedule | storage | bs | layout | kernel ms | M ratings/s | "
      "learner epoch s (best) | valid MSE (last) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    if "kernel_seconds_estimate" not in r:
        continue
    if r["mode"] == "per-rating":
        layout = (f"{r['per_rating_groups']} groups" if r["schedule"] == "stratified"
                  else f"{r['hogwild_per_worker']} a block") + f", {r['lanes_per_rating']} lanes"
    else:
        layout = f"loop {r['loop']}, group {r['group']}, {r['blocks']} blocks"
    print(f"| {r['card']} | {r['data']} | {r['n_train']} | {r['factors']} | {r['mode']} | {r.get('schedule') or ''} | "
          f"{r.get('storage', 'fp32')} | {r['bs']} | {layout} | {1e3 * r['kernel_seconds_estimate']:.2f} | "
          f"{r['ratings_per_second'] / 1e6:.1f} | {min(r['epoch_train_seconds']):.4f} | {r['valid_loss'][-1]:.4f} |")
for r in rows:
    if "kernel_seconds_estimate" not in r:
        print("  bench/train report:", json.dumps(r)[:400])
print()
print("JSON (one object per run, as in results.jsonl):")
print(json.dumps(rows))
EOF
say "load average at end: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
say "total $SECONDS s"
