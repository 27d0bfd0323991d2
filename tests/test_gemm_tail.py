"""gemm_small with K not a multiple of 16 (csrc/cpu/blas.h SmallTail, small_tail_max_rows): the last
K % 16 columns take one more 16-lane step of every accumulator (W's read in place, masked; A's
copied, zero-padded). K below 16 runs on a padded copy of W (small_k_padded) for 1-2 rows. Input or hidden sizes from 16 that are not multiples of 16, such as 28 (a one-hot
vocabulary), 50, 100, 200, 300, take it for a few rows (2 rows below K = 48, 4 from 48, 8 from 96, 16 from 256); more rows go to BLAS
or the batch-lane kernel as before.

Checked: each row of a batch is bit for bit its batch-of-one call where every GEMM of the call
stays on gemm_small (the order of every sum depends on K only), outputs and gradients match
torch.nn in float32 (and a float64 reference), on both sides of the row limits, at 1 and 2
threads, cells included; an inf or NaN in W's tail columns or in the input's reaches the outputs
as in torch.nn."""
import pytest
import torch
from test_batch_lanes import lanes as batch_lanes  # the AVX-512 batch-lane switch, set for a block
from test_batch_lanes import HAS_LANES, HAS_LANES_AVX512, threads

import rnnfast
import test_small_sizes as small_sizes

MODULES = list(small_sizes.MODULES)  # rnn_tanh, rnn_relu, gru, lstm


def tail_max_rows(K):
    """blas.h small_tail_max_rows, restated."""
    return 16 if K >= 256 else 8 if K >= 96 else 4 if K >= 48 else 2


@pytest.mark.parametrize("lanes", [False, True], ids=["lanes-off", "lanes-on"])
@pytest.mark.parametrize("kind", MODULES)
@pytest.mark.parametrize("H", [1, 3, 15, 17, 20, 28, 50, 100, 200, 300])
def test_rows_are_their_batch_of_one_bit_for_bit(kind, H, lanes):
    """Shapes whose every GEMM (the input projection's T*B rows, each step's B rows) stays within
    gemm_small's rows for this K: the batch's rows equal their own calls exactly, and torch.nn.
    K below 16 (H = 1, 3, 15): gemm_small on the padded copy of W, up to 2 rows."""
    ref, got = small_sizes.pair(kind, H, H)
    ref64 = small_sizes.pair(kind, H, H, torch.float64)[0]
    ref64.load_state_dict(got.state_dict())
    # 16 rows and more (8 on AVX2, blas.h kLanesMinRowsAvx2): the batch-lane kernel where it is on
    limit = min(tail_max_rows(H), 7 if lanes and HAS_LANES and not HAS_LANES_AVX512 else 15)
    shapes = {(1, 1), (1, 2), (2, 1), (1, limit), (limit // 2 or 1, 2 if limit >= 2 else 1)}
    with batch_lanes(lanes), torch.inference_mode():
        for T, B in sorted(shapes):
            if T * B > limit:
                continue
            x = torch.randn(T, B, H)
            out, _ = got(x)
            rows = torch.cat([got(x[:, b:b + 1])[0] for b in range(B)], dim=1)
            assert torch.equal(out, rows), (T, B)
            torch.testing.assert_close(out, ref(x)[0], rtol=1e-5, atol=2e-6)
            torch.testing.assert_close(out.double(), ref64(x.double())[0], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("kind", MODULES)
@pytest.mark.parametrize("I, H", [(28, 100), (10, 50), (200, 200), (300, 17), (50, 300), (13, 3)])
def test_forward_and_backward_match_torch_nn_across_the_row_limits(kind, I, H, nthreads):
    """Batches below, at and above gemm_small's rows for K = I and K = H, short sequences (the
    input projection unpacked) and long ones (W_hh may pack): outputs, final states and every
    gradient against torch.nn."""
    ref, got = small_sizes.pair(kind, I, H)
    limits = {tail_max_rows(I), tail_max_rows(H)}
    batches = sorted({1, 2} | {m for k in limits for m in (k, k + 1)})
    with threads(nthreads):
        for B in batches:
            for T in (1, 3, 40):
                x = torch.randn(T, B, I)
                xg, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
                out, st = got(xg)
                rout, rst = ref(xr)
                # atol 5e-6: on AVX2 the input projection of more than 64 rows runs the batch-lane
                # kernel (blas.h gemm_lanes_blocked), one FMA chain over K = I = 300 per output, where
                # MKL and oneDNN sum in blocks: 3.7e-6 apart at one of 11,560 outputs (I = 300, H = 17)
                torch.testing.assert_close(out, rout, rtol=1e-5, atol=5e-6)
                h, rh = (st[0], rst[0]) if kind == "lstm" else (st, rst)
                torch.testing.assert_close(h, rh, rtol=1e-5, atol=5e-6)
                got.zero_grad(), ref.zero_grad()
                (out.sin().sum() + h.sum()).backward()
                (rout.sin().sum() + rh.sum()).backward()
                torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-4, atol=1e-5)
                # atol: a weight gradient sums T * B = up to 680 products (the same cases differ by
                # 2.3e-5 before gemm_small took K not a multiple of 16: float32 summation order)
                for (n, p), q in zip(got.named_parameters(), ref.parameters()):
                    torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=5e-5, msg=lambda m: f"{n} B={B} T={T}: {m}")


@pytest.mark.parametrize("cell", ["RNNCell", "GRUCell", "LSTMCell"])
@pytest.mark.parametrize("I, H, B", [(28, 100, 1), (28, 100, 8), (10, 10, 2), (300, 200, 3), (50, 60, 4)])
def test_cells_in_a_loop_match_torch_nn(cell, I, H, B):
    torch.manual_seed(0)
    got = getattr(rnnfast, cell)(I, H)
    ref = getattr(torch.nn, cell)(I, H)
    ref.load_state_dict(got.state_dict())
    xs = torch.randn(6, B, I)
    outs = []
    for m in (got, ref):
        state, total = None, 0
        for t in range(6):
            state = m(xs[t], state)
            h = state[0] if isinstance(state, tuple) else state
            total = total + (h * h).sum()
        total.backward()
        outs.append((h.detach(), [p.grad for p in m.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=2e-6)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("where", ["w_hh", "w_ih", "input", "both signs"])
@pytest.mark.parametrize("K", [20, 5])
@pytest.mark.parametrize("kind", ["rnn_relu", "lstm"])
def test_nonfinite_values_in_the_tail_columns_propagate_as_in_torch_nn(kind, where, value, K):
    """The tail step reads W's last 16 columns in place and clears the lanes before the tail
    bitwise: an inf or NaN in the last K % 16 columns, or just before them, gives what torch.nn
    gives (inf through ReLU, NaN everywhere; inf - inf = NaN), and the cleared lanes add nothing.
    K = 20: 16 columns, then a tail of 4; W's columns 4..15 are read twice, masked the second time.
    K = 5: the padded copy of W (zeros, then the 5 columns), masked the same way."""
    I = H = K
    c = K - 16 if K >= 16 else 0  # first column of the 16-wide window before the tail: K = 20 -> 4
    ref, got = small_sizes.pair(kind, I, H)
    x = torch.randn(1, 2, I).abs()  # positive: inf * x keeps its sign, +inf and -inf products cancel to NaN
    with torch.no_grad():
        for m in (got, ref):
            if where == "w_hh":
                m.weight_hh_l0[3, K - 2] = value  # a tail column
                m.weight_hh_l0[4, c + 1] = value  # a column the tail's read covers (masked), or the second
            elif where == "w_ih":
                m.weight_ih_l0[1, K - 3] = value
                m.weight_ih_l0[2, c + 2] = value
            elif where == "both signs":
                m.weight_ih_l0[4, K - 1] = value
                m.weight_ih_l0[4, c + 3] = -value
        if where == "input":
            x[0, 1, K - 1] = value
    h0 = torch.randn(1, 2, H).abs()  # positive: inf * h keeps its sign through a ReLU
    args = (h0, torch.randn(1, 2, H)) if kind == "lstm" else h0
    with torch.inference_mode():
        out, _ = got(x, args)
        rout, _ = ref(x, args)
    if value != value or where == "both signs" or (kind == "rnn_relu" and (value > 0 or where == "input")):
        assert not torch.isfinite(rout).all()  # the case is not vacuous
    torch.testing.assert_close(out, rout, rtol=1e-5, atol=2e-6, equal_nan=True)
