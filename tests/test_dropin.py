"""rnnfast's layers wherever a torch.nn RNN goes: type identity (they subclass torch.nn.RNN/GRU/LSTM
and the cells), torch.nn's attributes and helper methods, constructor and forward argument errors
of torch.nn's type, type-dispatching code (init loops, weight drop, dynamic quantization,
torch.compile), and whole-model torch.save / torch.load with weights_only=True."""
import copy
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast

F64 = torch.float64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYERS = [("RNN", {}), ("RNN", {"nonlinearity": "relu"}), ("GRU", {}), ("LSTM", {}),
          ("LSTM", {"proj_size": 3})]
CELLS = [("RNNCell", {}), ("RNNCell", {"nonlinearity": "relu"}), ("GRUCell", {}), ("LSTMCell", {})]


def pair(name, *args, **kw):
    """(rnnfast.<name>, torch.nn.<name>) built from the same seed: identical parameters."""
    torch.manual_seed(0)
    ours = getattr(rnnfast, name)(*args, **kw)
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(*args, **kw)
    return ours, ref


def outputs(result):
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, PackedSequence):
        return [result.data]
    return [t for r in result for t in outputs(r)]


# ---- type identity, attributes, helper methods ----------------------------------------------------

@pytest.mark.parametrize("name,kw", LAYERS + CELLS, ids=lambda v: str(v))
def test_is_an_instance_of_its_torch_nn_namesake(name, kw):
    m = getattr(rnnfast, name)(4, 6, **kw)
    assert isinstance(m, getattr(torch.nn, name))
    assert isinstance(m, torch.nn.RNNCellBase if name.endswith("Cell") else torch.nn.RNNBase)
    assert type(m) is getattr(rnnfast.nn, name)  # and still rnnfast's class


@pytest.mark.parametrize("name,kw", LAYERS, ids=lambda v: str(v))
@pytest.mark.parametrize("more", [{}, {"num_layers": 2, "bidirectional": True, "bias": False}],
                         ids=["1layer", "2layers-bi-nobias"])
def test_torch_nn_attributes_and_helpers(name, kw, more):
    ours, ref = pair(name, 4, 6, **kw, **more)
    for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size", "_flat_weights_names", "_all_weights"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert [w is getattr(ours, n) for w, n in zip(ours._flat_weights, ours._flat_weights_names)] == \
        [True] * len(ours._flat_weights_names)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)  # torch.nn's reset_parameters: same seed, same values
    if kw.get("nonlinearity") != "relu":  # torch.nn.RNN's repr omits the nonlinearity, rnnfast's shows it
        assert repr(ours) == repr(ref)
    else:
        assert repr(ours) == repr(ref)[:-1] + ", nonlinearity=relu)"
    # torch.nn's semi-public helpers, inherited: same results, same errors
    x = torch.randn(5, 2, 4)
    assert ours.get_expected_hidden_size(x, None) == ref.get_expected_hidden_size(x, None)
    D, P = 1 + bool(ours.bidirectional), ours.proj_size or ours.hidden_size
    h = torch.zeros(D * ours.num_layers, 2, P)
    hx = (h, torch.zeros(D * ours.num_layers, 2, 6)) if name == "LSTM" else h
    ours.check_forward_args(x, hx, None)
    bad = (h[:, :1], hx[1]) if name == "LSTM" else h[:, :1]
    for m in (ours, ref):
        with pytest.raises(RuntimeError, match=r"Expected hidden(\[0\])? size"):
            m.check_forward_args(x, bad, None)
        with pytest.raises(RuntimeError, match="input must have 3 dimensions"):
            m.check_input(x[0], None)
    perm = torch.tensor([1, 0])
    for a, b in zip(outputs(ours.permute_hidden(hx, perm)), outputs(ref.permute_hidden(hx, perm))):
        assert torch.equal(a, b)
    ours.flatten_parameters()  # torch.nn's (a no-op off cuDNN)
    # .double() re-points _flat_weights at the converted parameters, as torch.nn's _apply does
    ours.double()
    assert ours._flat_weights[0] is ours.weight_ih_l0 and ours._flat_weights[0].dtype == F64


@pytest.mark.parametrize("name,kw", CELLS, ids=lambda v: str(v))
def test_cell_attributes_repr_state_dict(name, kw):
    ours, ref = pair(name, 4, 6, bias=False, **kw)
    assert (ours.input_size, ours.hidden_size, ours.bias) == (ref.input_size, ref.hidden_size, ref.bias)
    assert repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def test_gru_reset_after_repr_and_state_dict_both_ways():
    textbook = rnnfast.GRU(4, 6, 2, reset_after=False)
    assert repr(textbook) == "GRU(4, 6, num_layers=2, reset_after=False)"
    assert repr(rnnfast.GRU(4, 6, 2)) == repr(torch.nn.GRU(4, 6, 2)) == "GRU(4, 6, num_layers=2)"
    assert repr(rnnfast.GRUCell(4, 6, reset_after=False)) == "GRUCell(4, 6, reset_after=False)"
    ref = torch.nn.GRU(4, 6, 2)
    ref.load_state_dict(textbook.state_dict())  # rnnfast (textbook) -> torch.nn
    textbook.load_state_dict(torch.nn.GRU(4, 6, 2).state_dict())  # torch.nn -> rnnfast (textbook)
    assert list(textbook.state_dict()) == list(ref.state_dict())
    with pytest.raises(TypeError, match="reset_after should be of type bool"):
        rnnfast.GRUCell(4, 6, reset_after=1)


# ---- argument handling exactly as torch.nn (issue 10 item 9) -------------------------------------

def _raises(fn):
    """The exception type fn raises, or None."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return type(e)
    return None


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("kw", [{"num_layers": True}, {"num_layers": 1.5}, {"num_layers": 0},
                                {"bidirectional": "yes"}, {"bidirectional": 1}, {"bias": 1},
                                {"batch_first": 1}, {"dropout": "0.5"}, {"input_size": 3.0}],
                         ids=lambda kw: "-".join(f"{k}={v!r}" for k, v in kw.items()))
def test_bad_module_arguments_fail_like_torch(name, kw):
    args = {"input_size": 3, "hidden_size": 4, **kw}
    build = {lib: (lambda lib=lib: getattr(lib, name)(**args)) for lib in (torch.nn, rnnfast)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        at_init = {lib: _raises(f) for lib, f in build.items()}
        assert at_init[rnnfast] == at_init[torch.nn]
        if at_init[torch.nn] is None:  # accepted when built: forward fails (or works) the same way
            x = torch.randn(2, 1, 3)
            at_forward = {lib: _raises(lambda f=f: f()(x)) for lib, f in build.items()}
            assert at_forward[rnnfast] == at_forward[torch.nn]
            if kw in ({"num_layers": True}, {"bidirectional": "yes"}, {"bidirectional": 1}):
                assert at_forward[rnnfast] is TypeError  # accepted by __init__, refused by forward


def test_num_layers_float_message_and_bool_forward_message():
    with pytest.raises(TypeError, match="'float' object cannot be interpreted as an integer"):
        rnnfast.LSTM(3, 4, num_layers=1.5)
    with pytest.raises(TypeError, match="LSTM: num_layers must be an int, got bool True"):
        rnnfast.LSTM(3, 4, num_layers=True)(torch.randn(2, 1, 3))
    with pytest.raises(TypeError, match="GRU: bidirectional must be a bool, got str 'yes'"):
        rnnfast.GRU(3, 4, bidirectional="yes")(torch.randn(2, 1, 3))


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_non_integer_batch_sizes_fail_like_torch(name, dtype):
    packed = pack_padded_sequence(torch.randn(3, 2, 3), torch.tensor([3, 2]))
    bad = PackedSequence(packed.data, packed.batch_sizes.to(dtype))
    ours, ref = pair(name, 3, 4)
    with pytest.raises(TypeError):
        ref(bad)
    with pytest.raises(TypeError, match="batch_sizes must be a 1-D int64 tensor"):  # _Packing.of
        ours(bad)


@pytest.mark.parametrize("name,kw", CELLS, ids=lambda v: str(v))
@pytest.mark.parametrize("sizes", [(0, 4), (3, 0), (0, 0)], ids=["input0", "hidden0", "both0"])
def test_cells_accept_zero_sizes_like_torch(name, kw, sizes):
    ours, ref = pair(name, *sizes, dtype=F64, **kw)
    x = torch.randn(2, sizes[0], dtype=F64, requires_grad=True)
    got, want = outputs(ours(x)), outputs(ref(x))
    assert [t.shape for t in got] == [t.shape for t in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    if sum(t.numel() for t in want):
        ga = torch.autograd.grad(sum(t.sum() for t in got), [x, *ours.parameters()], allow_unused=True)
        gb = torch.autograd.grad(sum(t.sum() for t in want), [x, *ref.parameters()], allow_unused=True)
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a if a is not None else torch.zeros_like(b), b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,kw", CELLS, ids=lambda v: str(v))
@pytest.mark.parametrize("bias", [1, 0])
def test_cells_accept_int_bias_like_torch(name, kw, bias):
    ours, ref = pair(name, 3, 4, bias=bias, dtype=F64, **kw)
    assert (ours.bias_ih is None) == (ref.bias_ih is None) == (not bias)
    assert repr(ours) == repr(ref)
    x = torch.randn(5, 3, dtype=F64)
    for a, b in zip(outputs(ours(x)), outputs(ref(x))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---- code that dispatches on type ------------------------------------------------------------------

class WordModel(torch.nn.Module):
    """embedding -> recurrent layer -> linear, the layer class given."""

    def __init__(self, rnn_cls, vocab=20, emb=8, hidden=12, layers=2):
        super().__init__()
        self.encoder = torch.nn.Embedding(vocab, emb)
        self.rnn = rnn_cls(emb, hidden, layers)
        self.decoder = torch.nn.Linear(hidden, vocab)

    def forward(self, tokens, hidden=None):
        output, hidden = self.rnn(self.encoder(tokens), hidden)
        return self.decoder(output), hidden


def _textbook_init(model):
    """A typical isinstance-dispatching initializer: orthogonal recurrent weights, xavier input
    weights, forget-gate bias 1 for LSTMs."""
    for m in model.modules():
        if isinstance(m, (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN)):
            for name, p in m.named_parameters():
                if name.startswith("weight_hh"):
                    torch.nn.init.orthogonal_(p)
                elif name.startswith("weight_ih"):
                    torch.nn.init.xavier_uniform_(p)
                elif name.startswith("bias"):
                    torch.nn.init.zeros_(p)
                    if isinstance(m, torch.nn.LSTM):
                        p.data[m.hidden_size:2 * m.hidden_size] = 1.0
        elif isinstance(m, torch.nn.Linear):
            torch.nn.init.uniform_(m.weight, -0.1, 0.1)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_isinstance_initializer_treats_them_as_torch_nn(name):
    torch.manual_seed(1)
    ours = WordModel(getattr(rnnfast, name))
    torch.manual_seed(1)
    ref = WordModel(getattr(torch.nn, name))
    torch.manual_seed(2)
    _textbook_init(ours)
    torch.manual_seed(2)
    _textbook_init(ref)
    for (n, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), n
    if name == "LSTM":
        assert torch.equal(ours.rnn.bias_ih_l0[12:24], torch.ones(12))  # the initializer reached it
    tokens = torch.randint(0, 20, (7, 3))
    for a, b in zip(outputs(ours(tokens)), outputs(ref(tokens))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


class WeightDrop(torch.nn.Module):
    """DropConnect on a recurrent layer's hidden-to-hidden weights, in the style of the AWD-LSTM
    wrapper: reads the layer's _flat_weights_names, keeps the raw weight as `<name>_raw` and sets a
    dropped copy on the layer before each forward."""

    def __init__(self, module, names=("weight_hh_l0",), p=0.5):
        super().__init__()
        self.module, self.names, self.p = module, names, p
        assert all(n in module._flat_weights_names for n in names)
        for n in names:
            raw = getattr(module, n)
            del module._parameters[n]
            module.register_parameter(n + "_raw", torch.nn.Parameter(raw.data))

    def forward(self, *args):
        for n in self.names:
            raw = getattr(self.module, n + "_raw")
            # plain attribute: RNNBase.__setattr__ keeps _flat_weights in step
            setattr(self.module, n, torch.nn.functional.dropout(raw, self.p, self.training))
        return self.module(*args)


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_weight_drop_wrapper_reading_flat_weights(name):
    ours, ref = pair(name, 4, 6, dtype=F64)
    ours, ref = WeightDrop(ours), WeightDrop(ref)
    x = torch.randn(5, 2, 4, dtype=F64)
    for training in (True, False):
        ours.train(training), ref.train(training)
        torch.manual_seed(3)
        got = outputs(ours(x))
        torch.manual_seed(3)
        want = outputs(ref(x))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert ours.module._flat_weights[1] is ours.module.weight_hh_l0  # the dropped copy
    got[0].sum().backward()
    assert ours.module.weight_hh_l0_raw.grad is not None  # gradients reach the raw weight


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_parametrizations_and_pruning_like_torch_nn(name):
    # torch.nn.utils.parametrizations.weight_norm and prune rewrite the layer's class / attributes
    from torch.nn.utils import parametrizations, prune
    ours, ref = pair(name, 4, 6, num_layers=2, dtype=F64)
    for m in (ours, ref):
        parametrizations.weight_norm(m, "weight_hh_l0")
        prune.l1_unstructured(m, "weight_ih_l1", amount=0.3)
    assert isinstance(ours, rnnfast.nn.__dict__[name]) and isinstance(ours, getattr(torch.nn, name))
    x = torch.randn(5, 3, 4, dtype=F64)
    got, want = outputs(ours(x)), outputs(ref(x))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    sum(t.sum() for t in got).backward()
    sum(t.sum() for t in want).backward()
    for (n, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10, msg=n)


def test_quantize_dynamic_leaves_rnnfast_layers_float_and_matches():
    """torch.ao's dynamic quantization looks modules up by exact type (its from_float even asserts
    type(mod) is torch.nn.LSTM), so it quantizes the Linear and leaves rnnfast's layers as they are:
    rnnfast layers, float weights. The result equals torch.nn's model quantized on Linear only."""
    torch.manual_seed(4)
    ours = WordModel(rnnfast.LSTM)
    ref = WordModel(torch.nn.LSTM)
    ref.load_state_dict(ours.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q_ours = torch.ao.quantization.quantize_dynamic(ours, dtype=torch.qint8)
        q_ours_explicit = torch.ao.quantization.quantize_dynamic(
            ours, {torch.nn.LSTM, torch.nn.Linear}, dtype=torch.qint8)
        q_ref_linear = torch.ao.quantization.quantize_dynamic(ref, {torch.nn.Linear}, dtype=torch.qint8)
        q_ref = torch.ao.quantization.quantize_dynamic(ref, dtype=torch.qint8)
    assert type(q_ref.rnn) is torch.ao.nn.quantized.dynamic.LSTM  # torch.nn's LSTM is swapped
    for q in (q_ours, q_ours_explicit):
        assert type(q.rnn) is rnnfast.LSTM and q.rnn.weight_ih_l0.dtype == torch.float32
        assert type(q.decoder) is torch.ao.nn.quantized.dynamic.Linear
    tokens = torch.randint(0, 20, (6, 3))
    for a, b in zip(outputs(q_ours(tokens)), outputs(q_ref_linear(tokens))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["RNN", "GRU"])
def test_torch_compile_fullgraph_rnn_gru(name):
    torch._dynamo.reset()
    ours, ref = pair(name, 4, 6, num_layers=2)
    x = torch.randn(5, 3, 4)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    for a, b in zip(outputs(compiled(x)), outputs(ref(x))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_dynamo_still_refuses_torch_nn_lstm():
    # rnnfast lifts Dynamo's RNN refusal for its own classes only: torch.nn.LSTM is treated as before
    torch._dynamo.reset()
    compiled = torch.compile(torch.nn.LSTM(4, 6), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="Attempted to wrap RNN, GRU, or LSTM"):
        compiled(torch.randn(5, 3, 4))
    torch._dynamo.reset()


# ---- whole-model checkpoints ---------------------------------------------------------------------

ALL_LAYERS = [("RNN", {"nonlinearity": "relu"}), ("GRU", {"reset_after": False}),
              ("LSTM", {"proj_size": 2, "bidirectional": True}), ("RNNCell", {}), ("GRUCell", {}),
              ("LSTMCell", {"bias": False})]


def test_torch_save_whole_model_weights_only_round_trip(tmp_path):
    torch.manual_seed(5)
    model = WordModel(rnnfast.LSTM)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    # torch.nn's modules and the script's own class are the script's to allowlist, exactly as with
    # torch.nn.LSTM; rnnfast's classes are allowlisted by `import rnnfast`
    assert sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path)) == sorted([
        f"{__name__}.WordModel", "torch.nn.modules.linear.Linear", "torch.nn.modules.sparse.Embedding"])
    with torch.serialization.safe_globals([WordModel, torch.nn.Embedding, torch.nn.Linear]):
        loaded = torch.load(path)  # weights_only=True, torch's default
    assert type(loaded.rnn) is rnnfast.LSTM and loaded.rnn is not model.rnn
    assert loaded.rnn._flat_weights[0] is loaded.rnn.weight_ih_l0
    tokens = torch.randint(0, 20, (6, 3))
    for a, b in zip(outputs(loaded(tokens)), outputs(model(tokens))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name,kw", ALL_LAYERS, ids=lambda v: str(v))
def test_every_layer_pickles_and_deepcopies(tmp_path, name, kw):
    m = getattr(rnnfast, name)(3, 4, **kw).double()
    path = tmp_path / "layer.pt"
    torch.save(m, path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    for other in (torch.load(path), copy.deepcopy(m)):
        assert type(other) is type(m) and repr(other) == repr(m)
        assert other.state_dict().keys() == m.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), m.state_dict().values()))
        x = torch.randn(5, 2, 3, dtype=F64) if not name.endswith("Cell") else torch.randn(2, 3, dtype=F64)
        for a, b in zip(outputs(other(x)), outputs(m(x))):
            assert torch.equal(a, b)


def test_rebuild_function_rejects_other_classes():
    from rnnfast._serialization import install_rnnfast_to_load_this
    with pytest.raises(TypeError, match="not an rnnfast module class"):
        install_rnnfast_to_load_this(torch.nn.LSTM, {})


_WITHOUT_RNNFAST = textwrap.dedent("""
    import importlib.abc, sys
    class NoRnnfast(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "rnnfast" or name.startswith("rnnfast."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, NoRnnfast())
    import torch
    try:
        torch.load(sys.argv[1], weights_only=sys.argv[2] == "1")
    except Exception as e:
        print(type(e).__name__ + ": " + str(e))
    else:
        print("LOADED")
""")


@pytest.mark.parametrize("weights_only", [True, False])
def test_loading_without_rnnfast_says_to_install_it(tmp_path, weights_only):
    path = tmp_path / "layer.pt"
    torch.save(torch.nn.Sequential(rnnfast.GRU(3, 4)) if not weights_only else rnnfast.GRU(3, 4), path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", _WITHOUT_RNNFAST, str(path), "1" if weights_only else "0"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    if weights_only:
        assert "GLOBAL rnnfast._serialization.install_rnnfast_to_load_this" in res.stdout, res.stdout
    else:
        assert res.stdout.startswith("ModuleNotFoundError: No module named 'rnnfast"), res.stdout
    assert "LOADED" not in res.stdout


# ---- the lazy integration hooks (rnnfast/_hooks.py) ----------------------------------------------

def test_after_import_runs_callbacks_once_when_the_module_is_imported(tmp_path, monkeypatch):
    from rnnfast import _hooks
    (tmp_path / "rnnfast_hook_probe.py").write_text("VALUE = 42\n")
    (tmp_path / "rnnfast_hook_broken.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    _hooks.after_import("rnnfast_hook_probe", lambda m: seen.append(m.VALUE))
    assert seen == []  # nothing is imported ahead of need
    import rnnfast_hook_probe  # noqa: F401
    assert seen == [42]
    _hooks.after_import("rnnfast_hook_probe", lambda m: seen.append(-m.VALUE))  # already imported: now
    assert seen == [42, -42]
    # a failing callback warns and never breaks the user's import
    _hooks.after_import("rnnfast_hook_broken", lambda m: 1 / 0)
    with pytest.warns(UserWarning, match="could not set up its integration with rnnfast_hook_broken"):
        import rnnfast_hook_broken
    assert rnnfast_hook_broken.VALUE == 1
    for name in ("rnnfast_hook_probe", "rnnfast_hook_broken"):
        sys.modules.pop(name, None)
