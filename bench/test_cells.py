"""Cells stepped in a Python loop, as a decoder does: 100 steps of RNNCell / GRUCell / LSTMCell,
then backward of the summed outputs, rnnfast vs torch.nn in the same run, at 1 and 2 threads.
Group 'cells <cell> H<h> B<b> th<n>'; tokens = B * 100 steps."""
import pytest
import torch

import rnnfast
from _common import record, run_adaptive, synchronizer

STEPS = 100
CELLS = {"rnn_tanh": "RNNCell", "gru": "GRUCell", "lstm": "LSTMCell"}
HS = [64, 256, 512, 1024]
BS = [1, 8, 32]


@pytest.mark.parametrize("impl", ["torch", "rnnfast"])
@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=lambda n: f"th{n}")
@pytest.mark.parametrize("B", BS, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("H", HS, ids=lambda h: f"H{h}")
@pytest.mark.parametrize("cell", list(CELLS))
def test_cell_loop(benchmark, device, cell, H, B, threads, impl):
    torch.manual_seed(0)
    module = getattr(torch.nn if impl == "torch" else rnnfast, CELLS[cell])(H, H).to(device)
    xs = torch.randn(STEPS, B, H, device=device)

    sync = synchronizer(device)

    def step():
        module.zero_grad(set_to_none=True)
        state = None
        total = 0
        for t in range(STEPS):
            state = module(xs[t], state)
            h = state[0] if isinstance(state, tuple) else state
            total = total + h.sum()
        total.backward()
        sync()

    benchmark.group = f"cells {cell} H{H} B{B} th{threads}"
    median = run_adaptive(benchmark, step, target_s=0.5)
    record(benchmark, median, suite="cells", case=f"{cell} H{H} B{B} th{threads}", impl=impl,
           baseline="torch", cell=cell, H=H, B=B, threads=threads, device=str(device),
           tokens=B * STEPS)
