"""Print a markdown table of a pytest-benchmark results file: medians, throughput and ratios.

    python3 bench/report.py bench/results/<device>.json [more.json ...]
    python3 bench/report.py --heatmap bench/results/grid.png bench/results/<device>.json

For the size grid (suite 'grid', bench/test_grid.py) the per-point rows are summarized instead of
listed: the geometric mean, minimum and maximum of the ratios per cell x mode x threads, and every
point below 1.0x by name; ``--heatmap PNG`` draws the torch/rnnfast ratio of every point (one panel
per cell and mode x threads, rows H x B, columns T; matplotlib).

Convention for every suite in bench/ (the layer, train_step and clip suites follow it):

- ``benchmark.group``: one comparison, e.g. 'layer gru d2l-256'. All rows of a group time the
  same work with different implementations; ratios are only taken within a group.
- ``benchmark.extra_info``:
    impl      the implementation in this row: 'torch', 'scratch', 'rnnfast', ... (required;
              falls back to the parametrize id)
    baseline  the impl the speedup column compares against (default 'torch');
              speedup = median(baseline) / median(impl), > 1 means faster than the baseline.
              A second column compares against 'scratch' when the group has a scratch row.
    suite     section header ('layer', 'train_step', 'clip'); default: the group's first word
    case      the row label within the suite; default: the rest of the group name
    tokens    work per call in tokens (B*T): throughput column shows tokens/s = tokens/median
    bytes     or work per call in bytes (e.g. gradient bytes read+written by clipping): GB/s
    anything else (cell, size, backend, device, B, T, H, ...) is kept in the JSON, not shown.
"""
import argparse
import json
import math
import sys
from collections import OrderedDict


def _fmt_time(s):
    return f"{s * 1e3:.3f}" if s < 1 else f"{s * 1e3:.0f}"


def _fmt_throughput(info, median):
    if info.get("tokens"):
        v = info["tokens"] / median
        return f"{v / 1e6:.3f} M tok/s" if v >= 1e6 else f"{v / 1e3:.1f} k tok/s"
    if info.get("bytes"):
        return f"{info['bytes'] / median / 1e9:.2f} GB/s"
    return ""


def _ratio(t_ref, t):
    return f"{t_ref / t:.2f}x" if t_ref is not None else ""


def rows_by_suite(benchmarks):
    """{suite: {case: [bench, ...]}} in the order the benchmarks ran."""
    suites = OrderedDict()
    for b in benchmarks:
        info = b.get("extra_info") or {}
        group = b.get("group") or b["name"]
        first, _, rest = group.partition(" ")
        suite = info.get("suite") or first
        case = info.get("case") or rest or group
        suites.setdefault(suite, OrderedDict()).setdefault((group, case), []).append(b)
    return suites


def impl_of(b):
    info = b.get("extra_info") or {}
    return info.get("impl") or b.get("param") or b["name"]


def _row_order(b):
    # the baseline first, then the others in run order, the scratch reference last
    base = (b.get("extra_info") or {}).get("baseline", "torch")
    return (impl_of(b) != base, impl_of(b) == "scratch")


def _grid_points(benchmarks):
    """{(cell, mode, threads): {(H, B, T): {impl: median}}} of the grid suite's rows."""
    points = OrderedDict()
    for b in benchmarks:
        info = b.get("extra_info") or {}
        if info.get("suite") != "grid":
            continue
        key = (info["cell"], info["mode"], info["threads"])
        shape = (info["H"], info["B"], info["T"])
        points.setdefault(key, OrderedDict()).setdefault(shape, {})[impl_of(b)] = b["stats"]["median"]
    return points


def _ratios(shapes, other):
    """[(shape, median(other) / median(rnnfast))] where both were measured."""
    return [(s, m[other] / m["rnnfast"]) for s, m in shapes.items() if other in m and "rnnfast" in m]


def _geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def render_grid(points):
    """Summary of the grid: per cell x mode x threads, ratios vs torch (and onnxruntime)."""
    out = ["### grid (ratio = other / rnnfast, > 1: rnnfast faster)", "",
           "| cell | mode | threads | points | vs torch: geomean | min | max | "
           "vs onnxruntime: geomean | min |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    below, everything = [], []
    for (cell, mode, threads), shapes in points.items():
        rt, ro = _ratios(shapes, "torch"), _ratios(shapes, "onnxruntime")
        everything += [r for _, r in rt]
        below += [(f"{cell} {mode} H{h} B{b} T{t} th{threads}", other, r)
                  for other, rs in (("torch", rt), ("onnxruntime", ro))
                  for (h, b, t), r in rs if r < 1.0]
        vt, vo = [r for _, r in rt], [r for _, r in ro]
        fmt = lambda v: f"{v:.2f}x"  # noqa: E731
        out.append(f"| {cell} | {mode} | {threads} | {len(vt)} | {fmt(_geomean(vt)) if vt else ''} | "
                   f"{fmt(min(vt)) if vt else ''} | {fmt(max(vt)) if vt else ''} | "
                   f"{fmt(_geomean(vo)) if vo else ''} | {fmt(min(vo)) if vo else ''} |")
    out += ["", f"All points vs torch: geometric mean {_geomean(everything):.2f}x over "
            f"{len(everything)} points; {len(below)} ratio(s) below 1.0x"
            + (":" if below else "."), ""]
    out += [f"- {name}: {r:.2f}x vs {other}" for name, other, r in sorted(below, key=lambda x: x[2])]
    return "\n".join(out + [""])


def draw_heatmap(points, path):
    """One panel per (cell, mode x threads): rows H x B, columns T, colour log2(torch/rnnfast)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    cells = list(OrderedDict.fromkeys(c for c, _, _ in points))
    columns = list(OrderedDict.fromkeys((m, th) for _, m, th in points))
    fig, axes = plt.subplots(len(cells), len(columns), squeeze=False,
                             figsize=(3.2 * len(columns), 5.2 * len(cells)))
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-2.0, vmax=2.0)
    image = None
    for i, cell in enumerate(cells):
        for j, (mode, th) in enumerate(columns):
            ax = axes[i][j]
            shapes = points.get((cell, mode, th), {})
            rows = sorted({(h, b) for h, b, _ in shapes})
            cols = sorted({t for _, _, t in shapes})
            grid = [[float("nan")] * len(cols) for _ in rows]
            for (h, b, t), m in shapes.items():
                if "torch" in m and "rnnfast" in m:
                    grid[rows.index((h, b))][cols.index(t)] = m["torch"] / m["rnnfast"]
            logs = [[math.log2(v) if v == v else float("nan") for v in r] for r in grid]
            image = ax.imshow(logs, cmap="RdYlGn", norm=norm, aspect="auto")
            for r, row in enumerate(grid):
                for c, v in enumerate(row):
                    if v == v:
                        ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=7,
                                fontweight="bold" if v < 1 else "normal")
            ax.set_xticks(range(len(cols)), [f"T{t}" for t in cols], fontsize=7)
            ax.set_yticks(range(len(rows)), [f"H{h} B{b}" for h, b in rows], fontsize=7)
            ax.set_title(f"{cell} {mode} {th} thread{'s' if th > 1 else ''}", fontsize=9)
    fig.subplots_adjust(wspace=0.5, right=0.86)
    if image is not None:
        # an axes of its own right of the panels (colorbar(ax=axes) drew over the last column)
        bar = fig.colorbar(image, cax=fig.add_axes([0.9, 0.3, 0.015, 0.4]), ticks=[-2, -1, 0, 1, 2])
        bar.ax.set_yticklabels(["0.25x", "0.5x", "1x", "2x", "4x"])
        bar.set_label("torch.nn time / rnnfast time (> 1: rnnfast faster)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def render(data):
    m = data.get("machine_info", {})
    out = [f"## Benchmarks: {m.get('device_name', '?')} ({m.get('device', '?')})", "",
           f"torch {m.get('torch_version', '?')}, {m.get('torch_threads', '?')} threads, "
           f"commit {str(m.get('git_commit', (data.get('commit_info') or {}).get('id', '?')))[:12]}"
           f", {data.get('datetime', '')[:19]}", ""]
    benchmarks = data.get("benchmarks", [])
    grid = _grid_points(benchmarks)
    if grid:
        out.append(render_grid(grid))
    for suite, cases in rows_by_suite(benchmarks).items():
        if suite == "grid":
            continue
        out += [f"### {suite}", "",
                "| case | impl | median ms | throughput | speedup vs baseline | vs scratch |",
                "|---|---|---:|---:|---:|---:|"]
        for (_, case), benches in cases.items():
            medians = {impl_of(b): b["stats"]["median"] for b in benches}
            for b in sorted(benches, key=_row_order):
                info = b.get("extra_info") or {}
                impl, t = impl_of(b), b["stats"]["median"]
                base = info.get("baseline", "torch")
                vs_base = f"{_ratio(medians.get(base), t)} ({base})" if base in medians else ""
                out.append(f"| {case} | {impl} | {_fmt_time(t)} | {_fmt_throughput(info, t)} | "
                           f"{vs_base} | {_ratio(medians.get('scratch'), t)} |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="pytest-benchmark JSON file(s)")
    ap.add_argument("--heatmap", metavar="PNG",
                    help="draw the size grid's torch/rnnfast ratios (suite 'grid') to this file")
    args = ap.parse_args(argv)
    grid = OrderedDict()
    for path in args.results:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            sys.exit(f"report.py: cannot read {path}: {e}")
        print(render(data))
        for key, shapes in _grid_points(data.get("benchmarks", [])).items():
            grid.setdefault(key, OrderedDict()).update(shapes)
    if args.heatmap:
        if not grid:
            sys.exit("report.py: --heatmap: no 'grid' suite rows in the results")
        draw_heatmap(grid, args.heatmap)
        print(f"heat map: {args.heatmap}")


if __name__ == "__main__":
    main()
