"""rnnfast.functional (the fused C++ ops) against rnnfast.scratch, the textbook's from-scratch
layers, through the textbook<->torch.nn parameter converters: outputs, final states and the
gradients of input, initial state(s) and every torch-layout weight and bias.
float64 to 1e-10 relative; float32 (ops) against the float64 scratch reference to 1e-5 relative."""
import pytest
import torch

from rnnfast import functional as F
from rnnfast import scratch

from rnnfast._cells import CELLS as REGISTRY

GATES = F.GATES  # the registry's (rnnfast._cells)
# (cell, reset_after): every registry cell, a cell with a reset_after option in both forms
CELLS = [(c.name, v) for c in REGISTRY.values() for v in ((True, False) if "reset_after" in c.options else (True,))]
# (T, B, I, H). (1, 1, 3, 1) and (3, 2, 5, 4) have fewer rows (T*B) than 2 (I + H): their weight
# gradients take the raw BLAS calls (csrc/cpu/backend.h weight_grads_raw), the others ATen's GEMMs.
SHAPES = [(1, 1, 3, 1), (3, 2, 5, 4), (7, 3, 5, 5), (35, 32, 28, 64)]


def make_case(cell, T, B, I, H, bias, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    G = GATES[cell]

    def rand(*shape, scale=1.0):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale).requires_grad_()

    # torch.nn's init scale, 1/sqrt(H): larger recurrent weights make a 35-step tanh RNN chaotic,
    # where float32 itself (torch.nn's included) cannot stay within 1e-5 of float64.
    k = H ** -0.5
    weights = {"weight_ih_l0": rand(G * H, I, scale=k), "weight_hh_l0": rand(G * H, H, scale=k)}
    if bias:
        weights.update(bias_ih_l0=rand(G * H, scale=k), bias_hh_l0=rand(G * H, scale=k))
    x = rand(T, B, I)
    states = [rand(B, H) for _ in range(2 if cell == "lstm" else 1)]
    leaves = [x, *states, *weights.values()]
    cast = [t.detach().to(dtype).requires_grad_() for t in leaves]
    return leaves, cast


def run_ops(cell, reset_after, reverse, bias, leaves):
    n_states = 2 if cell == "lstm" else 1
    x, states, w = leaves[0], leaves[1:1 + n_states], leaves[1 + n_states:]
    b_ih, b_hh = (w[2], w[3]) if bias else (None, None)
    if cell == "lstm":
        out, hy, cy = F.lstm(x, states[0], states[1], w[0], w[1], b_ih, b_hh, reverse=reverse)
        return out, (hy, cy)
    if cell == "gru":
        return F.gru(x, states[0], w[0], w[1], b_ih, b_hh, reverse=reverse, reset_after=reset_after)
    return getattr(F, cell)(x, states[0], w[0], w[1], b_ih, b_hh, reverse=reverse)


def run_scratch(cell, reset_after, reverse, bias, leaves):
    n_states = 2 if cell == "lstm" else 1
    x, states, w = leaves[0], leaves[1:1 + n_states], leaves[1 + n_states:]
    names = ["weight_ih_l0", "weight_hh_l0"] + (["bias_ih_l0", "bias_hh_l0"] if bias else [])
    params = scratch.from_torch_params(cell, dict(zip(names, w)), reset_after=reset_after)
    state = tuple(states) if cell == "lstm" else states[0]
    return scratch.layer(cell, x, state, params, reverse=reverse, reset_after=reset_after)


def flat(out, state):
    return [out, *(state if isinstance(state, tuple) else (state,))]


def rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("cell,reset_after", CELLS, ids=[f"{c}-{'after' if r else 'before'}" for c, r in CELLS])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_ops_match_scratch(cell, reset_after, T, B, I, H, reverse, bias, dtype, tol):
    leaves64, cast = make_case(cell, T, B, I, H, bias, dtype, seed=T * 1000 + H)
    ref = flat(*run_scratch(cell, reset_after, reverse, bias, leaves64))
    got = flat(*run_ops(cell, reset_after, reverse, bias, cast))
    for a, b in zip(got, ref):
        assert a.dtype == dtype
        assert rel(a, b) < tol
    # gradients of a random linear functional of output and final state(s)
    g = torch.Generator().manual_seed(7)
    cot = [torch.randn(r.shape, generator=g, dtype=torch.float64) for r in ref]
    grads_ref = torch.autograd.grad(sum((r * c).sum() for r, c in zip(ref, cot)), leaves64)
    grads = torch.autograd.grad(sum((o * c.to(dtype)).sum() for o, c in zip(got, cot)), cast)
    for a, b in zip(grads, grads_ref):
        assert rel(a, b) < tol


@pytest.mark.parametrize("cell,reset_after", [("rnn_tanh", True), ("gru", True), ("lstm", True)])
@pytest.mark.parametrize("B,H", [(16, 64), (33, 256)])
@pytest.mark.parametrize("reverse", [False, True])
def test_batch_split_path_float32(cell, reset_after, B, H, reverse):
    """float32 with W_hh small enough to stay in L2 and B >= 16 on 2 threads takes the CPU path
    that splits the batch across threads for the whole sequence (csrc/cpu/backend.h,
    batch_split_chunks), including an uneven split (B=33). Same reference and tolerance as above,
    and the 1-thread (plain loop) and 2-thread results agree to float32 rounding."""
    threads = torch.get_num_threads()
    try:
        results = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            leaves64, cast = make_case(cell, 35, B, 28, H, True, torch.float32, seed=B + H)
            ref = flat(*run_scratch(cell, reset_after, reverse, True, leaves64))
            got = flat(*run_ops(cell, reset_after, reverse, True, cast))
            cot = [torch.randn(r.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) for r in ref]
            grads_ref = torch.autograd.grad(sum((r * c).sum() for r, c in zip(ref, cot)), leaves64)
            grads = torch.autograd.grad(sum((o * c.float()).sum() for o, c in zip(got, cot)), cast)
            for a, b in zip([*got, *grads], [*ref, *grads_ref]):
                assert rel(a, b) < 1e-5
            results[n] = [t.detach() for t in [*got, *grads]]
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(results[1], results[2]):
        assert rel(a, b.double()) < 2e-6


@pytest.mark.parametrize("cell,reset_after", CELLS, ids=[f"{c}-{'after' if r else 'before'}" for c, r in CELLS])
@pytest.mark.parametrize("T,B,I,H", [(1, 3, 5, 4), (3, 2, 5, 4)])
@pytest.mark.parametrize("reverse", [False, True])
def test_without_input_grad(cell, reset_after, T, B, I, H, reverse):
    """An input that needs no gradient: the node asks for none (input_grad=False) and drops what
    the op returns for it (nothing, on this path: grad_accumulation.h drops_unrequested); every
    other gradient as the reference's, and the input's .grad stays None."""
    leaves64, cast = make_case(cell, T, B, I, H, True, torch.float64, seed=T * 100 + B)
    cast[0].requires_grad_(False)
    ref = flat(*run_scratch(cell, reset_after, reverse, True, leaves64))
    got = flat(*run_ops(cell, reset_after, reverse, True, cast))
    g = torch.Generator().manual_seed(5)
    cot = [torch.randn(r.shape, generator=g, dtype=torch.float64) for r in ref]
    grads_ref = torch.autograd.grad(sum((r * c).sum() for r, c in zip(ref, cot)), leaves64[1:])
    sum((o * c).sum() for o, c in zip(got, cot)).backward()
    assert cast[0].grad is None
    for a, b in zip([t.grad for t in cast[1:]], grads_ref):
        assert rel(a, b) < 1e-10
