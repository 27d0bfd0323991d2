"""bench/run.py: where results go, and that a run which measured nothing or failed never
overwrites an earlier result file."""
import json
import os

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


@pytest.fixture
def run(bench_module):
    return bench_module("run")


def test_default_out_names_suites_and_subsets(run):
    slug = run.device_slug("cpu")
    base = os.path.join(BENCH, "results")
    assert run.default_out([], "cpu") == os.path.join(base, f"{slug}.json")
    assert run.default_out(["bench/test_grid.py"], "cpu") == os.path.join(base, f"{slug}-grid.json")
    assert run.default_out(["bench/test_grid.py", "bench/test_cells.py"], "cpu") == \
        os.path.join(base, f"{slug}-grid+cells.json")
    assert run.default_out(["-k", "lstm"], "cpu") == os.path.join(base, f"{slug}-subset.json")
    assert run.default_out(["bench/test_layer.py::test_layer"], "cpu") == \
        os.path.join(base, f"{slug}-layer-subset.json")


def test_out_option_is_taken_out_of_pytest_args(run):
    args = ["--out", "/x/y.json", "-k", "gru"]
    assert run._out_arg(args) == "/x/y.json" and args == ["-k", "gru"]
    args = ["--out=/x/z.json"]
    assert run._out_arg(args) == "/x/z.json" and args == []
    assert run._out_arg(["-k", "gru"]) is None


def test_a_run_that_measures_nothing_keeps_the_earlier_result(run, tmp_path):
    out = tmp_path / "record.json"
    earlier = {"benchmarks": [{"name": "earlier"}]}
    out.write_text(json.dumps(earlier))
    rc = run.main(["--out", str(out), os.path.join(BENCH, "test_clip.py"), "-k", "no_such_benchmark_xyz"])
    assert rc != 0  # pytest: no tests ran
    assert json.loads(out.read_text()) == earlier
