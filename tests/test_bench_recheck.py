"""bench/recheck.py: which grid points it picks, how it reads a case, and one real (tiny) re-check
end to end with its JSON."""
import json

import pytest


@pytest.fixture
def recheck(bench_module):
    return bench_module("recheck")


def _grid(path, medians):
    """A grid JSON as bench/run.py writes it: {(case, impl): median seconds}."""
    benchmarks = [{"stats": {"median": m}, "extra_info": {"suite": "grid", "case": c, "impl": i}}
                  for (c, i), m in medians.items()]
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    return str(path)


def test_points_below_threshold(recheck, tmp_path):
    grid = _grid(tmp_path / "g.json", {
        ("gru fwd H64 B8 T8 th1", "torch"): 1.0, ("gru fwd H64 B8 T8 th1", "rnnfast"): 2.0,
        ("gru fwd H64 B8 T8 th1", "onnxruntime"): 4.0,
        ("lstm fwdbwd H64 B1 T1 th2", "torch"): 3.0, ("lstm fwdbwd H64 B1 T1 th2", "rnnfast"): 1.0,
    })
    assert recheck.grid_points(grid, 1.0, "torch") == [("gru fwd H64 B8 T8 th1", "torch", 0.5)]
    assert recheck.grid_points(grid, 1.0, "onnxruntime") == []
    assert recheck.grid_points(grid, 2.5, "both") == [("gru fwd H64 B8 T8 th1", "torch", 0.5),
                                                       ("gru fwd H64 B8 T8 th1", "onnxruntime", 2.0)]
    # a named case is re-checked whatever its ratio
    assert recheck.grid_points(grid, 1.0, "torch", {"lstm fwdbwd H64 B1 T1 th2"}) == \
        [("lstm fwdbwd H64 B1 T1 th2", "torch", 3.0)]
    assert recheck.parse_case("lstm fwdbwd H64 B1 T1 th2") == ("lstm", "fwdbwd", 64, 1, 1, 2)


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_recheck_end_to_end(recheck, tmp_path, mode):
    case = f"gru {mode} H16 B2 T3 th1"
    grid = _grid(tmp_path / "g.json", {(case, "torch"): 1.0, (case, "rnnfast"): 2.0})
    out = tmp_path / "r.json"
    assert recheck.main([grid, "--rounds", "3", "--block-s", "0.001", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    (row,) = data["points"]
    assert row["case"] == case and row["baseline"] == "torch" and row["grid_ratio"] == 0.5
    assert row["rounds"] == 3 and row["rnnfast_s"] > 0 and row["baseline_s"] > 0
    assert row["ratio_q1"] <= row["ratio"] <= row["ratio_q3"]


def test_cells_points_end_to_end(recheck, tmp_path):
    """A cells-suite result: its case reads as mode 'cells', and the re-check runs the cell loop."""
    case = "gru H8 B2 th1"
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"benchmarks": [
        {"stats": {"median": m}, "extra_info": {"suite": "cells", "case": case, "impl": i}}
        for i, m in (("torch", 1.0), ("rnnfast", 1.0))]}))
    assert recheck.parse_case(case) == ("gru", "cells", 8, 2, 100, 1)
    assert recheck.grid_points(str(path), 1.5, "torch") == [(case, "torch", 1.0)]
    out = tmp_path / "r.json"
    assert recheck.main([str(path), "--below", "1.5", "--rounds", "3", "--block-s", "0.001", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["points"]
    assert row["case"] == case and row["rounds"] == 3 and row["rnnfast_s"] > 0 and row["baseline_s"] > 0
