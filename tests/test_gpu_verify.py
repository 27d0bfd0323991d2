"""The CPU rehearsal of tools/gpu_verify.sh (issue 15): its own logic with every GPU step stubbed
(GPU_VERIFY_DRY=1), the per-test time limit it loads into pytest, and the sanitizer workload
tests/sanitize_cuda.py run on the CPU ops. What needs a GPU (the build with nvcc, the kernels, the
sanitizers, the timings) is not rehearsed here: README "CUDA status" says what has run where."""
import json
import os
import re
import stat
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "gpu_verify.sh")
GPU_STEPS = ["test_clip", "test_rnn", "test_other", "memcheck", "racecheck", "bench_layer", "bench_clip",
             "bench_train_step", "bench_packed", "bench_proj"]
ALL_STEPS = ["env", "build", "load"] + GPU_STEPS + ["merge", "report"]

NEW_HELP = """\
  --kernel-name arg          Filter the kernels to check
  --kernel-name-exclude arg  Kernels not to check
  --report-api-errors arg    all, explicit or no
  --print-limit arg          Maximum number of errors printed
  --target-processes arg     application-only or all
"""
OLD_HELP = "  --filter arg   Kernel filter\n  --print-limit arg\n"


def fake_sanitizer(tmp_path, help_text):
    path = tmp_path / "compute-sanitizer"
    path.write_text("#!/bin/sh\ncase \"$1\" in\n  --help) cat <<'EOF'\n" + help_text + "EOF\n  ;;\n"
                    "  --version) echo 'fake compute-sanitizer' ;;\nesac\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def dry_run(tmp_path, help_text=NEW_HELP, **env):
    out = tmp_path / "out"
    full_env = dict(os.environ, GPU_VERIFY_DRY="1", OUT=str(out), TMPDIR=str(tmp_path),
                    COMPUTE_SANITIZER=fake_sanitizer(tmp_path, help_text), PYTHON=sys.executable)
    full_env.pop("TORCH_CUDA_ARCH_LIST", None)
    full_env.update(env)
    proc = subprocess.run(["bash", SCRIPT], cwd=str(tmp_path), env=full_env, capture_output=True, text=True,
                          timeout=120)
    summary = (out / "summary.log").read_text()
    log = (out / "verify.log").read_text()
    status = dict(re.findall(r"^(\w+)\s+(PASS|FAIL|TIMEOUT|SKIP)\s", summary, flags=re.M))
    return proc, out, summary, log, status


def step_output(log, name):
    """The part of verify.log under step NAME's header."""
    m = re.search(rf"^=+ \[\d+\] {name} \(cap (\d+) s\).*?$(.*?)^--- {name}:", log, flags=re.M | re.S)
    assert m, f"no section for step {name} in verify.log"
    return int(m.group(1)), m.group(2)


def test_dry_run_passes_writes_three_files_and_logs_every_command(tmp_path):
    proc, out, summary, log, status = dry_run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # what comes back from the GPU machine: at most 8 plain files, no folder
    assert sorted(os.listdir(out)) == ["bench.json", "summary.log", "verify.log"]
    assert status == {s: "PASS" for s in ALL_STEPS}, summary
    assert summary.rstrip().splitlines()[-1].startswith("verdict: PASS (15 of 15 steps passed")
    assert "DRY RUN" in summary.splitlines()[0]
    for name in ALL_STEPS:
        step_output(log, name)  # one header per step, in verify.log
    # the build: sm_90 only, all cores, no network, unbuffered python, an editable install without deps
    _, build = step_output(log, "build")
    assert "pip install -v --no-build-isolation --no-deps --no-index -e ." in build
    assert "TORCH_CUDA_ARCH_LIST=9.0" in build and "PIP_NO_INDEX=1" in build and "PYTHONUNBUFFERED=1" in build
    assert f"MAX_JOBS={os.cpu_count()}" in build or re.search(r"MAX_JOBS=\d+", build)
    # clipping tests first, each pytest run with the per-test limit
    order = [m for m in re.findall(r"^=+ \[\d+\] (\w+)", log, flags=re.M)]
    assert order[:6] == ["env", "build", "load", "test_clip", "test_rnn", "test_other"]
    for name in ("test_clip", "test_rnn", "test_other"):
        assert "-p per_test_timeout" in step_output(log, name)[1]
    # sanitizers: rnnfast's kernels only, no API-error reports; memcheck without the caching allocator
    _, memcheck = step_output(log, "memcheck")
    assert "PYTORCH_NO_CUDA_MEMORY_CACHING=1" in memcheck and "--tool memcheck" in memcheck
    _, racecheck = step_output(log, "racecheck")
    assert re.search(r"--tool racecheck .*tests/sanitize_cuda.py clip recurrent", racecheck)
    for text in (memcheck, racecheck):
        assert "--kernel-name kns=rnnfast" in text and "--report-api-errors no" in text
        assert "--error-exitcode 1" in text
    # every benchmark suite on the GPU, and the merged JSON holds them all, headline suites first
    for suite in ("layer", "clip", "train_step", "packed", "proj"):
        assert f"bench/test_{suite}.py --device cuda" in step_output(log, f"bench_{suite}")[1]
    merged = json.loads((out / "bench.json").read_text())
    assert [b["name"] for b in merged["benchmarks"]] == ["bench_layer", "bench_clip", "bench_train_step",
                                                         "bench_packed", "bench_proj"]
    assert "bench/report.py bench.json:" in summary and "| bench_layer | rnnfast |" in summary


def test_dry_run_failure_and_hang_are_reported_and_the_run_goes_on(tmp_path):
    proc, out, summary, log, status = dry_run(tmp_path, GPU_VERIFY_DRY_FAIL="test_clip",
                                              GPU_VERIFY_DRY_HANG="memcheck", GPU_VERIFY_CAP_memcheck="2")
    assert proc.returncode == 1
    assert status["test_clip"] == "FAIL" and status["memcheck"] == "TIMEOUT", summary
    assert "killed at its cap of 2 s" in summary
    # the steps after them still ran
    assert all(status[s] == "PASS" for s in ["test_rnn", "racecheck", "bench_layer", "merge", "report"]), summary
    assert re.search(r"^verdict: FAIL \(13 of 15 steps passed", summary, flags=re.M)


def test_exit_status_zero_without_results_is_a_failure(tmp_path):
    # every cuda test skipped (torch sees no GPU) or a sanitizer run with no clean summary: not a pass
    proc, out, summary, log, status = dry_run(tmp_path, GPU_VERIFY_DRY_EMPTY="test_rnn memcheck racecheck")
    assert proc.returncode == 1
    assert status["test_rnn"] == "FAIL" and "no test passed" in summary, summary
    assert status["memcheck"] == "FAIL" and status["racecheck"] == "FAIL"
    assert "the workload did not end with 'all ok'" in summary
    assert status["test_clip"] == "PASS" and status["bench_layer"] == "PASS"


def test_only_selected_steps_run_and_count(tmp_path):
    proc, out, summary, log, status = dry_run(tmp_path, GPU_VERIFY_ONLY="test_rnn bench_clip")
    assert proc.returncode == 0, summary
    assert list(status) == ["env", "build", "load", "test_rnn", "bench_clip", "merge", "report"], summary
    assert re.search(r"^verdict: PASS \(7 of 7 steps passed", summary, flags=re.M)
    assert [b["name"] for b in json.loads((out / "bench.json").read_text())["benchmarks"]] == ["bench_clip"]


def test_dry_run_build_failure_skips_the_gpu_steps(tmp_path):
    proc, out, summary, log, status = dry_run(tmp_path, GPU_VERIFY_DRY_FAIL="build")
    assert proc.returncode == 1
    assert status["build"] == "FAIL" and status["load"] == "SKIP"
    assert all(status[s] == "SKIP" for s in GPU_STEPS), summary
    assert "bench.json" not in os.listdir(out)


def test_dry_run_deadline_cuts_caps_and_skips_what_does_not_fit(tmp_path):
    # 14 s in all, 8 kept for the summary: the hanging build gets what is left (<= 6 s), not its 210
    proc, out, summary, log, status = dry_run(tmp_path, GPU_VERIFY_TOTAL_S="14", GPU_VERIFY_DRY_HANG="build")
    assert proc.returncode == 1
    cap, _ = step_output(log, "build")
    assert cap <= 6
    assert status["build"] == "TIMEOUT" and status["load"] == "SKIP", summary
    assert all(status[s] == "SKIP" for s in GPU_STEPS)


def test_sanitizer_flags_follow_its_help(tmp_path):
    _, _, summary, log, status = dry_run(tmp_path, help_text=OLD_HELP)
    _, memcheck = step_output(log, "memcheck")
    assert "--filter kns=rnnfast" in memcheck and "--kernel-name" not in memcheck
    assert "--report-api-errors" not in memcheck and "--target-processes" not in memcheck
    assert status["memcheck"] == "PASS"


def test_per_test_timeout_fails_a_slow_test_and_goes_on(tmp_path):
    (tmp_path / "test_slow.py").write_text(textwrap.dedent("""
        import time

        def test_slow():
            time.sleep(30)

        def test_fast():
            pass
    """))
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"), RNNFAST_TEST_TIMEOUT_S="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "per_test_timeout",
                           str(tmp_path / "test_slow.py")], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ran past its limit of 1 s" in proc.stdout
    assert re.search(r"1 failed, 1 passed", proc.stdout), proc.stdout


def test_sanitize_workload_runs_on_the_cpu_ops():
    """tests/sanitize_cuda.py's cases (and its own checks against torch) run on the CPU ops: the
    script is right before the sanitizer ever runs it on a GPU."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "sanitize_cuda.py"), "--cpu"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[-1] == "sanitize_cuda.py: all ok"
    clip = [line for line in lines if line.startswith("clip ")]
    recurrent = [line for line in lines[:-1] if not line.startswith("clip ")]
    assert all(line.endswith(" ok") for line in lines[:-1])
    assert lines[:len(clip)] == clip  # the clipping kernels first (racecheck's part)
    assert len(clip) == 5 * 7 and len(recurrent) == 4 * 5 * 4 + 4 * 4
    for p in ("p=2.0", "p=1.0", "p=inf", "p=-inf", "p=0.0", "p=0.5", "p=3.0"):
        assert sum(p in line for line in clip) == 5, p
    for cell in ("rnn_tanh", "rnn_relu", "gru ", "gru_reset_before", "lstm ", "lstm_proj"):
        assert any(line.startswith(cell) for line in recurrent), cell
        assert any(line.startswith(cell) and " B=0 " in line for line in recurrent), cell  # zero-size launches
