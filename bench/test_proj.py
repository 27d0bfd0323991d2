"""Forward + backward of ONE LSTM layer with a projection (torch.nn.LSTM(proj_size=P)), rnnfast vs
torch.nn (torch's CPU LSTM has no oneDNN path for projections; the scratch reference has none).
Group 'proj lstm'. Size: B=32, T=35, I=64, H=512, P=128; the input gets a gradient.
"""
import warnings

import pytest
import torch

import rnnfast
from _common import record, run_adaptive, synchronizer

B, T, I, H, P = 32, 35, 64, 512, 128


@pytest.mark.parametrize("backend", ["torch", "rnnfast"])
def test_proj(benchmark, device, backend):
    torch.manual_seed(0)
    cls = torch.nn.LSTM if backend == "torch" else rnnfast.LSTM
    layer = cls(I, H, proj_size=P).to(device)
    x = torch.randn(T, B, I, device=device, requires_grad=True)

    sync = synchronizer(device)

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch: "LSTM with projections is not supported with oneDNN"
            out, _ = layer(x)
        out.sum().backward()
        sync()

    benchmark.group = "proj lstm"
    median = run_adaptive(benchmark, step)
    record(benchmark, median, suite="proj", case=f"lstm B{B} T{T} H{H} P{P}", impl=backend, baseline="torch",
           cell="lstm", backend=backend, device=str(device), tokens=B * T, B=B, T=T, I=I, H=H, P=P)
