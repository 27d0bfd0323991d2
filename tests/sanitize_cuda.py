"""Runs every CUDA recurrent kernel once, forward and backward, on small cases: the workload for
compute-sanitizer on a GPU machine (docs/design.md §10):

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 python3 tests/sanitize_cuda.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python3 tests/sanitize_cuda.py

(without the caching allocator every tensor is its own allocation, so memcheck sees an access
one past any buffer). Exits non-zero if an op fails or returns non-finite values. Plain script, no
pytest, so the sanitizer runs as little as possible besides the kernels.

The clipping kernels (csrc/kernels/multi_tensor.cu: the only ones with shared memory and barriers,
so the only ones racecheck can find anything in) run first: mixed float16/bfloat16/float32/float64
lists, sizes 0, 1, 32767-32769 and 70000 (one element, block and task edges), non-dense views, every
norm type, then the scale alone (clip_grads_with_norm_) and both in one call (clip_grad_norm_). Then
every recurrent kernel, forward and backward. Each case is also checked against torch in float64, so
a wrong result fails the run even where the sanitizer sees nothing.

    python3 tests/sanitize_cuda.py [clip|recurrent]   # one half only
    python3 tests/sanitize_cuda.py --cpu              # the same cases on the CPU ops (rehearsal)
"""
import math
import sys

import torch

NORM_TYPES = [2.0, 1.0, 3.0, 0.5, math.inf, -math.inf, 0.0]


def _clip_lists(dev):
    """(name, list of grads): every dtype, edge sizes, non-dense views, an empty tensor among others."""
    def randn(shape, dtype):
        return torch.randn(shape, dtype=torch.float64, device=dev).to(dtype)

    base = randn((40, 60), torch.float32)
    return [
        ("mixed dtypes", [randn(300, torch.float16), randn((40, 7), torch.float32), randn(3, torch.bfloat16),
                          randn((5, 5), torch.float64)]),
        ("edge sizes f32", [randn(n, torch.float32) for n in (0, 1, 32767, 32768, 32769, 70000)]),
        ("edge sizes f16+bf16", [randn(n, torch.float16) for n in (1, 32767, 32769)]
         + [randn(n, torch.bfloat16) for n in (0, 32768, 70000)]),
        ("edge sizes f64", [randn(n, torch.float64) for n in (1, 32768, 70000)]),
        ("non-dense views", [base.t(), randn((70, 90), torch.float32)[::2, 1::3], randn((9, 7), torch.float16)[:, ::2],
                             randn(5, torch.float32)]),
    ]


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reference_norm(grads, p):
    """torch's total norm (the p-norm of the per-tensor p-norms: for p = 0 the number of non-zero
    tensors), in float64."""
    return torch.nn.utils.get_total_norm([g.detach().double() for g in grads], p).item()


def _close(a, b, rtol):
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= rtol * max(abs(a), abs(b))


def clip_cases(dev):
    ops = torch.ops.rnnfast
    failures = 0
    for name, all_grads in _clip_lists(dev):
        rtol = 2e-2 if any(g.dtype in (torch.float16, torch.bfloat16) for g in all_grads) else 1e-4
        for p in NORM_TYPES:
            # torch (and rnnfast) refuse an empty grad for p = +-inf (no identity for max/min)
            grads = [g for g in all_grads if g.numel() or math.isfinite(p)]
            ref = _reference_norm(grads, p)
            norm = ops.grad_norm(grads, p).item()
            # the scale alone (coefficient read from device memory), then norm + scale in one call
            max_norm = 0.5 * ref if math.isfinite(ref) and ref > 0 else 1.0
            scaled = _views_like(grads)
            ops.clip_grads_with_norm_(scaled, max_norm, torch.tensor(ref, device=dev, dtype=torch.float64))
            both = _views_like(grads)
            total = ops.clip_grad_norm_(both, max_norm, p).item()
            _sync(dev)
            coef = min(1.0, max_norm / (ref + 1e-6))
            scale_ok = all(_close(_reference_norm([c], 2.0), coef * _reference_norm([g], 2.0), rtol)
                           for out in (scaled, both) for c, g in zip(out, grads))
            ok = _close(norm, ref, rtol) and _close(total, ref, rtol) and scale_ok
            failures += not ok
            print(f"clip {name:20s} p={p:<5} norm={norm:.6g} ref={ref:.6g} {'ok' if ok else 'WRONG'}")
    return failures


def _views_like(grads):
    """Copies of grads with the same strides: a transposed grad stays dense but not contiguous, a
    strided slice stays a view with gaps (the values at the same positions of a fresh buffer)."""
    out = []
    for g in grads:
        if g.numel() == 0 or g.is_contiguous():
            out.append(g.clone())
            continue
        span = 1 + sum((n - 1) * st for n, st in zip(g.shape, g.stride()))
        view = torch.zeros(span, dtype=g.dtype, device=g.device).as_strided(g.shape, g.stride())
        view.copy_(g)
        out.append(view)
    return out


def recurrent_cases(dev):
    ops = torch.ops.rnnfast
    # (T, B, I, H): a single unit, a partial block, several blocks with a ragged tail (3*130 units), and
    # an empty batch (the launchers' zero-size early return)
    shapes = [(1, 1, 1, 1), (3, 2, 3, 5), (4, 3, 7, 130), (3, 0, 3, 5)]
    cells = [("rnn_tanh", 1), ("rnn_relu", 1), ("gru", 3), ("gru_reset_before", 3), ("lstm", 4)]
    failures = 0
    cases = [(shape, cell, reverse, ragged) for shape in shapes for cell in cells for reverse in (False, True)
             for ragged in (False, True)]
    for (T, B, I, H), (cell, G), reverse, ragged in cases:
        # ragged: a variable-length batch, lengths in [0, T] (the frozen-row paths of the kernels)
        lengths = torch.tensor([(2 * b) % (T + 1) for b in range(B)], dtype=torch.long) if ragged else None
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
        _sync(dev)
        ok = all(bool(torch.isfinite(r).all()) for r in results)
        failures += not ok
        print(f"{cell:17s} T={T} B={B} I={I} H={H} reverse={reverse!s:5s} ragged={ragged!s:5s} "
              f"{'ok' if ok else 'NON-FINITE'}")
    # LSTM with a projection (P = 3): the step kernel with m as its output, plus the masked copies
    for (T, B, I, H), reverse, ragged in ((shape, r, v) for shape in shapes for r in (False, True)
                                          for v in (False, True)):
        lengths = torch.tensor([(2 * b) % (T + 1) for b in range(B)], dtype=torch.long) if ragged else None
        P = 3
        x, hx, cx = (torch.randn(T, B, I, device=dev), torch.randn(B, P, device=dev), torch.randn(B, H, device=dev))
        w_ih, w_hh = torch.randn(4 * H, I, device=dev) * H ** -0.5, torch.randn(4 * H, P, device=dev) * P ** -0.5
        w_hr, b = torch.randn(P, H, device=dev) * H ** -0.5, torch.randn(4 * H, device=dev)
        out, hy, cy, ws = ops.lstm_proj_forward(x, hx, cx, w_ih, w_hh, w_hr, b, b, reverse, lengths)
        grads = ops.lstm_proj_backward(torch.randn_like(out), torch.randn_like(hy), torch.randn_like(cy), x, hx, cx,
                                       w_ih, w_hh, w_hr, out, ws, reverse, lengths=lengths)
        _sync(dev)
        ok = all(bool(torch.isfinite(r).all()) for r in (out, hy, cy, ws) + tuple(grads))
        failures += not ok
        print(f"{'lstm_proj':17s} T={T} B={B} I={I} H={H} reverse={reverse!s:5s} ragged={ragged!s:5s} "
              f"{'ok' if ok else 'NON-FINITE'}")
    return failures


def main(argv):
    args = argv[1:]
    on_cpu = "--cpu" in args  # rehearsal of this script on the CPU ops (tests/test_gpu_verify.py)
    parts = [a for a in args if a != "--cpu"] or ["clip", "recurrent"]
    if any(p not in ("clip", "recurrent") for p in parts):
        print("usage: sanitize_cuda.py [--cpu] [clip|recurrent]...", file=sys.stderr)
        return 2
    if not on_cpu and not torch.cuda.is_available():
        print("sanitize_cuda.py: no CUDA device", file=sys.stderr)
        return 2
    import rnnfast._ops  # noqa: F401  loads rnnfast._C

    dev = torch.device("cpu" if on_cpu else "cuda")
    torch.manual_seed(0)
    failures = 0
    for part in parts:
        failures += clip_cases(dev) if part == "clip" else recurrent_cases(dev)
    print("sanitize_cuda.py:", "all ok" if not failures else f"{failures} case(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
