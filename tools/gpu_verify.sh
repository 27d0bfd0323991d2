#!/usr/bin/env bash
# GPU verification of the CUDA path in one command (DESIGN.md §7), for a machine with a GPU,
# nvcc and a CUDA torch already installed:
#
#     tools/gpu_verify.sh            # logs and results under $OUT (default: out/gpu-verify)
#
# Steps (each logs to $OUT/<step>.log and the run goes on when one fails): environment, build
# (editable install), ptxas resource report, CPU-side CUDA checks (compile + emulation), the
# `cuda`-marked tests, compute-sanitizer memcheck and racecheck on tests/sanitize_cuda.py, the
# benchmarks (pytest-benchmark JSON). $OUT/summary.log lists every step's exit status; the
# script exits non-zero if any step failed.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out/gpu-verify}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
FAILED=0
: > "$OUT/summary.log"

step() {  # step NAME CMD...: run CMD, output to $OUT/NAME.log, record the status
  local name="$1"; shift
  local t0=$SECONDS
  echo "=== $name: $*"
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 15 "$OUT/$name.log"
  printf '%-12s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$*" | tee -a "$OUT/summary.log"
  [ "$rc" -eq 0 ] || FAILED=1
  return 0
}

find_tool() {  # PATH first, then the CUDA toolkit's bin
  command -v "$1" 2>/dev/null && return
  for home in "${CUDA_HOME:-}" /usr/local/cuda; do
    [ -n "$home" ] && [ -x "$home/bin/$1" ] && { echo "$home/bin/$1"; return; }
  done
}
NVCC="$(find_tool nvcc)"
SANITIZER="$(find_tool compute-sanitizer)"

env_info() {
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) changed file(s)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  [ -n "$NVCC" ] && "$NVCC" --version | tail -n 2
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
}

load_check() {  # the CUDA kernels are registered in the built extension
  "$PY" - <<'PYEOF'
import torch, rnnfast._ops  # noqa: F401
x = torch.randn(3, 2, 4, device="cuda")
h = torch.zeros(2, 5, device="cuda")
out, hy, cy, ws = torch.ops.rnnfast.lstm_forward(x, h, h, torch.randn(20, 4, device="cuda"),
                                                 torch.randn(20, 5, device="cuda"), None, None, False)
torch.cuda.synchronize()
print("lstm_forward on", out.device, "ok:", bool(torch.isfinite(out).all()))
PYEOF
}

ptxas_report() {
  for f in csrc/kernels/*.cu; do
    "$NVCC" -std=c++17 -O3 -c "$f" -o /dev/null -gencode=arch=compute_90,code=sm_90 -Xptxas -v 2>&1 \
      | grep -E "Compiling entry|registers|spill"
  done
}

step env          env_info
step build        "$PY" -m pip install -q --no-build-isolation --no-deps -e .
step load         load_check
if [ -n "$NVCC" ]; then step ptxas ptxas_report; fi
step cpu_checks   "$PY" -m pytest -q tests/test_kernels_compile.py tests/test_cuda_emulated.py

echo "=== tests: $PY -m pytest -q -m cuda tests"
t0=$SECONDS
"$PY" -m pytest -q -m cuda tests 2>&1 | tee "$OUT/tests.log" | tail -n 25
rc=${PIPESTATUS[0]}
printf '%-12s rc=%-3s %4ss  %s\n' tests "$rc" "$((SECONDS - t0))" "pytest -q -m cuda tests" | tee -a "$OUT/summary.log"
[ "$rc" -eq 0 ] || FAILED=1

if [ -n "$SANITIZER" ]; then
  step memcheck   env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck --error-exitcode 1 \
                  "$PY" tests/sanitize_cuda.py
  step racecheck  "$SANITIZER" --tool racecheck --error-exitcode 1 "$PY" tests/sanitize_cuda.py
else
  echo "compute-sanitizer not found" | tee -a "$OUT/summary.log"; FAILED=1
fi

step bench        "$PY" -m pytest -q bench --benchmark-json="$OUT/bench.json"

echo "=== summary ($OUT)"
cat "$OUT/summary.log"
exit "$FAILED"
