"""Forward + backward of ONE recurrent layer (loss = outputs.sum()), per cell, size, backend.

Sizes (docs/design.md §9): d2l-256 / d2l-512 are the textbook's char model (one-hot input, I=V=28,
B=32, T=35; the input needs no gradient), fastrnns is PyTorch's RNN benchmark shape (B=64,
T=100, I=H=512; the input gets a gradient, as inside a stack). Group 'layer <cell> <size>'.
"""
import pytest
import torch
import torch.nn.functional as F

from _common import BACKENDS, SIZES, forward_backward_step, make_layer, record, run_adaptive

CELLS = ["rnn_tanh", "gru", "lstm"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("cell", CELLS)
def test_layer(benchmark, device, cell, size, backend):
    s = SIZES[size]
    B, T, I, H = s["B"], s["T"], s["I"], s["H"]
    torch.manual_seed(0)
    layer = make_layer(backend, cell, I, H, device)
    if size.startswith("d2l"):
        x = F.one_hot(torch.randint(0, I, (T, B), device=device), I).float()
    else:
        x = torch.randn(T, B, I, device=device, requires_grad=True)

    step = forward_backward_step(layer, x, device)
    benchmark.group = f"layer {cell} {size}"
    median = run_adaptive(benchmark, step)
    record(benchmark, median, suite="layer", case=f"{cell} {size}", impl=backend,
           baseline="torch", cell=cell, size=size, backend=backend, device=str(device),
           tokens=B * T, B=B, T=T, I=I, H=H)
