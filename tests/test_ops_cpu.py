"""CPU recurrent ops (csrc/cpu) against torch.nn and a textbook GRU loop: forward, final states and
every gradient; gradcheck, opcheck, torch.compile, bad input, non-contiguous input, edge sizes."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import rnnfast.functional as F
from rnnfast import scratch
from rnnfast._cells import KINDS, lookup

CELLS = list(KINDS)  # every C++ cell kind of the registry; gru_reset_before: the gru ops with reset_after=False
GATES = {kind: lookup(kind).num_gates for kind in CELLS}  # the registry's (rnnfast._cells)


# ---- references -----------------------------------------------------------------------------------
def _torch_module(cell, I, H, dtype, bias=True):
    if cell.startswith("rnn"):
        return torch.nn.RNN(I, H, nonlinearity=cell[4:], bias=bias, dtype=dtype)
    return {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](I, H, bias=bias, dtype=dtype)


def gru_textbook(x, h, w_ih, w_hh, b_ih, b_hh, reverse):
    """The textbook GRU (reset before the candidate's recurrent product): rnnfast.scratch's reference."""
    return scratch.torch_layer("gru", x, h, w_ih, w_hh, b_ih, b_hh, reverse=reverse, reset_after=False)


def reference(cell, x, h0, c0, params, reverse):
    """(output, hy[, cy]) computed by torch.nn (reverse: on the time-flipped input) or the loop."""
    w_ih, w_hh, b_ih, b_hh = params
    if cell == "gru_reset_before":
        return gru_textbook(x, h0, w_ih, w_hh, b_ih, b_hh, reverse)
    I, H = x.shape[2], h0.shape[1]
    m = _torch_module(cell, I, H, x.dtype, bias=b_ih is not None)
    names = ["weight_ih_l0", "weight_hh_l0"] + (["bias_ih_l0", "bias_hh_l0"] if b_ih is not None else [])
    for name, p in zip(names, params):
        delattr(m, name)  # replace the Parameter by the caller's leaf so gradients flow to it
        setattr(m, name, p)
    xs = x.flip(0) if reverse else x
    state = (h0[None], c0[None]) if cell == "lstm" else h0[None]
    out, hs = m(xs, state)
    out = out.flip(0) if reverse else out
    return (out, hs[0][0], hs[1][0]) if cell == "lstm" else (out, hs[0])


def ours(cell, x, h0, c0, params, reverse):
    w_ih, w_hh, b_ih, b_hh = params
    if cell == "lstm":
        return F.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse=reverse)
    if cell.startswith("gru"):
        return F.gru(x, h0, w_ih, w_hh, b_ih, b_hh, reverse=reverse, reset_after=cell == "gru")
    return getattr(F, cell)(x, h0, w_ih, w_hh, b_ih, b_hh, reverse=reverse)


def make(cell, T, B, I, H, dtype, bias=True):
    """Random leaves; weights scaled like torch.nn's init (std ~ 1/sqrt(H)) so that 35 steps stay
    well-conditioned (larger weights make the recurrence chaotic and amplify rounding)."""
    G = GATES[cell]
    leaf = lambda *s, scale=1.0: (torch.randn(*s, dtype=dtype) * scale).requires_grad_()  # noqa: E731
    x, h0, c0 = leaf(T, B, I), leaf(B, H, scale=0.5), leaf(B, H, scale=0.5)
    w = 0.5 / H**0.5
    params = [leaf(G * H, I, scale=0.5 / I**0.5), leaf(G * H, H, scale=w)]
    params += [leaf(G * H, scale=0.1), leaf(G * H, scale=0.1)] if bias else [None, None]
    return x, h0, c0, params


def run_with_grads(fn, cell, x, h0, c0, params, reverse, upstream=None):
    outs = fn(cell, x, h0, c0, params, reverse)
    if upstream is None:
        upstream = [torch.randn_like(o) for o in outs]
    leaves = [x, h0] + ([c0] if cell == "lstm" else []) + [p for p in params if p is not None]
    grads = torch.autograd.grad(sum((o * u).sum() for o, u in zip(outs, upstream)), leaves)
    return [o.detach() for o in outs], list(grads), upstream


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check_parity(cell, T, B, I, H, dtype, bias, reverse):
    x, h0, c0, params = make(cell, T, B, I, H, dtype, bias)
    got, ggot, up = run_with_grads(ours, cell, x, h0, c0, params, reverse)
    if dtype == torch.float64:
        want, gwant, _ = run_with_grads(reference, cell, x, h0, c0, params, reverse, up)
        for a, b in zip(got + ggot, want + gwant):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    else:  # float32 against the float64 reference, ‖ours − ref‖ / ‖ref‖ (docs/design.md §6)
        d = lambda t: None if t is None else t.detach().double().requires_grad_()  # noqa: E731
        want, gwant, _ = run_with_grads(reference, cell, d(x), d(h0), d(c0), [d(p) for p in params], reverse,
                                        [u.double() for u in up])
        for a, b in zip(got + ggot, want + gwant):
            assert a.dtype == torch.float32
            assert rel_err(a.double(), b) < 1e-5


# ---- parity with torch.nn / the textbook loop -----------------------------------------------------
SHAPES = [(1, 1, 3, 1), (7, 3, 5, 5), (35, 32, 28, 64), (7, 3, 4, 256), (35, 1, 6, 5), (1, 32, 7, 256)]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T%dB%dI%dH%d" % s)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", CELLS)
def test_parity(cell, dtype, shape, bias, reverse):
    check_parity(cell, *shape, dtype, bias, reverse)


@settings(max_examples=40, deadline=None)
@given(cell=st.sampled_from(CELLS), T=st.integers(1, 6), B=st.integers(1, 5), I=st.integers(1, 6),
       H=st.integers(1, 9), bias=st.booleans(), reverse=st.booleans())
def test_parity_property(cell, T, B, I, H, bias, reverse):
    check_parity(cell, T, B, I, H, torch.float64, bias, reverse)


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_reverse_matches_bidirectional_layer(cell):
    T, B, I, H = 6, 3, 4, 5
    m = _torch_module(cell, I, H, torch.float64)
    m = type(m)(I, H, bidirectional=True, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    out, hs = m(x)
    p = [getattr(m, n + "_l0_reverse") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    z = torch.zeros(B, H, dtype=torch.float64)
    got = ours(cell, x, z, z, p, reverse=True)
    torch.testing.assert_close(got[0], out[..., H:], rtol=1e-10, atol=1e-12)
    hy = hs[0] if cell == "lstm" else hs
    torch.testing.assert_close(got[1], hy[1], rtol=1e-10, atol=1e-12)


def test_fast_math_accuracy_through_ops():
    """float32 tanh and sigmoid in the pointwise passes stay within 1e-6 relative of float64."""
    x = torch.linspace(-20, 20, 400001, dtype=torch.float32)
    x = torch.cat([x, torch.logspace(-30, 1, 20001), -torch.logspace(-30, 1, 20001)])
    inp = x.view(-1, 1, 1)
    z = torch.zeros(1, 1)
    # rnn_tanh with w_ih = 1, w_hh = 0: output = tanh(x)
    out, _ = F.rnn_tanh(inp, z, torch.ones(1, 1), torch.zeros(1, 1))
    ref = torch.tanh(x.double())
    assert ((out.flatten().double() - ref).abs() / ref.abs().clamp_min(1e-37)).max() < 1e-6
    # gru workspace row r = sigmoid(W_ir x) with hx = 0, no bias
    ops = torch.ops.rnnfast
    w = torch.tensor([[1.0], [0.0], [0.0]])
    ws = ops.gru_forward(inp, z, w, torch.zeros(3, 1), None, None, False, True)[2]
    sig = torch.sigmoid(x.double())
    assert ((ws[:, 0, 0].double() - sig).abs() / sig).max() < 1e-6


def test_nan_propagates():
    x = torch.randn(3, 2, 4)
    x[1, 0, 0] = float("nan")
    for cell in CELLS:
        _, h0, c0, params = make(cell, 3, 2, 4, 5, torch.float32)
        out = ours(cell, x, h0, c0, params, False)[0]
        assert torch.isnan(out[1, 0]).any() and not torch.isnan(out[:, 1]).any()


def test_parallel_rows_match_single_thread():
    """Large B*H takes the at::parallel_for path; the result must not depend on the thread count."""
    old = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.manual_seed(0)
            torch.set_num_threads(n)
            x, h0, c0, params = make("lstm", 5, 64, 8, 256, torch.float64)
            results.append(run_with_grads(ours, "lstm", x, h0, c0, params, False))
        for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    finally:
        torch.set_num_threads(old)


# ---- edge sizes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_zero_length_sequence_raises_like_torch(cell):
    x, h0, c0, params = make(cell, 0, 2, 3, 4, torch.float64)
    with pytest.raises(ValueError, match="sequence length > 0"):
        ours(cell, x, h0, c0, params, False)
    with pytest.raises(RuntimeError, match="sequence length > 0"):  # direct op call, C++ check
        torch.ops.rnnfast.rnn_tanh_forward(torch.zeros(0, 2, 3), torch.zeros(2, 4), torch.zeros(4, 3),
                                           torch.zeros(4, 4), None, None, False)


@pytest.mark.parametrize("cell", CELLS)
def test_empty_batch_like_torch(cell):
    x, h0, c0, params = make(cell, 4, 0, 3, 5, torch.float64)
    got, grads, _ = run_with_grads(ours, cell, x, h0, c0, params, False)
    assert got[0].shape == (4, 0, 5) and got[1].shape == (0, 5)
    for g, leaf in zip(grads, [x, h0] + ([c0] if cell == "lstm" else []) + params):
        assert g.shape == leaf.shape and not g.abs().sum()


# ---- autograd machinery -----------------------------------------------------------------------------
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck(cell, reverse):
    x, h0, c0, params = make(cell, 4, 2, 3, 3, torch.float64)
    n = 3 if cell == "lstm" else 2

    def f(*args):
        return ours(cell, args[0], args[1], args[2] if cell == "lstm" else None, list(args[n:]), reverse)

    args = [x, h0] + ([c0] if cell == "lstm" else []) + params
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7)


def test_gradcheck_without_bias():
    x, h0, c0, params = make("lstm", 3, 2, 3, 3, torch.float64, bias=False)
    assert torch.autograd.gradcheck(lambda x, h, c, a, b: F.lstm(x, h, c, a, b), [x, h0, c0] + params[:2])


def _op_args(cell, T=3, B=2, I=3, H=4, bias=True):
    x, h0, c0, params = make(cell, T, B, I, H, torch.float64, bias)
    name = "gru" if cell.startswith("gru") else cell
    fwd = getattr(torch.ops.rnnfast, name + "_forward")
    extra = (cell == "gru",) if name == "gru" else ()
    args = (x, h0) + ((c0,) if cell == "lstm" else ()) + tuple(params) + (False,) + extra
    return name, fwd, args, extra


def _backward_args(cell, args, extra, fwd_res, grads):
    """The backward op's arguments for forward args `args` (from _op_args), the forward's results and
    the output grads `grads` = (grad_output, grad_hy[, grad_cy])."""
    out, ws = fwd_res[0], fwd_res[-1]
    x, h0 = args[0], args[1]
    if cell == "lstm":
        bargs = (*grads, x, h0, args[2], args[3], args[4], out, ws, False)
    else:
        bargs = (*grads, x, h0, args[2], args[3], out, ws, False) + extra
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in bargs)


@pytest.mark.parametrize("cell", CELLS)
def test_opcheck_forward_and_backward(cell):
    name, fwd, args, extra = _op_args(cell)
    torch.library.opcheck(fwd, args)
    torch.library.opcheck(fwd, _op_args(cell, bias=False)[2])
    with torch.no_grad():
        res = fwd(*args)
    bargs = _backward_args(cell, args, extra, res, [torch.randn_like(t) for t in res[:-1]])
    bwd = getattr(torch.ops.rnnfast, name + "_backward")
    torch.library.opcheck(bwd, bargs)
    torch.library.opcheck(bwd, bargs, {"input_grad": False})
    torch.library.opcheck(bwd, bargs, {"hx_grad": False})


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("T,ragged", [(1, False), (2, False), (7, False), (7, True)], ids=["T1", "T2", "T7", "T7-ragged"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("H", [6, 40])
def test_forward_without_workspace(cell, reverse, T, ragged, dtype, H):
    # workspace=False (inference): output and states bit-identical to the full forward's, from a
    # workspace of two rotating time rows (a one-phase cell stores only the cell state there, not
    # the gates: csrc/cpu/rows.h ForwardUnit<Keep = false>); the op returns an empty workspace.
    # H = 40: the vectorized body of the row loops and their remainder
    name, fwd, args, extra = _op_args(cell, T=T, B=4, I=5, H=H)
    args = tuple(a.detach().to(dtype) for a in args[:-1 - len(extra)]) + (reverse,) + extra
    lengths = torch.tensor([T, 1, max(T - 3, 1), 2 if T > 1 else 1]) if ragged else None
    full = fwd(*args, lengths)
    lean = fwd(*args, lengths, workspace=False)
    assert lean[-1].shape == (0,) and (full[-1].dim() == 3 or GATES[cell] == 1)
    for a, b in zip(full[:-1], lean[:-1]):
        assert torch.equal(a, b)
    torch.library.opcheck(fwd, args, {"lengths": lengths, "workspace": False})


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_differentiating_a_forward_without_workspace_raises(cell):
    name, fwd, args, extra = _op_args(cell)
    with pytest.raises(RuntimeError, match="workspace=False"):
        fwd(*args, workspace=False)


def test_modules_infer_without_workspace():
    # the lean caller rnnfast.nn and rnnfast.functional use (_ops.FORWARD) runs the op with
    # workspace=False when nothing needs a gradient, and keeps the full workspace otherwise; the
    # modules give the same output either way
    import rnnfast
    from rnnfast import _ops
    seen = []
    real = _ops.FORWARD["lstm"]
    lstm = rnnfast.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    with torch.inference_mode():
        out_inf = lstm(x)[0]
    with torch.no_grad():
        out_ng = lstm(x)[0]
    out = lstm(x)[0]
    assert torch.equal(out_inf, out.detach()) and torch.equal(out_ng, out.detach())
    with torch.no_grad():
        res = real(x, torch.zeros(2, 4), torch.zeros(2, 4), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0,
                   lstm.bias_hh_l0, False, None)
    assert res[-1].shape == (0,)
    res = real(x, torch.zeros(2, 4), torch.zeros(2, 4), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0,
               lstm.bias_hh_l0, False, None)
    assert res[-1].shape == rnnfast._cells.CELLS["lstm"].workspace_shape(5, 2, 4)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("T,ragged", [(1, False), (6, False), (6, True)], ids=["T1", "T6", "T6-ragged"])
def test_backward_without_hx_grad(cell, reverse, T, ragged):
    # hx_grad=False returns zeros for grad_hx (the GEMM that carries dL/dh to h0 is skipped) and leaves
    # every other gradient bit-identical, for T = 1 (where that GEMM is the last step's only one), a
    # longer sequence, either direction and ragged lengths
    name, fwd, args, extra = _op_args(cell, T=T, B=5, I=6, H=8)
    args = tuple(a.detach() for a in args[:-1 - len(extra)]) + (reverse,) + extra
    lengths = torch.tensor([T, 1, T, max(T - 2, 1), 2 if T > 1 else 1]) if ragged else None
    res = fwd(*args, lengths)
    g = torch.Generator().manual_seed(9)
    grads = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in res[:-1]]
    bargs = _backward_args(cell, args, extra, res, grads)
    bargs = bargs[:-1 - len(extra)] + (reverse,) + extra
    bwd = getattr(torch.ops.rnnfast, name + "_backward")
    full = bwd(*bargs, lengths=lengths)
    skip = bwd(*bargs, lengths=lengths, hx_grad=False)
    assert full[1].abs().sum() > 0 and torch.equal(skip[1], torch.zeros_like(args[1]))
    for i, (a, b) in enumerate(zip(full, skip)):
        if i != 1:
            assert torch.equal(a, b), i


@pytest.mark.parametrize("cell", CELLS)
def test_autograd_skips_hx_grad_only_when_unneeded(cell):
    # through autograd: h0 without requires_grad gets no gradient and the others are those of the call
    # where it has one (the op is called with hx_grad = needs_input_grad of hx)
    x0, h0_, c0, params = make(cell, 4, 3, 5, 7, torch.float64)
    got = []
    for need in (False, True):
        h0 = h0_.detach().requires_grad_(need)
        outs = ours(cell, x0, h0, c0, params, False)
        wrt = [p for p in params if p is not None] + ([h0] if need else [])
        got.append(torch.autograd.grad(outs[0].pow(2).sum() + outs[1].sum(), wrt))
    assert got[1][-1].abs().sum() > 0
    for a, b in zip(got[0], got[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_backward_without_input_grad(cell, dtype):
    # input_grad=False returns zeros for grad_input and leaves every other gradient unchanged; the
    # autograd wiring passes it whenever the input needs no gradient (one-hot tokens).
    name, fwd, args, extra = _op_args(cell, T=6, B=33, I=5, H=20)
    args = tuple(a.detach().to(dtype) if isinstance(a, torch.Tensor) else a for a in args)
    res = fwd(*args)
    g = torch.Generator().manual_seed(5)
    grads = [torch.randn(t.shape, generator=g, dtype=dtype) for t in res[:-1]]
    bargs = _backward_args(cell, args, extra, res, grads)
    bwd = getattr(torch.ops.rnnfast, name + "_backward")
    full, skip = bwd(*bargs), bwd(*bargs, input_grad=False)
    assert full[0].abs().sum() > 0 and torch.equal(skip[0], torch.zeros_like(args[0]))
    for a, b in zip(full[1:], skip[1:]):
        assert torch.equal(a, b)

    # through autograd: x without requires_grad gets no gradient, the weights the same as with it
    x0, h0_, c0, params = make(cell, 6, 4, 5, 7, dtype)
    xs = [x0.detach(), x0.detach().requires_grad_()]
    grads = []
    for xi in xs:
        outs = ours(cell, xi, h0_, c0, params, False)
        grads.append(torch.autograd.grad(outs[0].pow(2).sum(), [p for p in params if p is not None]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_double_backward_raises_clearly(cell):
    x, h0, c0, params = make(cell, 3, 2, 3, 4, torch.float64)
    out = ours(cell, x, h0, c0, params, False)[0]
    (gx,) = torch.autograd.grad(out.pow(2).sum(), [x], create_graph=True)
    name = "gru" if cell.startswith("gru") else cell
    with pytest.raises(NotImplementedError, match=f"double backward through rnnfast.{name} is not supported"):
        gx.sum().backward()


@pytest.mark.parametrize("cell", CELLS)
def test_torch_compile_fullgraph(cell):
    torch._dynamo.reset()
    x, h0, c0, params = make(cell, 5, 3, 4, 6, torch.float32)

    def step(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        outs = ours(cell, x, h0, c0, [w_ih, w_hh, b_ih, b_hh], False)
        return sum(o.sum() for o in outs)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    leaves = [x, h0, c0] + params
    want = torch.autograd.grad(step(*leaves), [x, h0] + params)
    got_loss = compiled(*leaves)
    got = torch.autograd.grad(got_loss, [x, h0] + params)
    torch.testing.assert_close(got_loss, step(*leaves))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


# ---- bad input --------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    x, h0, c0, (w_ih, w_hh, b_ih, b_hh) = make("lstm", 3, 2, 4, 5, torch.float32)
    with pytest.raises(ValueError, match=r"rnnfast.lstm: input must be 3-D \(T, B, I\), got 2-D"):
        F.lstm(x[0], h0, c0, w_ih, w_hh)
    with pytest.raises(ValueError, match=r"rnnfast.lstm: w_ih must have shape \(4\*H, I\) = \(20, 3\)"):
        F.lstm(x[..., :3], h0, c0, w_ih, w_hh)
    with pytest.raises(ValueError, match=r"rnnfast.lstm: hx must have shape \(B, H\) = \(2, 5\)"):
        F.lstm(x, h0[:1], c0, w_ih, w_hh)
    with pytest.raises(ValueError, match=r"rnnfast.lstm: w_hh must have shape \(4\*H, H\) = \(20, 5\), got \(20, 4\)"):
        F.lstm(x, h0, c0, w_ih, w_hh[:, :4])
    with pytest.raises(ValueError, match=r"rnnfast.lstm: b_hh must have shape"):
        F.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh[:3])
    with pytest.raises(TypeError, match="w_hh has dtype torch.float64 but input has dtype torch.float32"):
        F.lstm(x, h0, c0, w_ih, w_hh.double())
    with pytest.raises(TypeError, match="supports float32 and float64 on CPU and float32 on CUDA, got torch.float16"):
        F.lstm(x.half(), h0.half(), c0.half(), w_ih.half(), w_hh.half())
    with pytest.raises(TypeError, match="got torch.int64"):
        F.rnn_tanh(x.long(), h0.long(), w_ih[:5].long(), w_hh[:5].long())
    with pytest.raises(TypeError, match="hx must be a torch.Tensor, got list"):
        F.gru(x, [0.0], w_ih[:15], w_hh[:15])
    with pytest.raises(ValueError, match=r"rnnfast.gru: w_ih must have shape \(3\*H, I\)"):
        F.gru(x, h0, w_ih, w_hh[:15])


def test_bad_inputs_direct_op_calls():
    """The C++ checks guard direct torch.ops calls with the same kind of message."""
    x, h0, c0, (w_ih, w_hh, b_ih, b_hh) = make("lstm", 3, 2, 4, 5, torch.float32)
    ops = torch.ops.rnnfast
    with pytest.raises(RuntimeError, match=r"rnnfast.lstm: w_hh must have shape \(4\*H, H\) = \(20, 5\), got \(20, 4\)"):
        ops.lstm_forward(x, h0, c0, w_ih, w_hh[:, :4], None, None, False)
    with pytest.raises(RuntimeError, match=r"rnnfast.rnn_tanh: input must be 3-D"):
        ops.rnn_tanh_forward(x[0], h0, w_ih[:5], w_hh[:5], None, None, False)
    with pytest.raises(RuntimeError, match="rnnfast.gru: hx has dtype Double but input has dtype Float"):
        ops.gru_forward(x, h0.double(), w_ih[:15], w_hh[:15], None, None, False, True)
    with pytest.raises(RuntimeError, match="supports float32 and float64 on CPU, got input of dtype Half"):
        ops.rnn_relu_forward(x.half(), h0.half(), w_ih[:5].half(), w_hh[:5].half(), None, None, False)
    with pytest.raises(RuntimeError, match=r"rnnfast.lstm: cx must have shape \(B, H\)"):
        ops.lstm_forward(x, h0, c0[:, :2], w_ih, w_hh, None, None, False)
    with pytest.raises(RuntimeError, match=r"rnnfast.lstm: b_ih must have shape \(4\*H,\) = \(20,\)"):
        ops.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih[:3], None, False)
    out, hy, cy, ws = ops.lstm_forward(x, h0, c0, w_ih, w_hh, None, None, False)
    with pytest.raises(RuntimeError, match=r"rnnfast.lstm: workspace must have shape \(T, B, 5\*H\)"):
        ops.lstm_backward(out, hy, cy, x, h0, c0, w_ih, w_hh, out, ws[..., :3], False)


# ---- layouts -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_non_contiguous_inputs(cell):
    T, B, I, H = 5, 3, 4, 6
    G = GATES[cell]
    d = torch.float64
    # input from a batch-first tensor, states and weights as transposes / strided slices
    xb = torch.randn(B, T, I, dtype=d)
    x = xb.transpose(0, 1).requires_grad_()
    h0 = torch.randn(H, B, dtype=d).t().requires_grad_()
    c0 = torch.randn(B, 2 * H, dtype=d)[:, ::2].requires_grad_()
    w_ih = torch.randn(I, G * H, dtype=d).t().requires_grad_()
    w_hh = torch.randn(G * H, 2 * H, dtype=d)[:, 1::2].requires_grad_()
    b_ih = torch.randn(2 * G * H, dtype=d)[::2].requires_grad_()
    b_hh = torch.randn(G * H, dtype=d).requires_grad_()
    params = [w_ih, w_hh, b_ih, b_hh]
    assert not (x.is_contiguous() or h0.is_contiguous() or w_ih.is_contiguous() or w_hh.is_contiguous())
    got, ggot, up = run_with_grads(ours, cell, x, h0, c0, params, False)
    cont = lambda t: t.detach().contiguous().requires_grad_()  # noqa: E731
    want, gwant, _ = run_with_grads(ours, cell, cont(x), cont(h0), cont(c0), [cont(p) for p in params], False, up)
    ref, gref, _ = run_with_grads(reference, cell, x, h0, c0, params, False, up)
    for a, b, c in zip(got + ggot, want + gwant, ref + gref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)



@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", CELLS)
def test_strided_grad_output(cell, dtype):
    # The backward op reads grad_output in place for any T/B strides (a batch-first grad, a slice)
    # and materializes one row of a fully broadcast grad (out.sum()); results equal a contiguous copy.
    T, B, I, H = 6, 33, 5, 20  # B >= 16: the float32 batch-split path too
    name, fwd, args, extra = _op_args(cell, T=T, B=B, I=I, H=H)
    args = tuple(a.detach().to(dtype) if isinstance(a, torch.Tensor) else a for a in args)
    res = fwd(*args)
    g = torch.Generator().manual_seed(9)
    rest = [torch.randn(t.shape, generator=g, dtype=dtype) for t in res[1:-1]]
    bwd = getattr(torch.ops.rnnfast, name + "_backward")

    def call(go):
        return bwd(*_backward_args(cell, args, extra, res, [go] + rest))

    batch_first = torch.randn(B, T, H, generator=g, dtype=dtype).transpose(0, 1)
    sliced = torch.randn(T, 2 * B, H + 3, generator=g, dtype=dtype)[:, ::2, 1:H + 1]
    scalar = torch.tensor(0.7, dtype=dtype).expand(T, B, H)
    along_h = torch.randn(T, B, 1, generator=g, dtype=dtype).expand(T, B, H)
    for go in (batch_first, sliced, scalar, along_h):
        assert not go.is_contiguous()
        for a, b in zip(call(go), call(go.contiguous())):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

def test_workspace_layouts():
    T, B, I, H = 4, 2, 3, 5
    ops = torch.ops.rnnfast
    x, h, w = torch.randn(T, B, I), torch.randn(B, H), lambda G, n: torch.randn(G * H, n)
    assert ops.rnn_tanh_forward(x, h, w(1, I), w(1, H), None, None, False)[2].shape == (0,)
    for reset_after in (True, False):
        assert ops.gru_forward(x, h, w(3, I), w(3, H), None, None, False, reset_after)[2].shape == (T, B, 4 * H)
    out, hy, cy, ws = ops.lstm_forward(x, h, h, w(4, I), w(4, H), None, None, True)
    assert ws.shape == (T, B, 5 * H)
    torch.testing.assert_close(ws[0, :, 4 * H:], cy)  # reverse: the last state is at t = 0
    torch.testing.assert_close(out[0], hy)


@pytest.mark.slow
def test_torch_compile_inductor_one_op():
    """The default backend (inductor) around an op: fake kernel, autograd and codegen all agree."""
    torch._dynamo.reset()
    x, h0, _, (w_ih, w_hh, b_ih, b_hh) = make("rnn_tanh", 5, 3, 4, 6, torch.float32)

    def f(x, h0, w_ih, w_hh, b_ih, b_hh):
        out, hy = F.rnn_tanh(x, h0, w_ih, w_hh, b_ih, b_hh)
        return out.sin().sum() + hy.sum()

    leaves = [x, h0, w_ih, w_hh, b_ih, b_hh]
    got = torch.compile(f, fullgraph=True)(*leaves)
    want = f(*leaves)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves)):
        torch.testing.assert_close(a, b)


# ---- variable-length batches (lengths) ------------------------------------------------------------
def _lengths(T, B, seed=0, kind="random"):
    """Lengths in [1, T]: random (the longest first, the rest in no order), mostly live (a few rows
    one or two steps short: more than 7/8 of the rows live, so the backward's weight gradients and
    dL/dx run over the whole padded batch, not the gathered live rows: core/loop.h live_rows), or
    ragged, a few long sequences among many of length 1, so that at most half the rows of the batch
    are live and the steps run on their live rows only (csrc/cpu/backend.h live_end,
    project_live): sorted longest first (a PackedSequence's order, where the live rows are a prefix)
    or not."""
    g = torch.Generator().manual_seed(seed)
    if kind == "mostly live":
        lengths = torch.full((B,), T, dtype=torch.int64)
        lengths[1], lengths[B // 2] = T - 1, T - 2
        assert 8 * int(lengths.sum()) > 7 * T * B
        return lengths
    if kind != "random":
        lengths = torch.ones(B, dtype=torch.int64)
        lengths[0], lengths[B // 6], lengths[B // 3] = T, T // 2, 2
        if kind == "ragged sorted":
            lengths = lengths.sort(descending=True).values
        assert 2 * int(lengths.sum()) <= T * B
        return lengths
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T  # the longest one need not come first: rows are independent, no sorting
    if B > 2:
        lengths[2] = 1
    return lengths


def _per_sequence_reference(cell, x, h0, c0, params, reverse, lengths):
    """Each sequence b alone through the reference on x[:lengths[b], b]: (outputs, hy[, cy]) lists."""
    outs, hys, cys = [], [], []
    for b, n in enumerate(lengths.tolist()):
        res = reference(cell, x[:n, b:b + 1], h0[b:b + 1], None if c0 is None else c0[b:b + 1], params, reverse)
        outs.append(res[0][:, 0])
        hys.append(res[1][0])
        if cell == "lstm":
            cys.append(res[2][0])
    return outs, hys, cys


@pytest.mark.parametrize("kind", ["random", "mostly live", "ragged sorted", "ragged unsorted"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", CELLS)
def test_lengths_match_each_sequence_alone(cell, dtype, reverse, kind):
    # B=32 (float32) takes the batch-split loop, float64 the shared one; outputs, final states and
    # every gradient against the reference run on each sequence by itself, in float64.
    T, B, I, H = 9, 32, 5, 16
    lengths = _lengths(T, B, kind=kind)
    x, h0, c0, params = make(cell, T, B, I, H, dtype)
    c0 = c0 if cell == "lstm" else None
    w_ih, w_hh, b_ih, b_hh = params
    if cell == "lstm":
        got = F.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse=reverse, lengths=lengths)
    elif cell.startswith("gru"):
        got = F.gru(x, h0, w_ih, w_hh, b_ih, b_hh, reverse=reverse, reset_after=cell == "gru", lengths=lengths)
    else:
        got = getattr(F, cell)(x, h0, w_ih, w_hh, b_ih, b_hh, reverse=reverse, lengths=lengths)
    valid = (torch.arange(T)[:, None] < lengths[None, :])[..., None]  # (T, B, 1)
    up = [torch.randn_like(t) for t in got]
    leaves = [x, h0] + ([c0] if cell == "lstm" else []) + params
    # grad_output at padded positions is 0, as a packed loss gives (test_lengths_gradcheck covers others)
    loss = (got[0] * up[0] * valid).sum() + sum((g * u).sum() for g, u in zip(got[1:], up[1:]))
    grads = torch.autograd.grad(loss, leaves)

    d = lambda t: None if t is None else t.detach().double().requires_grad_()  # noqa: E731
    rx, rh0, rc0, rparams = d(x), d(h0), d(c0), [d(p) for p in params]
    outs, hys, cys = _per_sequence_reference(cell, rx, rh0, rc0, rparams, reverse, lengths)
    n = lengths.tolist()
    rloss = sum((o * up[0][:n[b], b].double()).sum() for b, o in enumerate(outs))
    rloss = rloss + (torch.stack(hys) * up[1].double()).sum()
    if cell == "lstm":
        rloss = rloss + (torch.stack(cys) * up[2].double()).sum()
    rleaves = [rx, rh0] + ([rc0] if cell == "lstm" else []) + rparams
    rgrads = torch.autograd.grad(rloss, rleaves)

    def close(a, b):
        if dtype == torch.float64:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        else:
            assert a.dtype == torch.float32 and rel_err(a.double(), b) < 1e-5

    for b in range(B):
        close(got[0][:n[b], b], outs[b].detach())
        # a frozen row carries its state unchanged: the final one (forward), hx (reverse, not yet started)
        frozen_state = h0[b] if reverse else got[1][b]
        assert torch.equal(got[0][n[b]:, b], frozen_state.detach().expand(T - n[b], H))
    close(got[1], torch.stack(hys).detach())
    if cell == "lstm":
        close(got[2], torch.stack(cys).detach())
    for g, r in zip(grads, rgrads):
        close(g, r)
    assert not (grads[0] * ~valid).abs().sum(), "padded inputs must get no gradient"


@pytest.mark.parametrize("cell", CELLS)
def test_full_lengths_equal_no_lengths(cell):
    T, B = 6, 4
    x, h0, c0, params = make(cell, T, B, 3, 5, torch.float32)
    name, fwd, args, extra = _op_args(cell, T=T, B=B)
    args = tuple(a.detach().float() if isinstance(a, torch.Tensor) else a for a in args)
    full = torch.full((B,), T, dtype=torch.int64)
    plain, with_len = fwd(*args), fwd(*args, lengths=full)
    for a, b in zip(plain, with_len):
        assert torch.equal(a, b)
    grads = [torch.randn_like(t) for t in plain[:-1]]
    bwd = getattr(torch.ops.rnnfast, name + "_backward")
    bargs = _backward_args(cell, args, extra, plain, grads)
    for a, b in zip(bwd(*bargs), bwd(*bargs, lengths=full)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # GEMM accumulation order may differ


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_lengths_gradcheck(cell, reverse):
    # every output position gets a gradient here, the frozen ones included (they copy the state)
    x, h0, c0, params = make(cell, 5, 3, 3, 3, torch.float64)
    lengths = torch.tensor([5, 2, 0])
    n = 3 if cell == "lstm" else 2
    w = lambda a: list(a[n:])  # noqa: E731

    def f(*a):
        if cell == "lstm":
            return F.lstm(a[0], a[1], a[2], *w(a), reverse=reverse, lengths=lengths)
        if cell.startswith("gru"):
            return F.gru(a[0], a[1], *w(a), reverse=reverse, reset_after=cell == "gru", lengths=lengths)
        return getattr(F, cell)(a[0], a[1], *w(a), reverse=reverse, lengths=lengths)

    args = [x, h0] + ([c0] if cell == "lstm" else []) + params
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("padding", ["nan", "inf", "large"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", CELLS)
def test_lengths_whatever_the_padding_holds(cell, dtype, padding):
    """The input at frozen positions (t >= lengths[b]) is never read into a result: gradients are
    equal, bit for bit, whether it holds zeros, a large finite value (read in place: 0 * x), inf or
    NaN (a copy with them zeroed). A short problem (T * B < 2 (I + H)) whose rows mostly live takes the weight-gradient
    GEMMs on raw BLAS (cpu/backend.h weight_grads_raw, frozen_rows_finite)."""
    T, B, I, H = 4, 8, 16, 16
    lengths = torch.tensor([4, 4, 4, 3, 4, 4, 4, 4])  # 31 of 32 rows live: not the gathered live rows
    frozen = (torch.arange(T)[:, None] >= lengths[None, :])[..., None]  # (T, B, 1)
    fill = {"nan": float("nan"), "inf": float("inf"), "large": 1e30}[padding]
    results = []
    x0, h0, c0, params = make(cell, T, B, I, H, dtype)
    c0 = c0 if cell == "lstm" else None
    for value in (0.0, fill):
        x = torch.where(frozen, torch.full_like(x0, value), x0.detach()).requires_grad_()
        w_ih, w_hh, b_ih, b_hh = params
        if cell == "lstm":
            got = F.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=lengths)
        elif cell.startswith("gru"):
            got = F.gru(x, h0, w_ih, w_hh, b_ih, b_hh, reset_after=cell == "gru", lengths=lengths)
        else:
            got = getattr(F, cell)(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=lengths)
        loss = (got[0] * ~frozen).sum() + sum(g.sum() for g in got[1:])
        leaves = [h0] + ([c0] if cell == "lstm" else []) + params
        results.append(torch.autograd.grad(loss, leaves))
    for a, b in zip(*results):  # the same GEMMs: 0 * 1e30 adds exact zeros; inf and NaN are zeroed first
        assert torch.isfinite(b).all()
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_lengths_opcheck(cell):
    name, fwd, args, extra = _op_args(cell, T=4, B=3)
    lengths = torch.tensor([4, 1, 3])
    torch.library.opcheck(fwd, args, {"lengths": lengths})
    with torch.no_grad():
        res = fwd(*args, lengths=lengths)
    bargs = _backward_args(cell, args, extra, res, [torch.randn_like(t) for t in res[:-1]])
    bwd = getattr(torch.ops.rnnfast, name + "_backward")
    torch.library.opcheck(bwd, bargs, {"lengths": lengths})
    torch.library.opcheck(bwd, bargs, {"input_grad": False, "lengths": lengths})


def test_bad_lengths_raise_clear_errors():
    x, h0, c0, params = make("gru", 4, 3, 2, 5, torch.float64)
    with torch.no_grad():
        call = lambda lengths: F.gru(x, h0, *params, lengths=lengths)  # noqa: E731
        with pytest.raises(TypeError, match="lengths must have dtype torch.int64, got torch.int32"):
            call(torch.tensor([4, 2, 1], dtype=torch.int32))
        with pytest.raises(TypeError, match="lengths must be a torch.Tensor or None, got list"):
            call([4, 2, 1])
        with pytest.raises(ValueError, match=r"lengths must have shape \(B,\) = \(3,\), got \(2,\)"):
            call(torch.tensor([4, 2]))
        with pytest.raises(ValueError, match=r"lengths must lie in \[0, T\] = \[0, 4\], got values in \[1, 5\]"):
            call(torch.tensor([5, 2, 1]))
        with pytest.raises(ValueError, match=r"got values in \[-1, 4\]"):
            call(torch.tensor([4, -1, 1]))
        with pytest.raises(ValueError, match="lengths must be on the CPU"):
            call(torch.tensor([4, 2, 1], device="meta"))
        # the op's own checks, for direct calls
        op = torch.ops.rnnfast.gru_forward
        with pytest.raises(RuntimeError, match=r"rnnfast.gru: lengths must have dtype int64, got Float"):
            op(x, h0, *params, False, True, torch.tensor([4.0, 2.0, 1.0]))
        with pytest.raises(RuntimeError, match=r"rnnfast.gru: lengths must lie in \[0, T\] = \[0, 4\]"):
            op(x, h0, *params, False, True, torch.tensor([4, 2, 9]))
        with pytest.raises(RuntimeError, match=r"rnnfast.gru: lengths must be 1-D \(B,\), got 2-D with shape \(3, 1\)"):
            op(x, h0, *params, False, True, torch.tensor([[4, 2, 1]]).t())
        with pytest.raises(RuntimeError, match=r"rnnfast.gru: lengths must have shape \(B,\) = \(3,\), got \(2,\)"):
            op(x, h0, *params, False, True, torch.tensor([4, 2]))


# ---- LSTM with a projection (lstm_proj ops, F.lstm(..., w_hr=...)) --------------------------------
def _proj_make(T, B, I, H, P, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    leaf = lambda *s, scale=1.0: (torch.randn(*s, dtype=dtype, generator=g) * scale).requires_grad_()  # noqa: E731
    x, h0, c0 = leaf(T, B, I), leaf(B, P, scale=0.5), leaf(B, H, scale=0.5)
    w = [leaf(4 * H, I, scale=0.5 / I**0.5), leaf(4 * H, P, scale=0.5 / P**0.5)]
    w += [leaf(4 * H, scale=0.1), leaf(4 * H, scale=0.1)] if bias else [None, None]
    w_hr = leaf(P, H, scale=0.5 / H**0.5)
    return x, h0, c0, w, w_hr


def _proj_reference(x, h0, c0, w, w_hr, reverse):
    """torch.nn.LSTM(proj_size=P) on the caller's leaves (reverse: on the time-flipped input)."""
    I, H, P = x.shape[2], c0.shape[1], h0.shape[1]
    m = torch.nn.LSTM(I, H, proj_size=P, bias=w[2] is not None, dtype=x.dtype)
    names = ["weight_ih_l0", "weight_hh_l0"] + (["bias_ih_l0", "bias_hh_l0"] if w[2] is not None else [])
    for name, p in list(zip(names, w)) + [("weight_hr_l0", w_hr)]:
        delattr(m, name)
        setattr(m, name, p)
    out, (h, c) = m(x.flip(0) if reverse else x, (h0[None], c0[None]))
    return (out.flip(0) if reverse else out), h[0], c[0]


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_lstm_proj_matches_torch(dtype, bias, reverse):
    x, h0, c0, w, w_hr = _proj_make(9, 32, 5, 16, 6, dtype, bias)
    got = F.lstm(x, h0, c0, *w, reverse=reverse, w_hr=w_hr)
    up = [torch.randn_like(t) for t in got]
    leaves = [x, h0, c0, w_hr] + [p for p in w if p is not None]
    ggot = torch.autograd.grad(sum((a * u).sum() for a, u in zip(got, up)), leaves)
    d = lambda t: None if t is None else t.detach().double().requires_grad_()  # noqa: E731
    rleaves = [d(t) for t in (x, h0, c0, w_hr)] + [d(p) for p in w]
    want = _proj_reference(rleaves[0], rleaves[1], rleaves[2], rleaves[4:], rleaves[3], reverse)
    gwant = torch.autograd.grad(sum((a * u.double()).sum() for a, u in zip(want, up)),
                                rleaves[:4] + [p for p in rleaves[4:] if p is not None])
    for a, b in zip(list(got) + list(ggot), list(want) + list(gwant)):
        if dtype == torch.float64:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        else:
            assert a.dtype == torch.float32 and rel_err(a.double(), b) < 1e-5


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("kind", ["random", "ragged sorted", "ragged unsorted"])
@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_proj_lengths_match_each_sequence_alone(reverse, kind):
    T, B = 7, (5 if kind == "random" else 12)
    lengths = _lengths(T, B, seed=3, kind=kind)
    x, h0, c0, w, w_hr = _proj_make(T, B, 3, 6, 2, torch.float64)
    out, hy, cy = F.lstm(x, h0, c0, *w, reverse=reverse, lengths=lengths, w_hr=w_hr)
    valid = (torch.arange(T)[:, None] < lengths[None, :])[..., None]
    up = [torch.randn_like(t) for t in (out, hy, cy)]
    leaves = [x, h0, c0, w_hr] + w
    loss = (out * up[0] * valid).sum() + (hy * up[1]).sum() + (cy * up[2]).sum()
    grads = torch.autograd.grad(loss, leaves)
    rloss = 0
    for b, n in enumerate(lengths.tolist()):
        o, h, c = _proj_reference(x[:n, b:b + 1], h0[b:b + 1], c0[b:b + 1], w, w_hr, reverse)
        torch.testing.assert_close(out[:n, b], o[:, 0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(hy[b], h[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(cy[b], c[0], rtol=1e-10, atol=1e-12)
        rloss = rloss + (o[:, 0] * up[0][:n, b]).sum() + (h[0] * up[1][b]).sum() + (c[0] * up[2][b]).sum()
    for g, r in zip(grads, torch.autograd.grad(rloss, leaves)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_proj_gradcheck_and_opcheck(reverse, with_lengths):
    x, h0, c0, w, w_hr = _proj_make(4, 3, 2, 4, 3, torch.float64, seed=5)
    lengths = torch.tensor([4, 0, 2]) if with_lengths else None
    f = lambda x, h, c, r, a, b, bi, bh: F.lstm(x, h, c, a, b, bi, bh, reverse=reverse, lengths=lengths, w_hr=r)  # noqa: E731
    assert torch.autograd.gradcheck(f, [x, h0, c0, w_hr] + w, eps=1e-6, atol=1e-7)
    args = tuple(t.detach() for t in (x, h0, c0, w[0], w[1], w_hr, w[2], w[3])) + (reverse,)
    kw = {"lengths": lengths} if with_lengths else {}
    torch.library.opcheck(torch.ops.rnnfast.lstm_proj_forward, args, kw)
    with torch.no_grad():
        out, hy, cy, ws = torch.ops.rnnfast.lstm_proj_forward(*args, **kw)
    bargs = (torch.randn_like(out), torch.randn_like(hy), torch.randn_like(cy)) + args[:6] + (out, ws, reverse)
    bwd = torch.ops.rnnfast.lstm_proj_backward
    torch.library.opcheck(bwd, bargs, kw)
    torch.library.opcheck(bwd, bargs, dict(kw, input_grad=False))
    skip = bwd(*bargs, input_grad=False, **kw)
    full = bwd(*bargs, **kw)
    assert torch.equal(skip[0], torch.zeros_like(x)) and all(torch.equal(a, b) for a, b in zip(skip[1:], full[1:]))


def test_lstm_proj_bad_inputs_raise_clear_errors():
    x, h0, c0, w, w_hr = _proj_make(4, 3, 2, 5, 2, torch.float64)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"hx must have shape \(B, P\) = \(3, 2\), got \(3, 5\)"):
            F.lstm(x, torch.zeros(3, 5, dtype=torch.float64), c0, *w, w_hr=w_hr)
        with pytest.raises(ValueError, match=r"w_hh must have shape \(4\*H, P\) = \(20, 2\), got \(20, 5\)"):
            F.lstm(x, h0, c0, w[0], torch.zeros(20, 5, dtype=torch.float64), w[2], w[3], w_hr=w_hr)
        with pytest.raises(TypeError, match="w_hr has dtype torch.float32 but input has dtype torch.float64"):
            F.lstm(x, h0, c0, *w, w_hr=w_hr.float())
        with pytest.raises(ValueError, match=r"w_hr must be 2-D \(P, H\)"):
            F.lstm(x, h0, c0, *w, w_hr=w_hr[0])
        with pytest.raises(ValueError, match=r"cx must have shape \(B, H\)"):
            F.lstm(x, h0, c0[:2], *w, w_hr=w_hr)
        op = torch.ops.rnnfast.lstm_proj_forward
        with pytest.raises(RuntimeError, match=r"rnnfast.lstm_proj: w_hr must have shape \(P, H\) = \(2, 5\)"):
            op(x, h0, c0, w[0], w[1], w_hr.t().contiguous()[:2, :2], w[2], w[3], False)
        with pytest.raises(RuntimeError, match="rnnfast.lstm_proj: expected sequence length > 0"):
            op(x[:0], h0, c0, w[0], w[1], w_hr, w[2], w[3], False)
