"""float64 activations (csrc/cpu/fastmath.h exp_approx_d, tanh_approx_d): the CPU row passes run a
vectorizable polynomial exp and tanh in double too (glibc's are scalar calls, which made the
float64 LSTM 0.53x torch.nn at H = 64, B = 64). Read through the ops themselves, each value one
row of a batch: an RNN(1, 1) with w_ih = 1 and nothing else outputs tanh(x); an LSTM(1, 1) at
T = 1 whose g and o gates saturate to exactly 1 and whose c0 is 0 returns c_n = sigmoid(x). Both
against a 50-digit reference (mpmath, which torch's sympy brings) within 3 ulp (measured on the
AVX-512 box: 2.0 for both, torch's own float64 tanh 1.0 and sigmoid 2.0; the bound leaves one ulp
for another ISA clone's rounding), and against torch's own float64 tanh / sigmoid: the same
saturation, NaN and inf."""
import math

import mpmath
import numpy as np
import pytest
import torch

import rnnfast

mpmath.mp.dps = 50


def sample():
    """Values across the whole range: dense near 0 and the branch point 0.55, both sides of
    tanh's saturation at 19.0615 and sigmoid's at +-37 / -708, magnitudes from 1e-300 up."""
    rng = np.random.default_rng(0)
    parts = [np.linspace(-40, 40, 8001), rng.uniform(-1, 1, 4000), rng.uniform(0.5, 0.6, 1000),
             rng.uniform(18.9, 19.2, 1000), rng.uniform(-750, 750, 2000),
             np.geomspace(1e-300, 1e3, 3000), [0.0, 0.55, math.nextafter(0.55, 0), 19.061547465398498,
                                               math.nextafter(19.061547465398498, 0), 708.0, 709.78, 709.79]]
    v = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])
    return torch.from_numpy(np.concatenate([v, -v]))


def through_rnn_tanh(x):
    m = rnnfast.RNN(1, 1).double()
    with torch.no_grad():
        m.weight_ih_l0.fill_(1.0)
        m.weight_hh_l0.zero_()
        m.bias_ih_l0.zero_()
        m.bias_hh_l0.zero_()
        out, _ = m(x.view(1, -1, 1))
    return out.view(-1)


def through_lstm_sigmoid(x, lstm=rnnfast.LSTM):
    m = lstm(1, 1).double()
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.tensor([[1.0], [0.0], [0.0], [0.0]]))  # i = sigmoid(x)
        m.weight_hh_l0.zero_()
        m.bias_ih_l0.copy_(torch.tensor([0.0, 0.0, 40.0, 40.0]))  # g = tanh(40) = 1, o = sigmoid(40) = 1
        m.bias_hh_l0.zero_()
        _, (_, c) = m(x.view(1, -1, 1))  # c = f * 0 + i * g
    return c.view(-1)


def ulps(got, want):
    """|got - want| in units of the last place of want (the spacing of doubles at want)."""
    got, want = got.numpy(), want.numpy()
    spacing = np.spacing(np.abs(want))
    return np.abs(got - want) / spacing


def exact(fn, xs):
    return torch.tensor([float(fn(mpmath.mpf(float(v)))) for v in xs], dtype=torch.float64)


def test_sample_covers_what_it_names():
    x = sample()
    assert (x.abs() > 19.1).any() and (x.abs() < 1e-200).any() and (x < -745).any()


def test_tanh_within_three_ulp_of_the_exact_value():
    x = sample()
    got = through_rnn_tanh(x)
    want = exact(mpmath.tanh, x)
    assert ulps(got, want).max() <= 3.0, float(ulps(got, want).max())
    # saturation: exactly +-1 where the exact value rounds to it (and where torch's is)
    sat = want.abs() == 1.0
    assert sat.any() and torch.equal(got[sat], want[sat])
    assert torch.equal(got[torch.tanh(x).abs() == 1.0].abs(), torch.ones(int((torch.tanh(x).abs() == 1).sum()),
                                                                         dtype=torch.float64))


def test_sigmoid_within_three_ulp_of_the_exact_value():
    x = sample()
    got = through_lstm_sigmoid(x)
    want = exact(lambda v: 1 / (1 + mpmath.exp(-v)), x)
    normal = want > 1e-300  # below, the exact value is subnormal; ours (and torch's) may flush it
    assert ulps(got[normal], want[normal]).max() <= 3.0, float(ulps(got[normal], want[normal]).max())
    assert (got[~normal] <= 1e-300).all()
    ones = want == 1.0
    assert ones.any() and torch.equal(got[ones], want[ones])
    ref = torch.sigmoid(x)
    assert torch.equal(got == 0, ref == 0) and torch.equal(got == 1, ref == 1)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_nonfinite_inputs_as_torch(value):
    x = torch.tensor([value, 0.5], dtype=torch.float64)
    torch.testing.assert_close(through_rnn_tanh(x), torch.tanh(x), equal_nan=True, rtol=5e-16, atol=0)
    # the LSTM's other gates multiply x by 0 (0 * inf = NaN): compare with torch.nn's LSTM so set up
    torch.testing.assert_close(through_lstm_sigmoid(x), through_lstm_sigmoid(x, torch.nn.LSTM), equal_nan=True,
                               rtol=5e-16, atol=0)


@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_float64_modules_match_torch_nn_closely(cell):
    """Whole float64 layers, forward and backward, against torch.nn in float64: agreement to a few
    ulp of the activations compounded over 30 steps."""
    torch.manual_seed(0)
    got = getattr(rnnfast, cell)(24, 40, num_layers=2).double()
    ref = getattr(torch.nn, cell)(24, 40, num_layers=2).double()
    ref.load_state_dict(got.state_dict())
    x = torch.randn(30, 64, 24, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    oa, _ = got(xa)
    ob, _ = ref(xb)
    torch.testing.assert_close(oa, ob, rtol=1e-12, atol=1e-13)
    oa.sin().sum().backward()
    ob.sin().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-11, atol=1e-12)
    for p, q in zip(got.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-11, atol=1e-11)
