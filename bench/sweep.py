"""Random calls against torch.nn, each interleaved with it in one process: where the size grid's
shapes are fixed, this draws the calls users make — layers and cells, stacks, bidirectional, hx
given or not, PackedSequence input, dropout between layers, inference / no_grad / training forward /
forward+backward, 1 or 2 threads — and prints torch.nn / rnnfast per call (median of the rounds'
ratios, their range), the geometric mean and the calls below 1.0x. Not a pytest-benchmark suite: a
search for corners (the README's "Calls the grid does not make"); what it finds goes into a suite
(bench/test_offgrid.py test_offgrid_call, bench/test_packed_grid.py).

    python3 bench/sweep.py --seed 11 --n 80 --plain   # the README's sweeps (seeds 11 and 23: --plain)
    python3 bench/sweep.py --seed 5 --n 80 --out /tmp/sweep.json

--plain draws the base fields only. Without it each call also draws, from its own generator (so the
base fields of a seed stay the same), batch_first, an LSTM projection, float64, bias=False and
unsorted packing."""
import argparse
import json
import random
import statistics
import sys
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast

MODULES = {"rnn_tanh": ("RNN", {}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}), "gru": ("GRU", {}),
           "lstm": ("LSTM", {})}
CELLS = {"rnn_tanh": ("RNNCell", {}), "rnn_relu": ("RNNCell", {"nonlinearity": "relu"}), "gru": ("GRUCell", {}),
         "lstm": ("LSTMCell", {})}


def draw(rng, extra):
    """One call's description: the base fields from rng (the same for a seed whatever `extra`), the
    extra ones from `extra` (a generator of their own, or None: all off)."""
    kind = rng.choice(["layer", "layer", "layer", "cell"])
    cell = rng.choice(list(MODULES))
    H = rng.choice([8, 24, 48, 64, 96, 128, 160, 256, 320, 400, 512, 640])
    s = dict(kind=kind, cell=cell, H=H, I=rng.choice([H, 16, 50, 128, H * 2]), B=rng.choice([1, 2, 4, 7, 10, 20, 48, 100]),
             T=rng.choice([1, 3, 10, 20, 35, 64, 150]), L=rng.choice([1, 2, 3]), bi=rng.random() < 0.25,
             packed=rng.random() < 0.2, hx=rng.random() < 0.4, drop=rng.random() < 0.2,
             mode=rng.choice(["inf", "nograd", "train_fwd", "fwdbwd", "fwdbwd"]), th=rng.choice([1, 2]))
    x = extra or random.Random(0)
    on = extra is not None
    s.update(bf=on and x.random() < 0.3, proj=on and x.random() < 0.2, f64=on and x.random() < 0.2,
             nobias=on and x.random() < 0.25, unsorted=on and x.random() < 0.5)
    return s


def _context(mode):
    return torch.inference_mode() if mode == "inf" else torch.no_grad() if mode == "nograd" else None


def build(lib, s, lengths):
    """The timed call of `lib` (torch.nn or rnnfast) for description s; `lengths` for packed input."""
    torch.manual_seed(0)
    dtype = torch.float64 if s["f64"] else torch.float32
    ctx = _context(s["mode"])
    if s["kind"] == "cell":  # the cell stepped T times, as a decoder does
        name, kw = CELLS[s["cell"]]
        m = getattr(lib, name)(s["I"], s["H"], bias=not s["nobias"], **kw).to(dtype)
        xs = torch.randn(s["T"], s["B"], s["I"], dtype=dtype)

        def loop():
            st, total = None, 0
            for t in range(s["T"]):
                st = m(xs[t], st)
                total = total + (st[0] if isinstance(st, tuple) else st).sum()
            if s["mode"] == "fwdbwd":
                total.backward()
    else:
        name, kw = MODULES[s["cell"]]
        kw = dict(kw, num_layers=s["L"], bidirectional=s["bi"], batch_first=s["bf"], bias=not s["nobias"],
                  dropout=0.3 if s["drop"] and s["L"] > 1 else 0.0)
        if s["proj"] and name == "LSTM" and s["H"] >= 8:
            kw["proj_size"] = s["H"] // 2
        m = getattr(lib, name)(s["I"], s["H"], **kw).to(dtype)
        if s["mode"] in ("inf", "nograd"):
            m.eval()
        shape = (s["B"], s["T"], s["I"]) if s["bf"] else (s["T"], s["B"], s["I"])
        x = torch.randn(shape, dtype=dtype, requires_grad=s["mode"] == "fwdbwd")
        D = 2 if s["bi"] else 1
        h0 = None
        if s["hx"]:
            h0 = torch.randn(s["L"] * D, s["B"], kw.get("proj_size") or s["H"], dtype=dtype)
            if name == "LSTM":
                h0 = (h0, torch.randn(s["L"] * D, s["B"], s["H"], dtype=dtype))

        def loop():
            inp = (pack_padded_sequence(x, lengths, batch_first=s["bf"], enforce_sorted=not s["unsorted"])
                   if lengths else x)
            out = m(inp, h0)[0]
            if s["mode"] == "fwdbwd":
                (out.data if lengths else out).sum().backward()

    def step():
        m.zero_grad(set_to_none=True)
        if ctx is None:
            return loop()
        with _context(s["mode"]):
            loop()
    return step


def lengths_of(s, rng2):
    if s["kind"] != "layer" or not s["packed"]:
        return None
    lengths = [rng2.randint(1, s["T"]) for _ in range(s["B"])]
    if s["unsorted"]:
        lengths[0] = s["T"]
        return lengths
    return sorted(lengths, reverse=True)


def measure(steps, rounds, block_s=0.05):
    """Median over rounds of torch's time / rnnfast's, the two alternating in blocks of ~block_s."""
    f = steps["torch"]
    f()
    t0 = time.perf_counter()
    f()
    n = max(1, int(block_s / max(time.perf_counter() - t0, 1e-6)))
    ratios, last = [], {}
    for _ in range(rounds):
        for k, g in steps.items():
            g()
            t0 = time.perf_counter()
            for _ in range(n):
                g()
            last[k] = (time.perf_counter() - t0) / n
        ratios.append(last["torch"] / last["rnnfast"])
    return statistics.median(ratios), min(ratios), max(ratios), last["rnnfast"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--n", type=int, default=80, help="how many calls")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--plain", action="store_true", help="the base fields only (the README's sweeps)")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    rng, rng2 = random.Random(args.seed), random.Random(args.seed + 1)
    rows = []
    for i in range(args.n):
        s = draw(rng, None if args.plain else random.Random(args.seed * 100003 + i))
        torch.set_num_threads(s["th"])
        lengths = lengths_of(s, rng2)
        steps = {"torch": build(torch.nn, s, lengths), "rnnfast": build(rnnfast, s, lengths)}
        med, lo, hi, t = measure(steps, args.rounds)
        rows.append(dict(s, ratio=med, ratio_min=lo, ratio_max=hi, rnnfast_s=t))
        print(f"{med:6.2f} {lo:5.2f}-{hi:5.2f} {t * 1e6:9.0f}us {s}", flush=True)
    ratios = [r["ratio"] for r in rows]
    print(f"geometric mean {statistics.geometric_mean(ratios):.2f}, min {min(ratios):.2f}")
    for r in rows:
        if r["ratio"] < 1.0:
            print(f"below 1.0x: {r['ratio']:.3f} {r}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(seed=args.seed, plain=args.plain, rows=rows), f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
