"""Generation: rnnfast.train.predict of 500 characters (greedy) from an untrained character RNNLM
(V=28, one-hot), GRU and LSTM at H=256 and 512, backend 'rnnfast' vs 'torch', 1 and 2 threads.
Each generated character is one T=1, B=1 step: this is the per-call cost of a layer.
Group 'predict <cell> H<h> th<n>'; tokens = 500."""
import pytest
import torch

from _common import record, run_adaptive
from rnnfast.data import Vocab
from rnnfast.models import RNNLM
from rnnfast.train import predict

NUM_PREDS = 500
VOCAB = Vocab(list("abcdefghijklmnopqrstuvwxyz "))


@pytest.mark.parametrize("backend", ["torch", "rnnfast"])
@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=lambda n: f"th{n}")
@pytest.mark.parametrize("H", [256, 512], ids=lambda h: f"H{h}")
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_predict(benchmark, device, cell, H, threads, backend):
    torch.manual_seed(0)
    net = RNNLM(len(VOCAB), H, cell=cell, backend=backend).to(device)

    def step():
        predict("time traveller ", NUM_PREDS, net, VOCAB, device=device)

    benchmark.group = f"predict {cell} H{H} th{threads}"
    median = run_adaptive(benchmark, step, target_s=1.0)
    record(benchmark, median, suite="predict", case=f"{cell} H{H} th{threads}", impl=backend,
           baseline="torch", cell=cell, H=H, threads=threads, device=str(device),
           tokens=NUM_PREDS)
