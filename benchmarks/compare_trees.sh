#!/usr/bin/env bash
# Alternate two source trees (a frozen baseline and this one) on the speed checks of a refactor:
#   bash benchmarks/compare_trees.sh BASE_TREE [RUNS]      (MFSCRATCH_DATA must point at ml-100k's folder)
# Each round runs `mfscratch bench --backend cpu --backend parallel` (ML-100k, all modes, JSON rows) and
# `benchmarks/scale_ml25m.py --per-rating --epochs 3` in both trees, alternating, and writes the JSON
# under $OUT (default ./compare-out), one file per tree, run and check, with the load average.
set -euo pipefail
base=$(cd "$1" && pwd); here=$(cd "$(dirname "$0")/.." && pwd); runs=${2:-3}
out=${OUT:-compare-out}; mkdir -p "$out"; out=$(cd "$out" && pwd)
for tree in "$base" "$here"; do  # compile (or load) each tree's kernels once, outside the rounds
  (cd "$tree" && PYTHONPATH="$tree" python -m mfscratch bench --backend cpu --backend parallel --epochs 1 >/dev/null)
done
for run in $(seq 1 "$runs"); do
  for tree in "$base" "$here"; do
    name=$([ "$tree" = "$base" ] && echo base || echo branch)
    cat /proc/loadavg > "$out/$name-$run.load"
    (cd "$tree" && PYTHONPATH="$tree" python -m mfscratch bench --backend cpu --backend parallel \
      --json "$out/$name-bench-$run.json" >/dev/null)
    (cd "$tree" && PYTHONPATH="$tree" python benchmarks/scale_ml25m.py --per-rating --epochs 3) \
      > "$out/$name-scale-$run.json"
    cat /proc/loadavg >> "$out/$name-$run.load"
  done
done
python - "$out" <<'PY'
import json, statistics as st, sys
from pathlib import Path
out, rows = Path(sys.argv[1]), {}
for tree in ("base", "branch"):
    for f in sorted(out.glob(f"{tree}-bench-*.json")):
        for r in json.loads(f.read_text()):
            mode = {"sparse-sgd1": "per-rating"}.get(r["mode"], r["mode"])
            rows.setdefault((r["backend"], mode), {}).setdefault(tree, []).append(r["seconds_per_epoch"])
    for f in sorted(out.glob(f"{tree}-scale-*.json")):
        rows.setdefault(("scale_ml25m", "per-rating"), {}).setdefault(tree, []).append(
            json.loads(f.read_text())["seconds_per_epoch"])
print("backend mode: base median (spread) | branch median (spread) s/epoch")
for (backend, mode), d in rows.items():
    b, n = d.get("base", [0]), d.get("branch", [0])
    slower = st.median(n) - st.median(b) > max(n) - min(n)
    print(f"{backend} {mode}: {st.median(b):.4f} ({max(b) - min(b):.4f}) | {st.median(n):.4f} ({max(n) - min(n):.4f})"
          + ("  slower by more than its spread" if slower else ""))
PY
