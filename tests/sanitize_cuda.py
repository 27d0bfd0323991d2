"""Runs every CUDA recurrent kernel once, forward and backward, on small cases: the workload for
compute-sanitizer on a GPU machine (DESIGN.md §7):

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 python3 tests/sanitize_cuda.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python3 tests/sanitize_cuda.py

(without the caching allocator every tensor is its own allocation, so memcheck sees an access
one past any buffer). Exits non-zero if an op fails or returns non-finite values. Plain script, no
pytest, so the sanitizer runs as little as possible besides the kernels.
"""
import sys

import torch


def main():
    if not torch.cuda.is_available():
        print("sanitize_cuda.py: no CUDA device", file=sys.stderr)
        return 2
    import rnnfast._ops  # noqa: F401  loads rnnfast._C

    ops = torch.ops.rnnfast
    dev = torch.device("cuda")
    torch.manual_seed(0)
    # (T, B, I, H): a single unit, a partial block, and several blocks with a ragged tail (3*130 units)
    shapes = [(1, 1, 1, 1), (3, 2, 3, 5), (4, 3, 7, 130)]
    cells = [("rnn_tanh", 1), ("rnn_relu", 1), ("gru", 3), ("gru_reset_before", 3), ("lstm", 4)]
    failures = 0
    cases = [(shape, cell, reverse, ragged) for shape in shapes for cell in cells for reverse in (False, True)
             for ragged in (False, True)]
    for (T, B, I, H), (cell, G), reverse, ragged in cases:
        # ragged: a variable-length batch, lengths in [0, T] (the frozen-row paths of the kernels)
        lengths = torch.tensor([(2 * b) % (T + 1) for b in range(B)]) if ragged else None
        x = torch.randn(T, B, I, device=dev)
        hx = torch.randn(B, H, device=dev)
        w_ih = torch.randn(G * H, I, device=dev) * H ** -0.5
        w_hh = torch.randn(G * H, H, device=dev) * H ** -0.5
        b_ih = torch.randn(G * H, device=dev)
        b_hh = torch.randn(G * H, device=dev)
        g_out = torch.randn(T, B, H, device=dev)
        g_hy = torch.randn(B, H, device=dev)
        if cell == "lstm":
            cx = torch.randn(B, H, device=dev)
            out, hy, cy, ws = ops.lstm_forward(x, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse, lengths)
            grads = ops.lstm_backward(g_out, g_hy, torch.randn(B, H, device=dev), x, hx, cx, w_ih, w_hh,
                                      out, ws, reverse, lengths=lengths)
            results = (out, hy, cy, ws) + tuple(grads)
        elif cell.startswith("gru"):
            after = cell == "gru"
            out, hy, ws = ops.gru_forward(x, hx, w_ih, w_hh, b_ih, b_hh, reverse, after, lengths)
            grads = ops.gru_backward(g_out, g_hy, x, hx, w_ih, w_hh, out, ws, reverse, after, lengths=lengths)
            results = (out, hy, ws) + tuple(grads)
        else:
            out, hy, ws = getattr(ops, f"{cell}_forward")(x, hx, w_ih, w_hh, None, b_hh, reverse, lengths)
            grads = getattr(ops, f"{cell}_backward")(g_out, g_hy, x, hx, w_ih, w_hh, out, ws, reverse,
                                                     lengths=lengths)
            results = (out, hy, ws) + tuple(grads)
        torch.cuda.synchronize()
        ok = all(bool(torch.isfinite(r).all()) for r in results)
        failures += not ok
        print(f"{cell:17s} T={T} B={B} I={I} H={H} reverse={reverse!s:5s} ragged={ragged!s:5s} "
              f"{'ok' if ok else 'NON-FINITE'}")
    # LSTM with a projection (P = 3): the step kernel with m as its output, plus the masked copies
    for (T, B, I, H), reverse, ragged in ((shape, r, v) for shape in shapes for r in (False, True)
                                          for v in (False, True)):
        lengths = torch.tensor([(2 * b) % (T + 1) for b in range(B)]) if ragged else None
        P = 3
        x, hx, cx = (torch.randn(T, B, I, device=dev), torch.randn(B, P, device=dev), torch.randn(B, H, device=dev))
        w_ih, w_hh = torch.randn(4 * H, I, device=dev) * H ** -0.5, torch.randn(4 * H, P, device=dev) * P ** -0.5
        w_hr, b = torch.randn(P, H, device=dev) * H ** -0.5, torch.randn(4 * H, device=dev)
        out, hy, cy, ws = ops.lstm_proj_forward(x, hx, cx, w_ih, w_hh, w_hr, b, b, reverse, lengths)
        grads = ops.lstm_proj_backward(torch.randn_like(out), torch.randn_like(hy), torch.randn_like(cy), x, hx, cx,
                                       w_ih, w_hh, w_hr, out, ws, reverse, lengths=lengths)
        torch.cuda.synchronize()
        ok = all(bool(torch.isfinite(r).all()) for r in (out, hy, cy, ws) + tuple(grads))
        failures += not ok
        print(f"{'lstm_proj':17s} T={T} B={B} I={I} H={H} reverse={reverse!s:5s} ragged={ragged!s:5s} "
              f"{'ok' if ok else 'NON-FINITE'}")
    print("sanitize_cuda.py:", "all ok" if not failures else f"{failures} case(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
