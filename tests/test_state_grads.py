"""The gradients a backward call receives for its states and outputs, and the unpacked A · W GEMMs
split by columns over threads.

csrc/autograd.cpp, in a plain CPU backward call:
- an unused output's gradient (a cell's `output`, a sequence's h_n when only the output is used) is
  one shared zero row broadcast over (T, B) (zero_grad_like), not a fresh zero fill;
- a state's incoming gradient that the engine holds alone becomes the op's running dL/dh (dL/dc),
  updated in place and returned as grad_hx (owned_dense), not a fresh copy. Anything else that
  holds it (a hook that kept it, retain_grad, torch.autograd.grad's capture of an intermediate
  state) must see it unchanged, so those cases are copied: the tests below hold every such
  observer's tensor unchanged and every gradient equal to torch.nn's.

csrc/cpu/blas.h blas_gemm_nn / splits_columns: at 2 threads, dL/dh_{t-1} = dG W_hh (unpacked: a
cell's step) and dL/dx = dG W_ih of 4 to 128 rows run as one sequential BLAS call per thread's block
of columns. The shapes below are ones the rule splits (noted at each), including a column count
that is not a multiple of the 16-column block boundary.
"""
import pytest
import torch

import rnnfast
from test_batch_lanes import threads
from test_small_sizes import CELLS as BY_KIND, cell_pair

KIND = {name: kind for kind, (name, _) in BY_KIND.items()}
CELLS = list(KIND)
TOL = dict(rtol=1e-4, atol=1e-5)


def states_of(cell, xs, hook=None, retain=False):
    """The loop's states h_t (each passed to hook(t, h) / retain_grad) and the loss."""
    state, hs, total = None, [], 0
    for t, x in enumerate(xs):
        state = cell(x, state)
        h = state[0] if isinstance(state, tuple) else state
        if hook is not None:
            h.register_hook(lambda g, t=t: hook(t, g))
        if retain:
            h.retain_grad()
        hs.append(h)
        total = total + (h * torch.linspace(0.5, 1.5, h.size(-1))).sum()
    return hs, total


def assert_params_close(ref, got):
    for (n, p), q in zip(ref.named_parameters(), got.parameters()):
        torch.testing.assert_close(q.grad, p.grad, **TOL, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("name", CELLS)
def test_a_hook_that_keeps_the_state_grad_sees_it_unchanged(name):
    ref, got = cell_pair(KIND[name], 12, 20)
    xs = torch.randn(6, 3, 12)
    seen = {}
    for cell, key in ((ref, "ref"), (got, "got")):
        kept = seen[key] = []
        _, total = states_of(cell, xs, hook=lambda t, g: kept.append((t, g, g.clone())))
        total.backward()
    for (t, g, at_hook), (_, g_ref, _) in zip(seen["got"], seen["ref"]):
        assert torch.equal(g, at_hook), f"step {t}: the gradient a hook kept changed after the hook"
        torch.testing.assert_close(g, g_ref, **TOL)
    assert_params_close(ref, got)


@pytest.mark.parametrize("name", CELLS)
def test_retained_state_grads_match_torch(name):
    ref, got = cell_pair(KIND[name], 12, 20)
    xs = torch.randn(5, 4, 12)
    hs_ref, total = states_of(ref, xs, retain=True)
    total.backward()
    hs_got, total = states_of(got, xs, retain=True)
    total.backward()
    for t, (a, b) in enumerate(zip(hs_got, hs_ref)):
        torch.testing.assert_close(a.grad, b.grad, **TOL, msg=lambda m: f"h_{t}.grad: {m}")
    assert_params_close(ref, got)


@pytest.mark.parametrize("name", CELLS)
def test_autograd_grad_of_intermediate_states(name):
    """torch.autograd.grad captures the gradients flowing into h_1 and h_3: they must be the
    engine's values at that point, not the buffers the later steps went on to update."""
    ref, got = cell_pair(KIND[name], 12, 20)
    xs = torch.randn(6, 2, 12)
    out = []
    for cell in (ref, got):
        hs, total = states_of(cell, xs)
        out.append(torch.autograd.grad(total, [hs[1], hs[3], *cell.parameters()]))
    for a, b in zip(out[1], out[0]):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("use", ["output", "h_n", "both"])
@pytest.mark.parametrize("mode", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("T", [1, 7])
def test_an_unused_output_gets_a_zero_gradient(mode, T, use):
    torch.manual_seed(0)
    ref = getattr(torch.nn, mode)(10, 16, num_layers=2)
    got = getattr(rnnfast, mode)(10, 16, num_layers=2)
    got.load_state_dict(ref.state_dict())
    x = torch.randn(T, 5, 10)
    for m in (ref, got):
        y, state = m(x)
        h = state[0] if mode == "LSTM" else state
        loss = {"output": y.pow(2).sum(), "h_n": h.pow(2).sum(), "both": y.sum() + h.pow(2).sum()}[use]
        loss.backward()
    assert_params_close(ref, got)


# (cell, I, H, B): the splits each shape takes at 2 threads (dh: M = B, N = H, K = G*H; dx: M = B,
# N = I, K = G*H), per csrc/cpu/blas.h splits_columns
SPLIT_SHAPES = [
    ("RNNCell", 256, 256, 32),  # dh and dx 32 x 256 x 256 (N <= 256)
    ("GRUCell", 256, 256, 8),  # dh and dx 8 x 256 x 768 (exactly kColumnSplitMinMacs)
    ("LSTMCell", 200, 200, 16),  # 16 x 200 x 800: blocks [0, 96) and [96, 200)
    ("GRUCell", 640, 640, 4),  # 4 x 640 x 1920 (N in (512, 768]); N = 640 = 10 blocks of 64
    ("LSTMCell", 512, 512, 24),  # 24 x 512 x 2048 (N <= 512 from 24 rows)
]


@pytest.mark.parametrize("cls, I, H, B", SPLIT_SHAPES)
def test_column_split_backward_matches_torch(cls, I, H, B):
    kind = {v[0]: k for k, v in BY_KIND.items()}[cls]
    ref, got = cell_pair(kind, I, H)
    xs = torch.randn(3, B, I)
    grads = []
    with threads(2):
        for cell in (ref, got):
            x = xs.clone().requires_grad_(True)
            hs, total = states_of(cell, x)
            total.backward()
            grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], **TOL)
    assert_params_close(ref, got)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_short_sequence_input_grad_split(n_threads):
    """A layer's dL/dx = dG W_ih of T*B = 72 rows (72 x 256 x 1024, split at 2 threads)."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(256, 256)
    got = rnnfast.LSTM(256, 256)
    got.load_state_dict(ref.state_dict())
    x0 = torch.randn(3, 24, 256)
    grads = []
    with threads(n_threads):
        for m in (ref, got):
            x = x0.clone().requires_grad_(True)
            y, _ = m(x)
            (y * y).sum().backward()
            grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], **TOL)
    assert_params_close(ref, got)
