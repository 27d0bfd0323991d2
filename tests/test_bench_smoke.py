"""Smoke test of the benchmark suites' code (not of speed): a few points of the size grid, the cell
loop, generation, the off-grid shapes and the PackedSequence suite run through pytest-benchmark with timing disabled, and report.py's grid summary
and heat map on a synthetic results file, and bench/small_gemm.py and bench/large_gemm.py on one weight. The full grid is run
by hand (bench/run.py), never in CI."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import report  # noqa: E402


def test_bench_suites_run_a_few_points(tmp_path):
    selection = ("(test_grid and (gru-fwd-H64-B1-T8-th1 or lstm-fwdbwd-H64-B8-T1-th2) and not onnx)"
                 " or (test_cell_loop and lstm-H64-B1-th1)"
                 " or (test_predict and gru-H256-th1)"
                 " or (test_offgrid and (s0- or s7-))"
                 " or (test_offgrid_call and th1 and (unbatched-GRUCell or dropout-LSTM or packed-GRU))"
                 " or (test_packed_grid and (gru-fwd-H64-B8-T35-ragged-th1 or lstm-fwdbwd-H64-B8-T35-uniform-th2))")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_grid.py", "bench/test_cells.py",
         "bench/test_predict.py", "bench/test_offgrid.py", "bench/test_packed_grid.py", "-q", "-p", "no:cacheprovider",
         "--benchmark-disable", "-k", selection],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "22 passed" in proc.stdout, proc.stdout[-2000:]


def test_offgrid_shapes_are_fixed_and_cover_the_corners():
    """The off-grid suite's shapes come from a fixed seed (runs stay comparable) and include the
    corners it exists for: K below 16 and not a multiple of 16, float64, stacks, bidirectional."""
    import test_offgrid
    a, b = test_offgrid.shapes(), test_offgrid.shapes()
    assert a == b and len(a) == test_offgrid.N_SHAPES
    assert any(s["H"] < 16 for s in a) and any(s["H"] % 16 and s["H"] > 16 for s in a)
    assert any(s["dtype"] == "float64" for s in a) and any(s["L"] == 2 for s in a) and any(s["bi"] for s in a)


def _bench(cell, mode, H, B, T, threads, impl, median):
    return {"name": f"test_grid[{cell}-{impl}]", "group": f"grid {cell} {mode}",
            "stats": {"median": median},
            "extra_info": {"suite": "grid", "impl": impl, "baseline": "torch", "cell": cell,
                           "mode": mode, "H": H, "B": B, "T": T, "threads": threads}}


def test_report_grid_summary_and_heatmap(tmp_path):
    benches = []
    for cell in ("gru", "lstm"):
        for T in (1, 8):
            for B in (1, 8):
                benches.append(_bench(cell, "fwd", 64, B, T, 1, "torch", 2.0))
                # one point where rnnfast is slower (ratio 0.5), the rest 2x faster
                slow = cell == "lstm" and T == 1 and B == 8
                benches.append(_bench(cell, "fwd", 64, B, T, 1, "rnnfast", 4.0 if slow else 1.0))
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": benches}))
    text = report.render(json.loads(path.read_text()))
    assert "| gru | fwd | 1 | 4 | 2.00x | 2.00x | 2.00x |" in text
    assert "| lstm | fwd | 1 | 4 | 1.41x | 0.50x | 2.00x |" in text  # (2*2*2*0.5)^(1/4)
    assert "1 ratio(s) below 1.0x" in text
    assert "- lstm fwd H64 B8 T1 th1: 0.50x vs torch" in text
    pytest.importorskip("matplotlib")
    png = tmp_path / "grid.png"
    report.main(["--heatmap", str(png), str(path)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_small_gemm_script_builds_and_checks_its_kernels():
    """bench/small_gemm.py compiles blas.h and the AVX-512 GEMMs into its own extension (it broke
    once when blas.h came to need gemm_avx512.cpp) and checks every kernel it times against at::mm."""
    proc = subprocess.run([sys.executable, "bench/small_gemm.py", "--shapes", "256x64", "--m", "8", "20"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 256x64 |")]
    assert len(rows) == 2, proc.stdout[-2000:]


def test_large_gemm_script_builds_and_checks_its_kernels():
    """bench/large_gemm.py compiles blas.h with the blocked AVX2 GEMM into its own extension and
    checks MKL's and the blocked kernel's products against at::mm (H = 64: the smallest shapes the
    blocked GEMM takes; '-' where it does not, e.g. on a CPU without AVX2)."""
    proc = subprocess.run([sys.executable, "bench/large_gemm.py", "--H", "64", "--rows", "1120", "--step-rows", "256"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "| 64 |" in line]
    assert len(rows) == 4, proc.stdout[-2000:]


def test_call_sweep_runs_and_keeps_a_seeds_calls(tmp_path):
    """bench/sweep.py: a seed draws the same base calls with or without the extra fields (so the
    README's --plain sweeps stay reproducible), and a short sweep runs both libraries and writes its
    rows."""
    import random

    import sweep
    extras = ("bf", "proj", "f64", "nobias", "unsorted")
    rng_a, rng_b = random.Random(11), random.Random(11)
    drawn = []
    for i in range(40):
        a, b = sweep.draw(rng_a, None), sweep.draw(rng_b, random.Random(i))
        assert {k: v for k, v in a.items() if k not in extras} == {k: v for k, v in b.items() if k not in extras}
        assert not any(a[k] for k in extras)
        drawn.append(b)
    assert all(any(d[k] for d in drawn) for k in extras)  # each extra field is drawn on somewhere
    out = tmp_path / "sweep.json"
    # this checkout's rnnfast, whatever is installed (bench/sweep.py's own directory is bench/)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "bench/sweep.py", "--seed", "11", "--n", "2", "--rounds", "1", "--plain",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 and all(r["ratio"] > 0 and r["rnnfast_s"] > 0 for r in rows)
    assert "geometric mean" in proc.stdout
