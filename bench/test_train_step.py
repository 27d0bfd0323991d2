"""One full textbook training step of RNNLM (one-hot, V=28, B=32, T=35, H=256): forward,
cross entropy, backward, clip_grad_norm_(max_norm=1), SGD(lr=1) step; per cell and backend.
Group 'train_step <cell> d2l-256'."""
import pytest
import torch
import torch.nn.functional as F

from _common import BACKENDS, record, run_adaptive, synchronizer
from rnnfast.models import RNNLM

CELLS = ["rnn_tanh", "gru", "lstm"]
V, B, T, H = 28, 32, 35, 256


# Every backend's step clips with torch's clip_grad_norm_, so the rows differ only in the recurrent
# layer they compare; bench/test_clip.py measures rnnfast.clip_grad_norm_ against torch's.
clip_grad_norm_ = torch.nn.utils.clip_grad_norm_


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", ["d2l-256"])  # the id says which size (-k d2l-256)
@pytest.mark.parametrize("cell", CELLS)
def test_train_step(benchmark, device, cell, size, backend):
    torch.manual_seed(0)
    net = RNNLM(V, H, cell=cell, backend=backend).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    X = torch.randint(0, V, (B, T), device=device)
    y = torch.randint(0, V, (B, T), device=device).T.reshape(-1)
    state = net.begin_state(B, device)
    params = list(net.parameters())

    sync = synchronizer(device)

    def step():
        logits, _ = net(X, state)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm_(params, 1.0)
        opt.step()
        sync()

    benchmark.group = f"train_step {cell} {size}"
    median = run_adaptive(benchmark, step)
    record(benchmark, median, suite="train_step", case=f"{cell} {size}", impl=backend,
           baseline="torch", cell=cell, size=size, backend=backend, device=str(device),
           tokens=B * T, B=B, T=T, V=V, H=H)
