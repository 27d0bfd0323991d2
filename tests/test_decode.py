"""rnnfast::decode (csrc/core/decode.h) and predict's use of it (rnnfast/generation.py).

The op is predict's per-token loop in C++; its contract is that the text is exactly the Python
loop's: for every cell of the registry, one and two layers, one-hot and embedding input, float32
and float64, greedy and sampled with the same seeded generator. The models get weights large
enough that an untrained model's sampled tokens vary from step to step (small weights give nearly
uniform logits). A counting forward proves which path ran.
"""
import pytest
import torch

import rnnfast.generation as generation
from rnnfast import nn as rnnfast_nn
from rnnfast._cells import CELLS
from rnnfast.data import Vocab
from rnnfast.generation import predict
from rnnfast.models import RNNLM

VOCAB = Vocab(list("abcdefghijklmnopqrstuvwxyz "))
PREFIX = "time traveller "
NUM_PREDS = 40

# every cell of the registry with each of its option values (gru: reset_after True and False)
CELL_CASES = [(name, ra) for name, c in CELLS.items() for ra in ((True, False) if c.options else (True,))]


def make_net(cell, reset_after=True, num_layers=1, embedding_dim=None, dtype=torch.float32, backend="rnnfast",
             seed=0):
    torch.manual_seed(seed)
    net = RNNLM(len(VOCAB), 24, cell=cell, num_layers=num_layers, embedding_dim=embedding_dim, backend=backend,
                reset_after=reset_after).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.5, 0.5)
    return net


def count_forward(net):
    """Wraps net.forward (an instance attribute: the class's forward stays RNNLM.forward, so the
    op path is still allowed) and returns the list its calls append to."""
    calls = []
    inner = net.forward

    def forward(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    net.forward = forward
    return calls


def both_paths(net, num_preds=NUM_PREDS, seed=None, monkeypatch=None, **kwargs):
    """(text with the op, text with the Python loop, forward calls with the op, without)."""
    out, calls = [], []
    for use in (True, False):
        monkeypatch.setattr(generation, "_USE_DECODE", use)
        counter = count_forward(net)
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        out.append(predict(PREFIX, num_preds, net, VOCAB, generator=gen, **kwargs))
        calls.append(len(counter))
        del net.forward
    return out[0], out[1], calls[0], calls[1]


SAMPLING = [
    pytest.param({}, id="greedy"),
    pytest.param(dict(temperature=0.7), id="t0.7"),
    pytest.param(dict(temperature=0.7, top_k=3), id="t0.7-top3"),
]


@pytest.mark.parametrize("sampling", SAMPLING)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("embedding_dim", [None, 8], ids=["onehot", "emb8"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("cell,reset_after", CELL_CASES, ids=[f"{c}-ra{int(r)}" for c, r in CELL_CASES])
def test_op_gives_the_python_loops_text(cell, reset_after, num_layers, embedding_dim, dtype, sampling, monkeypatch):
    net = make_net(cell, reset_after, num_layers, embedding_dim, dtype)
    assert net._decoder() is not None
    seed = 1234 if sampling else None
    fast, slow, fast_calls, slow_calls = both_paths(net, seed=seed, monkeypatch=monkeypatch, **sampling)
    assert fast == slow
    assert (fast_calls, slow_calls) == (1, 1 + NUM_PREDS)  # the op ran the tokens; net only the warm-up
    if sampling:  # greedy decoding of an untrained model may settle on one token; draws do not
        generated = fast[len(PREFIX):]
        assert len(set(generated)) >= 2, f"too few distinct tokens to compare anything: {generated!r}"


@pytest.mark.parametrize("sampling", SAMPLING[1:])
def test_sampling_follows_the_generator(sampling, monkeypatch):
    # different seeds draw different texts (so equal texts above are not an accident of the draws)
    net = make_net("gru")
    a = both_paths(net, seed=1, monkeypatch=monkeypatch, **sampling)
    b = both_paths(net, seed=2, monkeypatch=monkeypatch, **sampling)
    assert a[0] == a[1] and b[0] == b[1] and a[0] != b[0]


def test_training_mode_and_dropout_are_restored(monkeypatch):
    net = make_net("lstm", num_layers=2)
    net.rnn.dropout = 0.5  # eval mode during predict: no dropout, so the op may run
    net.train()
    fast, slow, fast_calls, _ = both_paths(net, monkeypatch=monkeypatch)
    assert fast == slow and fast_calls == 1 and net.training


def test_under_autocast(monkeypatch):
    # the op's calls meet the same autocast kernels as the Python loop's (bfloat16 head, float32 layers)
    net = make_net("lstm", num_layers=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, slow, fast_calls, _ = both_paths(net, seed=5, monkeypatch=monkeypatch, temperature=0.7)
    assert fast == slow and fast_calls == 1


def test_num_preds_zero_and_one_token_prefix(monkeypatch):
    net = make_net("gru")
    fast, slow, fast_calls, slow_calls = both_paths(net, num_preds=0, monkeypatch=monkeypatch)
    assert fast == slow == PREFIX and (fast_calls, slow_calls) == (1, 1)
    monkeypatch.setattr(generation, "_USE_DECODE", True)
    counter = count_forward(net)
    one = predict("t", 5, net, VOCAB)  # no warm-up call: the op starts from the zero state
    assert len(one) == 6 and counter == []
    monkeypatch.setattr(generation, "_USE_DECODE", False)
    assert predict("t", 5, net, VOCAB) == one


def test_word_tokens(monkeypatch):
    vocab = Vocab("the time machine by h g wells the time traveller".split())
    torch.manual_seed(0)
    net = RNNLM(len(vocab), 16, cell="gru", embedding_dim=6)
    out = []
    for use in (True, False):
        monkeypatch.setattr(generation, "_USE_DECODE", use)
        out.append(predict("the time", 8, net, vocab, sep=" "))
    assert out[0] == out[1] and len(out[0].split(" ")) == 10


# ---- where the op does not run: the Python loop, unchanged --------------------------------------

def test_torch_and_scratch_backends_keep_the_loop(monkeypatch):
    for backend in ("torch", "scratch"):
        net = make_net("gru", backend=backend)
        assert net._decoder() is None
        fast, slow, fast_calls, slow_calls = both_paths(net, monkeypatch=monkeypatch)
        assert fast == slow and fast_calls == slow_calls == 1 + NUM_PREDS


def test_models_the_op_cannot_describe_keep_the_loop(monkeypatch):
    net = make_net("gru", embedding_dim=8)
    net.embedding.max_norm = 1.0  # the lookup renormalizes rows in place: only forward does that
    assert net._decoder() is None
    net = make_net("gru")
    handle = net.linear.register_forward_hook(lambda m, i, o: None)
    assert net._decoder() is None
    fast, slow, fast_calls, _ = both_paths(net, monkeypatch=monkeypatch)
    assert fast == slow and fast_calls == 1 + NUM_PREDS
    handle.remove()
    assert net._decoder() is not None

    class Shifted(RNNLM):  # a subclass with its own forward is a user model
        def forward(self, X, state=None):
            logits, state = super().forward(X, state)
            return logits.roll(1, dims=-1), state

    torch.manual_seed(0)
    assert Shifted(len(VOCAB), 16)._decoder() is None
    assert rnnfast_nn.LSTM(4, 6, proj_size=3)._decode_params() is None
    assert rnnfast_nn.GRU(4, 6, bidirectional=True)._decode_params() is None


def test_non_finite_logits(monkeypatch):
    net = make_net("gru")
    with torch.no_grad():
        net.linear.bias[3] = float("nan")
    for use in (True, False):
        monkeypatch.setattr(generation, "_USE_DECODE", use)
        with pytest.raises(ValueError, match="not finite"):
            predict(PREFIX, 5, net, VOCAB, temperature=1.0)
    fast, slow, _, _ = both_paths(net, num_preds=5, monkeypatch=monkeypatch)  # greedy still works
    assert fast == slow


# ---- the op itself ------------------------------------------------------------------------------

def op_args(cell="gru", **overrides):
    net = make_net(cell)
    spec = net._decoder()
    state = net.begin_state(1)
    args = dict(cell=spec["cell"], options=spec["options"], params=spec["params"], has_biases=spec["has_biases"],
                state=list(state) if isinstance(state, tuple) else [state], embedding=spec["embedding"],
                head_weight=spec["head_weight"], head_bias=spec["head_bias"], token=0, num_preds=3)
    args.update(overrides)
    return args


def run_op(**args):
    with torch.inference_mode():
        return torch.ops.rnnfast.decode(**args)


def test_op_returns_int64_tokens():
    tokens = run_op(**op_args())
    assert tokens.dtype == torch.int64 and tokens.shape == (3,)
    assert ((0 <= tokens) & (tokens < len(VOCAB))).all()
    assert run_op(**op_args(num_preds=0)).shape == (0,)


def test_op_without_inference_mode_needs_no_grad():
    # the weights require grad; the op skips autograd and returns plain tokens
    args = op_args()
    assert args["head_weight"].requires_grad
    tokens = torch.ops.rnnfast.decode(**args)
    assert not tokens.requires_grad and torch.equal(tokens, run_op(**op_args()))


def test_op_fake_kernel():
    args = op_args()
    meta = {k: (v.to("meta") if isinstance(v, torch.Tensor) else
                [t.to("meta") for t in v] if k in ("params", "state") else v) for k, v in args.items()}
    out = torch.ops.rnnfast.decode(**meta)
    assert out.device.type == "meta" and out.shape == (3,) and out.dtype == torch.int64


def _bad_cases():
    g = op_args()
    yield "unknown cell", dict(cell="gru_reset_before"), "unknown cell 'gru_reset_before'; valid cells: rnn_tanh"
    yield "option count", dict(options=[]), "takes 1 option value"
    yield "options on a cell without", dict(op_args("rnn_tanh"), options=[True]), "takes 0 option value"
    yield "param count", dict(params=g["params"][:3]), "4 tensors per layer"
    yield "no params", dict(params=[]), "tensors per layer"
    yield "state count", dict(state=g["state"] * 2), "one state tensor"
    yield "lstm state count", dict(op_args("lstm"), state=op_args("lstm")["state"][:1]), "two state tensors"
    yield "state shape", dict(state=[torch.zeros(2, 1, 24)]), "state tensors must be"
    yield "state dtype", dict(state=[torch.zeros(1, 1, 24, dtype=torch.float64)]), "must share the head's dtype"
    yield "head", dict(head_weight=g["head_weight"][0]), "head_weight must be 2-D"
    yield "head bias", dict(head_bias=g["head_bias"][:-1]), "head_bias must be"
    yield "one-hot width", dict(head_weight=g["head_weight"][:-1], head_bias=g["head_bias"][:-1]), "one-hot input"
    yield "embedding rows", dict(embedding=torch.zeros(5, 28)), "embedding must be"
    yield "token", dict(token=len(VOCAB)), "token must be in"
    yield "negative token", dict(token=-1), "token must be in"
    yield "num_preds", dict(num_preds=-1), "num_preds must be >= 0"
    yield "temperature", dict(temperature=-0.5), "temperature must be"
    yield "nan temperature", dict(temperature=float("nan")), "temperature must be"
    yield "top_k", dict(top_k=0), "top_k must be"


BAD = list(_bad_cases())


@pytest.mark.parametrize("overrides,message", [(o, m) for _, o, m in BAD], ids=[i for i, _, _ in BAD])
def test_op_refuses_bad_arguments(overrides, message):
    args = op_args()
    args.update(overrides)
    with pytest.raises(RuntimeError, match=message.replace("(", r"\(")):
        run_op(**args)
