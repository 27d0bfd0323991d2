"""The from-scratch references (rnnfast.scratch) against torch.nn and against hand computation.

Everything here is float64 with tolerance 1e-10 (absolute and relative): the references must be
exact up to rounding, since every fast kernel is tested against them.
"""
import math

import numpy as np
import pytest
import torch
from torch import nn

from rnnfast import scratch

TOL = dict(rtol=1e-10, atol=1e-10)
DT = torch.float64


def _torch_module(cell, I, H, num_layers=1, bidirectional=False):
    kw = dict(num_layers=num_layers, bidirectional=bidirectional)
    if cell == "gru":
        return nn.GRU(I, H, **kw).to(DT)
    if cell == "lstm":
        return nn.LSTM(I, H, **kw).to(DT)
    return nn.RNN(I, H, nonlinearity=cell[4:], **kw).to(DT)


def _random_functional(outputs, states, gen):
    """A random linear functional of the outputs and final states: its gradient reaches every
    output and state entry with a distinct weight."""
    total = 0
    for t in [outputs, *states]:
        total = total + (t * torch.randn(t.shape, generator=gen, dtype=DT)).sum()
    return total


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
@pytest.mark.parametrize("reverse", [False, True])
def test_layer_matches_torch_nn(cell, reverse):
    T, B, I, H = 5, 3, 4, 6
    ref = _torch_module(cell, I, H, bidirectional=reverse)
    with torch.no_grad():  # non-trivial biases on both sides, so the b_ih/b_hh split matters
        for p in ref.parameters():
            p.uniform_(-0.8, 0.8)
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    h0 = torch.randn(1 + reverse, B, H, dtype=DT, requires_grad=True)
    c0 = torch.randn(1 + reverse, B, H, dtype=DT, requires_grad=True)
    d = int(reverse)  # the direction under test: layer 0 forward or layer 0 reverse

    if cell == "lstm":
        out_ref, (h_ref, c_ref) = ref(x, (h0, c0))
        out_ref = out_ref[..., d * H:(d + 1) * H]
        states_ref = [h_ref[d], c_ref[d]]
    else:
        out_ref, h_ref = ref(x, h0)
        out_ref = out_ref[..., d * H:(d + 1) * H]
        states_ref = [h_ref[d]]
    _random_functional(out_ref, states_ref, torch.Generator().manual_seed(1)).backward()
    ref_grads = {"x": x.grad, "h0": h0.grad[d], "c0": c0.grad[d] if cell == "lstm" else None}
    sfx = "_reverse" if reverse else ""
    ref_param_grads = {n: p.grad for n, p in ref.named_parameters() if n.endswith("_l0" + sfx)}

    # Scratch side: leaf tensors in torch's layout, converted (differentiably) to the textbook's.
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in ref.named_parameters()
              if n.endswith("_l0" + sfx)}
    params = scratch.from_torch_params(cell, leaves, suffix=sfx, reset_after=True)
    x2 = x.detach().clone().requires_grad_(True)
    h2 = h0.detach()[d].clone().requires_grad_(True)
    c2 = c0.detach()[d].clone().requires_grad_(True)
    state = (h2, c2) if cell == "lstm" else h2
    out, final = scratch.layer(cell, x2, state, params, reverse=reverse)
    states = list(final) if cell == "lstm" else [final]
    _random_functional(out, states, torch.Generator().manual_seed(1)).backward()

    torch.testing.assert_close(out, out_ref, **TOL)
    for s, s_ref in zip(states, states_ref):
        torch.testing.assert_close(s, s_ref, **TOL)
    torch.testing.assert_close(x2.grad, ref_grads["x"], **TOL)
    torch.testing.assert_close(h2.grad, ref_grads["h0"], **TOL)
    if cell == "lstm":
        torch.testing.assert_close(c2.grad, ref_grads["c0"], **TOL)
    assert set(leaves) == set(ref_param_grads) and len(leaves) == 4
    for n, leaf in leaves.items():
        torch.testing.assert_close(leaf.grad, ref_param_grads[n], **TOL, msg=n)


def test_reverse_equals_flip():
    T, B, I, H = 6, 2, 3, 4
    params = [p.double() for p in scratch.get_lstm_params(I, H, "cpu")[:12]]
    x = torch.randn(T, B, I, dtype=DT)
    s = (torch.randn(B, H, dtype=DT), torch.randn(B, H, dtype=DT))
    out_r, (h_r, c_r) = scratch.lstm_layer(x, s, params, reverse=True)
    out_f, (h_f, c_f) = scratch.lstm_layer(x.flip(0), s, params)
    torch.testing.assert_close(out_r, out_f.flip(0), rtol=0, atol=0)
    torch.testing.assert_close(h_r, h_f, rtol=0, atol=0)
    torch.testing.assert_close(c_r, c_f, rtol=0, atol=0)


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def test_textbook_gru_matches_hand_computation():
    # Two steps of the textbook GRU, computed element by element in numpy, one hidden unit at a
    # time (no matrix products), as an independent check of gru_layer(reset_after=False).
    T, B, I, H = 2, 2, 3, 4
    params = [torch.randn(p.shape, dtype=DT) * 0.5 for p in scratch.get_gru_params(I, H, "cpu")[:9]]
    x = torch.randn(T, B, I, dtype=DT)
    h0 = torch.randn(B, H, dtype=DT)
    out, hT = scratch.gru_layer(x, h0, params, reset_after=False)

    Wxr, Whr, br, Wxz, Whz, bz, Wxh, Whh, bh = [p.numpy() for p in params]
    xs, h = x.numpy(), h0.numpy().copy()
    expected = np.zeros((T, B, H))
    for t in range(T):
        new_h = np.zeros((B, H))
        for b in range(B):
            r = [_sigmoid(sum(xs[t, b, i] * Wxr[i, j] for i in range(I))
                          + sum(h[b, k] * Whr[k, j] for k in range(H)) + br[j]) for j in range(H)]
            for j in range(H):
                z = _sigmoid(sum(xs[t, b, i] * Wxz[i, j] for i in range(I))
                             + sum(h[b, k] * Whz[k, j] for k in range(H)) + bz[j])
                n = math.tanh(sum(xs[t, b, i] * Wxh[i, j] for i in range(I))
                              + sum(r[k] * h[b, k] * Whh[k, j] for k in range(H)) + bh[j])
                new_h[b, j] = z * h[b, j] + (1 - z) * n
        h = new_h
        expected[t] = h
    torch.testing.assert_close(out, torch.from_numpy(expected), **TOL)
    torch.testing.assert_close(hT, torch.from_numpy(expected[-1]), **TOL)


def test_textbook_gru_differs_from_reset_after():
    # The two candidate forms are different functions (guards against a mix-up of the forms).
    T, B, I, H = 3, 2, 3, 4
    p9 = [torch.randn(p.shape, dtype=DT) for p in scratch.get_gru_params(I, H, "cpu")[:9]]
    p10 = p9[:8] + [p9[8], torch.zeros(H, dtype=DT)]
    x, h0 = torch.randn(T, B, I, dtype=DT), torch.randn(B, H, dtype=DT)
    a, _ = scratch.gru_layer(x, h0, p9, reset_after=False)
    b, _ = scratch.gru_layer(x, h0, p10, reset_after=True)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("reverse", [False, True])
def test_textbook_gru_gradcheck(reverse):
    T, B, I, H = 3, 2, 3, 4
    params = [torch.randn(p.shape, dtype=DT, requires_grad=True)
              for p in scratch.get_gru_params(I, H, "cpu")[:9]]
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    h0 = torch.randn(B, H, dtype=DT, requires_grad=True)

    def f(x, h0, *params):
        return scratch.gru_layer(x, h0, list(params), reset_after=False, reverse=reverse)

    assert torch.autograd.gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("cell,n", [("rnn_tanh", 3), ("gru", 9), ("gru", 10), ("lstm", 12)])
def test_converter_round_trip(cell, n):
    I, H = 3, 5
    shapes = [(H,) if k % 3 == 2 else (I if k % 3 == 0 else H, H) for k in range(n - n % 3)]
    shapes += [(H,)] * (n % 3)  # the reset_after GRU's second candidate bias b_hh
    params = [torch.randn(s, dtype=DT) for s in shapes]
    sd = scratch.to_torch_params(cell, params, layer=2, suffix="_reverse")
    G = {"rnn_tanh": 1, "gru": 3, "lstm": 4}[cell]
    assert sd["weight_ih_l2_reverse"].shape == (G * H, I)
    assert sd["weight_hh_l2_reverse"].shape == (G * H, H)
    assert sd["bias_ih_l2_reverse"].shape == sd["bias_hh_l2_reverse"].shape == (G * H,)
    back = scratch.from_torch_params(cell, sd, layer=2, suffix="_reverse", reset_after=(n != 9))
    assert len(back) == n
    for a, b in zip(params, back):  # textbook -> torch -> textbook is exact
        assert torch.equal(a, b)
    # torch -> textbook -> torch: same weights, same bias sums.
    ref = _torch_module(cell, I, H)
    sd0 = dict(ref.named_parameters())
    sd1 = scratch.to_torch_params(cell, scratch.from_torch_params(cell, sd0, reset_after=True))
    for name in ("weight_ih_l0", "weight_hh_l0"):
        assert torch.equal(sd0[name], sd1[name])
    if cell != "gru":
        torch.testing.assert_close(sd0["bias_ih_l0"] + sd0["bias_hh_l0"],
                                   sd1["bias_ih_l0"] + sd1["bias_hh_l0"], **TOL)


def test_converter_gate_order_lstm():
    # torch's LSTM gates are i, f, g, o: the textbook's W_xc (candidate) must land in block 2.
    I, H = 2, 3
    params = [torch.full((I if k % 3 == 0 else H, H) if k % 3 != 2 else (H,), float(k), dtype=DT)
              for k in range(12)]
    sd = scratch.to_torch_params("lstm", params)
    blocks = sd["weight_ih_l0"].chunk(4, 0)
    assert [float(b[0, 0]) for b in blocks] == [0.0, 3.0, 9.0, 6.0]
    assert float(sd["bias_ih_l0"][2 * H]) == 11.0 and float(sd["bias_ih_l0"][3 * H]) == 8.0


def test_converter_errors():
    with pytest.raises(ValueError, match="valid cells"):
        scratch.to_torch_params("gruu", [])
    with pytest.raises(ValueError, match="9 or 10"):
        scratch.to_torch_params("gru", [torch.zeros(2, 2)] * 11)
    with pytest.raises(KeyError, match="weight_ih_l1"):
        scratch.from_torch_params("lstm", {}, layer=1)
    with pytest.raises(ValueError, match="G=4"):
        scratch.from_torch_params("lstm", {"weight_ih_l0": torch.zeros(6, 2),
                                           "weight_hh_l0": torch.zeros(6, 2)})


def test_layer_input_errors():
    p = [torch.zeros(3, 4), torch.zeros(4, 4), torch.zeros(4)]
    with pytest.raises(ValueError, match=r"\(T, B, I\)"):
        scratch.rnn_layer(torch.zeros(2, 3), torch.zeros(2, 4), p)
    with pytest.raises(ValueError, match="state must have shape"):
        scratch.rnn_layer(torch.zeros(2, 2, 3), torch.zeros(3, 4), p)
    with pytest.raises(ValueError, match="nonlinearity"):
        scratch.rnn_layer(torch.zeros(2, 2, 3), torch.zeros(2, 4), p, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="T == 0"):
        scratch.rnn_layer(torch.zeros(0, 2, 3), torch.zeros(2, 4), p)
    with pytest.raises(ValueError, match="10 layer parameters"):
        scratch.gru_layer(torch.zeros(2, 2, 3), torch.zeros(2, 4), p * 3, reset_after=True)


@pytest.mark.parametrize("get_params,init_state,forward_fn,n_params,n_state", [
    (scratch.get_rnn_params, scratch.init_rnn_state, scratch.rnn, 5, 1),
    (scratch.get_gru_params, scratch.init_gru_state, scratch.gru, 11, 1),
    (scratch.get_lstm_params, scratch.init_lstm_state, scratch.lstm, 14, 2),
])
def test_rnn_model_scratch(get_params, init_state, forward_fn, n_params, n_state):
    V, H, B, T = 7, 8, 3, 5
    net = scratch.RNNModelScratch(V, H, "cpu", get_params, init_state, forward_fn)
    assert len(net.params) == n_params and all(p.requires_grad for p in net.params)
    assert all(p.abs().max() < 0.1 for p in net.params)  # normal * 0.01 and zeros
    X = torch.randint(0, V, (B, T))
    state = net.begin_state(B, "cpu")
    assert len(state) == n_state and all(s.shape == (B, H) for s in state)
    Y, new_state = net(X, state)
    assert Y.shape == (T * B, V)
    assert len(new_state) == n_state and all(s.shape == (B, H) for s in new_state)
    # Row t*B + b of Y is step t of sequence b (the textbook's layout): check it by hand.
    onehot = torch.nn.functional.one_hot(X.T, V).float()
    outs, _ = scratch.layer({5: "rnn_tanh", 11: "gru", 14: "lstm"}[n_params], onehot,
                            state if n_state == 2 else state[0], net.params[:-2],
                            reset_after=False)
    expected = (outs @ net.params[-2] + net.params[-1]).reshape(T * B, V)
    torch.testing.assert_close(Y, expected, rtol=1e-6, atol=1e-7)
    Y.sum().backward()
    assert all(p.grad is not None for p in net.params)
    with pytest.raises(ValueError, match="token ids"):
        net(X.float(), state)


def _grads(seed, scale):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=DT) * scale for s in [(3, 4), (5,), (2, 2, 2)]]


@pytest.mark.parametrize("scale", [10.0, 1e-3])
@pytest.mark.parametrize("as_module", [False, True])
def test_grad_clipping_vs_torch(scale, as_module):
    theta = 1.0
    a, b = _grads(0, scale), _grads(0, scale)
    pa = [torch.zeros_like(g, requires_grad=True) for g in a]
    pb = [torch.zeros_like(g, requires_grad=True) for g in b]
    for p, g in zip(pa + pb, a + b):
        p.grad = g.clone()
    if as_module:
        net = nn.Module()
        net.ps = nn.ParameterList([nn.Parameter(p.detach()) for p in pa])
        for p, q in zip(net.ps, pa):
            p.grad = q.grad
        norm = scratch.grad_clipping(net, theta)
    else:
        net = type("Net", (), {})()
        net.params = pa
        norm = scratch.grad_clipping(net, theta)
    total = torch.nn.utils.clip_grad_norm_(pb, theta)
    torch.testing.assert_close(norm, total, **TOL)
    if norm > theta:
        # Same direction; the textbook has no 1e-6 term, so it reaches exactly theta.
        clipped = torch.sqrt(sum((p.grad ** 2).sum() for p in pa))
        torch.testing.assert_close(clipped, torch.tensor(theta, dtype=DT), **TOL)
        for p, q in zip(pa, pb):
            torch.testing.assert_close(p.grad, q.grad * (total + 1e-6) / total, **TOL)
    else:
        for p, g in zip(pa, a):
            assert torch.equal(p.grad, g)
        for p, g in zip(pb, b):
            assert torch.equal(p.grad, g)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_scratch_rnn_matches_torch_multilayer(cell, bidirectional):
    T, B, I, H, L = 4, 3, 5, 6, 3
    ref = _torch_module(cell, I, H, num_layers=L, bidirectional=bidirectional)
    mod = scratch.ScratchRNN(cell, I, H, num_layers=L, bidirectional=bidirectional).to(DT)
    assert [(n, p.shape) for n, p in mod.named_parameters()] == \
           [(n, p.shape) for n, p in ref.named_parameters()]
    mod.load_state_dict(ref.state_dict())
    D = 2 if bidirectional else 1
    x = torch.randn(T, B, I, dtype=DT)
    h0 = torch.randn(L * D, B, H, dtype=DT)
    c0 = torch.randn(L * D, B, H, dtype=DT)
    results = []
    for m in (ref, mod):
        xi = x.clone().requires_grad_(True)
        hi, ci = h0.clone().requires_grad_(True), c0.clone().requires_grad_(True)
        if cell == "lstm":
            out, (h, c) = m(xi, (hi, ci))
            states, inputs = [h, c], [xi, hi, ci]
        else:
            out, h = m(xi, hi)
            states, inputs = [h], [xi, hi]
        _random_functional(out, states, torch.Generator().manual_seed(3)).backward()
        results.append([out, *states, *[t.grad for t in inputs],
                        *[p.grad for p in m.parameters()]])
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, **TOL)


def test_scratch_rnn_defaults_and_errors():
    mod = scratch.ScratchRNN("lstm", 3, 4, num_layers=2)
    out, (h, c) = mod(torch.randn(5, 2, 3))  # hx=None -> zeros, float32 like torch.nn
    assert out.shape == (5, 2, 4) and h.shape == c.shape == (2, 2, 4)
    bf = scratch.ScratchRNN("gru", 3, 4, batch_first=True)
    bf.load_state_dict(scratch.ScratchRNN("gru", 3, 4).state_dict())
    assert bf(torch.randn(2, 5, 3))[0].shape == (2, 5, 4)
    with pytest.raises(ValueError, match="valid cells"):
        scratch.ScratchRNN("rnn", 3, 4)
    with pytest.raises(ValueError, match="input_size"):
        mod(torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match="hidden state must have shape"):
        mod(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match="3-D"):
        mod(torch.randn(5, 3))


def test_scratch_rnn_textbook_gru_and_dropout():
    # reset_after=False runs the textbook GRU; dropout acts between layers only in training.
    mod = scratch.ScratchRNN("gru", 3, 4, num_layers=2, dropout=0.5, reset_after=False).to(DT)
    x = torch.randn(6, 2, 3, dtype=DT)
    mod.eval()
    out, h = mod(x)
    sd = dict(mod.named_parameters())
    o0, _ = scratch.gru_layer(x, torch.zeros(2, 4, dtype=DT),
                              scratch.from_torch_params("gru", sd, 0, reset_after=False))
    o1, h1 = scratch.gru_layer(o0, torch.zeros(2, 4, dtype=DT),
                               scratch.from_torch_params("gru", sd, 1, reset_after=False))
    torch.testing.assert_close(out, o1, **TOL)
    torch.testing.assert_close(h[1], h1, **TOL)
    mod.train()
    assert (mod(x)[0] - out).abs().max() > 1e-6


@pytest.mark.parametrize("cell", scratch.CELLS)
@pytest.mark.parametrize("bias", [True, False])
def test_torch_layer_is_torch_nn_on_its_weights(cell, bias):
    # torch_layer: the reference run on torch.nn-layout weights (what the functional ops take), in
    # both directions, against torch.nn's own layer; gradients reach the torch-layout weights.
    T, B, I, H = 4, 3, 2, 5
    nl = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    cls = torch.nn.RNN if cell.startswith("rnn") else {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
    m = cls(I, H, bias=bias, dtype=DT, **nl)
    x = torch.randn(T, B, I, dtype=DT)
    h0, c0 = torch.randn(B, H, dtype=DT), torch.randn(B, H, dtype=DT)
    w = [m.weight_ih_l0, m.weight_hh_l0] + ([m.bias_ih_l0, m.bias_hh_l0] if bias else [])
    for reverse in (False, True):
        state = (h0, c0) if cell == "lstm" else h0
        out, _ = scratch.torch_layer(cell, x, state, *w, reverse=reverse)
        xs = x.flip(0) if reverse else x
        ref, _ = m(xs, (h0[None], c0[None]) if cell == "lstm" else h0[None])
        torch.testing.assert_close(out, ref.flip(0) if reverse else ref, **TOL)
    g = torch.autograd.grad(out.sum(), m.weight_hh_l0)[0]
    assert g.abs().sum() > 0
