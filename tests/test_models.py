"""RNNLM: shapes, backend interchange (torch vs scratch on one state_dict), errors."""
import pytest
import torch
import torch.nn.functional as F

from rnnfast import scratch
from rnnfast.models import BACKENDS, CELLS, RNNLM, detach_state, recurrent_module

TOL = dict(rtol=1e-10, atol=1e-10)
V, H, B, T = 11, 8, 3, 5


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("embedding_dim", [None, 6])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_shapes(cell, embedding_dim, num_layers):
    m = RNNLM(V, H, cell=cell, num_layers=num_layers, embedding_dim=embedding_dim)
    X = torch.randint(0, V, (B, T))
    state = m.begin_state(B)
    states = state if cell == "lstm" else (state,)
    assert isinstance(state, tuple) == (cell == "lstm")
    assert all(s.shape == (num_layers, B, H) and not s.any() for s in states)
    logits, new_state = m(X, state)
    assert logits.shape == (T * B, V) and logits.dtype == torch.float32
    new_states = new_state if cell == "lstm" else (new_state,)
    assert all(s.shape == (num_layers, B, H) for s in new_states)
    # state=None means zeros
    torch.testing.assert_close(m(X)[0], logits, rtol=0, atol=0)
    # The textbook's loss layout: row t*B + b predicts Y[b, t].
    Y = torch.randint(0, V, (B, T))
    loss = F.cross_entropy(logits, Y.T.reshape(-1))
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


def test_row_layout_is_time_major():
    # Changing the last token of sequence b only changes row (T-1)*B + b of the logits.
    m = RNNLM(V, H, cell="gru").double()
    X = torch.randint(0, V - 1, (B, T))
    X2 = X.clone()
    X2[1, T - 1] += 1
    d = (m(X)[0] - m(X2)[0]).abs().sum(1)
    changed = torch.nonzero(d > 0).flatten().tolist()
    assert changed == [(T - 1) * B + 1]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("embedding_dim", [None, 4])
def test_torch_and_scratch_backends_agree(cell, embedding_dim):
    a = RNNLM(V, H, cell=cell, num_layers=2, embedding_dim=embedding_dim, backend="torch").double()
    b = RNNLM(V, H, cell=cell, num_layers=2, embedding_dim=embedding_dim,
              backend="scratch").double()
    assert isinstance(b.rnn, scratch.ScratchRNN)
    b.load_state_dict(a.state_dict())
    X = torch.randint(0, V, (B, T))
    state = a.begin_state(B)
    if cell == "lstm":
        state = (torch.randn_like(state[0]), torch.randn_like(state[1]))
    else:
        state = torch.randn_like(state)
    outs = []
    for m in (a, b):
        logits, new_state = m(X, state)
        new_states = list(new_state) if cell == "lstm" else [new_state]
        (logits.square().sum() + sum(s.sum() for s in new_states)).backward()
        outs.append([logits, *new_states, *[p.grad for p in m.parameters()]])
    for x, y in zip(*outs):
        torch.testing.assert_close(y, x, **TOL)


def test_textbook_gru_on_scratch_backend():
    m = RNNLM(V, H, cell="gru", backend="scratch", reset_after=False).double()
    X = torch.randint(0, V, (B, T))
    logits, h = m(X)
    params = scratch.from_torch_params("gru", dict(m.rnn.named_parameters()), reset_after=False)
    onehot = F.one_hot(X.T, V).double()
    out, hT = scratch.gru_layer(onehot, torch.zeros(B, H, dtype=torch.float64), params)
    torch.testing.assert_close(logits, m.linear(out.reshape(-1, H)), **TOL)
    torch.testing.assert_close(h[0], hT, **TOL)


def test_config_rebuilds_the_model():
    m = RNNLM(V, H, cell="lstm", num_layers=2, dropout=0.1, embedding_dim=5, backend="scratch")
    assert m.config == dict(vocab_size=V, num_hiddens=H, cell="lstm", num_layers=2, dropout=0.1,
                            embedding_dim=5, backend="scratch", bidirectional=False,
                            reset_after=True)
    m2 = RNNLM(**m.config)
    m2.load_state_dict(m.state_dict())
    m.eval(), m2.eval()
    X = torch.randint(0, V, (B, T))
    torch.testing.assert_close(m2(X)[0], m(X)[0], rtol=0, atol=0)


def test_detach_state():
    h = torch.randn(2, 3, requires_grad=True) * 2
    assert not detach_state(h).requires_grad
    hc = detach_state((h, h + 1))
    assert isinstance(hc, tuple) and len(hc) == 2 and not any(s.requires_grad for s in hc)
    torch.testing.assert_close(hc[1], h + 1)
    assert RNNLM.detach_state(None) is None


def test_recurrent_module_registry():
    assert set(BACKENDS) == {"torch", "scratch", "rnnfast"}
    assert isinstance(recurrent_module("torch", "rnn_relu", 3, 4), torch.nn.RNN)
    assert recurrent_module("torch", "rnn_relu", 3, 4).nonlinearity == "relu"
    assert isinstance(recurrent_module("torch", "lstm", 3, 4, num_layers=2), torch.nn.LSTM)
    mod = recurrent_module("scratch", "gru", 3, 4, reset_after=False)
    assert isinstance(mod, scratch.ScratchRNN) and mod.reset_after is False


def test_rnnfast_backend_matches_torch():
    pytest.importorskip("rnnfast.nn")
    for cell in CELLS:
        a = RNNLM(V, H, cell=cell, backend="torch").double()
        b = RNNLM(V, H, cell=cell, backend="rnnfast").double()
        b.load_state_dict(a.state_dict())
        X = torch.randint(0, V, (B, T))
        torch.testing.assert_close(b(X)[0], a(X)[0], **TOL)


def test_errors():
    with pytest.raises(ValueError, match="unknown cell 'gruu'.*'rnn_tanh'.*'lstm'"):
        RNNLM(V, cell="gruu")
    with pytest.raises(ValueError, match="unknown backend 'cudnn'.*'torch'.*'scratch'.*'rnnfast'"):
        RNNLM(V, backend="cudnn")
    with pytest.raises(ValueError, match="future tokens"):
        RNNLM(V, bidirectional=True)
    with pytest.raises(ValueError, match="reset_after=False.*'scratch' or 'rnnfast'"):
        RNNLM(V, cell="gru", reset_after=False, backend="torch")
    with pytest.raises(ValueError, match="vocab_size"):
        RNNLM(0)
    with pytest.raises(ValueError, match="embedding_dim"):
        RNNLM(V, embedding_dim=0)
    m = RNNLM(V, H)
    with pytest.raises(ValueError, match="2-D"):
        m(torch.zeros(B, T, V, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        m(torch.zeros(B, T))
