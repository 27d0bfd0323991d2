"""Data-parallel training throughput: `rnnfast train` at 1 process and at 2 processes
(`--nproc 2`, torch.distributed.run, gloo on CPU / NCCL on CUDA), the same global batch (the d2l
size: GRU H=256, one-hot V=28, B=32, T=35), one thread per process, on the first
RNNFAST_BENCH_DDP_TOKENS characters of the Time Machine (default 60000). tokens_per_s is the
global rate train() reports for the second epoch (the first includes warm-up).
Group 'ddp d2l-256'. On CPU, N processes need N free cores to gain anything."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOKENS = int(os.environ.get("RNNFAST_BENCH_DDP_TOKENS", "60000"))


@pytest.mark.parametrize("nproc", [1, 2])
def test_ddp_tokens_per_s(benchmark, device, tmp_path, nproc):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rnnfast", "train", "--cell", "gru", "--hidden", "256",
           "--batch-size", "32", "--num-steps", "35", "--epochs", "2", "--max-tokens", str(TOKENS),
           "--valid", "none", "--threads", "1", "--quiet", "--device", str(device), "--out", str(out)]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]

    def run():
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)

    benchmark.group = "ddp d2l-256"
    benchmark.pedantic(run, rounds=1, iterations=1)
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    benchmark.extra_info.update(nproc=nproc, tokens_per_s=epochs[-1]["tokens_per_s"],
                                epoch_s=epochs[-1]["time"], train_ppl=epochs[-1]["train_ppl"],
                                tokens=TOKENS)
