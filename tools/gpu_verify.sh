#!/usr/bin/env bash
# GPU verification of the CUDA path in one command that fits a short GPU window (docs/design.md §10,
# issue 15). Run from anywhere, on a machine with a GPU, nvcc, compute-sanitizer and a CUDA torch:
#
#     OUT=/some/dir tools/gpu_verify.sh     # results in $OUT (default: out/gpu-verify)
#
# At most GPU_VERIFY_TOTAL_S seconds (default 450: with the hard cap's 25 s of slack, under 8
# minutes); every step under its own cap and the whole under a hard `timeout`; steps in order of
# value, each appending to the logs as it runs, so a run cut short still leaves what it did:
#
#   env         GPU, driver, python, torch, nvcc, compute-sanitizer, ninja, cores
#   build       editable install, sm_90 only, all cores, no network (fallback: build_ext --inplace)
#   load        every rnnfast op has a CUDA kernel; one LSTM forward on the GPU
#   test_clip   tests/test_clip_cuda.py           (per-test limit: tools/per_test_timeout.py)
#   test_rnn    tests/test_cuda_recurrent.py
#   test_other  the other `cuda`-marked tests
#   memcheck    compute-sanitizer memcheck on tests/sanitize_cuda.py (every kernel, small cases)
#   racecheck   compute-sanitizer racecheck on the same workload (clipping first: the only kernels
#               with shared memory and barriers); both limited to rnnfast's kernels, no API-error noise
#   bench_*     bench/ with --device cuda, one pytest-benchmark JSON per suite, merged into
#               bench.json (and bench/results/<gpu>.json in the tree)
#   report      bench/report.py's table of bench.json
#
# What comes back (3 files, all in $OUT): verify.log (every step's output under a header),
# summary.log (one line per step: PASS / FAIL / TIMEOUT / SKIP, seconds, a detail; then the
# verdict), bench.json. Exit status: 0 when every step passed, 1 when any failed, timed out or was
# skipped, 124 when the whole run hit its hard cap (summary.log says so).
#
# Rehearsal without a GPU: GPU_VERIFY_DRY=1 runs the script's own logic (caps, logs, summary,
# verdict, the sanitizer flag detection, the bench merge) with every step's command replaced by a
# stub that logs the command. GPU_VERIFY_DRY_FAIL / GPU_VERIFY_DRY_HANG / GPU_VERIFY_DRY_EMPTY
# (space-separated step names) make stubs fail, hang, or exit 0 with no result (all tests skipped, no
# sanitizer summary); tests/test_gpu_verify.py runs it that way.
# A second, shorter run: GPU_VERIFY_ONLY="test_rnn memcheck" runs env, build, load and those steps.
# Knobs: GPU_VERIFY_TOTAL_S, GPU_VERIFY_CAP_<step> (seconds), PYTHON, RNNFAST_TEST_TIMEOUT_S,
# RNNFAST_BENCH_TARGET_S (seconds of timing per benchmark, default here 0.5), RNNFAST_GIT_COMMIT
# (the commit recorded in bench.json where the tree travels without .git).
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/out/gpu-verify}"
TOTAL_S="${GPU_VERIFY_TOTAL_S:-450}"
DRY="${GPU_VERIFY_DRY:-0}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/verify.log"
SUMMARY="$OUT/summary.log"

# ---- the hard cap on the whole: this script re-runs itself under `timeout` -------------------------
if [ -z "${_GPU_VERIFY_INNER:-}" ]; then
  : > "$LOG"
  : > "$SUMMARY"
  _GPU_VERIFY_INNER=1 _GPU_VERIFY_T0="$(date +%s)" timeout -k 5 "$((TOTAL_S + 20))" bash "${BASH_SOURCE[0]}" "$@"
  rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "verdict: TIMEOUT (the whole run passed its hard cap of $((TOTAL_S + 20)) s)" | tee -a "$SUMMARY" >> "$LOG"
    rc=124
  fi
  exit "$rc"
fi

cd "$ROOT"
T0="${_GPU_VERIFY_T0:-$(date +%s)}"
DEADLINE=$((T0 + TOTAL_S))
RESERVE_S=8                 # kept for the summary at the end
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_verify.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 16)}"
export RNNFAST_CUDA="${RNNFAST_CUDA:-1}"
export RNNFAST_TEST_TIMEOUT_S="${RNNFAST_TEST_TIMEOUT_S:-60}"
export RNNFAST_BENCH_TARGET_S="${RNNFAST_BENCH_TARGET_S:-0.5}"
export PYTHONPATH="$ROOT/tools:$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # rnnfast importable after either build
# ninja: the one on PATH, else the one the python package ships (pip's console script dir)
if ! command -v ninja >/dev/null 2>&1; then
  NINJA_BIN="$("$PY" -c 'import ninja, os; print(ninja.BIN_DIR)' 2>/dev/null)"
  [ -n "$NINJA_BIN" ] && export PATH="$NINJA_BIN:$PATH"
fi

declare -A STATUS
FAILED=0
STEP_NO=0

now() { date +%s; }

log() { echo "$*" >> "$LOG"; }

# detail_<step> FILE prints one line about the step's output (FILE holds just that step's output).
pytest_detail() {  # the last "N passed, M failed ..." line of pytest
  grep -E "^(=+ )?[0-9]+ (passed|failed|error|skipped|deselected)|no tests ran" "$1" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//'
}

# run_step NAME CAP CMD...: run CMD under `timeout` (CAP, cut to what is left before the deadline),
# output appended to verify.log under a header; a line in summary.log; STATUS[NAME].
# GPU_VERIFY_ONLY="step ..." (a second, shorter run): env, build, load and those steps; the others
# neither run nor count. Unset: every step.
selected() {
  [ -z "${GPU_VERIFY_ONLY:-}" ] && return 0
  case " env build load merge report ${GPU_VERIFY_ONLY} " in *" $1 "*) return 0 ;; esac
  return 1
}

run_step() {
  local name="$1" cap="$2"; shift 2
  selected "$name" || return 0
  local var="GPU_VERIFY_CAP_${name}"
  cap="${!var:-$cap}"
  STEP_NO=$((STEP_NO + 1))
  local left=$((DEADLINE - $(now) - RESERVE_S))
  if [ "$left" -lt 5 ]; then
    record "$name" SKIP 0 "no time left before the ${TOTAL_S} s deadline"
    return
  fi
  [ "$cap" -gt "$left" ] && cap="$left"
  {
    echo
    echo "=============== [$STEP_NO] $name (cap ${cap} s) $(date -u +%H:%M:%S) ==============="
    echo "\$ $*"
  } >> "$LOG"
  local before t0=$(now) rc
  before=$(stat -c %s "$LOG")
  if [ "$DRY" = 1 ] && [ "$name" != merge ] && [ "$name" != report ]; then  # those two need no GPU
    timeout -k 2 "$cap" bash -c 'dry_stub "$@"' dry_stub "$name" "$@" >> "$LOG" 2>&1
  elif declare -F "$1" >/dev/null; then  # a function of this script (exported): run it in a child bash
    timeout -k 10 "$cap" bash -c '"$@"' "$name" "$@" >> "$LOG" 2>&1
  else
    timeout -k 10 "$cap" "$@" >> "$LOG" 2>&1
  fi
  rc=$?
  local secs=$(($(now) - t0))
  tail -c +"$((before + 1))" "$LOG" > "$WORK/step.out"
  local detail=""
  if declare -F "detail_$name" >/dev/null; then detail="$("detail_$name" "$WORK/step.out")"
  elif [[ "$name" == bench_* ]]; then detail="$(pytest_detail "$WORK/step.out")"; fi
  local status=PASS
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status=TIMEOUT; detail="killed at its cap of ${cap} s${detail:+; $detail}"
  elif [ "$rc" -ne 0 ]; then
    status=FAIL; detail="exit status $rc${detail:+; $detail}"
  elif declare -F "check_$name" >/dev/null && ! "check_$name" "$WORK/step.out"; then
    status=FAIL; detail="exit status 0 but: $("check_$name" "$WORK/step.out" 2>&1 >/dev/null || true)${detail:+; $detail}"
  fi
  log "--- $name: $status in ${secs} s${detail:+ ($detail)}"
  record "$name" "$status" "$secs" "$detail"
}

record() {  # record NAME STATUS SECONDS DETAIL
  STATUS[$1]="$2"
  [ "$2" = PASS ] || FAILED=1
  printf '%-17s %-7s %4ss  %s\n' "$1" "$2" "$3" "$4" >> "$SUMMARY"
}

skip_step() {  # skip_step NAME REASON
  selected "$1" || return 0
  log "--- $1: SKIP ($2)"
  record "$1" SKIP 0 "$2"
}

ok() { [ "${STATUS[$1]:-}" = PASS ]; }

# ---- the stub of the rehearsal ---------------------------------------------------------------------
dry_stub() {  # dry_stub NAME CMD...: print the command, then succeed, fail or hang as asked
  local name="$1"; shift
  echo "[dry run] would run: $*"
  if declare -F "$1" >/dev/null; then declare -f "$1"; fi  # a function of this script: its body
  echo "[dry run] env: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS PIP_NO_INDEX=$PIP_NO_INDEX" \
    "PYTHONUNBUFFERED=$PYTHONUNBUFFERED RNNFAST_CUDA=$RNNFAST_CUDA RNNFAST_TEST_TIMEOUT_S=$RNNFAST_TEST_TIMEOUT_S" \
    "RNNFAST_BENCH_TARGET_S=$RNNFAST_BENCH_TARGET_S ninja=$(command -v ninja || echo none)"
  case " ${GPU_VERIFY_DRY_HANG:-} " in *" $name "*) echo "[dry run] hanging"; sleep 3600 ;; esac
  case " ${GPU_VERIFY_DRY_FAIL:-} " in *" $name "*) echo "[dry run] failing"; return 3 ;; esac
  case " ${GPU_VERIFY_DRY_EMPTY:-} " in  # exit status 0 with nothing to show for it
    *" $name "*) echo "[dry run] exit 0, no result"; case "$name" in test_*) echo "13 skipped in 0.01s" ;; esac
      return 0 ;;
  esac
  case "$name" in
    env) echo "cuda available: True" ;;
    test_*) echo "12 passed, 1 skipped in 0.01s" ;;
    bench_*)  # a minimal pytest-benchmark JSON where the real step writes one
      echo "1 passed in 0.01s"
      local f; for f in "$@"; do case "$f" in --benchmark-json=*) printf '%s\n' \
        "{\"machine_info\": {\"device_slug\": \"dry-run\", \"device_name\": \"dry run\"}," \
        " \"commit_info\": {}, \"benchmarks\": [{\"name\": \"$name\", \"group\": \"$name\"," \
        " \"extra_info\": {\"impl\": \"rnnfast\"}, \"stats\": {\"median\": 0.001}}]}" > "${f#--benchmark-json=}" ;;
      esac; done ;;
    memcheck) printf '%s\n' "sanitize_cuda.py: all ok" "========= ERROR SUMMARY: 0 errors" ;;
    racecheck) printf '%s\n' "sanitize_cuda.py: all ok" "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)" ;;
  esac
  return 0
}
export -f dry_stub

# ---- the checks that a zero exit status alone does not prove ---------------------------------------
detail_test_clip() { pytest_detail "$1"; }
detail_test_rnn() { pytest_detail "$1"; }
detail_test_other() { pytest_detail "$1"; }
check_test_clip() { grep -qE "[0-9]+ passed" "$1" || { echo "no test passed (all skipped: no GPU seen?)" >&2; return 1; }; }
check_test_rnn() { check_test_clip "$1"; }
check_test_other() { check_test_clip "$1"; }
detail_memcheck() { grep -E "ERROR SUMMARY|sanitize_cuda.py:" "$1" | tr '\n' ' ' | sed -E 's/=+ *//g; s/ +$//'; }
detail_racecheck() { grep -E "RACECHECK SUMMARY|ERROR SUMMARY|sanitize_cuda.py:" "$1" | tr '\n' ' ' | sed -E 's/=+ *//g; s/ +$//'; }
# a clean sanitizer summary, and the workload ran to its end (not skipped, not cut short)
check_memcheck() {
  grep -q "sanitize_cuda.py: all ok" "$1" || { echo "the workload did not end with 'all ok'" >&2; return 1; }
  grep -qE "ERROR SUMMARY: 0 errors" "$1" || { echo "no 'ERROR SUMMARY: 0 errors' line" >&2; return 1; }
}
check_racecheck() {
  grep -q "sanitize_cuda.py: all ok" "$1" || { echo "the workload did not end with 'all ok'" >&2; return 1; }
  grep -qE "RACECHECK SUMMARY: 0 hazards|ERROR SUMMARY: 0 errors" "$1" \
    || { echo "no 'RACECHECK SUMMARY: 0 hazards' or 'ERROR SUMMARY: 0 errors' line" >&2; return 1; }
}
detail_env() { grep -E "^(gpu|torch):" "$1" | tr '\n' ' '; }
check_env() { grep -q "^cuda available: True" "$1" || { echo "torch sees no CUDA device" >&2; return 1; }; }
detail_load() { tail -n 1 "$1"; }
detail_build() { grep -E "^build:" "$1" | tail -n 1; }

# ---- the steps -----------------------------------------------------------------------------------

find_tool() {  # PATH first, then CUDA_HOME, then /usr/local/cuda*
  command -v "$1" 2>/dev/null && return
  local home
  for home in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-*; do
    [ -n "$home" ] && [ -x "$home/bin/$1" ] && { echo "$home/bin/$1"; return; }
  done
}
SANITIZER="${COMPUTE_SANITIZER:-$(find_tool compute-sanitizer)}"

env_info() {
  echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse HEAD 2>/dev/null || echo "no .git; RNNFAST_GIT_COMMIT=${RNNFAST_GIT_COMMIT:-unset}")"
  echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
  "$PY" - <<'PYEOF'
import os, sys, torch
print(f"torch: {torch.__version__} cuda {torch.version.cuda} python {sys.version.split()[0]}")
print(f"cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name} sm_{p.major}{p.minor} {p.multi_processor_count} SMs {p.total_memory / 2**30:.0f} GiB")
from torch.utils.cpp_extension import CUDA_HOME
print(f"torch's CUDA_HOME guess: {CUDA_HOME}; CUDA_HOME env: {os.environ.get('CUDA_HOME')}")
print(f"TF32 matmul: {torch.backends.cuda.matmul.allow_tf32} (parity tests turn it off)")
PYEOF
  echo "nvcc: $(command -v nvcc) $(nvcc --version 2>&1 | tail -n 1)"
  echo "compute-sanitizer: ${SANITIZER:-not found} $([ -n "$SANITIZER" ] && "$SANITIZER" --version 2>&1 | tail -n 1)"
  echo "ninja: $(command -v ninja) $(ninja --version 2>&1)  cores: $(nproc)  MAX_JOBS=$MAX_JOBS TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
  "$PY" -c "import pytest_timeout" 2>/dev/null && echo "pytest-timeout: installed (not needed)"
  return 0
}

build() {  # the editable install of record; build_ext --inplace if pip itself (not the compiler) failed
  set -o pipefail
  if "$PY" -m pip install -v --no-build-isolation --no-deps --no-index -e . 2>&1 | tee "$WORK/pip.log"; then
    echo "build: pip install -e . ok"
    return 0
  fi
  if grep -qE "ninja: build stopped|error: command .*(nvcc|c\+\+|g\+\+|gcc).* failed" "$WORK/pip.log"; then
    echo "build: compile errors (above); no second try"
    return 1
  fi
  echo "build: pip install -e . failed before compiling; trying python3 setup.py build_ext --inplace"
  "$PY" setup.py build_ext --inplace && echo "build: build_ext --inplace ok (pip install -e failed)"
}

load_check() {
  "$PY" - <<'PYEOF'
import torch
import rnnfast._ops  # noqa: F401
names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("rnnfast::")]
missing = [n for n in names if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA")]
print(f"{len(names)} rnnfast ops, {len(names) - len(missing)} with a CUDA kernel; missing: {missing or 'none'}")
x = torch.randn(3, 2, 4, device="cuda")
h = torch.zeros(2, 5, device="cuda")
out, hy, cy, ws = torch.ops.rnnfast.lstm_forward(x, h, h, torch.randn(20, 4, device="cuda"),
                                                 torch.randn(20, 5, device="cuda"), None, None, False)
torch.cuda.synchronize()
ok = not missing and bool(torch.isfinite(out).all())
print(f"load: lstm_forward on {out.device}: {'ok' if ok else 'FAILED'}")
raise SystemExit(0 if ok else 1)
PYEOF
}

export -f env_info build load_check
BENCH_SUITES="layer clip train_step packed proj"  # headline first
export PY SANITIZER WORK OUT BENCH_SUITES

PYTEST=("$PY" -m pytest -v --tb=short -p no:cacheprovider -p per_test_timeout -rfEs --maxfail=25)

# compute-sanitizer flags, from its --help (flags differ between versions): only rnnfast's kernels
# (kernel names are mangled, so a substring of the namespace matches), no API-error reports (torch
# and cuBLAS probe with calls that return errors on purpose), exit status 1 on any error.
sanitizer_flags() {  # sanitizer_flags HELP_TEXT_FILE
  local help="$1" flags=(--error-exitcode 1)
  if grep -q -- "--print-limit" "$help"; then flags+=(--print-limit 20); fi
  if grep -q -- "--kernel-name " "$help" || grep -q -- "--kernel-name$" "$help"; then
    flags+=(--kernel-name kns=rnnfast)
  elif grep -q -- "--filter" "$help"; then
    flags+=(--filter kns=rnnfast)
  else
    echo "sanitizer: no kernel filter flag in --help: checking every kernel" >&2
  fi
  if grep -q -- "--report-api-errors" "$help"; then flags+=(--report-api-errors no); fi
  if grep -q -- "--target-processes" "$help"; then flags+=(--target-processes application-only); fi
  echo "${flags[@]}"
}

# ---- run -----------------------------------------------------------------------------------------
{
  echo "tools/gpu_verify.sh: $(date -u +%FT%TZ), deadline ${TOTAL_S} s, out $OUT$([ "$DRY" = 1 ] && echo ', DRY RUN (no GPU step runs)')"
} >> "$LOG"
[ "$DRY" = 1 ] && echo "DRY RUN: every step is a stub; nothing was built, tested or measured" >> "$SUMMARY"
[ -n "${GPU_VERIFY_ONLY:-}" ] && echo "only: env build load ${GPU_VERIFY_ONLY} (GPU_VERIFY_ONLY)" >> "$SUMMARY"

run_step env 20 env_info
run_step build 210 build
if ok build; then run_step load 40 load_check; else skip_step load "the build failed"; fi

GPU_READY=0
{ ok env && ok load; } && GPU_READY=1
if [ "$GPU_READY" = 1 ]; then
  run_step test_clip 60 "${PYTEST[@]}" tests/test_clip_cuda.py
  run_step test_rnn 130 "${PYTEST[@]}" tests/test_cuda_recurrent.py
  run_step test_other 40 "${PYTEST[@]}" -m cuda tests --ignore=tests/test_clip_cuda.py \
    --ignore=tests/test_cuda_recurrent.py
  if [ -n "$SANITIZER" ]; then
    "$SANITIZER" --help > "$WORK/sanitizer_help.txt" 2>&1
    read -r -a SAN_FLAGS <<< "$(sanitizer_flags "$WORK/sanitizer_help.txt" 2>>"$LOG")"
    run_step memcheck 70 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck "${SAN_FLAGS[@]}" \
      "$PY" tests/sanitize_cuda.py
    run_step racecheck 75 "$SANITIZER" --tool racecheck "${SAN_FLAGS[@]}" "$PY" tests/sanitize_cuda.py clip recurrent
  else
    skip_step memcheck "compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda*)"
    skip_step racecheck "compute-sanitizer not found"
  fi
  # the benchmarks: the headline suites first, one JSON each (a suite cut short loses only itself)
  for suite in $BENCH_SUITES; do
    case "$suite" in layer) cap=75 ;; clip) cap=40 ;; train_step) cap=45 ;; *) cap=30 ;; esac
    run_step "bench_$suite" "$cap" "$PY" -m pytest -q -p no:cacheprovider -p per_test_timeout "bench/test_$suite.py" --device cuda \
      --benchmark-json="$WORK/bench_$suite.json" --benchmark-columns=median,iqr,rounds
  done
else
  for s in test_clip test_rnn test_other memcheck racecheck bench_layer bench_clip bench_train_step \
           bench_packed bench_proj; do
    skip_step "$s" "no usable GPU build (env: ${STATUS[env]:-?}, load: ${STATUS[load]:-?})"
  done
fi

# merge the suites' JSON into bench.json (the first file's machine_info; every file's benchmarks)
merge_bench() {
  local suite files=()
  for suite in $BENCH_SUITES; do files+=("$WORK/bench_$suite.json"); done
  "$PY" - "$OUT/bench.json" "${files[@]}" <<'PYEOF'
import json, os, sys
out, parts = sys.argv[1], [p for p in sys.argv[2:] if os.path.exists(p)]
if not parts:
    print("merge: no benchmark results"); raise SystemExit(1)
merged = None
for p in parts:
    with open(p) as f:
        d = json.load(f)
    if merged is None:
        merged = d
    else:
        merged["benchmarks"] += d["benchmarks"]
with open(out, "w") as f:
    json.dump(merged, f, indent=1)
slug = merged.get("machine_info", {}).get("device_slug", "unknown")
print(f"merge: {len(merged['benchmarks'])} benchmarks from {len(parts)} suite(s) -> {out}; commit it as bench/results/{slug}.json")
PYEOF
}
export -f merge_bench
detail_merge() { grep "^merge:" "$1" | tail -n 1 | sed 's/^merge: //'; }
if ls "$WORK"/bench_*.json >/dev/null 2>&1; then
  run_step merge 20 merge_bench
  slug="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["machine_info"].get("device_slug", "unknown"))' "$OUT/bench.json" 2>/dev/null)"
  if [ "$DRY" != 1 ] && [ -n "$slug" ] && [ -f "$OUT/bench.json" ]; then
    cp "$OUT/bench.json" "bench/results/$slug.json"
  fi
  run_step report 20 "$PY" bench/report.py "$OUT/bench.json"
  if ok report; then { echo; echo "bench/report.py bench.json:"; grep -E '^(\||#)' "$WORK/step.out"; } >> "$SUMMARY"; fi
else
  skip_step merge "no benchmark ran"
fi

passed=0; total=0
for s in "${!STATUS[@]}"; do total=$((total + 1)); [ "${STATUS[$s]}" = PASS ] && passed=$((passed + 1)); done
verdict="verdict: $([ "$FAILED" = 0 ] && echo PASS || echo FAIL) ($passed of $total steps passed, $(($(now) - T0)) s)"
{ echo; echo "$verdict"; } >> "$SUMMARY"
{ echo; echo "$verdict"; } >> "$LOG"
cat "$SUMMARY"
exit "$FAILED"
