"""The size grid (docs/design.md §9): every cell x H x B x T, forward-only and forward+backward, one
layer, rnnfast vs torch.nn in the same run — and, for forward-only points, onnxruntime running the
same torch.nn layer exported to ONNX (optional: rows appear when onnxruntime and onnx are installed).

    python3 bench/run.py bench/test_grid.py                       # the full grid (~35 min on 2 cores)
    python3 bench/run.py bench/test_grid.py -k "lstm and T1-"     # one slice
    python3 bench/report.py --grid bench/results/<device>.json    # table + heat map of the ratios

Each point: input size I = H (a layer inside a stack), time-major input (T, B, I), zero initial
state. mode 'fwd' is the inference path (torch.inference_mode(), no gradient anywhere); mode
'fwdbwd' is forward + backward of outputs.sum() with the input requiring a gradient. Thread counts
are parametrized (1 and 2) and set with torch.set_num_threads for the point alone; onnxruntime gets
the same intra-op thread count. Group 'grid <cell> <mode> H<h> B<b> T<t> th<n>'.

Timing is adaptive (bench/_common.run_adaptive) with a short target, so the whole grid stays
within about 35 minutes on a 2-core machine (measured); small points still get hundreds of rounds.
"""
import pytest

from _common import grid_step, record, run_adaptive

CELLS = ["rnn_tanh", "rnn_relu", "gru", "lstm"]
HS = [64, 256, 512, 1024]
BS = [1, 8, 32, 128]
TS = [1, 8, 35, 200]
MODES = ["fwd", "fwdbwd"]
THREADS = [1, 2]
IMPLS = ["torch", "rnnfast", "onnxruntime"]
TARGET_S = 0.25


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("threads", THREADS, indirect=True, ids=lambda n: f"th{n}")
@pytest.mark.parametrize("T", TS, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("B", BS, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("H", HS, ids=lambda h: f"H{h}")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cell", CELLS)
def test_grid(benchmark, device, cell, mode, H, B, T, threads, impl):
    if impl == "onnxruntime" and (mode != "fwd" or device.type != "cpu"):
        pytest.skip("onnxruntime rows are CPU inference points only")
    if impl == "onnxruntime":  # optional: rows appear where onnxruntime and the exporter work
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
        try:
            step = grid_step(impl, cell, mode, H, B, T, threads, device)
        except Exception as e:  # an exporter that is not installed or refuses the module
            pytest.skip(f"ONNX export unavailable: {type(e).__name__}: {e}")
    else:
        step = grid_step(impl, cell, mode, H, B, T, threads, device)

    benchmark.group = f"grid {cell} {mode} H{H} B{B} T{T} th{threads}"
    median = run_adaptive(benchmark, step, target_s=TARGET_S)
    record(benchmark, median, suite="grid", case=f"{cell} {mode} H{H} B{B} T{T} th{threads}",
           impl=impl, baseline="torch", cell=cell, mode=mode, H=H, B=B, T=T, threads=threads,
           device=str(device), tokens=B * T)
