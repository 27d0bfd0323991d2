"""Re-check grid points interleaved: is a point below 1.0x really slower, or was it the machine?

    python3 bench/recheck.py bench/results/<device>-grid.json            # every point below 1.0x
    python3 bench/recheck.py GRID.json --below 0.95 --vs onnxruntime --rounds 15
    python3 bench/recheck.py GRID.json --case "lstm fwd H64 B128 T35 th1" --out /tmp/r.json

The grid (bench/test_grid.py) times each implementation of a point in its own pytest-benchmark run,
one after the other. On a shared machine the load drifts in between, so a single ratio can be off
by 30-50%. This script takes the grid's points whose ratio (baseline / rnnfast) is below --below
and measures each point again, interleaved. Each round times a block of calls of every
implementation, in a rotating order, and takes the ratio within that round, so a slow spell hits
both sides. It reports the median of the per-round ratios with its quartiles.

It re-checks the cells suite's points too (a bench/results/<device>-cells.json; e.g. --below 1.5,
the cells' target): each built by bench/_common.cell_loop_step as bench/test_cells.py builds it,
against torch.nn's cells.

The points are built exactly as bench/test_grid.py builds them: one layer, I = H, time-major zero-state
input, inference mode for 'fwd', outputs.sum() backward for 'fwdbwd', and the exported torch.nn
layer in onnxruntime with the same intra-op thread count. The JSON written (default
bench/results/<device>-recheck.json) lists per point the grid's ratio and the re-checked median,
quartiles, rounds and per-implementation median times.
Not a pytest-benchmark suite: it re-measures a grid result, it does not replace one.
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import CELL_STEPS, cell_loop_step, grid_step  # noqa: E402
from run import device_slug, git_commit  # noqa: E402


def grid_points(path, below, vs, only=None):
    """[(case, baseline, grid ratio)] of the grid file's points with baseline / rnnfast < below."""
    with open(path) as f:
        data = json.load(f)
    med = {}
    for b in data["benchmarks"]:
        e = b.get("extra_info", {})
        if e.get("suite") in ("grid", "cells"):
            med[(e["case"], e["impl"])] = b["stats"]["median"]
    baselines = ["torch", "onnxruntime"] if vs == "both" else [vs]
    out = []
    for (case, impl), t in sorted(med.items()):
        if impl != "rnnfast" or (only and case not in only):
            continue
        for base in baselines:
            if (case, base) in med:
                ratio = med[(case, base)] / t
                if only or ratio < below:
                    out.append((case, base, ratio))
    return out


def parse_case(case):
    """A grid case 'cell mode H.. B.. T.. th..', or a cells-suite case 'cell H.. B.. th..' (mode
    'cells', T the loop's steps)."""
    parts = case.split()
    if len(parts) == 4:
        cell, h, b, th = parts
        return cell, "cells", int(h[1:]), int(b[1:]), CELL_STEPS, int(th[2:])
    cell, mode, h, b, t, th = parts
    return cell, mode, int(h[1:]), int(b[1:]), int(t[1:]), int(th[2:])


def steps_of(case, baseline):
    """{impl: a no-argument callable doing one timed unit of work} for rnnfast and the baseline,
    built by bench/_common.grid_step (cell_loop_step) as the grid (the cells suite) builds them; and
    the point's thread count."""
    cell, mode, H, B, T, threads = parse_case(case)
    if mode == "cells":
        return {impl: cell_loop_step(impl, cell, H, B, "cpu") for impl in ("rnnfast", baseline)}, threads
    return {impl: grid_step(impl, cell, mode, H, B, T, threads, "cpu") for impl in ("rnnfast", baseline)}, threads


def measure(steps, rounds, block_s):
    """Per round, a block of calls of each implementation (rotating order); returns {impl: [mean
    seconds per call per round]}."""
    impls = list(steps)
    for fn in steps.values():  # warm up, and size the blocks
        fn()
    calls = {}
    for impl, fn in steps.items():
        start = time.perf_counter()
        fn()
        calls[impl] = max(1, int(block_s / max(time.perf_counter() - start, 1e-7)))
    times = {impl: [] for impl in impls}
    for r in range(rounds):
        order = impls[r % len(impls):] + impls[:r % len(impls)]
        for impl in order:
            fn, n = steps[impl], calls[impl]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[impl].append((time.perf_counter() - start) / n)
    return times


def quartiles(values):
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grid", help="a grid or cells result JSON (bench/results/<device>-grid.json, -cells.json)")
    ap.add_argument("--below", type=float, default=1.0, help="re-check points whose grid ratio is below this")
    ap.add_argument("--vs", choices=["torch", "onnxruntime", "both"], default="torch")
    ap.add_argument("--case", action="append", help="re-check this point (e.g. 'lstm fwd H64 B128 T35 th1'); repeatable")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--block-s", type=float, default=0.05, help="seconds of calls per implementation per round")
    ap.add_argument("--out", help="default: bench/results/<device>-recheck.json")
    args = ap.parse_args(argv)

    points = grid_points(args.grid, args.below, args.vs, set(args.case) if args.case else None)
    if not points:
        print("recheck: no grid point to re-check")
        return 0
    prev_threads = torch.get_num_threads()
    results = []
    for i, (case, baseline, grid_ratio) in enumerate(points, 1):
        try:
            steps, threads = steps_of(case, baseline)
        except ImportError as e:  # onnxruntime / onnx not installed
            print(f"[{i}/{len(points)}] {case} vs {baseline}: skipped ({e})")
            continue
        torch.set_num_threads(threads)
        try:
            times = measure(steps, args.rounds, args.block_s)
        finally:
            torch.set_num_threads(prev_threads)
        ratios = [b / r for b, r in zip(times[baseline], times["rnnfast"])]
        med = statistics.median(ratios)
        q1, q3 = quartiles(ratios)
        row = dict(case=case, baseline=baseline, grid_ratio=grid_ratio, ratio=med, ratio_q1=q1, ratio_q3=q3,
                   rounds=len(ratios), rnnfast_s=statistics.median(times["rnnfast"]),
                   baseline_s=statistics.median(times[baseline]))
        results.append(row)
        print(f"[{i}/{len(points)}] {case} vs {baseline}: grid {grid_ratio:.2f}x -> {med:.2f}x "
              f"(quartiles {q1:.2f}-{q3:.2f}, {len(ratios)} rounds)", flush=True)

    below = [r for r in results if r["ratio"] < 1.0]
    clearly = [r for r in below if r["ratio_q3"] < 1.0]
    print(f"recheck: {len(below)} of {len(results)} points below 1.0x interleaved "
          f"({len(clearly)} with the upper quartile below 1.0x too)")
    out = args.out or os.path.join(HERE, "results", f"{device_slug('cpu')}-recheck.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(dict(grid=os.path.relpath(os.path.abspath(args.grid), os.path.dirname(HERE)), below=args.below,
                       vs=args.vs, rounds=args.rounds, block_s=args.block_s, commit=git_commit(),
                       torch=torch.__version__, datetime=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                       points=results), f, indent=1)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
