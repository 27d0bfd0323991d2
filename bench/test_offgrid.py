"""Off the grid: seeded random shapes the size grid does not hold, rnnfast vs torch.nn in the same
run. The grid's H are multiples of 16 in float32, one layer, I = H; users also run hidden sizes of
1-15, 20, 100, 200, input sizes of 10 or 28 (a one-hot), float64, stacks, bidirectional layers,
batch_first, projections and small batches at 2 threads. Three such corners were below torch.nn
until found this way (blas.h: K not a multiple of 16, K below 16; fastmath.h: float64). The shapes
are drawn from a fixed seed, so a run is comparable with the committed one.

    python3 bench/run.py bench/test_offgrid.py        # ~3 min on 2 cores -> results/<device>-offgrid.json
    python3 bench/report.py bench/results/<device>-offgrid.json

Beside them (test_offgrid_call, CALLS below): unbatched input, dropout between layers while
training, a PackedSequence at T = 1, an LSTM with a projection on a PackedSequence and a short
packed batch of uniform lengths forward+backward, the calls random sweeps found below torch.nn
until the C++ fast path ran them (and, the last, until its weight gradients and packing copies
lost their ATen detours).

Group 'offgrid <shape>'; the shape names cell, I, H, B, T, layers (L), bidirectional (bi),
batch_first (bf), proj_size (p), dtype, mode and threads. mode 'fwd' runs under
torch.inference_mode(), 'fwdbwd' is forward + backward of outputs.sum()."""
import random

import pytest
import torch

import rnnfast
from _common import forward_backward_step, inference_step, packed_lengths, record, run_adaptive

N_SHAPES = 96
TARGET_S = 0.25
MODULES = {"rnn_tanh": ("RNN", {}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}), "gru": ("GRU", {}),
           "lstm": ("LSTM", {})}


def shapes(n=N_SHAPES, seed=2026):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        cell = rng.choice(list(MODULES))
        H = rng.choice([1, 4, 12, 20, 32, 50, 100, 128, 200, 300, 384, 600, 768])
        out.append(dict(cell=cell, H=H, I=rng.choice([H, 10, 28, 300]), B=rng.choice([1, 2, 3, 5, 16, 64]),
                        T=rng.choice([1, 2, 5, 16, 50, 100]), L=rng.choice([1, 1, 2]), bi=rng.random() < 0.3,
                        bf=rng.random() < 0.3, p=(H // 2 if cell == "lstm" and H >= 8 and rng.random() < 0.2 else 0),
                        dtype=rng.choice(["float32", "float32", "float32", "float64"]),
                        mode=rng.choice(["fwd", "fwdbwd"]), threads=rng.choice([1, 2])))
    return out


def name(s):
    return (f"{s['cell']} I{s['I']} H{s['H']} B{s['B']} T{s['T']} L{s['L']} bi{int(s['bi'])} bf{int(s['bf'])} "
            f"p{s['p']} {s['dtype']} {s['mode']} th{s['threads']}")


SHAPES = shapes()


def offgrid_step(impl, s, device):
    cls, kw = MODULES[s["cell"]]
    kw = dict(kw, num_layers=s["L"], bidirectional=s["bi"], batch_first=s["bf"])
    if s["p"]:
        kw["proj_size"] = s["p"]
    dtype = getattr(torch, s["dtype"])
    torch.manual_seed(0)
    layer = getattr(torch.nn if impl == "torch" else rnnfast, cls)(s["I"], s["H"], **kw).to(device, dtype)
    shape = (s["B"], s["T"], s["I"]) if s["bf"] else (s["T"], s["B"], s["I"])
    x = torch.randn(shape, device=device, dtype=dtype)
    if s["mode"] == "fwd":
        return inference_step(layer, x, device)
    return forward_backward_step(layer, x.requires_grad_(True), device)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("impl", ["torch", "rnnfast"])
@pytest.mark.parametrize("index, threads", [pytest.param(i, s["threads"], id=f"s{i}") for i, s in enumerate(SHAPES)],
                         indirect=["threads"])
def test_offgrid(benchmark, device, index, threads, impl):
    s = SHAPES[index]
    if device.type != "cpu" and s["dtype"] == "float64":
        pytest.skip("float64 runs on the CPU only")
    step = offgrid_step(impl, s, device)
    benchmark.group = f"offgrid {name(s)}"
    median = run_adaptive(benchmark, step, target_s=TARGET_S)
    record(benchmark, median, suite="offgrid", case=name(s), impl=impl, baseline="torch", device=str(device),
           tokens=s["B"] * s["T"], **{k: v for k, v in s.items() if k not in ("mode",)}, mode=s["mode"])


# Calls beside the shapes above, each a corner a random sweep of calls found below torch.nn before
# the fast path ran it (csrc/python.cpp forward_layers): unbatched input of a module or cell, dropout
# between layers while training (forward only, as an evaluation pass left in train mode, and with
# backward), a PackedSequence at T = 1. Group 'offgrid call <name>'.
CALLS = {
    "unbatched GRUCell H64 fwd": ("GRUCell", dict(I=32, H=64), "unbatched", "fwd"),
    "unbatched LSTM H64 T5 fwdbwd": ("LSTM", dict(I=32, H=64, T=5), "unbatched", "fwdbwd"),
    "unbatched RNN 2 layers H64 T5 fwd": ("RNN", dict(I=32, H=64, T=5, L=2), "unbatched", "fwd"),
    "dropout RNN-ReLU 3 layers H48 B100 T1 train fwd": ("RNN", dict(I=48, H=48, B=100, T=1, L=3), "dropout", "train"),
    "dropout LSTM 2 layers H128 B20 T35 fwdbwd": ("LSTM", dict(I=128, H=128, B=20, T=35, L=2), "dropout", "fwdbwd"),
    "packed GRU H128 I16 B10 T1 fwd": ("GRU", dict(I=16, H=128, B=10, T=1), "packed", "fwd"),
    "packed LSTM proj 2 layers H160 P64 I128 B4 T3 fwd": ("LSTM", dict(I=128, H=160, P=64, B=4, T=3, L=2), "packed",
                                                           "fwd"),
    "packed uniform RNN 2 layers H256 I512 B100 T3 fwdbwd": ("RNN", dict(I=512, H=256, B=100, T=3, L=2,
                                                                      lengths="uniform"), "packed", "fwdbwd"),
}


def call_step(impl, name, device):
    from torch.nn.utils.rnn import pack_padded_sequence

    cls, s, kind, mode = CALLS[name]
    torch.manual_seed(0)
    kw = dict(num_layers=s.get("L", 1), dropout=0.3 if kind == "dropout" else 0.0) if "Cell" not in cls else {}
    if cls == "RNN" and kind == "dropout":
        kw["nonlinearity"] = "relu"
    if "P" in s:
        kw["proj_size"] = s["P"]
    layer = getattr(torch.nn if impl == "torch" else rnnfast, cls)(s["I"], s["H"], **kw).to(device)
    T, B = s.get("T", 1), s.get("B", 1)
    shape = (s["I"],) if "Cell" in cls else (T, s["I"]) if kind == "unbatched" else (T, B, s["I"])
    x = torch.randn(shape, device=device, requires_grad=mode == "fwdbwd")
    lengths = packed_lengths(s.get("lengths", "equal"), T, B)
    arg = (lambda: pack_padded_sequence(x, lengths, enforce_sorted=False)) if kind == "packed" else (lambda: x)

    def out(r):
        r = r[0] if isinstance(r, tuple) else r
        return r.data if hasattr(r, "batch_sizes") else r

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        if mode == "fwd":
            with torch.inference_mode():
                layer(arg())
        elif mode == "train":
            layer(arg())
        else:
            out(layer(arg())).sum().backward()
    return step


@pytest.mark.parametrize("impl", ["torch", "rnnfast"])
@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=lambda n: f"th{n}")
@pytest.mark.parametrize("name", list(CALLS), ids=lambda n: n.replace(" ", "-"))
def test_offgrid_call(benchmark, device, name, threads, impl):
    step = call_step(impl, name, device)
    benchmark.group = f"offgrid call {name} th{threads}"
    median = run_adaptive(benchmark, step, target_s=TARGET_S)
    record(benchmark, median, suite="offgrid", case=f"call {name} th{threads}", impl=impl, baseline="torch",
           device=str(device), threads=threads, mode=CALLS[name][3])
