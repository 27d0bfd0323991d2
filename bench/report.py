"""Print a markdown table of a pytest-benchmark results file: medians, throughput and ratios.

    python3 bench/report.py bench/results/<device>.json [more.json ...]

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


def render(data):
    m = data.get("machine_info", {})
    out = [f"## Benchmarks: {m.get('device_name', '?')} ({m.get('device', '?')})", "",
           f"torch {m.get('torch_version', '?')}, {m.get('torch_threads', '?')} threads, "
           f"commit {str(m.get('git_commit', (data.get('commit_info') or {}).get('id', '?')))[:12]}"
           f", {data.get('datetime', '')[:19]}", ""]
    for suite, cases in rows_by_suite(data.get("benchmarks", [])).items():
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
    args = ap.parse_args(argv)
    for path in args.results:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            sys.exit(f"report.py: cannot read {path}: {e}")
        print(render(data))


if __name__ == "__main__":
    main()
