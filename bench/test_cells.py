"""Cells stepped in a Python loop, as a decoder does: 100 steps of RNNCell / GRUCell / LSTMCell,
then backward of the summed outputs, rnnfast vs torch.nn in the same run, at 1 and 2 threads.
Group 'cells <cell> H<h> B<b> th<n>'; tokens = B * 100 steps."""
import pytest

from _common import CELL_CLASSES, CELL_STEPS, cell_loop_step, record, run_adaptive

HS = [64, 256, 512, 1024]
BS = [1, 8, 32]


@pytest.mark.parametrize("impl", ["torch", "rnnfast"])
@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=lambda n: f"th{n}")
@pytest.mark.parametrize("B", BS, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("H", HS, ids=lambda h: f"H{h}")
@pytest.mark.parametrize("cell", list(CELL_CLASSES))
def test_cell_loop(benchmark, device, cell, H, B, threads, impl):
    step = cell_loop_step(impl, cell, H, B, device)
    benchmark.group = f"cells {cell} H{H} B{B} th{threads}"
    median = run_adaptive(benchmark, step, target_s=0.5)
    record(benchmark, median, suite="cells", case=f"{cell} H{H} B{B} th{threads}", impl=impl,
           baseline="torch", cell=cell, H=H, B=B, threads=threads, device=str(device),
           tokens=B * CELL_STEPS)
