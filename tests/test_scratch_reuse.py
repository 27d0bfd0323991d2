"""The CPU scratch pool (csrc/core/scratch.h) lends the same large buffers to call after call: the
packed W_hh, the forward's input projection, the backward's gate gradients and weight-gradient
operands. These tests check that reuse never shows in results: a call's results do not depend on
what ran before it (other sizes, other dtypes, other threads), and nothing a call returned is
overwritten by a later call."""
import threading

import pytest
import torch

import rnnfast

# sizes whose scratch passes the pool's 256 KiB floor (H=64, B=32, T=50: the LSTM's projection
# buffer is 1.6 MB, its packed W_hh 7.9 MB) and one that shares slots with them at another shape
SHAPES = [(64, 32, 50), (96, 16, 40), (64, 32, 50)]


def _make(cell, H, B, T, dtype, seed):
    torch.manual_seed(seed)
    m = getattr(rnnfast, cell)(H, H, num_layers=2).to(dtype)
    x = (torch.randn(T, B, H) * 2).to(dtype)
    return m, x


def _compute(m, x):
    m.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y, _ = m(x)
    y.square().sum().backward()
    with torch.inference_mode():
        y_inf, _ = m(x.detach())
    return [y.detach(), y_inf, x.grad] + [p.grad.clone() for p in m.parameters()]


def _run(cell, H, B, T, dtype, seed):
    return _compute(*_make(cell, H, B, T, dtype, seed))


def _assert_equal(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_results_do_not_depend_on_earlier_calls(cell):
    first = _run(cell, *SHAPES[0], torch.float32, seed=1)
    kept = [t.clone() for t in first]
    # other shapes and another dtype in between, reusing (and regrowing) the same slots
    _run(cell, *SHAPES[1], torch.float32, seed=2)
    _run(cell, *SHAPES[1], torch.float64, seed=3)
    _run(cell, 128, 64, 60, torch.float32, seed=4)
    again = _run(cell, *SHAPES[2], torch.float32, seed=1)
    _assert_equal(again, kept)  # bit for bit the first call's results
    _assert_equal(first, kept)  # and the first call's tensors were not touched by the later ones


def test_reference_still_matches_after_reuse():
    # against torch.nn after the pool has been warmed by other shapes (explicit tolerance)
    _run("LSTM", 96, 16, 40, torch.float32, seed=5)
    torch.manual_seed(0)
    ours = rnnfast.LSTM(64, 64)
    ref = torch.nn.LSTM(64, 64)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(50, 32, 64)
    y, (h, c) = ours(x)
    y_ref, (h_ref, c_ref) = ref(x)
    for a, b in ((y, y_ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_concurrent_threads_get_their_own_buffers():
    # calls from several Python threads at once (the pool is process-wide): each thread's results
    # equal the same call made alone, bit for bit. Modules and inputs are made first (the global
    # RNG is shared); each thread owns its module (its .grad).
    cases = [("LSTM", 64, 32, 50, 11), ("GRU", 64, 32, 50, 12), ("LSTM", 96, 16, 40, 13), ("GRU", 80, 24, 30, 14)]
    alone = {c: _run(c[0], *c[1:4], torch.float32, seed=c[4]) for c in cases}
    made = {c: _make(c[0], *c[1:4], torch.float32, seed=c[4]) for c in cases}
    results, errors = {c: [] for c in cases}, []

    def work(c):
        try:
            for _ in range(3):
                results[c].append(_compute(*made[c]))
        except Exception as err:  # reported below, not swallowed
            errors.append(err)

    threads = [threading.Thread(target=work, args=(c,)) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for c in cases:
        assert len(results[c]) == 3
        for r in results[c]:
            for u, v in zip(r, alone[c]):
                assert torch.equal(u, v)
