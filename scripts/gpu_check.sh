#!/usr/bin/env bash
# GPU machine check (H200, no network, no installs): device facts, kernel compile report,
# the gpu-marked tests on each recurrence path, then the benchmark against cuDNN/JAX/naive
# CuPy. Writes JSON and logs to $OUT when set. Budget: under 5 minutes on an H200.
#
#   bash scripts/gpu_check.sh            (from the checkout root)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT_DIR"
status=()

echo "== nvidia-smi -L"; nvidia-smi -L || true
echo "== python -m rnncu info"; python -m rnncu info | tee "$OUT_DIR/info.txt"

run_tests() {  # $1 = recurrence mode
  local mode=$1 rc=0
  echo "== pytest -m gpu with RNNCU_RECURRENCE=$mode"
  RNNCU_RECURRENCE=$mode timeout 150 python -m pytest -m gpu -q -x -p no:cacheprovider \
    --junitxml="$OUT_DIR/pytest_$mode.xml" tests 2>&1 | tee "$OUT_DIR/pytest_$mode.txt" || rc=$?
  status+=("tests[$mode]: $([ "$rc" = 0 ] && echo pass || echo "FAIL (rc $rc)")")
}
run_tests step
if [ -f rnncu/backend/persistent.py ]; then run_tests persistent; else
  status+=("tests[persistent]: not run (rnncu/backend/persistent.py absent)"); fi

echo "== benchmark"
bench_rc=0
timeout 120 python benchmarks/gpu_compare.py --repeats 20 --json "$OUT_DIR/gpu_compare.json" \
  > "$OUT_DIR/gpu_compare.txt" 2> "$OUT_DIR/gpu_compare.err" || bench_rc=$?
status+=("benchmark: $([ "$bench_rc" = 0 ] && echo ok || echo "FAIL (rc $bench_rc)")")
tail -5 "$OUT_DIR/gpu_compare.err" || true

echo; echo "== summary (logs in $OUT_DIR)"
printf '%s\n' "${status[@]}"
cat "$OUT_DIR/gpu_compare.txt" || true
for s in "${status[@]}"; do case "$s" in *FAIL*) exit 1;; esac; done
