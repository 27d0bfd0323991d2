"""Edge cases where rnnfast once gave silent wrong answers (issue 10), each against torch.nn:
batch 1 / hidden 1 and stride-0 tensors reaching BLAS, saturated nonlinearities, NaN/Inf in the
padding of variable-length batches, a meta tensor among CPU tensors, malformed PackedSequences,
and clipping of mixed-device or expanded gradients."""
import math

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast
import rnnfast.functional as rf

ops = torch.ops.rnnfast
MODULES = ["RNN", "GRU", "LSTM"]
CELLS = ["RNNCell", "GRUCell", "LSTMCell"]


def assert_no_blas_error(capfd):
    """oneMKL reports a rejected argument on stdout ("Parameter N was incorrect") and skips the call."""
    out, err = capfd.readouterr()
    assert "Parameter" not in out + err and "MKL ERROR" not in out + err, out + err


def pair(cls_name, *args, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls_name)(*args, **kw).to(dtype)
    mine = getattr(rnnfast, cls_name)(*args, **kw).to(dtype)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def assert_grads_close(ref, mine, rtol=1e-5, atol=1e-6):
    for (name, p), q in zip(ref.named_parameters(), mine.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


# ---- 1, 2: batch 1, hidden 1 and stride-0 operands reach BLAS legally ---------------------------

@pytest.mark.parametrize("mode", MODULES)
@pytest.mark.parametrize("hidden", [1, 8])
def test_batch1_float32_grads_match_torch(mode, hidden, capfd):
    # out.sum() sends a stride-0 grad; at B = 1 it used to reach MKL as a leading dimension of 0
    ref, mine = pair(mode, 3, hidden)
    x = torch.randn(6, 1, 3)
    for net in (ref, mine):
        out, _ = net(x)
        out.sum().backward()
    assert_grads_close(ref, mine)
    assert_no_blas_error(capfd)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("hidden", [1, 5])
def test_cells_batch1_grad_of_h0(cell, hidden, capfd):
    ref, mine = pair(cell, 3, hidden)
    x = torch.randn(1, 3)
    grads = []
    for net in (ref, mine):
        h = torch.randn(1, hidden, requires_grad=True)
        with torch.no_grad():
            h.copy_(torch.linspace(-1, 1, hidden))
        state = (h, h * 0.5) if cell == "LSTMCell" else h
        out = net(x, state)
        (out[0] if cell == "LSTMCell" else out).sum().backward()
        grads.append(h.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)
    assert_grads_close(ref, mine)
    assert_no_blas_error(capfd)


def stride0_row(H, dtype=torch.float32):
    """A (1, H) state whose row stride is 0 (as as_strided or expand may leave it)."""
    return torch.randn(H, dtype=dtype).as_strided((1, H), (0, 1))


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
@pytest.mark.parametrize("H", [1, 8])
def test_row_stride0_states_and_grads(cell, H, capfd):
    # (1, H) hx/cx with row stride 0 forward, and the stride-0 grad of hy.sum() backward
    torch.manual_seed(1)
    mode = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "gru": "GRU", "lstm": "LSTM"}[cell]
    kw = {"nonlinearity": "relu"} if cell == "rnn_relu" else {}
    ref, mine = pair(mode, 4, H, **kw)
    x = torch.randn(5, 1, 4)
    h0 = stride0_row(H)[None]  # (1, 1, H), strides (H, 0, 1)
    results = []
    for net in (ref, mine):
        state = (h0, stride0_row(H)[None] * 0 + h0) if cell == "lstm" else h0
        out, hn = net(x, state)
        hn = hn[0] if cell == "lstm" else hn
        hn.sum().backward()
        results.append(out)
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-6)
    assert_grads_close(ref, mine)
    assert_no_blas_error(capfd)


def test_functional_stride0_hx_float32(capfd):
    H = 8
    hx = stride0_row(H)
    assert hx.stride() == (0, 1)
    x = torch.randn(4, 1, 3)
    w_ih, w_hh = torch.randn(H, 3) * 0.3, torch.randn(H, H) * 0.3
    out, hy = rf.rnn_tanh(x, hx, w_ih, w_hh)
    ref_out, ref_hy = torch.rnn_tanh(x, hx[None].contiguous(), (w_ih, w_hh), False, 1, 0.0, False, False, False)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    assert_no_blas_error(capfd)


# ---- 3: saturation is exact, as torch's --------------------------------------------------------

def gate_values(x):
    """sigmoid(x) and tanh(x) as the float32 LSTM kernel computes them (workspace i and g columns
    with w_ih = 1, w_hh = 0, no bias), one value per batch row."""
    n = x.numel()
    input_ = x.reshape(1, n, 1)
    zeros = torch.zeros(n, 1)
    _, _, _, ws = ops.lstm_forward(input_, zeros, zeros, torch.ones(4, 1), torch.zeros(4, 1), None, None, False)
    return ws[0, :, 0], ws[0, :, 2]


def test_saturated_sigmoid_and_tanh_are_exact():
    x = torch.cat([torch.linspace(-120, 120, 24001), torch.tensor([-1e30, 1e30, -float("inf"), float("inf")])])
    sig, tanh = gate_values(x)
    ref_sig, ref_tanh = torch.sigmoid(x), torch.tanh(x)
    for mine, ref in ((sig, ref_sig), (tanh, ref_tanh)):
        for exact in (-1.0, 0.0, 1.0):
            at = ref == exact
            assert torch.equal(mine[at], ref[at]), f"{exact}: {x[at][mine[at] != ref[at]][:5]}"
        torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-38)
    assert torch.isnan(gate_values(torch.tensor([float("nan")]))[1]).all()


def test_tanh_saturates_at_torchs_float_exactly():
    """Every float32 in [8.9, 9.1] (the edge where float tanh reaches 1), both signs: exactly 1
    where torch's tanh is 1, below 1 where torch's is."""
    import numpy as np
    lo, hi = (np.frombuffer(np.float32(v).tobytes(), np.int32)[0] for v in (8.9, 9.1))
    x = torch.from_numpy(np.arange(lo, hi, dtype=np.int32).view(np.float32).copy())
    x = torch.cat([x, -x])
    _, tanh = gate_values(x)
    ref = torch.tanh(x)
    assert torch.equal(tanh.abs() == 1, ref.abs() == 1)
    torch.testing.assert_close(tanh, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_saturated_input_gives_torchs_zero_gradient(cell):
    # F.rnn_tanh with an input of 1e4: tanh is exactly 1, so dL/dw is exactly 0 (was 2.4e-3)
    mode = {"rnn_tanh": "RNN", "gru": "GRU", "lstm": "LSTM"}[cell]
    ref, mine = pair(mode, 2, 3)
    with torch.no_grad():
        for net in (ref, mine):
            for name, p in net.named_parameters():
                p.fill_(1.0)
    x = torch.full((3, 2, 2), 1e4)
    for net in (ref, mine):
        out, _ = net(x)
        out.sum().backward()
    for (name, p), q in zip(ref.named_parameters(), mine.parameters()):
        assert torch.equal(q.grad == 0, p.grad == 0), name
    assert_grads_close(ref, mine)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss_on", ["output", "both", "c_n"])
def test_lstm_huge_cell_state_stays_finite(dtype, loss_on):
    ref, mine = pair("LSTM", 3, 4, dtype=dtype)
    x = torch.randn(5, 2, 3, dtype=dtype)
    h0 = torch.zeros(1, 2, 4, dtype=dtype)
    c0 = torch.full((1, 2, 4), 1e30, dtype=dtype)
    outs = []
    for net in (ref, mine):
        out, (hn, cn) = net(x, (h0, c0))
        loss = {"output": out.sum(), "both": out.sum() + hn.sum(), "c_n": (cn * 1e-30).sum() + out.sum()}[loss_on]
        loss.backward()
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(ref.named_parameters(), mine.parameters()):
        finite = torch.isfinite(p.grad)
        assert torch.isfinite(q.grad[finite]).all(), f"{name}: {q.grad}"


# ---- 4: NaN / Inf in the padding of a lengths= batch -------------------------------------------

def layer_call(cell, x, h, c, w, lengths, proj=None):
    if cell == "lstm":
        return rf.lstm(x, h, c, *w, lengths=lengths, w_hr=proj)[:2]
    if cell == "gru_reset_before":
        return rf.gru(x, h, *w, lengths=lengths, reset_after=False)
    return getattr(rf, cell)(x, h, *w, lengths=lengths)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "gru_reset_before", "lstm", "lstm_proj"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_padding_nan_never_reaches_the_gradients(cell, dtype, bad):
    T, B, I, H, P = 5, 3, 4, 17, 3
    G = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "gru_reset_before": 3, "lstm": 4, "lstm_proj": 4}[cell]
    proj = cell == "lstm_proj"
    hw = P if proj else H
    g = torch.Generator().manual_seed(3)

    def r(*s):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * 0.3).to(dtype)

    lengths = torch.tensor([5, 2, 3])
    clean = r(T, B, I)
    for b, n in enumerate(lengths.tolist()):
        clean[n:, b] = 0
    dirty = clean.clone()
    for b, n in enumerate(lengths.tolist()):
        dirty[n:, b] = bad
    w0 = [r(G * H, I), r(G * H, hw), r(G * H), r(G * H)] + ([r(P, H)] if proj else [])
    h, c = r(B, hw), r(B, H)
    grads = []
    for x0 in (clean, dirty):
        x = x0.clone().requires_grad_()
        w = [t.clone().requires_grad_() for t in w0[:4]]
        w_hr = w0[4].clone().requires_grad_() if proj else None
        out, hy = layer_call("lstm" if proj else cell, x, h, c, w, lengths, w_hr)
        valid = torch.arange(T)[:, None] < lengths[None, :]
        (out[valid].sum() + hy.sum()).backward()
        params = w + ([w_hr] if proj else [])
        grads.append([p.grad for p in params] + [x.grad[valid]])
    for a, b in zip(*grads):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_padding_nan_module_matches_torch_packed():
    ref, mine = pair("LSTM", 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    x[3:, 1] = float("nan")
    lengths = torch.tensor([5, 3])
    for net in (ref, mine):
        out, (hn, cn) = net(pack_padded_sequence(x, lengths))
        (out.data.sum() + hn.sum()).backward()
    assert_grads_close(ref, mine)


# ---- 5: one meta tensor among CPU tensors ------------------------------------------------------

def raw_args(cell, T=3, B=2, I=4, H=5):
    G = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}[cell]
    a = dict(input=torch.randn(T, B, I), hx=torch.randn(B, H), w_ih=torch.randn(G * H, I),
             w_hh=torch.randn(G * H, H), b_ih=torch.randn(G * H), b_hh=torch.randn(G * H))
    if cell == "lstm":
        a["cx"] = torch.randn(B, H)
    return a


def call_forward(cell, a, lengths=None):
    if cell == "lstm":
        return ops.lstm_forward(a["input"], a["hx"], a["cx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], False,
                                lengths)
    if cell == "gru":
        return ops.gru_forward(a["input"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], False, True, lengths)
    return getattr(ops, f"{cell}_forward")(a["input"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], False,
                                           lengths)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_meta_tensor_among_cpu_tensors_forward(cell):
    a = raw_args(cell)
    for name in [k for k in a if k != "input"]:
        b = dict(a, **{name: a[name].to("meta")})
        with pytest.raises(RuntimeError, match=f"{name} is on meta but input is on cpu"):
            call_forward(cell, b)
    with pytest.raises(RuntimeError, match="lengths must be a CPU tensor"):
        call_forward(cell, a, torch.tensor([3, 2], device="meta"))
    # all-meta is a legitimate shape run
    out = call_forward(cell, {k: v.to("meta") for k, v in a.items()})
    assert all(t.device.type == "meta" for t in out)


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_meta_tensor_among_cpu_tensors_backward(cell):
    a = raw_args(cell)
    out = call_forward(cell, a)
    output, hy, ws = out[0], out[1], out[-1]
    lengths = torch.tensor([3, 2])
    go, gh = torch.ones_like(output), torch.ones_like(hy)
    common = (a["input"], a["hx"])
    for name in ("grad_output", "grad_hy", "w_hh", "workspace", "lengths"):
        args = dict(grad_output=go, grad_hy=gh, w_hh=a["w_hh"], workspace=ws, lengths=lengths)
        args[name] = args[name].to("meta")
        match = "lengths must be a CPU tensor" if name == "lengths" else f"{name} is on meta but input is on cpu"
        with pytest.raises(RuntimeError, match=match):
            if cell == "lstm":
                ops.lstm_backward(args["grad_output"], args["grad_hy"], torch.ones_like(a["cx"]), *common, a["cx"],
                                  a["w_ih"], args["w_hh"], output, args["workspace"], False,
                                  lengths=args["lengths"])
            else:
                extra = (True,) if cell == "gru" else ()
                getattr(ops, f"{cell}_backward")(args["grad_output"], args["grad_hy"], *common, a["w_ih"],
                                                 args["w_hh"], output, args["workspace"], False, *extra,
                                                 lengths=args["lengths"])


def test_meta_tensor_among_cpu_tensors_lstm_proj():
    T, B, I, H, P = 3, 2, 4, 5, 2
    args = [torch.randn(T, B, I), torch.randn(B, P), torch.randn(B, H), torch.randn(4 * H, I),
            torch.randn(4 * H, P), torch.randn(P, H), None, None, False]
    for k in (1, 2, 5):
        bad = list(args)
        bad[k] = bad[k].to("meta")
        with pytest.raises(RuntimeError, match="is on meta but input is on cpu"):
            ops.lstm_proj_forward(*bad)


# ---- 6: malformed PackedSequence ---------------------------------------------------------------

@pytest.mark.parametrize("sorted_indices, unsorted_indices, match", [
    ([0, 0, 1], [0, 2, 1], "permutation"),
    ([0, 1, 3], [0, 1, 2], "permutation"),
    ([0, -1, 2], [0, 1, 2], "permutation"),
    ([2, 0, 1], [2, 0, 1], "inverse"),
    ([0, 1], [0, 1], "shape"),
])
def test_packed_sequence_bad_indices_raise(sorted_indices, unsorted_indices, match):
    m = rnnfast.GRU(3, 4)
    p = PackedSequence(torch.randn(6, 3), torch.tensor([3, 2, 1]), torch.tensor(sorted_indices),
                       torch.tensor(unsorted_indices))
    with pytest.raises(ValueError, match=match):
        m(p)


@pytest.mark.parametrize("batch_sizes, rows, match", [
    ([1, 2], 3, "non-increasing"),
    ([2, 0], 2, "positive"),
    ([2, 1], 4, "rows"),
])
def test_packed_sequence_bad_batch_sizes_raise(batch_sizes, rows, match):
    p = PackedSequence(torch.randn(rows, 3), torch.tensor(batch_sizes))
    with pytest.raises(ValueError, match=match):
        rnnfast.LSTM(3, 4)(p)


def test_packed_sequence_float_batch_sizes_raise():
    p = PackedSequence(torch.randn(3, 3), torch.tensor([2.0, 1.0]))
    with pytest.raises(TypeError, match="int64"):
        rnnfast.RNN(3, 4)(p)


def test_valid_hand_made_packed_sequence_matches_torch():
    ref, mine = pair("GRU", 3, 4)
    p = PackedSequence(torch.randn(6, 3), torch.tensor([3, 2, 1]), torch.tensor([2, 0, 1]),
                       torch.tensor([1, 2, 0]))
    (a, ha), (b, hb) = ref(p), mine(p)
    torch.testing.assert_close(b.data, a.data, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hb, ha, rtol=1e-5, atol=1e-6)


# ---- 7: clipping: mixed devices, expanded grads ------------------------------------------------

def test_clip_meta_grad_among_cpu_grads_raises_as_torch():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 10.0)
    q = torch.nn.Parameter(torch.ones(3, device="meta"))
    q.grad = torch.ones(3, device="meta")
    with pytest.raises(NotImplementedError) as torch_err:
        torch.nn.utils.clip_grad_norm_([p, q], 1.0)
    with pytest.raises(type(torch_err.value)):
        rnnfast.clip_grad_norm_([p, q], 1.0)
    with pytest.raises(NotImplementedError):
        rnnfast.get_total_norm([p.grad, q.grad])
    assert torch.equal(p.grad, torch.full((3,), 10.0))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf"), float("-inf"), 0.0])
def test_total_norm_of_an_expanded_tensor_is_not_materialized(norm_type):
    # 2**40 float32 elements would be 4 TiB: the old code tried to copy them
    x = torch.full((1,), 3.0).expand(2 ** 40)
    n = 2.0 ** 40
    want = {2.0: 3 * n ** 0.5, 1.0: 3 * n, 3.0: 3 * n ** (1 / 3), math.inf: 3.0, -math.inf: 0.0, 0.0: 1.0}[norm_type]
    got = rnnfast.get_total_norm([x, torch.zeros(2)], norm_type)
    assert math.isclose(got.item(), want, rel_tol=1e-6)


def test_total_norm_of_partly_expanded_views_matches_torch():
    base = torch.randn(4, 1, 6, dtype=torch.float64)
    views = [base.expand(4, 3, 6), base.expand(4, 3, 6)[:, :, ::2], base.expand(4, 3, 6).transpose(0, 2),
             torch.randn(5, dtype=torch.float64)]
    for p in (2.0, 1.0, 2.5, float("inf")):
        torch.testing.assert_close(rnnfast.get_total_norm(views, p), torch.nn.utils.get_total_norm(views, p),
                                   rtol=1e-12, atol=0)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf"), 0.0])
def test_total_norm_of_a_strided_view_makes_no_dense_copy(norm_type):
    # x[:, ::2] is neither dense nor expanded: reduced in place (as torch's vector_norm does), no
    # copy of its 4 MB (the profiler sees every CPU allocation)
    from torch.profiler import ProfilerActivity, profile
    x = torch.randn(1000, 2000)[:, ::2]
    others = [torch.randn(3), torch.randn(40, dtype=torch.float64)]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        got = rnnfast.get_total_norm([x] + others, norm_type)
    largest = max([e.cpu_memory_usage for e in prof.events()] + [0])
    assert largest < x.numel() * x.element_size() // 8, largest
    want = torch.nn.utils.get_total_norm([x] + others, norm_type)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
