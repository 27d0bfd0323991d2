"""A/B of two source trees on the layer shapes: which commit is faster, on this noisy machine.

    python3 bench/ab.py OLD_TREE NEW_TREE [--threads 1] [--rounds 3] [--cells gru,lstm]

Each tree is a checkout with its extension built in place (rnnfast/_C*.so), e.g. a
`git worktree add /tmp/old <commit>` plus `python3 setup.py build_ext --inplace` there. Every
round runs one fresh process per tree, alternating (so slow drifts of a shared machine hit both),
and times one layer forward (inference mode) and forward+backward at the d2l sizes and the word-LM
size for each cell; per case it prints the median over rounds of each tree's median time, the
ratio new/old and both spreads. Times are CPU time of the process (time.process_time), which other
jobs on the machine disturb less than wall time; with --threads > 1 that counts every thread.
Not a pytest-benchmark suite: it compares rnnfast with itself, not with a baseline.
"""
import argparse
import json
import statistics
import subprocess
import sys

CASES = {"d2l-256": (28, 256, 32, 35), "d2l-512": (28, 512, 32, 35), "wordlm": (128, 128, 20, 35)}
CLASSES = {"rnn_tanh": "RNN", "gru": "GRU", "lstm": "LSTM"}

CHILD = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch, rnnfast
torch.set_num_threads(int(sys.argv[2]))
cases, classes = json.loads(sys.argv[3]), json.loads(sys.argv[4])
out = {}
torch.manual_seed(0)
for cell, cls in classes.items():
    for size, (I, H, B, T) in cases.items():
        m = getattr(rnnfast, cls)(I, H)
        x = torch.randn(T, B, I, requires_grad=True)
        def fwdbwd():
            y, _ = m(x)
            y.sum().backward()
        def fwd():
            with torch.inference_mode():
                m(x)
        for mode, f in (("fwdbwd", fwdbwd), ("fwd", fwd)):
            for _ in range(3):
                f()
            ts, end = [], time.process_time() + 0.6
            while time.process_time() < end or len(ts) < 5:
                t = time.process_time(); f(); ts.append(time.process_time() - t)
            out[f"{cell} {size} {mode}"] = statistics.median(ts) * 1e3
print(json.dumps(out))
"""


def measure(tree, threads, classes):
    res = subprocess.run([sys.executable, "-c", CHILD, tree, str(threads), json.dumps(CASES), json.dumps(classes)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cells", default=",".join(CLASSES), help="comma-separated: " + ", ".join(CLASSES))
    args = ap.parse_args(argv)
    classes = {c: CLASSES[c] for c in args.cells.split(",")}
    runs = {"old": [], "new": []}
    for _ in range(args.rounds):
        for which in ("old", "new"):
            runs[which].append(measure(getattr(args, which), args.threads, classes))
    print(f"{args.threads} thread(s), {args.rounds} rounds; ms, median over rounds (old -> new), new/old, spreads")
    for key in runs["old"][0]:
        old = [r[key] for r in runs["old"]]
        new = [r[key] for r in runs["new"]]
        mo, mn = statistics.median(old), statistics.median(new)
        print(f"{key:26s} {mo:8.2f} -> {mn:8.2f}  {mn / mo:5.2f}  (old {min(old):.2f}-{max(old):.2f}, "
              f"new {min(new):.2f}-{max(new):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
