"""rnnfast.nn modules against torch.nn: outputs, final states and every gradient after loading the
same state_dict; torch.nn's parameter layout, init, dropout, unbatched input and error behaviour."""
import math
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pack_sequence, pad_packed_sequence

import rnnfast.nn as rnn
from rnnfast import scratch

F64, F32 = torch.float64, torch.float32
TOL = {F64: 1e-10, F32: 1e-5}
MODES = ["tanh", "relu", "gru", "lstm"]


# ---- helpers -----------------------------------------------------------------------------------

def build(lib, mode, input_size, hidden_size, dtype=F64, reset_after=True, **kw):
    """lib.RNN/GRU/LSTM for mode in tanh, relu, gru, lstm (lib: rnnfast.nn or torch.nn)."""
    if mode in ("tanh", "relu"):
        return lib.RNN(input_size, hidden_size, nonlinearity=mode, dtype=dtype, **kw)
    if mode == "gru":
        if lib is rnn:
            kw["reset_after"] = reset_after
        return lib.GRU(input_size, hidden_size, dtype=dtype, **kw)
    return lib.LSTM(input_size, hidden_size, dtype=dtype, **kw)


def make_pair(mode, input_size, hidden_size, dtype=F64, reset_after=True, **kw):
    """(rnnfast module, torch.nn module holding the same parameters)."""
    ours = build(rnn, mode, input_size, hidden_size, dtype, reset_after, **kw)
    ref = build(torch.nn, mode, input_size, hidden_size, dtype, **kw)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def build_cell(lib, mode, input_size, hidden_size, dtype=F64, bias=True):
    if mode in ("tanh", "relu"):
        return lib.RNNCell(input_size, hidden_size, bias, nonlinearity=mode, dtype=dtype)
    cls = lib.GRUCell if mode == "gru" else lib.LSTMCell
    return cls(input_size, hidden_size, bias, dtype=dtype)


def make_cell_pair(mode, input_size, hidden_size, dtype=F64, bias=True):
    ours = build_cell(rnn, mode, input_size, hidden_size, dtype, bias)
    ref = build_cell(torch.nn, mode, input_size, hidden_size, dtype, bias)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def flat(result):
    """(output, h) / (output, (h, c)) / h / (h, c) -> list of tensors."""
    if isinstance(result, torch.Tensor):
        return [result]
    out = []
    for r in result:
        out.extend(flat(r))
    return out


def run(module, x, states, cotangents=None):
    """Forward, then grads of sum(out_i * cotangent_i) w.r.t. input, states and every parameter.
    states: None, a tensor or a tuple of tensors (fresh leaves are made here)."""
    x = x.detach().clone().requires_grad_()
    leaves = [x]
    if states is None:
        hx = None
    elif isinstance(states, torch.Tensor):
        hx = states.detach().clone().requires_grad_()
        leaves.append(hx)
    else:
        hx = tuple(s.detach().clone().requires_grad_() for s in states)
        leaves.extend(hx)
    params = [p for _, p in module.named_parameters()]
    outs = flat(module(x, hx))
    if cotangents is None:
        cotangents = [torch.randn_like(o) for o in outs]
    loss = sum((o * c).sum() for o, c in zip(outs, cotangents))
    grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)
    return [o.detach() for o in outs], list(grads), cotangents


def assert_rel(a, b, dtype, what):
    """max|a - b| <= tol * max(1, max|b|): 1e-10 in float64, 1e-5 in float32."""
    assert a is not None and b is not None, what
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    if b.numel() == 0:
        return
    err = (a - b).abs().max().item()
    scale = max(1.0, b.abs().max().item())
    assert err <= TOL[dtype] * scale, f"{what}: max abs error {err:.3g} (scale {scale:.3g})"


def check_parity(ours, ref, x, states, dtype):
    out_a, grads_a, cot = run(ours, x, states)
    out_b, grads_b, _ = run(ref, x, states, cot)
    names = ["input"] + ["state"] * (len(grads_a) - 1 - len(list(ours.parameters())))
    names += [n for n, _ in ours.named_parameters()]
    for i, (a, b) in enumerate(zip(out_a, out_b)):
        assert_rel(a, b, dtype, f"output {i}")
    assert len(grads_a) == len(grads_b)
    for n, a, b in zip(names, grads_a, grads_b):
        assert_rel(a, b, dtype, f"grad of {n}")


def zero_states(mode, shape, dtype):
    h = torch.randn(shape, dtype=dtype)
    return (h, torch.randn(shape, dtype=dtype)) if mode == "lstm" else h


# ---- parity with torch.nn over shapes and options ----------------------------------------------

# (batch, steps, input, hidden, layers, bidirectional, batch_first, bias, dtype): every value of
# batch {1, 3, 32}, steps {1, 7, 35}, hidden {1, 5, 64, 256}, layers {1, 2, 3} and each flag appears.
CONFIGS = [
    (1, 1, 1, 1, 1, False, False, True, F64),
    (3, 7, 4, 5, 2, True, False, False, F64),
    (32, 35, 10, 64, 2, True, True, True, F64),
    (3, 35, 7, 256, 1, False, True, True, F32),
    (32, 7, 16, 256, 2, False, False, True, F64),
    (1, 7, 3, 5, 3, True, True, False, F32),
    (32, 7, 8, 64, 3, True, False, True, F32),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "B{}-T{}-I{}-H{}-L{}-bi{:d}-bf{:d}-bias{:d}-{}".format(
    *c[:5], c[5], c[6], c[7], str(c[8])[6:]))
def test_module_parity(mode, cfg):
    B, T, I, H, L, bidir, batch_first, bias, dtype = cfg
    with_hx = H != 5  # hx=None (zeros) on the H=5 configs, given states elsewhere
    ours, ref = make_pair(mode, I, H, dtype, num_layers=L, bidirectional=bidir,
                          batch_first=batch_first, bias=bias)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype)
    states = zero_states(mode, (L * (2 if bidir else 1), B, H), dtype) if with_hx else None
    check_parity(ours, ref, x, states, dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch", [3, None], ids=["batched", "unbatched"])
def test_cell_parity(mode, dtype, bias, batch):
    ours, ref = make_cell_pair(mode, 6, 5, dtype, bias)
    shape = (batch,) if batch else ()
    x = torch.randn(shape + (6,), dtype=dtype)
    states = zero_states(mode, shape + (5,), dtype)
    check_parity(ours, ref, x, states, dtype)
    check_parity(ours, ref, x, None, dtype)


@settings(max_examples=12, deadline=None)
@given(mode=st.sampled_from(MODES), batch=st.integers(1, 4), steps=st.integers(1, 6),
       input_size=st.integers(1, 6), hidden=st.integers(1, 7), layers=st.integers(1, 3),
       bidir=st.booleans(), batch_first=st.booleans(), bias=st.booleans(),
       unbatched=st.booleans())
def test_module_parity_hypothesis(mode, batch, steps, input_size, hidden, layers, bidir,
                                  batch_first, bias, unbatched):
    ours, ref = make_pair(mode, input_size, hidden, F64, num_layers=layers, bidirectional=bidir,
                          batch_first=batch_first, bias=bias)
    D = 2 if bidir else 1
    if unbatched:
        x = torch.randn(steps, input_size, dtype=F64)
        states = zero_states(mode, (layers * D, hidden), F64)
    else:
        x = torch.randn((batch, steps, input_size) if batch_first else (steps, batch, input_size),
                        dtype=F64)
        states = zero_states(mode, (layers * D, batch, hidden), F64)
    check_parity(ours, ref, x, states, F64)


# ---- GRU reset_after=False (textbook) against a plain-PyTorch reference -------------------------

def textbook_gru_layer(x, h, w_ih, w_hh, b_ih, b_hh, reverse):
    """Cho et al. GRU, one direction (n uses W_hn (r * h)): rnnfast.scratch's reference."""
    return scratch.torch_layer("gru", x, h, w_ih, w_hh, b_ih, b_hh, reverse=reverse, reset_after=False)


class TextbookGRU(torch.nn.Module):
    """Multi-layer reference wrapping textbook_gru_layer, parameters borrowed from a rnnfast.GRU."""

    def __init__(self, gru):
        super().__init__()
        self.gru = gru

    def forward(self, x, h0):
        g = self.gru
        D = 2 if g.bidirectional else 1
        if g.batch_first:
            x = x.transpose(0, 1)
        h_n = []
        for layer in range(g.num_layers):
            outs = []
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                bias = [getattr(g, f"bias_ih{sfx}"), getattr(g, f"bias_hh{sfx}")] if g.bias else [None, None]
                out, h = textbook_gru_layer(x, h0[layer * D + d], getattr(g, f"weight_ih{sfx}"),
                                            getattr(g, f"weight_hh{sfx}"), *bias, reverse=d == 1)
                outs.append(out)
                h_n.append(h)
            x = torch.cat(outs, 2)
        return (x.transpose(0, 1) if g.batch_first else x), torch.stack(h_n)


@pytest.mark.parametrize("B,T,H,L,bidir,batch_first,bias,dtype", [
    (1, 1, 1, 1, False, False, True, F64),
    (3, 7, 5, 2, True, True, False, F64),
    (32, 35, 64, 1, False, False, True, F64),
    (3, 7, 256, 2, True, False, True, F32),
])
def test_gru_textbook_parity(B, T, H, L, bidir, batch_first, bias, dtype):
    ours = rnn.GRU(4, H, L, bias=bias, batch_first=batch_first, bidirectional=bidir,
                   dtype=dtype, reset_after=False)
    ref = TextbookGRU(ours)
    x = torch.randn((B, T, 4) if batch_first else (T, B, 4), dtype=dtype)
    h0 = torch.randn(L * (2 if bidir else 1), B, H, dtype=dtype)
    check_parity(ours, ref, x, h0, dtype)
    # and it really is a different cell from torch.nn.GRU's
    torch_gru = torch.nn.GRU(4, H, L, bias=bias, batch_first=batch_first, bidirectional=bidir,
                             dtype=dtype)
    torch_gru.load_state_dict(ours.state_dict())
    if H > 1:
        assert not torch.allclose(ours(x, h0)[0], torch_gru(x, h0)[0])


@pytest.mark.parametrize("batched", [True, False])
def test_gru_cell_textbook(batched):
    cell = rnn.GRUCell(4, 5, dtype=F64, reset_after=False)
    x = torch.randn((3, 4) if batched else (4,), dtype=F64)
    h = torch.randn((3, 5) if batched else (5,), dtype=F64)
    _, expected = textbook_gru_layer(x[None] if batched else x[None, None], h if batched else h[None],
                                     cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                                     reverse=False)
    got = cell(x, h)
    assert_rel(got, expected if batched else expected[0], F64, "h'")
    assert "reset_after=False" in repr(cell)


# ---- layout, init and state_dict interchange --------------------------------------------------

def _layout(module):
    return [(n, tuple(p.shape)) for n, p in module.named_parameters()]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kw", [dict(), dict(num_layers=3, bidirectional=True, bias=False),
                                dict(num_layers=2, batch_first=True)])
def test_parameter_layout_and_init_match_torch(mode, kw):
    torch.manual_seed(1)
    ours = build(rnn, mode, 7, 6, F32, **kw)
    torch.manual_seed(1)
    ref = build(torch.nn, mode, 7, 6, F32, **kw)
    assert _layout(ours) == _layout(ref)
    # identical registration order and init distribution: the same seed gives the same values
    for (n, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), n
    if mode != "relu":  # torch.nn.RNN's repr omits nonlinearity; ours shows it
        assert repr(ours) == repr(ref)
    assert ours.all_weights[0][0] is ours.weight_ih_l0
    ours.flatten_parameters()  # torch.nn.RNNBase.flatten_parameters (acts only on cuDNN weights)


@pytest.mark.parametrize("mode", MODES)
def test_cell_layout_and_init_match_torch(mode):
    torch.manual_seed(2)
    ours = build_cell(rnn, mode, 7, 6, F32, bias=False)
    torch.manual_seed(2)
    ref = build_cell(torch.nn, mode, 7, 6, F32, bias=False)
    assert _layout(ours) == _layout(ref)
    for (n, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), n
    assert repr(ours) == repr(ref)
    assert ours.bias_ih is None and ours.bias_hh is None


@pytest.mark.parametrize("cls", [rnn.RNN, rnn.GRU, rnn.LSTM])
def test_init_bounds(cls):
    H = 16
    m = cls(8, H, num_layers=2, bidirectional=True)
    bound = 1 / math.sqrt(H)
    values = torch.cat([p.detach().flatten() for p in m.parameters()])
    assert values.abs().max() <= bound
    assert values.min() < -0.9 * bound and values.max() > 0.9 * bound  # uniform over the range
    assert abs(values.mean().item()) < 0.05 * bound
    assert abs(values.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    cell = rnn.LSTMCell(8, H)
    assert all(p.abs().max() <= bound for p in cell.parameters())


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_interchange_both_ways(mode):
    kw = dict(num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4)
    ours = build(rnn, mode, 4, 6, F32, **kw)
    # torch.nn -> rnnfast
    src = build(torch.nn, mode, 4, 6, F32, **kw)
    ours.load_state_dict(src.state_dict())  # strict: same keys and shapes
    for a, b in zip(flat(ours(x)), flat(src(x))):
        assert_rel(a, b, F32, "torch.nn -> rnnfast")
    # rnnfast -> torch.nn
    fresh = build(rnn, mode, 4, 6, F32, **kw)
    dst = build(torch.nn, mode, 4, 6, F32, **kw)
    dst.load_state_dict(fresh.state_dict())
    for a, b in zip(flat(fresh(x)), flat(dst(x))):
        assert_rel(a, b, F32, "rnnfast -> torch.nn")
    assert set(fresh.state_dict()) == set(dst.state_dict())


def test_cell_state_dict_interchange():
    src = torch.nn.LSTMCell(4, 5)
    ours = rnn.LSTMCell(4, 5)
    ours.load_state_dict(src.state_dict())
    x = torch.randn(2, 4)
    for a, b in zip(ours(x), src(x)):
        assert_rel(a, b, F32, "LSTMCell")
    back = torch.nn.LSTMCell(4, 5)
    back.load_state_dict(ours.state_dict())
    for a, b in zip(ours(x), back(x)):
        assert_rel(a, b, F32, "LSTMCell back")


def test_dtype_conversion_and_functional_call():
    m = rnn.LSTM(3, 4).double()
    ref = torch.nn.LSTM(3, 4).double()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3, dtype=F64)
    assert_rel(m(x)[0], ref(x)[0], F64, "after .double()")
    # parameters are read at call time, so torch.func.functional_call sees swapped weights
    params = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    out, (h, c) = torch.func.functional_call(m, params, (x,))
    assert torch.equal(out, torch.zeros_like(out))


# ---- dropout ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_dropout_train_vs_eval(mode):
    ours, ref = make_pair(mode, 4, 8, F64, num_layers=3, dropout=0.5, bidirectional=True)
    x = torch.randn(6, 3, 4, dtype=F64)
    ours.train()
    train_out = flat(ours(x))
    assert not torch.allclose(train_out[0], flat(ours(x))[0])  # fresh masks each call
    ours.eval(), ref.eval()
    eval_out = flat(ours(x))
    assert not torch.allclose(train_out[0], eval_out[0])
    for a, b in zip(eval_out, flat(ref(x))):
        assert_rel(a, b, F64, "eval output")
    for a, b in zip(eval_out, flat(ours(x))):
        assert torch.equal(a, b)  # eval is deterministic
    if mode != "relu":  # the last layer's output never has dropout applied: no exact zeros
        ours.train()
        assert (flat(ours(x))[0] != 0).all()


@pytest.mark.parametrize("batch_first", [False, True])
def test_dropout_same_masks_as_torch_cpu(batch_first):
    # Dropout is torch.nn.functional.dropout on each time-major layer output, as ATen's CPU RNN
    # does, so with the same seed the masks (and results) coincide with torch.nn's on CPU.
    ours, ref = make_pair("lstm", 4, 8, F64, num_layers=3, dropout=0.3, bidirectional=True,
                          batch_first=batch_first)
    x = torch.randn(3, 6, 4, dtype=F64)
    torch.manual_seed(7)
    out_a, grads_a, cot = run(ours, x, None)
    torch.manual_seed(7)
    out_b, grads_b, _ = run(ref, x, None, cot)
    for a, b in zip(out_a + grads_a, out_b + grads_b):
        assert_rel(a, b, F64, "dropout parity")


@pytest.mark.parametrize("mode", MODES)
def test_dropout_same_masks_as_torch_cpu_packed(mode):
    # packed input: dropout is drawn on the packed rows of each layer output, as torch.nn does
    ours, ref = make_pair(mode, 4, 8, F64, num_layers=3, dropout=0.4, bidirectional=True)
    ours.train()
    ref.train()
    x = torch.randn(7, 5, 4, dtype=F64)
    lengths = torch.tensor([3, 7, 1, 5, 5])
    torch.manual_seed(11)
    out, states, grads = _packed_run(ours, x, lengths, None, False, False)
    torch.manual_seed(11)
    rout, rstates, rgrads = _packed_run(ref, x, lengths, None, False, False)
    for a, b in zip([out.data] + states + list(grads), [rout.data] + rstates + list(rgrads)):
        torch.testing.assert_close(a, b, rtol=TOL[F64], atol=TOL[F64])


def test_dropout_argument_checks():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        rnn.LSTM(3, 4, dropout=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rnn.LSTM(3, 4, num_layers=2, dropout=0.2)
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match=r"dropout should be a number in range \[0, 1\]"):
            rnn.GRU(3, 4, num_layers=2, dropout=bad)


# ---- unbatched, zero-length, non-contiguous -----------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input(mode, batch_first):
    ours, ref = make_pair(mode, 4, 5, F64, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = torch.randn(7, 4, dtype=F64)
    states = zero_states(mode, (4, 5), F64)
    out = flat(ours(x, states))
    assert out[0].shape == (7, 10) and out[1].shape == (4, 5)
    check_parity(ours, ref, x, states, F64)
    check_parity(ours, ref, x, None, F64)
    # unbatched equals batch of one
    batched = flat(ours(x.unsqueeze(0 if batch_first else 1),
                        tuple(s.unsqueeze(1) for s in flat(states))
                        if mode == "lstm" else states.unsqueeze(1)))
    assert torch.equal(out[0], batched[0].squeeze(0 if batch_first else 1))


@pytest.mark.parametrize("mode", MODES)
def test_zero_length_sequence_like_torch(mode):
    ours, ref = make_pair(mode, 4, 5, F32, num_layers=2)
    for x in (torch.randn(0, 3, 4), torch.randn(0, 4)):
        with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
            ref(x)
        with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
            ours(x)
    ours_bf = make_pair(mode, 4, 5, F32, batch_first=True)[0]
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
        ours_bf(torch.randn(3, 0, 4))


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_like_torch(mode):
    ours, ref = make_pair(mode, 4, 5, F64, num_layers=2, bidirectional=True)
    x = torch.randn(6, 0, 4, dtype=F64)
    check_parity(ours, ref, x, None, F64)  # shapes (6, 0, 10), (4, 0, 5), grads all empty
    cell, ref_cell = make_cell_pair(mode, 4, 5, F64)
    check_parity(cell, ref_cell, torch.randn(0, 4, dtype=F64), None, F64)


def test_unsupported_dtype_is_a_clear_error():
    m = rnn.LSTM(3, 4, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="supports float32 and float64 on CPU"):
        m(torch.randn(5, 2, 3, dtype=torch.bfloat16))


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_input_and_state(mode):
    ours, ref = make_pair(mode, 4, 6, F64, num_layers=2, bidirectional=True)
    base = torch.randn(3, 9, 8, dtype=F64)
    x = base[:, ::2, ::2].transpose(0, 1)  # (5, 3, 4), strided in every dim
    assert not x.is_contiguous()
    h = torch.randn(3, 4, 6, dtype=F64).transpose(0, 1)  # (4, 3, 6), non-contiguous
    states = (h, torch.randn(6, 4, 3, dtype=F64).permute(1, 2, 0)) if mode == "lstm" else h
    check_parity(ours, ref, x, states, F64)
    # same numbers as the contiguous copy
    contiguous_states = tuple(s.contiguous() for s in states) if mode == "lstm" else h.contiguous()
    for a, b in zip(flat(ours(x, states)), flat(ours(x.contiguous(), contiguous_states))):
        assert torch.equal(a, b)


# ---- bad input ----------------------------------------------------------------------------------

def test_bad_input_rank_and_size():
    m = rnn.LSTM(10, 20)
    with pytest.raises(ValueError, match="LSTM: Expected input to be 2D or 3D, got 4D"):
        m(torch.randn(2, 3, 4, 10))
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D, got 1D"):
        rnn.RNN(10, 20)(torch.randn(10))
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size. Expected 10, got 9"):
        m(torch.randn(5, 3, 9))
    with pytest.raises(TypeError, match="expected input to be a Tensor"):
        m([[1.0] * 10])
    cell = rnn.GRUCell(10, 20)
    with pytest.raises(ValueError, match="GRUCell: Expected input to be 1D or 2D, got 3D"):
        cell(torch.randn(1, 3, 10))
    with pytest.raises(RuntimeError, match="inconsistent input_size: got 9, expected 10"):
        cell(torch.randn(3, 9))


def test_bad_hidden_shapes():
    x = torch.randn(5, 3, 10)
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 3, 20\), got \[1, 3, 19\]"):
        rnn.RNN(10, 20)(x, torch.randn(1, 3, 19))
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(4, 3, 20\), got \[2, 3, 20\]"):
        rnn.GRU(10, 20, 2, bidirectional=True)(x, torch.randn(2, 3, 20))
    lstm = rnn.LSTM(10, 20)
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(1, 3, 20\), got \[1, 2, 20\]"):
        lstm(x, (torch.randn(1, 2, 20), torch.randn(1, 3, 20)))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[1\] size \(1, 3, 20\), got \[1, 3, 21\]"):
        lstm(x, (torch.randn(1, 3, 20), torch.randn(1, 3, 21)))
    with pytest.raises(RuntimeError, match="For batched 3-D input, hx should also be 3-D but got 2-D tensor"):
        rnn.RNN(10, 20)(x, torch.randn(3, 20))
    with pytest.raises(RuntimeError, match=r"For unbatched 2-D input, hx and cx should also be 2-D but got \(3-D, 2-D\)"):
        lstm(torch.randn(5, 10), (torch.randn(1, 1, 20), torch.randn(1, 20)))
    with pytest.raises(TypeError, match="hx must be a tuple"):
        lstm(x, torch.randn(1, 3, 20))
    cell = rnn.LSTMCell(10, 20)
    with pytest.raises(RuntimeError, match=r"Expected hidden\[1\] size \(3, 20\), got \[3, 19\]"):
        cell(torch.randn(3, 10), (torch.randn(3, 20), torch.randn(3, 19)))
    with pytest.raises(RuntimeError, match="Expected hx to be 1D for unbatched 1D input, got 2D"):
        rnn.RNNCell(10, 20)(torch.randn(10), torch.randn(1, 20))


def test_dtype_and_device_mismatch():
    m = rnn.GRU(4, 5)
    with pytest.raises(ValueError, match=r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"):
        m(torch.randn(3, 2, 4, dtype=F64))
    with pytest.raises(ValueError, match=r"hx dtype \(torch.float64\) does not match weight dtype"):
        m(torch.randn(3, 2, 4), torch.randn(1, 2, 5, dtype=F64))
    with pytest.raises(ValueError, match=r"cx dtype \(torch.float64\)"):
        rnn.LSTM(4, 5)(torch.randn(3, 2, 4), (torch.randn(1, 2, 5), torch.randn(1, 2, 5, dtype=F64)))
    with pytest.raises(ValueError, match="input dtype \\(torch.int64\\)"):
        m(torch.ones(3, 2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="does not match weight dtype"):
        rnn.LSTMCell(4, 5)(torch.randn(2, 4, dtype=F64))
    with pytest.raises(RuntimeError, match="is on device meta but the weights are on cpu"):
        m(torch.empty(3, 2, 4, device="meta"))


def test_bad_proj_size_raises_like_torch():
    with pytest.raises(ValueError, match="proj_size should be a positive integer or zero"):
        rnn.LSTM(10, 20, proj_size=-1)
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        rnn.LSTM(10, 20, proj_size=20)
    # torch.nn.GRU's own __init__ runs: its ValueError, as torch.nn.GRU (was a TypeError before
    # rnnfast's classes became torch.nn subclasses)
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        rnn.GRU(10, 20, proj_size=5)
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        torch.nn.GRU(10, 20, proj_size=5)


# ---- PackedSequence input ------------------------------------------------------------------------
def _packed_run(m, x, lengths, hx, batch_first, enforce_sorted):
    """Packs x, runs m, differentiates a loss over the packed output and the final states; returns
    (packed output, final states, grads of x, hx and every parameter)."""
    x = x.clone().requires_grad_()
    hx = None if hx is None else tuple(h.clone().requires_grad_() for h in hx)
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
    out, hn = m(packed, None if hx is None else (hx if len(hx) == 2 else hx[0]))
    states = flat(hn)
    weights = torch.linspace(-1, 1, out.data.numel(), dtype=out.data.dtype).view_as(out.data)
    loss = (out.data * weights).sum() + sum((s * s).sum() for s in states)
    leaves = [x] + list(hx or ()) + list(m.parameters())
    return out, states, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("enforce_sorted", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_packed_sequence_matches_torch(mode, bidirectional, enforce_sorted):
    torch.manual_seed(1)
    T, B, I, H, L = 7, 5, 3, 6, 2
    ours, ref = make_pair(mode, I, H, num_layers=L, bidirectional=bidirectional, batch_first=True)
    lengths = torch.tensor([7, 5, 5, 2, 1]) if enforce_sorted else torch.tensor([2, 7, 1, 5, 5])
    x = torch.randn(B, T, I, dtype=F64)
    D = 2 if bidirectional else 1
    for hx in (None, tuple(torch.randn(D * L, B, H, dtype=F64) for _ in range(1 + (mode == "lstm")))):
        out, states, grads = _packed_run(ours, x, lengths, hx, True, enforce_sorted)
        rout, rstates, rgrads = _packed_run(ref, x, lengths, hx, True, enforce_sorted)
        assert isinstance(out, PackedSequence)
        assert torch.equal(out.batch_sizes, rout.batch_sizes)
        for a, b in ((out.sorted_indices, rout.sorted_indices), (out.unsorted_indices, rout.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)
        for a, b in zip([out.data] + states + list(grads), [rout.data] + rstates + list(rgrads)):
            torch.testing.assert_close(a, b, rtol=TOL[F64], atol=TOL[F64])
        padded, lens = pad_packed_sequence(out, batch_first=True)
        rpadded, _ = pad_packed_sequence(rout, batch_first=True)
        assert torch.equal(lens, lengths)
        torch.testing.assert_close(padded, rpadded, rtol=TOL[F64], atol=TOL[F64])  # zeros past each end


@settings(max_examples=25, deadline=None)
@given(mode=st.sampled_from(MODES), B=st.integers(1, 6), T=st.integers(1, 8), L=st.integers(1, 3),
       bidirectional=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_packed_sequence_property(mode, B, T, L, bidirectional, bias, seed):
    g = torch.Generator().manual_seed(seed)
    ours, ref = make_pair(mode, 2, 3, dtype=F32, num_layers=L, bidirectional=bidirectional, bias=bias)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    x = torch.randn(T, B, 2, generator=g)
    out, states, grads = _packed_run(ours, x, lengths, None, False, False)
    rout, rstates, rgrads = _packed_run(ref, x, lengths, None, False, False)
    for a, b in zip([out.data] + states + list(grads), [rout.data] + rstates + list(rgrads)):
        torch.testing.assert_close(a, b, rtol=TOL[F32], atol=TOL[F32])


def test_packed_sequence_from_pack_sequence_gru_textbook():
    # reset_after=False has no torch.nn twin: packing must equal running each sequence alone
    torch.manual_seed(2)
    m = rnn.GRU(3, 4, num_layers=2, bidirectional=True, reset_after=False, dtype=F64)
    seqs = [torch.randn(n, 3, dtype=F64) for n in (4, 1, 6)]
    out, hn = m(pack_sequence(seqs, enforce_sorted=False))
    padded, _ = pad_packed_sequence(out)
    for b, s in enumerate(seqs):
        alone, h_alone = m(s)
        torch.testing.assert_close(padded[:len(s), b], alone, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(hn[:, b], h_alone, rtol=1e-12, atol=1e-12)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        rnn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        rnn.RNNCell(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        rnn.LSTM(3, 0)
    with pytest.raises(ValueError, match="input_size must be greater than zero"):
        rnn.GRU(0, 3)  # (cells accept input_size=0, as torch.nn's: tests/test_dropin.py)
    with pytest.raises(ValueError, match="num_layers must be greater than zero"):
        rnn.GRU(3, 4, num_layers=0)
    with pytest.raises(TypeError, match="bias should be of type bool"):
        rnn.LSTM(3, 4, bias=1)
    with pytest.raises(TypeError, match="reset_after should be of type bool"):
        rnn.GRU(3, 4, reset_after="no")


def test_positional_arguments_like_torch():
    # RNN's 4th positional argument is nonlinearity, as in torch.nn.RNN
    m = rnn.RNN(3, 4, 2, "relu", False, True)
    assert (m.nonlinearity, m.bias, m.batch_first, m.num_layers) == ("relu", False, True, 2)
    m = rnn.LSTM(3, 4, 2, False, True, 0.0, True)
    assert (m.bias, m.batch_first, m.bidirectional) == (False, True, True)
    assert repr(rnn.RNN(3, 4, nonlinearity="relu")) == "RNN(3, 4, nonlinearity=relu)"
    assert repr(rnn.GRU(3, 4, reset_after=False)) == "GRU(3, 4, reset_after=False)"


# ---- torch.compile ------------------------------------------------------------------------------

def test_torch_compile_lstm_fullgraph():
    torch._dynamo.reset()
    ours, ref = make_pair("lstm", 4, 6, F32, num_layers=2, batch_first=True)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 5, 4)
    out_a, grads_a, cot = run(compiled, x, None)
    out_b, grads_b, _ = run(ref, x, None, cot)
    for a, b in zip(out_a + grads_a, out_b + grads_b):
        assert_rel(a, b, F32, "compiled LSTM")


# ---- LSTM with projections (proj_size) -----------------------------------------------------------
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_lstm_proj_matches_torch(dtype, bidirectional, packed):
    torch.manual_seed(3)
    T, B, I, H, P, L = 6, 4, 3, 7, 4, 2
    kw = dict(num_layers=L, bidirectional=bidirectional, proj_size=P, batch_first=True, dtype=dtype)
    ref = torch.nn.LSTM(I, H, **kw)
    ours = rnn.LSTM(I, H, **kw)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    ours.load_state_dict(ref.state_dict())
    D = 2 if bidirectional else 1
    x = torch.randn(B, T, I, dtype=dtype)
    hx = (torch.randn(D * L, B, P, dtype=dtype), torch.randn(D * L, B, H, dtype=dtype))
    lengths = torch.tensor([3, 6, 1, 5])

    def run(m):
        xx = x.clone().requires_grad_()
        h = tuple(t.clone().requires_grad_() for t in hx)
        inp = pack_padded_sequence(xx, lengths, batch_first=True, enforce_sorted=False) if packed else xx
        out, (hn, cn) = m(inp, h)
        data = out.data if packed else out
        assert data.shape[-1] == D * P and hn.shape == (D * L, B, P) and cn.shape == (D * L, B, H)
        loss = (data * torch.linspace(-1, 1, data.numel(), dtype=dtype).view_as(data)).sum() + (hn * cn[..., :P]).sum()
        return [data, hn, cn] + list(torch.autograd.grad(loss, [xx, *h, *m.parameters()]))

    for a, b in zip(run(ours), run(ref)):
        torch.testing.assert_close(a, b, rtol=TOL[dtype], atol=TOL[dtype])


def test_lstm_proj_state_dict_round_trip_and_defaults():
    torch.manual_seed(4)
    ours = rnn.LSTM(5, 8, num_layers=2, proj_size=3, bias=False)
    ref = torch.nn.LSTM(5, 8, num_layers=2, proj_size=3, bias=False)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 2, 5)
    out, (h, c) = ours(x)  # hx=None: zero states of the right widths
    rout, (rh, rc) = ref(x)
    for a, b in ((out, rout), (h, rh), (c, rc)):
        torch.testing.assert_close(a, b, rtol=TOL[F32], atol=TOL[F32])
    ours2 = rnn.LSTM(5, 8, num_layers=2, proj_size=3, bias=False)
    ours2.load_state_dict(ref.state_dict())
    assert torch.equal(ours2(x)[0], out)
    assert repr(ours) == "LSTM(5, 8, proj_size=3, num_layers=2, bias=False)" == repr(ref)
    u_out, (u_h, u_c) = ours(x[:, 0])  # unbatched
    assert u_out.shape == (4, 3) and u_h.shape == (2, 3) and u_c.shape == (2, 8)


def test_lstm_proj_wrong_state_shapes_raise_like_torch():
    m = rnn.LSTM(5, 8, proj_size=3)
    x = torch.randn(4, 2, 5)
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(1, 2, 3\), got \[1, 2, 8\]"):
        m(x, (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[1\] size \(1, 2, 8\), got \[1, 2, 3\]"):
        m(x, (torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)))


# ---- torch.autocast ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_autocast_runs_in_float32(mode):
    # under autocast a bfloat16 activation is cast up: the layer computes and returns float32, exactly
    # as on the float32 input (torch.nn's layers return bfloat16 instead), and gradients flow back
    torch.manual_seed(5)
    ours = build(rnn, mode, 6, 8, dtype=F32, num_layers=2)
    cell = build_cell(rnn, mode, 6, 8, dtype=F32)
    lin = torch.nn.Linear(4, 6)
    x = torch.randn(5, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
        assert y.dtype == torch.bfloat16
        out, states = ours(y)
        step = cell(y[0])
    assert out.dtype == F32 and all(s.dtype == F32 for s in flat(states) + flat(step))
    want_out, want_states = ours(y.float())
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    for a, b in zip(flat(states), flat(want_states)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    out.sum().backward()
    assert lin.weight.grad is not None and ours.weight_ih_l0.grad.dtype == F32


def test_autocast_leaves_float64_and_ops_alone():
    m = rnn.GRU(3, 4, dtype=F64)
    x = torch.randn(2, 5, 3, dtype=F64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(x)[0].dtype == F64
        # a direct op call: bfloat16 arguments are cast to float32 by the op's autocast kernel
        w = [p.detach().float().bfloat16() for p in m.parameters()]
        out = torch.ops.rnnfast.gru_forward(x.bfloat16(), torch.zeros(5, 4, dtype=torch.bfloat16), *w, False, True)
    assert out[0].dtype == F32


def test_lstm_proj_torch_compile_fullgraph():
    torch.manual_seed(6)
    m = rnn.LSTM(4, 6, proj_size=3, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 4, requires_grad=True)
    compiled = torch.compile(lambda x: m(x)[0].sum(), fullgraph=True, backend="aot_eager")
    compiled(x).backward()
    got = x.grad.clone()
    x.grad = None
    m(x)[0].sum().backward()
    torch.testing.assert_close(got, x.grad)
