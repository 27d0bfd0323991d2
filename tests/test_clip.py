"""rnnfast.clip against torch.nn.utils (the contract) and against a float64 reference (the truth).

Tolerances: rnnfast accumulates in float64 on CPU (float32: in float within blocks of 1024 elements,
in float64 across blocks), torch accumulates float32 in float32 with its own summation order, so float32 norms agree to a few ulps of the sum (~1e-6 relative; pow
for p=3 and p=0.5 adds float32 rounding per element on torch's side, hence 2e-5 there), float64 to
~1e-12. float16/bfloat16: torch rounds each tensor's norm to the grad dtype before combining, so the
norms agree to the dtype's precision (2^-10, 2^-7 relative), and the clipped grads to one ulp of
the dtype.
"""
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

import rnnfast.clip as rclip
from rnnfast.clip import clip_grad_norm_, clip_grad_value_, get_total_norm, grad_clipping

INF = float("inf")
RTOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def make_params(tensors):
    params = []
    for t in tensors:
        p = torch.nn.Parameter(torch.zeros(t.shape, dtype=t.dtype))
        p.grad = t.clone()
        params.append(p)
    return params


def twins(tensors, none_at=()):
    """Two independent parameter lists with equal grads (None where asked)."""
    a, b = make_params(tensors), make_params(tensors)
    for i in none_at:
        a[i].grad = None
        b[i].grad = None
    return a, b


def exact_norm(tensors, p):
    flat = torch.cat([t.detach().double().reshape(-1) for t in tensors]) if tensors else torch.zeros(0)
    return torch.linalg.vector_norm(flat, p).item()


def rtol_for(dtypes, p):
    tol = max(RTOL[d] for d in dtypes)
    if p not in (1.0, 2.0, INF) and torch.float32 in dtypes and tol < 2e-5:
        tol = 2e-5
    return tol


def assert_same_clip(ours_params, ref_params, ours_norm, ref_norm, rtol):
    assert ours_norm.dtype == ref_norm.dtype
    assert ours_norm.device == ref_norm.device
    assert ours_norm.shape == ()
    torch.testing.assert_close(ours_norm.double(), ref_norm.double(), rtol=rtol, atol=0.0, equal_nan=True)
    for a, b in zip(ours_params, ref_params):
        if b.grad is None:
            assert a.grad is None
            continue
        assert a.grad.dtype == b.grad.dtype and a.grad.shape == b.grad.shape
        assert a.grad.stride() == b.grad.stride()
        # a differing norm in the last bits moves the coefficient by as much: one ulp of the grad
        tol = max(rtol, torch.finfo(a.grad.dtype).eps)
        torch.testing.assert_close(a.grad, b.grad, rtol=2 * tol, atol=1e-30, equal_nan=True)


def run_parity(tensors, max_norm, p, none_at=(), rtol=None):
    ours, ref = twins(tensors, none_at)
    n_ref = torch.nn.utils.clip_grad_norm_(ref, max_norm, p)
    n_ours = clip_grad_norm_(ours, max_norm, p)
    dtypes = {t.dtype for t in tensors} or {torch.float32}
    assert_same_clip(ours, ref, n_ours, n_ref, rtol or rtol_for(dtypes, p))
    return n_ours


def randn_list(count, size, dtype, gen_scale=1.0):
    return [torch.randn(size, dtype=torch.float64).mul_(gen_scale).to(dtype) for _ in range(count)]


NORMS = [1.0, 2.0, 3.0, INF, 0.5]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count,size", [(1, 10), (7, 123), (1000, 17)])
@pytest.mark.parametrize("clips", [True, False], ids=["above", "below"])
def test_parity_counts_dtypes_norms(count, size, dtype, p, clips):
    tensors = randn_list(count, size, dtype)
    total = exact_norm(tensors, p)
    max_norm = total * (0.3 if clips else 3.0)
    n = run_parity(tensors, max_norm, p)
    # the norm is also right in absolute terms (against float64 on the same values); a norm beyond
    # the dtype's range is inf, as in torch (e.g. the 0.5-norm of 7x123 float16 values)
    expected = total if total <= torch.finfo(dtype).max else INF
    assert math.isclose(n.item(), expected, rel_tol=RTOL[dtype] * 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_norm", [1.3, 0.1, 2.9999])
def test_coefficient_is_torchs_bit_for_bit(dtype, max_norm):
    # exactly representable norm (16 * 0.75^2 = 9, norm 3): both sides start from the same total, so
    # the coefficient arithmetic (t + 1e-6, reciprocal, * max_norm, rounded to the dtype, clamp) and
    # the product must match torch exactly
    tensors = [torch.full((16,), 0.75, dtype=dtype), torch.full((4, 4), -0.75, dtype=dtype).t()]
    ours, ref = twins(tensors)
    n_ours = clip_grad_norm_(ours, max_norm)
    n_ref = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert torch.equal(n_ours, n_ref)
    for a, b in zip(ours, ref):
        assert torch.equal(a.grad, b.grad)


def test_portable_loops_match_the_avx2_ones():
    # the same parity through the portable (non-AVX2) loops, in a fresh process
    code = (
        "import torch, rnnfast.clip as c\n"
        "torch.manual_seed(0)\n"
        "for dt in (torch.float32, torch.float64):\n"
        "    ts = [torch.randn(n, dtype=dt) for n in (3, 1000, 70001)]\n"
        "    for p in (1.0, 2.0):\n"
        "        exact = torch.linalg.vector_norm(torch.cat([t.double() for t in ts]), p).item()\n"
        "        got = c.get_total_norm(ts, p).item()\n"
        "        tol = 1e-12 if dt == torch.float64 else 1e-7  # the float32 total is rounded to float32\n"
        "        assert abs(got - exact) <= tol * exact, (dt, p, got, exact)\n"
        "        ps = [torch.nn.Parameter(torch.zeros_like(t)) for t in ts]\n"
        "        for q, t in zip(ps, ts): q.grad = t.clone()\n"
        "        c.clip_grad_norm_(ps, 0.5 * exact, p)\n"
        "        coef = 0.5 * exact / (got + 1e-6)\n"
        "        for q, t in zip(ps, ts): torch.testing.assert_close(q.grad, (t.double() * coef).to(dt))\n"
        "print('ok')\n"
    )
    env = dict(os.environ, RNNFAST_DISABLE_AVX2="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_below_threshold_is_bitwise_noop():
    tensors = randn_list(7, 1000, torch.float32)
    params = make_params(tensors)
    clip_grad_norm_(params, 1e9)
    for p, t in zip(params, tensors):
        assert torch.equal(p.grad, t)


@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_float32_is_at_least_as_accurate_as_torch(p):
    tensors = randn_list(7, 200_003, torch.float32)
    exact = exact_norm(tensors, p)
    ours = get_total_norm(tensors, p).item()
    theirs = torch.nn.utils.get_total_norm(tensors, p).item()
    assert abs(ours - exact) <= abs(theirs - exact) + 1e-7 * exact


@pytest.mark.parametrize("p", [2.0, 1.0, INF])
def test_parity_mixed_dtypes(p):
    tensors = [
        torch.randn(300, dtype=torch.float16),
        torch.randn(40, 7, dtype=torch.float32),
        torch.randn(3, dtype=torch.bfloat16),
        torch.randn(5, 5, dtype=torch.float64),
        torch.randn(9, dtype=torch.float32),
    ]
    n = run_parity(tensors, 0.5, p)
    assert n.dtype == torch.float64


def test_parity_mixed_half_bfloat16_gives_float32():
    n = run_parity([torch.randn(100, dtype=torch.float16), torch.randn(100, dtype=torch.bfloat16)], 0.5, 2.0)
    assert n.dtype == torch.float32


@pytest.mark.parametrize("p", [2.0, INF, 1.0])
def test_parity_sizes_zero_to_millions(p):
    sizes = [0, 1, 2, 15, 16, 17, 65535, 65536, 65537, 3_000_001] if p != INF else [1, 17, 65537, 3_000_001]
    tensors = [torch.randn(s) for s in sizes]
    # torch sums 3M float32 squares in float32: its norm is off by ~6e-5 relative (measured), so the
    # parity tolerance is 2e-4 here; against the float64 truth rnnfast stays within 2e-6.
    n = run_parity(tensors, 1.0, p, rtol=2e-4)
    assert math.isclose(n.item(), exact_norm(tensors, p), rel_tol=2e-6)


def test_zero_element_tensors_and_all_zero_grads():
    run_parity([torch.zeros(0), torch.zeros(3, 0)], 1.0, 2.0)
    n = run_parity([torch.zeros(5), torch.zeros(0)], 1.0, 2.0)
    assert n.item() == 0.0


@pytest.mark.parametrize("p", [INF, -INF])
def test_inf_norm_of_empty_grad_raises_like_torch(p):
    ours, ref = twins([torch.ones(3), torch.zeros(0)])
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_(ref, 1.0, p)
    with pytest.raises(RuntimeError, match="empty"):
        clip_grad_norm_(ours, 1.0, p)
    assert torch.equal(ours[0].grad, torch.ones(3))


@pytest.mark.parametrize("p", [0.0, -1.0, -INF, 4.0])
def test_parity_unusual_norm_types(p):
    tensors = [torch.tensor([1.0, 0.0, 2.0]), torch.zeros(3), torch.tensor([3.0, -4.0]), torch.randn(1000)]
    run_parity(tensors, 0.1, p)


def test_zero_norm_counts_tensors_with_a_nonzero_like_torch():
    tensors = [torch.tensor([1.0, 0.0, 2.0]), torch.zeros(3), torch.tensor([0.0, 5.0])]
    assert clip_grad_norm_(make_params(tensors), 100.0, 0).item() == 2.0


def test_none_grads_are_skipped():
    tensors = randn_list(7, 50, torch.float32)
    run_parity(tensors, 0.5, 2.0, none_at=(0, 3, 6))


def test_all_grads_none_and_empty_inputs():
    for parameters in ([], [torch.nn.Parameter(torch.ones(2))]):
        n = clip_grad_norm_(parameters, 1.0)
        ref = torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        assert n.dtype == ref.dtype and n.device == ref.device and n.item() == ref.item() == 0.0


def test_empty_generator_warns_like_torch():
    with pytest.warns(UserWarning, match="empty generator"):
        n = clip_grad_norm_((p for p in []), 1.0)
    assert n.item() == 0.0


def test_single_tensor_and_generator():
    t = torch.randn(100)
    ours, ref = twins([t])
    n_ours = clip_grad_norm_(ours[0], 0.5)
    n_ref = torch.nn.utils.clip_grad_norm_(ref[0], 0.5)
    assert_same_clip(ours, ref, n_ours, n_ref, 2e-6)

    tensors = randn_list(5, 30, torch.float32)
    ours, ref = twins(tensors)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a non-empty generator must not warn
        n_ours = clip_grad_norm_((p for p in ours), 0.5)
    n_ref = torch.nn.utils.clip_grad_norm_((p for p in ref), 0.5)
    assert_same_clip(ours, ref, n_ours, n_ref, 2e-6)
    assert n_ours.item() > 0.5  # the generator was read once, for the norm and the scale


def test_module_parameters():
    torch.manual_seed(1)
    a, b = torch.nn.LSTM(8, 16, 2), torch.nn.LSTM(8, 16, 2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 3, 8)
    a(x)[0].pow(2).sum().backward()
    b(x)[0].pow(2).sum().backward()
    n_ours = clip_grad_norm_(a.parameters(), 0.1)
    n_ref = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.1)
    assert_same_clip(list(a.parameters()), list(b.parameters()), n_ours, n_ref, 2e-6)


@pytest.mark.parametrize("bad", [INF, -INF, float("nan")])
@pytest.mark.parametrize("p", [2.0, INF, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_nonfinite_grads_propagate_like_torch(bad, p, dtype):
    t = torch.randn(50, dtype=dtype)
    t[7] = bad
    ours, ref = twins([t, torch.randn(20, dtype=dtype)])
    n_ref = torch.nn.utils.clip_grad_norm_(ref, 1.0, p)
    n_ours = clip_grad_norm_(ours, 1.0, p)
    assert not math.isfinite(n_ref.item())
    assert_same_clip(ours, ref, n_ours, n_ref, RTOL[dtype])
    assert torch.equal(ours[1].grad.isnan(), ref[1].grad.isnan())


def test_float32_overflow_gives_inf_like_torch():
    ours, ref = twins([torch.full((4,), 1e30)])
    n_ref = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    n_ours = clip_grad_norm_(ours, 1.0)
    assert n_ref.item() == INF and n_ours.item() == INF
    assert_same_clip(ours, ref, n_ours, n_ref, 0.0)


@pytest.mark.parametrize("bad", [INF, float("nan")])
@pytest.mark.parametrize("p", [2.0, INF])
def test_error_if_nonfinite_raises_like_torch_and_leaves_grads(bad, p):
    t = torch.randn(10)
    t[3] = bad
    ours, ref = twins([t, torch.randn(4)])
    with pytest.raises(RuntimeError) as ref_err:
        torch.nn.utils.clip_grad_norm_(ref, 1.0, p, error_if_nonfinite=True)
    with pytest.raises(RuntimeError) as our_err:
        clip_grad_norm_(ours, 1.0, p, error_if_nonfinite=True)
    assert str(our_err.value) == str(ref_err.value)
    assert torch.equal(ours[1].grad, ref[1].grad)
    assert torch.equal(ours[0].grad.nan_to_num(), t.nan_to_num())


def test_error_if_nonfinite_finite_norm_clips():
    tensors = randn_list(3, 100, torch.float32)
    ours, ref = twins(tensors)
    n_ours = clip_grad_norm_(ours, 0.5, error_if_nonfinite=True)
    n_ref = torch.nn.utils.clip_grad_norm_(ref, 0.5, error_if_nonfinite=True)
    assert_same_clip(ours, ref, n_ours, n_ref, 2e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_non_contiguous_grads(dtype):
    base = torch.randn(40, 60, dtype=torch.float64).to(dtype)
    small = torch.randn(7, dtype=dtype)

    def grads():  # fresh storage each call, same values and strides
        b = base.clone()
        return [b.t(), base.clone()[::2, 1::3], base.clone()[:, :30], small.clone(), base.clone()[5]]

    ours, ref = [], []
    for lst in (ours, ref):
        for g in grads():
            p = torch.nn.Parameter(torch.zeros(g.shape, dtype=dtype))
            p.grad = g
            lst.append(p)
    assert all(not p.grad.is_contiguous() for p in ours[:3])
    n_ref = torch.nn.utils.clip_grad_norm_(ref, 0.3)
    n_ours = clip_grad_norm_(ours, 0.3)
    assert_same_clip(ours, ref, n_ours, n_ref, RTOL[dtype])
    assert n_ours.item() > 0.3


def test_foreach_is_accepted():
    for foreach in (None, False, True):
        run_parity(randn_list(3, 10, torch.float32), 0.5, 2.0)
        ours = make_params(randn_list(3, 10, torch.float32))
        clip_grad_norm_(ours, 0.5, foreach=foreach)


def test_complex_grads_fall_back_to_torch():
    t = torch.randn(10, dtype=torch.complex64)
    ours, ref = twins([t])
    n_ours = clip_grad_norm_(ours, 0.5)
    n_ref = torch.nn.utils.clip_grad_norm_(ref, 0.5)
    assert_same_clip(ours, ref, n_ours, n_ref, 2e-6)


def test_get_total_norm_and_clip_grads_with_norm():
    tensors = randn_list(4, 33, torch.float32)
    n = get_total_norm(tensors, 3.0)
    torch.testing.assert_close(n, torch.nn.utils.get_total_norm(tensors, 3.0), rtol=2e-5, atol=0)
    ours, ref = twins(tensors)
    rclip.clip_grads_with_norm_(ours, 1.0, n)
    torch.nn.utils.clip_grads_with_norm_(ref, 1.0, n)
    for a, b in zip(ours, ref):
        assert torch.equal(a.grad, b.grad)  # same norm in, same coefficient and product out
    with pytest.raises(RuntimeError, match="non-finite"):
        get_total_norm([torch.tensor([INF])], error_if_nonfinite=True)


def test_clip_grads_with_norm_total_of_another_dtype():
    tensors = randn_list(3, 20, torch.float32)
    ours, ref = twins(tensors)
    n = torch.nn.utils.get_total_norm(tensors)
    rclip.clip_grads_with_norm_(ours, 0.5, n.double())  # another dtype: coefficient in float64
    torch.nn.utils.clip_grads_with_norm_(ref, 0.5, n.double())
    for a, b in zip(ours, ref):
        assert torch.equal(a.grad, b.grad)


def test_grad_clipping_textbook_call_shape():
    torch.manual_seed(2)
    net = torch.nn.Linear(5, 3)
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    net.register_parameter("frozen", frozen)
    net(torch.randn(4, 5)).pow(2).sum().backward()
    frozen.grad = torch.full((2,), 100.0)  # not requiring grad: the textbook skips it
    grads = [p.grad.clone() for p in (net.weight, net.bias)]
    expected = math.sqrt(sum(g.double().pow(2).sum().item() for g in grads))
    n = grad_clipping(net, 0.1)
    assert math.isclose(n.item(), expected, rel_tol=1e-6)
    coef = 0.1 / (expected + 1e-6)
    for p, g in zip((net.weight, net.bias), grads):
        torch.testing.assert_close(p.grad, g * coef, rtol=1e-6, atol=0)
    assert torch.equal(frozen.grad, torch.full((2,), 100.0))

    class Scratch:  # the from-scratch models expose .params
        pass

    s = Scratch()
    s.params = [torch.randn(3, requires_grad=True)]
    s.params[0].grad = torch.tensor([3.0, 4.0, 0.0])
    assert grad_clipping(s, 1.0).item() == 5.0
    torch.testing.assert_close(s.params[0].grad, torch.tensor([0.6, 0.8, 0.0]), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_value_parity(dtype):
    t = torch.randn(100, dtype=dtype) * 3
    t[0] = float("nan")
    ours, ref = twins([t, torch.randn(5, dtype=dtype)], none_at=())
    clip_grad_value_(ours, 1.5)
    torch.nn.utils.clip_grad_value_(ref, 1.5)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, equal_nan=True)
    assert ours[0].grad[1:].abs().max().item() <= 1.5


# ---- the ops themselves ------------------------------------------------------------------------

OPS = torch.ops.rnnfast


def test_op_errors_are_clear():
    with pytest.raises(NotImplementedError, match="empty list"):  # the dispatcher needs a tensor
        OPS.grad_norm([], 2.0)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        OPS.grad_norm([torch.ones(3), torch.ones(3, dtype=torch.int64)], 2.0)
    with pytest.raises(NotImplementedError, match="complex"):
        OPS.clip_grad_norm_([torch.ones(3, dtype=torch.complex64)], 1.0, 2.0)
    with pytest.raises(NotImplementedError):  # no sparse kernel: rnnfast.clip falls back to torch
        OPS.grad_norm([torch.ones(3).to_sparse()], 2.0)
    with pytest.raises(ValueError, match="0-dim"):
        OPS.clip_grads_with_norm_([torch.ones(3)], 1.0, torch.ones(2))


def test_ops_are_deterministic_and_thread_count_independent():
    # above the 8M-element threshold where the CPU passes go parallel
    tensors = randn_list(2, 4_500_001, torch.float32) + randn_list(3, 1001, torch.float32)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            results.append(OPS.grad_norm(tensors, 2.0).item())
    finally:
        torch.set_num_threads(threads)
    assert results[0] == results[1]


@pytest.mark.parametrize("dtypes", [[torch.float32] * 3, [torch.float64, torch.float16, torch.bfloat16]])
def test_opcheck(dtypes):
    def sample():
        return [torch.randn(5, 3, dtype=d) for d in dtypes] + [torch.randn(4, dtype=dtypes[0])]

    torch.library.opcheck(OPS.grad_norm.default, (sample(), 2.0))
    torch.library.opcheck(OPS.grad_norm.default, (sample(), INF))
    torch.library.opcheck(OPS.clip_grad_norm_.default, (sample(), 0.5, 2.0))
    grads = sample()
    total = OPS.grad_norm(grads, 2.0)
    torch.library.opcheck(OPS.clip_grads_with_norm_.default, (grads, 0.5, total))


def test_torch_compile_fullgraph():
    tensors = randn_list(3, 64, torch.float32)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(grads):
        return OPS.clip_grad_norm_(grads, 0.5, 2.0)

    a = [t.clone() for t in tensors]
    b = [t.clone() for t in tensors]
    n_compiled = step(a)
    n_eager = OPS.clip_grad_norm_(b, 0.5, 2.0)
    assert torch.equal(n_compiled, n_eager)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_public_function_compiles_fullgraph():
    torch.manual_seed(3)
    a, b = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 6)
    a(x).pow(2).sum().backward()
    b(x).pow(2).sum().backward()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def clip(params):
        return clip_grad_norm_(params, 0.1)

    n_compiled = clip(list(a.parameters()))
    n_eager = clip_grad_norm_(list(b.parameters()), 0.1)
    assert torch.equal(n_compiled, n_eager)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad)
