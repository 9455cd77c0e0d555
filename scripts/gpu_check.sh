#!/usr/bin/env bash
# GPU machine check (H200, no network, no installs): device facts, every kernel compiled
# into CuPy's cache, the gpu-marked tests on each recurrence path, then the benchmark against
# cuDNN/JAX/naive CuPy, then compute-sanitizer on a few small cases while time is left. Writes
# JSON and logs (8 files at most) to $OUT when set. Budget: under 5 minutes on an H200.
#
#   bash scripts/gpu_check.sh            (from the checkout root; runs python3)
#   PYTHON=/path/to/python bash scripts/gpu_check.sh    (another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The device image's python3 is the interpreter that holds CuPy, PyTorch and JAX; a bare
# `python` may be missing or another one. $PYTHON overrides.
PYTHON="${PYTHON:-$(command -v python3 || command -v python || true)}"
if [ -z "$PYTHON" ]; then echo "gpu_check: no python3 or python on the PATH" >&2; exit 2; fi
echo "== interpreter: $PYTHON ($("$PYTHON" -V 2>&1))"
OUT_DIR="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT_DIR"
status=()
# One deadline for the whole script (the stages' own limits add up to more): each stage gets
# its cap or what is left after keeping `reserve` seconds for the stages after it.
DEADLINE=290
budget() {  # budget CAP RESERVE -> seconds for this stage (0: no time left, skip it)
  local left=$((DEADLINE - SECONDS - $2))
  if [ "$left" -gt "$1" ]; then left=$1; fi
  if [ "$left" -lt 20 ]; then left=0; fi
  echo "$left"
}

# CuPy's disk cache must be writable: precompile fills it and the tests load from it. Where
# the default (~/.cupy/kernel_cache) is not (no HOME, a read-only one, another user's), use
# a folder of the checkout.
cupy_cache="${CUPY_CACHE_DIR:-${HOME:+$HOME/.cupy/kernel_cache}}"
if [ -z "$cupy_cache" ] || ! mkdir -p "$cupy_cache" 2>/dev/null || [ ! -w "$cupy_cache" ]; then
  export CUPY_CACHE_DIR="$PWD/.cupy_kernel_cache"
  mkdir -p "$CUPY_CACHE_DIR"
  echo "== CuPy cache: ${cupy_cache:-no HOME} is not writable, using $CUPY_CACHE_DIR"
fi

echo "== nvidia-smi -L"; nvidia-smi -L || true
# --quick: the tests below compile every kernel they launch, for this device's arch
echo "== python -m rnncu info --quick"; "$PYTHON" -m rnncu info --quick | tee "$OUT_DIR/info.txt"

# Every kernel module into CuPy's disk cache, one NVRTC process per core, so the tests and
# the benchmark below load them instead of compiling: 291 modules, an estimated 875 s of
# compiling on one core of the 2-core CPU machine (single modules timed there: cluster 2.8 to
# 5.0 s, grid 2.7 s, batch 0.8 s; the step tiles 11 s, the small-batch file 13 s and the TF32
# step file 9.6 s, one module each), so about a minute on 16 cores.
echo "== python -m rnncu precompile"
pre_rc=0
t_pre="$(budget 120 180)"  # 180 s kept for the tests and the benchmark
# (never `timeout 0`: that means no limit at all)
if [ "$t_pre" = 0 ]; then pre_rc=no-time-left; else
  timeout "$t_pre" "$PYTHON" -m rnncu precompile --jobs "$(nproc)" 2>&1 \
    | tee "$OUT_DIR/precompile.txt" || pre_rc=$?
fi
status+=("precompile: $([ "$pre_rc" = 0 ] && tail -1 "$OUT_DIR/precompile.txt" || echo "FAIL (rc $pre_rc)") [at ${SECONDS} s]")

# One run: the GPU tests force each recurrence path (step, persistent) themselves.
echo "== pytest -m gpu"
test_rc=0
t_tests="$(budget 180 90)"  # 90 s kept for the benchmark
if [ "$t_tests" = 0 ]; then test_rc=no-time-left; else
  timeout "$t_tests" "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider --maxfail=20 \
    --junitxml="$OUT_DIR/pytest_gpu.xml" tests 2>&1 | tee "$OUT_DIR/pytest_gpu.txt" || test_rc=$?
  # All skipped is no pass: it means CuPy saw no device.
  if [ "$test_rc" = 0 ] && ! grep -qE "[0-9]+ passed" "$OUT_DIR/pytest_gpu.txt"; then
    test_rc=no-test-ran
  fi
fi
status+=("gpu tests: $([ "$test_rc" = 0 ] && echo pass || echo "FAIL (rc $test_rc)") [at ${SECONDS} s]")

echo "== benchmark"
bench_rc=0
t_bench="$(budget 150 0)"
if [ "$t_bench" = 0 ]; then bench_rc=no-time-left; else
  timeout "$t_bench" "$PYTHON" benchmarks/gpu_compare.py --repeats 20 \
    --json "$OUT_DIR/gpu_compare.json" > "$OUT_DIR/gpu_compare.txt" \
    2> "$OUT_DIR/gpu_compare.err" || bench_rc=$?
fi
status+=("benchmark: $([ "$bench_rc" = 0 ] && echo ok || echo "FAIL (rc $bench_rc)") [at ${SECONDS} s]")
tail -5 "$OUT_DIR/gpu_compare.err" || true

# compute-sanitizer on a few small cases per kernel family, while the 5 minutes allow: what
# the host emulation cannot check (out-of-bounds and misaligned accesses on the device,
# shared-memory races, barrier misuse, reads of memory nothing wrote). CuPy's pools are off
# (--no-memory-pool) so that every array has its own bounds. Each case is a test that also
# compares against NumPy.
SANITIZER_CASES=(
  "tests/test_cupy_backend.py::test_every_step_kernel_matches_numpy[3x1x7-float32]"
  "tests/test_cupy_backend.py::test_tf32_step_kernels_stay_near_float64"
  "tests/test_cupy_backend.py::test_every_step_kernel_matches_numpy[4x33x257-float64]"
  "tests/test_persistent_gpu.py::test_forward_and_backward_match_numpy[auto-shape1-True-False-tanh-float32]"
  "tests/test_persistent_gpu.py::test_forward_and_backward_match_numpy[auto-shape6-True-True-tanh-float32]"
  "tests/test_persistent_gpu.py::test_forward_and_backward_match_numpy[auto-shape7-True-False-relu-float32]"
  "tests/test_persistent_gpu.py::test_forward_and_backward_match_numpy[no-clusters-shape7-True-True-tanh-float32]"
  "tests/test_persistent_gpu.py::test_forward_and_backward_match_numpy[auto-shape9-True-False-tanh-float32]"
  "tests/test_persistent_gpu.py::test_forward_and_backward_match_numpy[no-clusters-shape11-False-False-tanh-float32]"
  "tests/test_persistent_gpu.py::test_forward_and_backward_match_numpy[auto-shape3-True-False-tanh-float64]"
)
sanitizer="$(command -v compute-sanitizer || ls -d /usr/local/cuda*/bin/compute-sanitizer \
  /usr/local/cuda*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1 || true)"
: > "$OUT_DIR/sanitizer.txt"  # one file for all four tools: $OUT brings back 8 files at most
for tool in memcheck racecheck synccheck initcheck; do
  if [ -z "$sanitizer" ]; then status+=("sanitizer: not found"); break; fi
  t_san="$(budget 40 0)"
  if [ "$t_san" = 0 ]; then status+=("sanitizer $tool: not run (${SECONDS} s used)"); continue; fi
  echo "== compute-sanitizer --tool $tool"
  log="$(mktemp)"
  san_rc=0
  # --report-api-errors no: the checks are of the kernels; a refused launch the layer falls
  # back from (a warning, which fails the test anyway) is not a kernel error
  timeout "$t_san" "$sanitizer" --tool "$tool" --error-exitcode 86 --print-limit 20 \
    --report-api-errors no \
    "$PYTHON" -m pytest -q -p no:cacheprovider --no-memory-pool "${SANITIZER_CASES[@]}" \
    > "$log" 2>&1 || san_rc=$?
  { echo "== $tool (rc $san_rc)"; cat "$log"; } >> "$OUT_DIR/sanitizer.txt"
  tail -3 "$log"
  if grep -q "Device not supported" "$log"; then
    status+=("sanitizer: the device is not supported here (gVisor?)"); rm -f "$log"; break
  fi
  # skipped cases pass too: clean only when they ran
  if [ "$san_rc" = 0 ] && ! grep -qE "[0-9]+ passed" "$log"; then san_rc=no-test-ran; fi
  rm -f "$log"
  case "$san_rc" in
    0) status+=("sanitizer $tool: clean [at ${SECONDS} s]") ;;
    124) status+=("sanitizer $tool: not finished in ${t_san} s [at ${SECONDS} s]") ;;
    86) status+=("sanitizer $tool: FAIL (errors reported) [at ${SECONDS} s]") ;;
    *) status+=("sanitizer $tool: FAIL (rc $san_rc) [at ${SECONDS} s]") ;;
  esac
done

echo; echo "== summary (logs in $OUT_DIR)"
printf '%s\n' "${status[@]}"
if [ "$bench_rc" != 0 ] && [ -s "$OUT_DIR/gpu_compare.json" ]; then
  echo "(benchmark stopped early: the shapes it finished)"
  "$PYTHON" benchmarks/gpu_compare.py --table-from "$OUT_DIR/gpu_compare.json" || true
else
  cat "$OUT_DIR/gpu_compare.txt" || true
fi
for s in "${status[@]}"; do case "$s" in *FAIL*) exit 1;; esac; done
