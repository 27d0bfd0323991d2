"""The CUDA path's host loop and per-unit kernel code, run on the CPU (no GPU needed).

tests/cuda_emulation.cpp compiles the one host loop (csrc/core/loop.h) with the CUDA backend
(csrc/cuda/backend.h: GEMM wiring, per-step pointer arithmetic, workspace layout, weight-gradient
GEMMs) together with csrc/kernels/step.cuh + csrc/core/cells.h (the kernels' per-unit math) for the
host, replacing each kernel
launch by a loop over the units. This checks everything of the CUDA ops except what only a GPU can
show (launch configuration, streams, races: tests/test_cuda_recurrent.py and
tests/sanitize_cuda.py on a GPU machine). The reference is a float64 PyTorch loop over time with
autograd, written here from the cell equations.
"""
import os

import pytest
import torch

from _cases import GATES, make_args  # tests/ is on sys.path under pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5
ATOL = 1e-6
CELLS = ["rnn_tanh", "rnn_relu", "gru", "gru_reset_before", "lstm"]


def cuda_include_dir():
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    try:
        from torch.utils.cpp_extension import CUDA_HOME

        candidates.append(CUDA_HOME)
    except ImportError:
        pass
    for home in candidates:
        if home and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
            return os.path.join(home, "include")
    return None


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    inc = cuda_include_dir()
    if inc is None:
        pytest.skip("cuda_runtime.h not found (CUDA toolkit headers are needed to compile the emulation)")
    from torch.utils.cpp_extension import load

    build = tmp_path_factory.mktemp("cuda_emulation")
    return load("rnnfast_cuda_emulation", [os.path.join(ROOT, "tests", "cuda_emulation.cpp")],
                extra_include_paths=[ROOT, inc], extra_cflags=["-O1", "-Wno-attributes"],
                build_directory=str(build), verbose=False)


def reference(cell, a, reverse):
    """(output, hy, cy or None, workspace) in float64, differentiable, straight from the equations."""
    x, h, c = a["input"], a["hx"], a.get("cx")
    w_ih, w_hh, b_ih, b_hh = a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"]
    T, H = x.shape[0], h.shape[1]
    outs, ws = [None] * T, [None] * T
    for s in range(T):
        t = T - 1 - s if reverse else s
        gx = x[t] @ w_ih.t() + (b_ih if b_ih is not None else 0)
        gh = h @ w_hh.t() + (b_hh if b_hh is not None else 0)
        if cell in ("rnn_tanh", "rnn_relu"):
            h = torch.tanh(gx + gh) if cell == "rnn_tanh" else torch.relu(gx + gh)
        elif cell == "lstm":
            i, f, gg, o = (gx + gh).chunk(4, 1)
            i, f, gg, o = i.sigmoid(), f.sigmoid(), gg.tanh(), o.sigmoid()
            c = f * c + i * gg
            h = o * c.tanh()
            ws[t] = torch.cat([i, f, gg, o, c], 1)
        else:
            xr, xz, xn = gx.chunk(3, 1)
            hr, hz, hn = gh.chunk(3, 1)
            r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
            if cell == "gru":
                n = torch.tanh(xn + r * hn)
                saved = hn
            else:
                saved = r * h
                b_hn = b_hh[2 * H:] if b_hh is not None else 0
                n = torch.tanh(xn + saved @ w_hh[2 * H:].t() + b_hn)
            ws[t] = torch.cat([r, z, n, saved], 1)
            h = (1 - z) * n + z * h
        outs[t] = h
    wsp = torch.stack(ws) if ws[0] is not None else torch.empty(0, dtype=x.dtype)
    return torch.stack(outs), h, c, wsp


def run_forward(emu, cell, a, reverse, lengths=None, workspace=True):
    if cell == "lstm":
        return tuple(emu.lstm_forward(a["input"], a["hx"], a["cx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                                      reverse, lengths, workspace))
    if cell.startswith("gru"):
        out, hy, ws = emu.gru_forward(a["input"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], reverse,
                                      cell == "gru", lengths, workspace)
    else:
        out, hy, ws = getattr(emu, f"{cell}_forward")(a["input"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"],
                                                      a["b_hh"], reverse, lengths, workspace)
    return out, hy, None, ws


def run_backward(emu, cell, a, fwd, grads, reverse, input_grad=True, lengths=None, hx_grad=True):
    out, hy, cy, ws = fwd
    g_out, g_hy, g_cy = grads
    if cell == "lstm":
        res = emu.lstm_backward(g_out, g_hy, g_cy, a["input"], a["hx"], a["cx"], a["w_ih"], a["w_hh"], out, ws,
                                reverse, input_grad, lengths, hx_grad)
        return dict(zip(["input", "hx", "cx", "w_ih", "w_hh", "b_ih", "b_hh"], res))
    if cell.startswith("gru"):
        res = emu.gru_backward(g_out, g_hy, a["input"], a["hx"], a["w_ih"], a["w_hh"], out, ws, reverse,
                               cell == "gru", input_grad, lengths, hx_grad)
    else:
        res = getattr(emu, f"{cell}_backward")(g_out, g_hy, a["input"], a["hx"], a["w_ih"], a["w_hh"], out, ws,
                                               reverse, input_grad, lengths, hx_grad)
    return dict(zip(["input", "hx", "w_ih", "w_hh", "b_ih", "b_hh"], res))


def assert_rel(out, ref, name):
    out, ref = out.detach().double(), ref.detach().double()
    assert out.shape == ref.shape, (name, out.shape, ref.shape)
    assert torch.isfinite(out).all(), name
    # ‖out − ref‖ < TOL·‖ref‖, with an RMS floor of ATOL per element: a sum that cancels (a bias
    # gradient with H = 1) has a float32 rounding error far above TOL times its tiny value.
    diff, denom = (out - ref).norm().item(), ref.norm().item()
    bound = TOL * denom + ATOL * out.numel() ** 0.5
    assert diff <= bound, f"{name}: ‖out−ref‖ = {diff:.3e} > {bound:.3e} (‖ref‖ = {denom:.3e})"


def check(emu, cell, T, B, I, H, reverse, bias=True, seed=0):
    a64 = make_args(cell, T, B, I, H, bias=bias, seed=seed)
    leaves = {k: v.clone().requires_grad_() for k, v in a64.items() if v is not None}
    ref_args = dict(a64, **leaves)
    ref_out, ref_hy, ref_cy, ref_ws = reference(cell, ref_args, reverse)

    a32 = {k: (v.float() if v is not None else None) for k, v in a64.items()}
    out, hy, cy, ws = run_forward(emu, cell, a32, reverse)
    assert out.dtype == torch.float32
    assert_rel(out, ref_out, f"{cell} output")
    assert_rel(hy, ref_hy, f"{cell} hy")
    if cell == "lstm":
        assert_rel(cy, ref_cy, "lstm cy")
    assert ws.shape == ref_ws.shape, (ws.shape, ref_ws.shape)
    if ws.numel():
        assert_rel(ws, ref_ws, f"{cell} workspace")

    g = torch.Generator().manual_seed(seed + 1)
    g_out = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    g_hy = torch.randn(B, H, generator=g, dtype=torch.float64)
    g_cy = torch.randn(B, H, generator=g, dtype=torch.float64) if cell == "lstm" else None
    loss = (ref_out * g_out).sum() + (ref_hy * g_hy).sum()
    if cell == "lstm":
        loss = loss + (ref_cy * g_cy).sum()
    names = list(leaves)
    ref_grads = dict(zip(names, torch.autograd.grad(loss, [leaves[k] for k in names])))

    grads32 = (g_out.float(), g_hy.float(), g_cy.float() if g_cy is not None else None)
    got = run_backward(emu, cell, a32, (out, hy, cy, ws), grads32, reverse)
    for name, ref in ref_grads.items():
        assert_rel(got[name], ref, f"{cell} grad_{name}")
    if not bias:  # bias grads are always computed: they are those of zero biases
        G = GATES[cell]
        assert got["b_ih"].shape == (G * H,) and got["b_hh"].shape == (G * H,)


SHAPES = [(1, 1, 1, 1), (5, 3, 4, 7), (9, 2, 3, 16), (4, 5, 6, 1)]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-I{}-H{}".format(*s))
@pytest.mark.parametrize("cell", CELLS)
def test_emulated_cuda_op_matches_reference(emu, cell, shape, reverse):
    check(emu, cell, *shape, reverse=reverse, seed=sum(shape))


@pytest.mark.parametrize("cell", CELLS)
def test_emulated_cuda_op_without_biases(emu, cell):
    check(emu, cell, 6, 2, 3, 5, reverse=True, bias=False, seed=3)


def test_emulated_cuda_op_rejects_float64(emu):
    a = {k: v for k, v in make_args("lstm", 2, 2, 2, 2).items()}
    with pytest.raises(TypeError, match="float32 on CUDA"):
        run_forward(emu, "lstm", a, False)


def test_emulated_cuda_op_rejects_bad_shapes(emu):
    a = {k: (v.float() if v is not None else None) for k, v in make_args("gru", 3, 2, 4, 5).items()}
    a["b_hh"] = a["b_hh"][:-1]
    with pytest.raises(RuntimeError, match="b_hh"):
        run_forward(emu, "gru", a, False)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("flag,grad,seed", [("input_grad", "input", 11), ("hx_grad", "hx", 13)],
                         ids=["input_grad", "hx_grad"])
def test_emulated_cuda_op_skipped_grad(emu, cell, flag, grad, seed):
    # input_grad=False / hx_grad=False: grad_input / grad_hx is zeros (its GEMM skipped), every other
    # gradient is bit-identical to the full call
    a = {k: (v.float() if v is not None else None) for k, v in make_args(cell, 5, 3, 4, 6, seed=seed).items()}
    fwd = run_forward(emu, cell, a, False)
    g = torch.Generator().manual_seed(seed + 1)
    grads = (torch.randn(5, 3, 6, generator=g), torch.randn(3, 6, generator=g),
             torch.randn(3, 6, generator=g) if cell == "lstm" else None)
    full = run_backward(emu, cell, a, fwd, grads, False)
    skip = run_backward(emu, cell, a, fwd, grads, False, **{flag: False})
    assert full[grad].abs().sum() > 0
    assert torch.equal(skip[grad], torch.zeros_like(a[grad]))
    for name in full:
        if name != grad:
            assert torch.equal(skip[name], full[name]), name


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,ragged", [(1, False), (5, False), (5, True)], ids=["T1", "T5", "T5-ragged"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_emulated_cuda_op_without_workspace(emu, cell, T, ragged, reverse):
    # workspace=False (inference): the same output and states from a two-row rotating workspace, and
    # an empty workspace back
    a = {k: (v.float() if v is not None else None) for k, v in make_args(cell, T, 3, 4, 6, seed=17).items()}
    lengths = torch.tensor([T, max(T - 3, 1), 2 if T > 1 else 1]) if ragged else None
    full = run_forward(emu, cell, a, reverse, lengths)
    lean = run_forward(emu, cell, a, reverse, lengths, workspace=False)
    assert lean[-1].numel() == 0
    for x, y in zip(full[:-1], lean[:-1]):
        assert (x is None and y is None) or torch.equal(x, y)


def _cpu_op(cell, a, reverse, lengths, grads):
    """The CPU op (tested against each sequence alone in tests/test_ops_cpu.py), float64, as dicts."""
    import rnnfast  # noqa: F401  (registers torch.ops.rnnfast)

    ops = torch.ops.rnnfast
    d = {k: (v.double() if v is not None else None) for k, v in a.items()}
    g = [x.double() if x is not None else None for x in grads]
    if cell == "lstm":
        out, hy, cy, ws = ops.lstm_forward(d["input"], d["hx"], d["cx"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"],
                                           reverse, lengths)
        res = ops.lstm_backward(*g, d["input"], d["hx"], d["cx"], d["w_ih"], d["w_hh"], out, ws, reverse,
                                lengths=lengths)
        names = ["input", "hx", "cx", "w_ih", "w_hh", "b_ih", "b_hh"]
        return (out, hy, cy, ws), dict(zip(names, res))
    name = "gru" if cell.startswith("gru") else cell
    extra = (cell == "gru",) if name == "gru" else ()
    fwd, bwd = getattr(ops, name + "_forward"), getattr(ops, name + "_backward")
    out, hy, ws = fwd(d["input"], d["hx"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], reverse, *extra, lengths)
    res = bwd(g[0], g[1], d["input"], d["hx"], d["w_ih"], d["w_hh"], out, ws, reverse, *extra, lengths=lengths)
    return (out, hy, None, ws), dict(zip(["input", "hx", "w_ih", "w_hh", "b_ih", "b_hh"], res))


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell", CELLS)
def test_emulated_cuda_op_lengths(emu, cell, reverse):
    # variable-length batch: the step kernels' frozen rows and the glue's accumulating dh GEMM,
    # against the CPU op in float64; every output position gets a gradient (frozen ones too)
    T, B, I, H = 6, 4, 3, 5
    lengths = torch.tensor([6, 2, 0, 4])
    a = {k: (v.float() if v is not None else None) for k, v in make_args(cell, T, B, I, H, seed=21).items()}
    g = torch.Generator().manual_seed(22)
    grads = (torch.randn(T, B, H, generator=g), torch.randn(B, H, generator=g),
             torch.randn(B, H, generator=g) if cell == "lstm" else None)
    fwd = run_forward(emu, cell, a, reverse, lengths)
    got = run_backward(emu, cell, a, fwd, grads, reverse, lengths=lengths)
    ref_fwd, ref = _cpu_op(cell, a, reverse, lengths, grads)
    for k, (x, y) in enumerate(zip(fwd, ref_fwd)):
        if x is not None and x.numel():
            assert_rel(x, y, f"{cell} forward result {k}")
    for name in ref:
        assert_rel(got[name], ref[name], f"{cell} grad_{name}")
    assert not got["input"][:, 2].abs().sum(), "a zero-length sequence's inputs get no gradient"


@pytest.mark.parametrize("cell", CELLS)
def test_emulated_cuda_op_nan_in_padding(emu, cell):
    # whatever lies in the padding (t >= lengths[b]) must not reach any gradient: the same call with
    # NaN/Inf written there gives the same (finite) results as with zeros there
    T, B, I, H = 5, 3, 3, 4
    lengths = torch.tensor([5, 2, 0])
    a = {k: (v.float() if v is not None else None) for k, v in make_args(cell, T, B, I, H, seed=41).items()}
    g = torch.Generator().manual_seed(42)
    grads = (torch.randn(T, B, H, generator=g), torch.randn(B, H, generator=g),
             torch.randn(B, H, generator=g) if cell == "lstm" else None)
    results = []
    for fill in (0.0, float("nan"), float("inf")):
        x = a["input"].clone()
        x[2:, 1] = fill
        x[:, 2] = fill
        b = dict(a, input=x)
        fwd = run_forward(emu, cell, b, False, lengths)
        results.append((fwd[1], run_backward(emu, cell, b, fwd, grads, False, lengths=lengths)))
    for hy, got in results[1:]:
        assert torch.equal(hy, results[0][0])
        for name, ref in results[0][1].items():
            if ref is not None:
                assert torch.isfinite(got[name]).all(), f"{cell} grad_{name} not finite"
                assert torch.equal(got[name], ref), f"{cell} grad_{name} depends on the padding"


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_emulated_cuda_lstm_proj(emu, reverse, ragged):
    # the CUDA projection loop (LSTM step kernel + m W_hrᵀ per step, masked copies for frozen rows)
    # against the CPU lstm_proj op in float64; every output position gets a gradient
    import rnnfast  # noqa: F401  (registers torch.ops.rnnfast)

    T, B, I, H, P = 6, 4, 3, 5, 2
    g = torch.Generator().manual_seed(31)
    r = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale  # noqa: E731
    args = [r(T, B, I), r(B, P, scale=0.5), r(B, H, scale=0.5), r(4 * H, I, scale=0.5), r(4 * H, P, scale=0.5),
            r(P, H, scale=0.5), r(4 * H, scale=0.1), r(4 * H, scale=0.1)]
    lengths = torch.tensor([6, 2, 0, 4]) if ragged else None
    grads = [r(T, B, P), r(B, P), r(B, H)]
    fwd = emu.lstm_proj_forward(*args, reverse, lengths, True)
    got = emu.lstm_proj_backward(*grads, *args[:6], fwd[0], fwd[3], reverse, True, lengths, True)
    d = [a.double() for a in args]
    ops = torch.ops.rnnfast
    ref_fwd = ops.lstm_proj_forward(*d, reverse, lengths)
    ref = ops.lstm_proj_backward(*[x.double() for x in grads], *d[:6], ref_fwd[0], ref_fwd[3], reverse,
                                 lengths=lengths)
    for k, (x, y) in enumerate(zip(fwd, ref_fwd)):
        assert_rel(x, y, f"lstm_proj forward result {k}")
    names = ["input", "hx", "cx", "w_ih", "w_hh", "w_hr", "b_ih", "b_hh"]
    for name, x, y in zip(names, got, ref):
        assert_rel(x, y, f"lstm_proj grad_{name}")


def test_relu_backward_passes_nan_output_as_torch_and_cpu(emu):
    """relu' at a NaN output lets the gradient through (torch's threshold_backward: grad where not
    (y <= 0)), on the CUDA path as on the CPU: the cell math is one definition (csrc/core/cells.h).
    The device kernel used to write 0 there (h > 0 ? dh : 0)."""
    torch.manual_seed(0)
    T, B, I, H = 1, 1, 2, 3
    x, hx = torch.randn(T, B, I), torch.randn(B, H)
    w_ih, w_hh = torch.randn(H, I), torch.randn(H, H)
    out = torch.tensor([[[0.5, float("nan"), -0.25]]])
    ws = torch.empty(0)
    g_out, g_hy = torch.ones(T, B, H), torch.zeros(B, H)
    args = (g_out, g_hy, x, hx, w_ih, w_hh, out, ws, False, True, None, True)
    import rnnfast  # noqa: F401  (registers torch.ops.rnnfast)

    emulated = emu.rnn_relu_backward(*args)
    cpu = torch.ops.rnnfast.rnn_relu_backward(*args)
    assert emulated[4].tolist() == [1.0, 1.0, 0.0]  # grad_b_ih = dG: relu' = 1, 1 (NaN), 0
    for name, e, c in zip(["input", "hx", "w_ih", "w_hh", "b_ih", "b_hh"], emulated, cpu):
        torch.testing.assert_close(e, c, equal_nan=True, msg=name)


# ---- seams of the one host loop (csrc/core/loop.h): the same loop on the CPU backend and on the
# CUDA backend (emulated), the projection hook, and variable lengths through both ----------------

def _run_on(backend, emu, cell, a, reverse, lengths, grads):
    """(forward results, grads dict) of one cell's op pair on 'cpu' (float64) or 'emulated' (float32)."""
    if backend == "cpu":
        return _cpu_op(cell, a, reverse, lengths, grads)
    a32 = {k: (v.float() if v is not None else None) for k, v in a.items()}
    g32 = [x.float() if x is not None else None for x in grads]
    fwd = run_forward(emu, cell, a32, reverse, lengths)
    return fwd, run_backward(emu, cell, a32, fwd, g32, reverse, lengths=lengths)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("backend", ["cpu", "emulated"])
@pytest.mark.parametrize("cell", CELLS)
def test_ragged_batch_is_each_sequence_alone(emu, cell, backend, reverse):
    # a variable-length batch through the loop equals each sequence run alone at its own length:
    # output rows, hy (cy), input grads; weight grads are the sum over the sequences. The padding's
    # grad_output is zero, so nothing flows through frozen positions.
    T, B, I, H = 5, 4, 3, 4
    lens = [5, 2, 0, 3]
    a = make_args(cell, T, B, I, H, seed=51)
    g = torch.Generator().manual_seed(52)
    mask = (torch.arange(T).unsqueeze(1) < torch.tensor(lens).unsqueeze(0)).unsqueeze(-1).double()
    grads = (torch.randn(T, B, H, generator=g, dtype=torch.float64) * mask,
             torch.randn(B, H, generator=g, dtype=torch.float64),
             torch.randn(B, H, generator=g, dtype=torch.float64) if cell == "lstm" else None)
    (out, hy, cy, _), got = _run_on(backend, emu, cell, a, reverse, torch.tensor(lens), grads)
    weight_names = [n for n in ("w_ih", "w_hh", "b_ih", "b_hh") if got.get(n) is not None]
    summed = {n: torch.zeros_like(got[n]) for n in weight_names}
    for b, L in enumerate(lens):
        if L == 0:  # nothing to run: the state passes through, its grads straight back
            assert_rel(hy[b], a["hx"][b], f"{cell} hy of an empty sequence")
            assert_rel(got["hx"][b], grads[1][b], f"{cell} grad_hx of an empty sequence")
            assert not got["input"][:, b].abs().sum()
            continue
        one = dict(a, input=a["input"][:L, b:b + 1], hx=a["hx"][b:b + 1])
        if cell == "lstm":
            one["cx"] = a["cx"][b:b + 1]
        g1 = (grads[0][:L, b:b + 1], grads[1][b:b + 1], grads[2][b:b + 1] if grads[2] is not None else None)
        (o1, h1, c1, _), r1 = _run_on(backend, emu, cell, one, reverse, None, g1)
        assert_rel(out[:L, b], o1[:, 0], f"{cell} output of sequence {b}")
        assert_rel(hy[b], h1[0], f"{cell} hy of sequence {b}")
        if cell == "lstm":
            assert_rel(cy[b], c1[0], f"lstm cy of sequence {b}")
        assert_rel(got["input"][:L, b], r1["input"][:, 0], f"{cell} grad_input of sequence {b}")
        assert_rel(got["hx"][b], r1["hx"][0], f"{cell} grad_hx of sequence {b}")
        assert not got["input"][L:, b].abs().sum(), "padding positions get no input gradient"
        for n in weight_names:
            summed[n] += r1[n].to(summed[n].dtype)
    for n in weight_names:
        assert_rel(got[n], summed[n], f"{cell} grad_{n} = sum over the sequences")


def _lstm_proj_args(T, B, I, H, P, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: torch.randn(*s, generator=g, dtype=torch.float64) * scale  # noqa: E731
    return [r(T, B, I), r(B, P, scale=0.5), r(B, H, scale=0.5), r(4 * H, I, scale=0.5), r(4 * H, P, scale=0.5),
            r(P, H, scale=0.5), r(4 * H, scale=0.1), r(4 * H, scale=0.1)], [r(T, B, P), r(B, P), r(B, H)]


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
def test_projection_hook_cpu_emulated_and_torch_agree(emu, ragged):
    # the projection hook on both backends against torch.nn.LSTM(proj_size) itself (float64,
    # autograd; a ragged batch through pack_padded_sequence, the loss ignoring padded positions)
    import rnnfast  # noqa: F401  (registers torch.ops.rnnfast)
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    T, B, I, H, P = 6, 4, 3, 5, 2
    args, grads = _lstm_proj_args(T, B, I, H, P, seed=61)
    lens = [6, 2, 1, 4] if ragged else [T] * B
    valid = (torch.arange(T).unsqueeze(1) < torch.tensor(lens).unsqueeze(0)).unsqueeze(-1).double()
    grads[0] = grads[0] * valid
    x, hx, cx, w_ih, w_hh, w_hr, b_ih, b_hh = args

    ref = torch.nn.LSTM(I, H, proj_size=P).double()
    with torch.no_grad():
        for name, v in [("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh), ("weight_hr_l0", w_hr),
                        ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)]:
            getattr(ref, name).copy_(v)
    xr = x.clone().requires_grad_()
    h0, c0 = hx.clone().unsqueeze(0).requires_grad_(), cx.clone().unsqueeze(0).requires_grad_()
    packed = pack_padded_sequence(xr, torch.tensor(lens), enforce_sorted=False)
    out_p, (hn, cn) = ref(packed, (h0, c0))
    out_ref = pad_packed_sequence(out_p, total_length=T)[0]
    loss = (out_ref * grads[0]).sum() + (hn[0] * grads[1]).sum() + (cn[0] * grads[2]).sum()
    loss.backward()
    want = {"input": xr.grad, "hx": h0.grad[0], "cx": c0.grad[0], "w_ih": ref.weight_ih_l0.grad,
            "w_hh": ref.weight_hh_l0.grad, "w_hr": ref.weight_hr_l0.grad, "b_ih": ref.bias_ih_l0.grad,
            "b_hh": ref.bias_hh_l0.grad}

    lengths = torch.tensor(lens) if ragged else None
    names = ["input", "hx", "cx", "w_ih", "w_hh", "w_hr", "b_ih", "b_hh"]
    ops = torch.ops.rnnfast
    for label, fwd_op, bwd_op, dtype in [
        ("cpu", ops.lstm_proj_forward, lambda *a, **k: ops.lstm_proj_backward(*a, **k), torch.float64),
        ("emulated", emu.lstm_proj_forward, lambda *a, lengths=None, **k: emu.lstm_proj_backward(*a, True, lengths, True),
         torch.float32),
    ]:
        a = [v.to(dtype) for v in args]
        gg = [v.to(dtype) for v in grads]
        out, hy, cy, ws = fwd_op(*a, False, lengths, True)
        assert ws.shape == (T, B, 6 * H)
        assert_rel(out * valid.to(dtype), out_ref.detach(), f"{label} output")
        assert_rel(hy, hn[0].detach(), f"{label} hy")
        assert_rel(cy, cn[0].detach(), f"{label} cy")
        # the hook's m slot: m = o tanh(c) from the cell's own slots, and output = m W_hrᵀ
        i, f, gate, o, c, m = ws.double().split(H, dim=2)
        frozen = (1 - valid).bool().expand(T, B, H)
        assert_rel(m.masked_fill(frozen, 0), (o * c.tanh()).masked_fill(frozen, 0), f"{label} m slot")
        assert_rel((m @ w_hr.t()) * valid, out.double() * valid, f"{label} output = m W_hrᵀ")
        res = bwd_op(*gg, *a[:6], out, ws, False, lengths=lengths)
        for name, got in zip(names, res):
            assert_rel(got, want[name], f"{label} grad_{name}")
