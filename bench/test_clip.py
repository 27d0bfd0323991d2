"""Global-norm gradient clipping: rnnfast.clip_grad_norm_ vs torch.nn.utils.clip_grad_norm_
(foreach=True) vs the textbook grad_clipping, on real model gradient lists.

Cases (float32): d2l (the textbook char LSTM, V=28 one-hot, H=256: 6 tensors, 0.3M elements),
wlm (2-layer word LSTM, vocabulary 33278, embedding = hidden = 650, untied decoder: 11 tensors,
50M elements), many (1000 tensors of 4096), big (one tensor of 100M elements, 400 MB).

Every call clips (max_norm is half the norm), and the grads are restored from a saved copy
outside the timed region (pedantic setup), so every round does the same work. Throughput counts
the bytes that must move: every grad read twice (norm, scale) and written once, 3 x nbytes.
Group 'clip <case>' (bench/report.py convention), baseline torch.

    python3 -m pytest bench/test_clip.py --benchmark-json=/tmp/clip.json -q
"""
import types

import pytest
import torch

import rnnfast.clip

try:  # the textbook reference, where rnnfast.scratch exists
    from rnnfast.scratch import grad_clipping
except ImportError:  # the same semantics, inline: L2 norm, host-side comparison, no epsilon
    def grad_clipping(net, theta):
        params = [p for p in net.params if p.grad is not None]
        norm = torch.sqrt(sum(torch.sum(p.grad ** 2) for p in params))
        if norm > theta:
            for p in params:
                p.grad[:] *= theta / norm
        return norm

V, H, WLM_V, WLM_H = 28, 256, 33278, 650
CASES = {
    "d2l": [(4 * H, V), (4 * H, H), (4 * H,), (4 * H,), (V, H), (V,)],
    "wlm": [(WLM_V, WLM_H)]
    + [(4 * WLM_H, WLM_H), (4 * WLM_H, WLM_H), (4 * WLM_H,), (4 * WLM_H,)] * 2
    + [(WLM_V, WLM_H), (WLM_V,)],
    "many": [(4096,)] * 1000,
    "big": [(100_000_000,)],
}
ROUNDS = {"d2l": 300, "wlm": 12, "many": 100, "big": 5}
IMPLS = ["torch", "rnnfast", "scratch"]


@pytest.fixture(scope="module")
def clip_device(request):
    return torch.device(request.config.getoption("--device", default="cpu"))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_clip(benchmark, clip_device, case, impl):
    device = clip_device
    torch.manual_seed(0)
    params = []
    for shape in CASES[case]:
        p = torch.nn.Parameter(torch.empty(shape, device=device))  # never touched: no memory traffic
        p.grad = torch.randn(shape, device=device)
        params.append(p)
    saved = [p.grad.clone() for p in params]
    nbytes = sum(g.numel() * g.element_size() for g in saved)
    max_norm = 0.5 * torch.nn.utils.get_total_norm(saved).item()

    if impl == "torch":
        def fn():
            torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
            _sync(device)
    elif impl == "rnnfast":
        def fn():
            rnnfast.clip.clip_grad_norm_(params, max_norm)
            _sync(device)
    else:
        net = types.SimpleNamespace(params=params)

        def fn():
            grad_clipping(net, max_norm)
            _sync(device)

    def restore():
        for p, s in zip(params, saved):
            p.grad.copy_(s)
        _sync(device)

    restore()
    fn()  # warm up (allocators, pinned staging, first-call dispatch)
    rounds = ROUNDS[case]
    benchmark.group = f"clip {case}"
    benchmark.pedantic(fn, setup=restore, rounds=rounds, iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        suite="clip", case=case, impl=impl, baseline="torch", device=str(device), tensors=len(params),
        elements=nbytes // 4, bytes=3 * nbytes, gbps=3 * nbytes / median / 1e9)
    # the clipped grads are right: rnnfast against a float64 clip of the saved grads (torch's own
    # float32 norm of 50M elements is off by ~1e-4, too coarse a reference here)
    if impl == "rnnfast" and case != "big":
        restore()
        fn()
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s.double()) for s in saved]))
        coef = min(1.0, max_norm / (total.item() + 1e-6))
        for p, s in zip(params, saved):
            torch.testing.assert_close(p.grad, (s.double() * coef).float(), rtol=1e-5, atol=1e-7)
