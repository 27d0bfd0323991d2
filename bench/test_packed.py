"""Forward + backward of ONE recurrent layer on a PackedSequence (variable-length batch), rnnfast vs
torch.nn (the scratch reference takes no packed input). Group 'packed <cell>'.

Size: B=32 sequences of lengths uniform in [8, 35] (seeded, one of 35), I=64, H=256 — the d2l-256 layer with
a dense input and ragged lengths. Loss = packed output data summed. rnnfast runs the padded batch
with per-sequence lengths (frozen rows), torch.nn its packed kernels (oneDNN/ATen on CPU).
"""
import pytest
import torch

from _common import make_layer, packed_layer_step, record, run_adaptive

CELLS = ["rnn_tanh", "gru", "lstm"]
B, T, I, H = 32, 35, 64, 256


@pytest.mark.parametrize("backend", ["torch", "rnnfast"])
@pytest.mark.parametrize("cell", CELLS)
def test_packed(benchmark, device, cell, backend):
    torch.manual_seed(0)
    layer = make_layer(backend, cell, I, H, device)
    lengths = torch.randint(T // 4, T + 1, (B,))
    lengths[0] = T
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    step = packed_layer_step(layer, x, lengths, "fwdbwd", device)
    benchmark.group = f"packed {cell}"
    median = run_adaptive(benchmark, step)
    record(benchmark, median, suite="packed", case=f"{cell} B{B} T<={T} H{H}", impl=backend, baseline="torch",
           cell=cell, backend=backend, device=str(device), tokens=int(lengths.sum()), B=B, T=T, I=I, H=H)
