"""Forward-mode AD is not implemented for rnnfast's ops: every way in raises a NotImplementedError
naming it, never a silent zero tangent (torch.func.jvp used to return 0 for the whole layer, and
forward_ad with weights not requiring grad returned no tangent at all)."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import rnnfast
import rnnfast.functional as rf
from rnnfast import _ops

MESSAGE = "forward-mode AD"


def _module(kind):
    torch.manual_seed(0)
    return {"rnn": lambda: rnnfast.RNN(3, 4), "gru": lambda: rnnfast.GRU(3, 4), "lstm": lambda: rnnfast.LSTM(3, 4),
            "lstm_proj": lambda: rnnfast.LSTM(3, 4, proj_size=2), "gru_cell": lambda: rnnfast.GRUCell(3, 4),
            "lstm_cell": lambda: rnnfast.LSTMCell(3, 4), "rnn_cell": lambda: rnnfast.RNNCell(3, 4)}[kind]()


def _out(m, x):
    y = m(x)
    return y[0] if isinstance(y, tuple) else y


KINDS = ["rnn", "gru", "lstm", "lstm_proj", "gru_cell", "lstm_cell", "rnn_cell"]


def _input(kind):
    return torch.randn(2, 3) if kind.endswith("cell") else torch.randn(5, 2, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_func_jvp_raises(kind):
    m, x = _module(kind), _input(kind)
    with pytest.raises(NotImplementedError, match=MESSAGE):
        torch.func.jvp(lambda x: _out(m, x), (x,), (torch.randn_like(x),))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weights_require_grad", [True, False])
def test_forward_ad_dual_input_raises(kind, weights_require_grad):
    m, x = _module(kind), _input(kind)
    m.requires_grad_(weights_require_grad)
    with fwAD.dual_level():
        with pytest.raises(NotImplementedError, match=MESSAGE):
            _out(m, fwAD.make_dual(x, torch.randn_like(x)))


def test_jacfwd_and_vmap_of_jvp_raise():
    m, x = _module("gru"), _input("gru")
    with pytest.raises(NotImplementedError, match=MESSAGE):
        torch.func.jacfwd(lambda x: _out(m, x).sum())(x)
    with pytest.raises(NotImplementedError, match=MESSAGE):
        torch.func.vmap(lambda x: torch.func.jvp(lambda x: _out(m, x), (x,), (x,))[1])(x.unsqueeze(0))


def test_functional_api_raises():
    torch.manual_seed(0)
    x, h = torch.randn(5, 2, 3), torch.zeros(2, 4)
    w_ih, w_hh = torch.randn(12, 3), torch.randn(12, 4)
    with pytest.raises(NotImplementedError, match=MESSAGE):
        torch.func.jvp(lambda x: rf.gru(x, h, w_ih, w_hh)[0], (x,), (torch.randn_like(x),))


def test_plain_calls_and_vmap_unaffected():
    """Inside dual_level with no dual tensor, and under vmap, the ops run as before (the check only
    refuses tangents)."""
    m, x = _module("gru"), _input("gru")
    ref = _out(m, x)
    with fwAD.dual_level():
        torch.testing.assert_close(_out(m, x), ref)
    torch.testing.assert_close(torch.func.vmap(lambda x: _out(m, x))(x.unsqueeze(0))[0], ref)


def _op_args(x, weights_require_grad):
    torch.manual_seed(0)
    w = [torch.randn(12, 3), torch.randn(12, 4), torch.randn(12), torch.randn(12)]
    w = [t.requires_grad_(weights_require_grad) for t in w]
    return (x.unsqueeze(0), torch.zeros(2, 4), w[0], w[1], w[2], w[3], False, True)


@pytest.mark.parametrize("weights_require_grad", [True, False])
def test_direct_op_call_with_dual_input_raises(weights_require_grad):
    """A direct torch.ops.rnnfast call (no Python check on the way): the C++ autograd kernel refuses
    the tangent with the same error, whether or not anything requires grad (torch would otherwise
    return outputs without a tangent: a silent zero)."""
    x = torch.randn(2, 3)
    with fwAD.dual_level():
        with pytest.raises(NotImplementedError) as err:
            torch.ops.rnnfast.gru_forward(*_op_args(fwAD.make_dual(x, torch.randn_like(x)), weights_require_grad))
    assert str(err.value) == _ops.FORWARD_AD_MESSAGE
    rest = _op_args(x, False)[1:]
    with pytest.raises(NotImplementedError, match=MESSAGE):
        torch.func.jvp(lambda x: torch.ops.rnnfast.gru_forward(x.unsqueeze(0), *rest)[0], (x,), (torch.randn_like(x),))
