"""`make bench` entry: run the benchmark suites, save bench/results/<device-slug>.json, print
the markdown report. Extra arguments go to pytest, e.g.

    python3 bench/run.py                      # every suite but the size grid's, on the CPU
    python3 bench/run.py bench/test_grid.py   # the size grid (hours)
    python3 bench/run.py -k "gru and d2l"     # a subset
    python3 bench/run.py --device cuda        # on the GPU (results/<gpu-name>.json)
    make bench ARGS='-k lstm'
"""
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
LONG_SUITES = ["test_grid.py", "test_cells.py", "test_predict.py"]
sys.path.insert(0, HERE)
from conftest import device_slug  # noqa: E402


def _device_arg(args):
    for i, a in enumerate(args):
        if a == "--device" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--device="):
            return a.split("=", 1)[1]
    return "cpu"


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv)
    dev = _device_arg(args)
    if torch.device(dev).type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"bench/run.py: --device {dev} but CUDA is not available")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out = os.path.join(HERE, "results", device_slug(dev) + ".json")
    # Suites named on the command line run alone; with none named, every suite but the size grid's
    # three (hours on 2 cores: run them by name, see README "The size grid").
    named = [a for a in args if not a.startswith("-") and (a.endswith(".py") or "::" in a)]
    where = [] if named else [HERE] + [f"--ignore={os.path.join(HERE, s)}" for s in LONG_SUITES]
    cmd = [sys.executable, "-m", "pytest", *where, "-q", "-p", "no:cacheprovider",
           f"--benchmark-json={out}", "--benchmark-columns=median,iqr,rounds", *args]
    print("+", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=os.path.dirname(HERE))
    if os.path.exists(out):
        subprocess.call([sys.executable, os.path.join(HERE, "report.py"), out])
        print(f"\nresults: {os.path.relpath(out)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
