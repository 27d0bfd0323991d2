"""rnnfast.clip on CUDA: parity with torch.nn.utils.clip_grad_norm_ on the same device, no host
synchronization, and at most three kernel launches for a whole list. Needs a GPU (marker `cuda`).

Tolerances: the kernels accumulate float16/bfloat16/float32 in float per thread and combine block
partials in double (float64 grads: double throughout); torch's foreach norm accumulates in float
with another order, so float32 norms agree to ~1e-6 relative, float64 to ~1e-12, half/bfloat16 to
their precision (torch also rounds each tensor's norm to the grad dtype).
"""
import math

import pytest
import torch

from rnnfast.clip import clip_grad_norm_, get_total_norm

pytestmark = pytest.mark.cuda

INF = float("inf")
RTOL = {torch.float64: 1e-12, torch.float32: 5e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
OPS = torch.ops.rnnfast


def make_params(tensors):
    params = []
    for t in tensors:
        p = torch.nn.Parameter(torch.zeros(t.shape, dtype=t.dtype, device=t.device))
        p.grad = t.clone()
        params.append(p)
    return params


def check(tensors, max_norm, p, rtol=None, none_at=()):
    ours, ref = make_params(tensors), make_params(tensors)
    for i in none_at:
        ours[i].grad = ref[i].grad = None
    n_ref = torch.nn.utils.clip_grad_norm_(ref, max_norm, p)
    n_ours = clip_grad_norm_(ours, max_norm, p)
    dtypes = {t.dtype for t in tensors}
    tol = rtol if rtol is not None else max(RTOL[d] for d in dtypes)
    if p not in (1.0, 2.0, INF) and torch.float32 in dtypes:
        tol = max(tol, 2e-5)
    assert n_ours.dtype == n_ref.dtype and n_ours.device == n_ref.device and n_ours.shape == ()
    torch.testing.assert_close(n_ours.double(), n_ref.double(), rtol=tol, atol=0.0, equal_nan=True)
    for a, b in zip(ours, ref):
        if b.grad is None:
            assert a.grad is None
            continue
        t = max(tol, torch.finfo(a.grad.dtype).eps)
        torch.testing.assert_close(a.grad, b.grad, rtol=2 * t, atol=1e-30, equal_nan=True)
    return n_ours


def randn(shape, dtype):
    return torch.randn(shape, dtype=torch.float64, device="cuda").to(dtype)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, INF, 0.5, 0.0, -INF])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("count,size", [(1, 10), (7, 1234), (1000, 17)])
@pytest.mark.parametrize("factor", [0.3, 3.0], ids=["above", "below"])
def test_cuda_parity(count, size, dtype, p, factor):
    tensors = [randn(size, dtype) for _ in range(count)]
    ref = torch.nn.utils.get_total_norm(tensors, p).item()
    if not math.isfinite(ref) or ref == 0:
        pytest.skip("norm overflows the dtype (covered on CPU)")
    check(tensors, ref * factor, p)


@pytest.mark.parametrize("p", [2.0, INF])
def test_cuda_sizes_and_mixed_dtypes(p):
    sizes = [1, 17, 32767, 32768, 32769, 3_000_001]
    check([torch.randn(s, device="cuda") for s in sizes], 1.0, p, rtol=1e-4)
    mixed = [randn(300, torch.float16), randn((40, 7), torch.float32), randn(3, torch.bfloat16),
             randn((5, 5), torch.float64)]
    assert check(mixed, 0.5, p).dtype == torch.float64


def test_cuda_none_empty_noncontiguous_nonfinite():
    check([torch.randn(50, device="cuda") for _ in range(7)], 0.5, 2.0, none_at=(0, 3))
    check([torch.zeros(0, device="cuda"), torch.randn(9, device="cuda")], 0.5, 2.0)
    base = torch.randn(40, 60, device="cuda")
    check([base.t().contiguous().t(), base.clone()[::2, 1::3], torch.randn(7, device="cuda")], 0.3, 2.0)
    for bad in (INF, float("nan")):
        t = torch.randn(50, device="cuda")
        t[3] = bad
        for p in (2.0, INF):
            check([t, torch.randn(5, device="cuda")], 1.0, p)
            with pytest.raises(RuntimeError, match="non-finite"):
                clip_grad_norm_(make_params([t]), 1.0, p, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="empty"):
        clip_grad_norm_(make_params([torch.zeros(0, device="cuda")]), 1.0, INF)


def test_cuda_matches_cpu_float64():
    tensors = [torch.randn(s, dtype=torch.float64) for s in (5, 70000, 3)]
    cpu = get_total_norm(tensors)
    gpu = get_total_norm([t.cuda() for t in tensors])
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-13, atol=0)


def test_cuda_no_sync_and_at_most_three_kernels():
    params = make_params([torch.randn(4096, device="cuda") for _ in range(1000)])
    clip_grad_norm_(params, 0.1)  # warm up allocators and pinned staging
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        clip_grad_norm_(params, 0.1)
        clip_grad_norm_(params, 1e9)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        clip_grad_norm_(params, 0.1)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
    assert 1 <= len(kernels) <= 3, [e.name for e in kernels]


def test_cuda_opcheck():
    sample = [torch.randn(5, 3, device="cuda"), torch.randn(4, device="cuda", dtype=torch.float16)]
    torch.library.opcheck(OPS.grad_norm.default, (sample, 2.0))
    torch.library.opcheck(OPS.clip_grad_norm_.default, (sample, 0.5, 2.0))
    total = OPS.grad_norm(sample, 2.0)
    torch.library.opcheck(OPS.clip_grads_with_norm_.default, (sample, 0.5, total))
