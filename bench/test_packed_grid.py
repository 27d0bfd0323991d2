"""PackedSequence input over sizes and length profiles: every cell x H {64, 256} x B {8, 32} x
T {1, 35, 100} x lengths 'equal' (a bucketed batch), 'uniform' in [1, T] and 'ragged' (one long
sequence among short ones: a tenth of the padded batch lives), forward-only (inference mode) and
forward+backward, at 1 and 2 threads; rnnfast and torch.nn in the same run, the packing in the timed
work (bench/_common.packed_step). At T = 1 every profile is 'equal'. ~6 minutes on 2 cores:

    python3 bench/run.py bench/test_packed_grid.py   # -> results/<device>-packed_grid.json

Group 'packedgrid <cell> <mode> <profile> H.. B.. T.. th..'; tokens = the sequences' total length."""
import pytest

from _common import packed_lengths, packed_step, record, run_adaptive

CELLS = ["rnn_tanh", "gru", "lstm"]
HS, BS = [64, 256], [8, 32]
SHAPES = [(T, profile) for T in (1, 35, 100) for profile in (("equal",) if T == 1 else ("equal", "uniform", "ragged"))]


@pytest.mark.parametrize("impl", ["torch", "rnnfast"])
@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=lambda n: f"th{n}")
@pytest.mark.parametrize("T,profile", SHAPES, ids=[f"T{T}-{p}" for T, p in SHAPES])
@pytest.mark.parametrize("B", BS, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("H", HS, ids=lambda h: f"H{h}")
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("cell", CELLS)
def test_packed_grid(benchmark, device, cell, mode, H, B, T, profile, threads, impl):
    step = packed_step(impl, cell, mode, profile, H, B, T, device)
    case = f"{cell} {mode} {profile} H{H} B{B} T{T} th{threads}"
    benchmark.group = f"packedgrid {case}"
    median = run_adaptive(benchmark, step, target_s=0.25)
    record(benchmark, median, suite="packedgrid", case=case, impl=impl, baseline="torch", cell=cell, mode=mode,
           profile=profile, H=H, B=B, T=T, threads=threads, device=str(device),
           tokens=int(packed_lengths(profile, T, B).sum()))
