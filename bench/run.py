"""`make bench` entry: run the benchmark suites, save the pytest-benchmark JSON under
bench/results/, print the markdown report. Extra arguments go to pytest, e.g.

    python3 bench/run.py                      # every suite but the size grid's -> results/<device>.json
    python3 bench/run.py bench/test_grid.py   # the size grid (~35 min on 2 cores) -> results/<device>-grid.json
    python3 bench/run.py -k "gru and d2l"     # a subset -> results/<device>-subset.json
    python3 bench/run.py --device cuda        # on the GPU (results/<gpu-name>.json)
    python3 bench/run.py --out /tmp/x.json -k lstm
    make bench ARGS='-k lstm'

Where the results go: the run of record (every default suite, no filter) is
results/<device>.json; a run of named suites is results/<device>-<suite>[+<suite>].json; any
selection (-k, -m, a ::node id) adds "-subset". The JSON is written to a temporary file and moved
into place only when the run passed and measured at least one benchmark: a failed, interrupted or
collect-only run never overwrites an earlier result (it is left as <out>.partial, if any).
"""
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
LONG_SUITES = ["test_grid.py", "test_cells.py", "test_predict.py", "test_packed_grid.py"]


def _load_bench_conftest():
    """bench/conftest.py, loaded by path (a plain `import conftest` would pick up whichever conftest
    module is already imported, e.g. tests/conftest.py under pytest)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_rnnfast_bench_conftest", os.path.join(HERE, "conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_conftest = _load_bench_conftest()
device_slug, git_commit = _conftest.device_slug, _conftest.git_commit


def _device_arg(args):
    for i, a in enumerate(args):
        if a == "--device" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--device="):
            return a.split("=", 1)[1]
    return "cpu"


def _out_arg(args):
    """--out PATH (removed from args), or None."""
    for i, a in enumerate(args):
        if a == "--out" and i + 1 < len(args):
            path = args[i + 1]
            del args[i:i + 2]
            return path
        if a.startswith("--out="):
            del args[i]
            return a.split("=", 1)[1]
    return None


def default_out(args, dev):
    """results/<device>[-<suites>][-subset].json for the arguments (see the module docstring)."""
    named = [a for a in args if not a.startswith("-") and (a.endswith(".py") or "::" in a)]
    name = device_slug(dev)
    suites = []
    for a in named:
        stem = os.path.basename(a.split("::")[0])[:-3]
        stem = stem[len("test_"):] if stem.startswith("test_") else stem
        if stem not in suites:
            suites.append(stem)
    if suites:
        name += "-" + "+".join(suites)
    if any(a in ("-k", "-m") or a.startswith(("-k=", "-m=")) for a in args) or any("::" in a for a in named):
        name += "-subset"
    return os.path.join(HERE, "results", name + ".json")


def _measured(path):
    """Number of benchmarks in a pytest-benchmark JSON (0 when unreadable)."""
    import json
    try:
        with open(path) as f:
            return len(json.load(f).get("benchmarks", []))
    except (OSError, ValueError):
        return 0


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv)
    out = _out_arg(args)
    dev = _device_arg(args)
    if torch.device(dev).type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"bench/run.py: --device {dev} but CUDA is not available")
    out = os.path.abspath(out or default_out(args, dev))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".partial"
    if os.path.exists(tmp):
        os.remove(tmp)
    # Suites named on the command line run alone; with none named, every suite but the size grid's
    # three (~45 min on 2 cores: run them by name, see README "The size grid").
    named = [a for a in args if not a.startswith("-") and (a.endswith(".py") or "::" in a)]
    where = [] if named else [HERE] + [f"--ignore={os.path.join(HERE, s)}" for s in LONG_SUITES]
    cmd = [sys.executable, "-m", "pytest", *where, "-q", "-p", "no:cacheprovider",
           f"--benchmark-json={tmp}", "--benchmark-columns=median,iqr,rounds", *args]
    print("+", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=os.path.dirname(HERE))
    n = _measured(tmp)
    if rc == 0 and n > 0:
        os.replace(tmp, out)
        subprocess.call([sys.executable, os.path.join(HERE, "report.py"), out])
        print(f"\nresults: {os.path.relpath(out)} ({n} benchmarks)")
    elif os.path.exists(tmp):
        print(f"\nbench/run.py: pytest exit status {rc}, {n} benchmarks measured: "
              f"{os.path.relpath(out)} left as it was; this run's JSON is {os.path.relpath(tmp)}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
