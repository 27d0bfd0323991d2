"""Export of models with rnnfast layers: torch.onnx.export(..., dynamo=True) gives standard ONNX
RNN / GRU / LSTM nodes (rnnfast/onnx.py) whose onnxruntime outputs equal PyTorch's; torch.export's
save / load round trip runs rnnfast's ops with equal outputs. Needs the `onnx` extra (in `test`)."""
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import rnnfast
from rnnfast.models import RNNLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = dict(rtol=1e-5, atol=1e-5)
ONNX_OP = {"RNN": "RNN", "GRU": "GRU", "LSTM": "LSTM", "RNNCell": "RNN", "GRUCell": "GRU", "LSTMCell": "LSTM"}


def flat(result):
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for r in result for t in flat(r)]


def export_and_run(model, args, tmp_path):
    """torch.onnx.export(dynamo=True) -> file -> onnx.checker -> onnxruntime. Returns (onnx model,
    onnxruntime outputs, PyTorch outputs)."""
    model.eval()
    with torch.no_grad():
        want = [t.numpy() for t in flat(model(*args))]
    path = str(tmp_path / "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path, dynamo=True, verbose=False)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), flat(args))}
    assert len(feeds) == len(session.get_inputs()) == len(flat(args))
    got = session.run(None, feeds)
    return proto, got, want


def assert_standard_nodes(proto, op_type, count):
    """Only standard-domain ONNX operators, `count` of them `op_type`, none left from rnnfast."""
    nodes = list(proto.graph.node)
    assert all(n.domain in ("", "ai.onnx") for n in nodes), {n.domain for n in nodes}
    assert not proto.functions, [f.name for f in proto.functions]
    assert sum(n.op_type == op_type for n in nodes) == count, [n.op_type for n in nodes]


LAYERS = [
    ("RNN", dict(nonlinearity="tanh")),
    ("RNN", dict(nonlinearity="relu", num_layers=2, bidirectional=True)),
    ("GRU", dict(num_layers=2)),
    ("GRU", dict(reset_after=False, bidirectional=True, batch_first=True)),
    ("GRU", dict(reset_after=False, num_layers=3, bias=False)),
    ("LSTM", dict()),
    ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("LSTM", dict(num_layers=3, bias=False, dropout=0.3)),  # eval: no dropout
]
# each configuration once, with or without an initial state (both for a few)
LAYER_CASES = [(name, kw, i % 2 == 1) for i, (name, kw) in enumerate(LAYERS)] + [
    (name, kw, i % 2 == 0) for i, (name, kw) in enumerate(LAYERS) if i in (3, 6)]


@pytest.mark.parametrize("name,kw,with_state", LAYER_CASES, ids=lambda v: str(v))
def test_layer_exports_to_standard_onnx_nodes(tmp_path, name, kw, with_state):
    torch.manual_seed(0)
    m = getattr(rnnfast, name)(4, 6, **kw)
    B, T = 3, 5
    x = torch.randn((B, T, 4) if m.batch_first else (T, B, 4))
    D = 2 if m.bidirectional else 1
    args = (x,)
    if with_state:
        h = torch.randn(D * m.num_layers, B, 6)
        args = (x, (h, torch.randn_like(h)) if name == "LSTM" else h)
    proto, got, want = export_and_run(m, args, tmp_path)
    assert_standard_nodes(proto, name, D * m.num_layers)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **TOL)
    gru = [n for n in proto.graph.node if n.op_type == "GRU"]
    for node in gru:  # torch.nn.GRU's form is ONNX's linear_before_reset=1, the textbook's 0
        attr = {a.name: a.i for a in node.attribute}
        assert attr.get("linear_before_reset", 0) == int(kw.get("reset_after", True))


CELL_CASES = [("RNNCell", dict(nonlinearity="relu"), True), ("RNNCell", dict(bias=False), False),
              ("GRUCell", dict(), True), ("GRUCell", dict(reset_after=False), False),
              ("GRUCell", dict(reset_after=False), True), ("LSTMCell", dict(), True),
              ("LSTMCell", dict(bias=False), False)]


@pytest.mark.parametrize("name,kw,with_state", CELL_CASES, ids=lambda v: str(v))
def test_cell_exports_to_standard_onnx_nodes(tmp_path, name, kw, with_state):
    torch.manual_seed(1)
    m = getattr(rnnfast, name)(4, 6, **kw)
    x = torch.randn(3, 4)
    args = (x,)
    if with_state:
        h = torch.randn(3, 6)
        args = (x, (h, torch.randn(3, 6)) if name == "LSTMCell" else h)
    proto, got, want = export_and_run(m, args, tmp_path)
    assert_standard_nodes(proto, ONNX_OP[name], 1)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_language_model_exports_and_matches(tmp_path, cell):
    # embedding -> two rnnfast layers -> linear, the model `rnnfast train` builds
    torch.manual_seed(2)
    net = RNNLM(vocab_size=11, num_hiddens=8, num_layers=2, cell=cell, embedding_dim=5, backend="rnnfast")
    tokens = torch.randint(0, 11, (3, 7))
    proto, got, want = export_and_run(net, (tokens,), tmp_path)
    assert_standard_nodes(proto, ONNX_OP[cell.split("_")[0].upper()], 2)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_projection_exports_as_standard_operators(tmp_path, bidirectional):
    # ONNX's LSTM has no projection: the steps are written out (as torch.onnx does for torch.nn's)
    torch.manual_seed(5)
    m = rnnfast.LSTM(4, 6, num_layers=2, proj_size=3, bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    x, h = torch.randn(5, 3, 4), (torch.randn(2 * D, 3, 3), torch.randn(2 * D, 3, 6))
    proto, got, want = export_and_run(m, (x, h), tmp_path)
    assert_standard_nodes(proto, "LSTM", 0)
    assert {"MatMul", "Sigmoid", "Tanh"} <= {n.op_type for n in proto.graph.node}
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **TOL)


def test_projection_with_dynamic_length_fails_clearly():
    m = rnnfast.LSTM(4, 6, proj_size=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception, match="ONNX's LSTM operator has no projection"):
            torch.onnx.export(m, (torch.randn(5, 2, 4),), dynamo=True, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("steps")},))


@pytest.mark.parametrize("name,kw", LAYERS[1:2] + LAYERS[3:4] + LAYERS[6:7] + [("LSTM", dict(proj_size=2))],
                         ids=lambda v: str(v))
def test_torch_export_save_load_round_trip(tmp_path, name, kw):
    torch.manual_seed(3)
    m = getattr(rnnfast, name)(4, 6, **kw).eval()
    x = torch.randn((3, 5, 4) if m.batch_first else (5, 3, 4))
    program = torch.export.export(m, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("rnnfast.") for t in targets), targets  # rnnfast's ops, not torch's
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path)
    for a, b in zip(flat(loaded.module()(x)), flat(m(x))):
        assert torch.equal(a, b)


_FRESH = textwrap.dedent("""
    import sys, warnings
    warnings.simplefilter("ignore")
    if sys.argv[1] == "onnxscript-first":
        import onnxscript.function_libs.torch_lib.registration  # the registry exists before rnnfast
    import torch, rnnfast
    if sys.argv[1] == "import-only":
        print(sorted(m for m in ("onnx", "onnxscript", "torch._dynamo", "torch.onnx") if m in sys.modules))
        raise SystemExit
    program = torch.onnx.export(rnnfast.GRU(3, 4), (torch.randn(2, 1, 3),), dynamo=True, verbose=False)
    print(sorted({n.op_type for n in program.model.graph}))
""")


@pytest.mark.slow  # two fresh interpreters that import torch.onnx (~10 s each); runs in CI
@pytest.mark.parametrize("order", ["rnnfast-first", "onnxscript-first", "import-only"])
def test_plain_export_call_finds_translations_in_a_fresh_process(order):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", _FRESH, order], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    if order == "import-only":
        assert last == "[]", last  # `import rnnfast` imports neither onnx nor Dynamo
    else:
        assert "'GRU'" in last and "rnnfast" not in last, last


@pytest.mark.parametrize("name,kw", [("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True)),
                                     ("GRU", dict(reset_after=False))], ids=lambda v: str(v))
def test_export_with_dynamic_batch_and_length(tmp_path, name, kw):
    torch.manual_seed(4)
    m = getattr(rnnfast, name)(4, 6, **kw).eval()
    bt = (0, 1) if m.batch_first else (1, 0)
    dims = {bt[0]: torch.export.Dim("batch"), bt[1]: torch.export.Dim("steps")}
    path = str(tmp_path / "dynamic.onnx")
    example = torch.randn((3, 5, 4) if m.batch_first else (5, 3, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (example,), path, dynamo=True, dynamic_shapes=(dims,), verbose=False)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for B, T in ((2, 9), (7, 1)):  # other sizes than the example's
        x = torch.randn((B, T, 4) if m.batch_first else (T, B, 4))
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            want = flat(m(x))
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b.numpy(), **TOL)


def test_unbatched_input_exports(tmp_path):
    torch.manual_seed(6)
    m = rnnfast.GRU(4, 6, num_layers=2, bidirectional=True)
    x, h = torch.randn(5, 4), torch.randn(4, 6)  # (T, I) and (L*D, H): no batch dimension
    proto, got, want = export_and_run(m, (x, h), tmp_path)
    assert_standard_nodes(proto, "GRU", 4)
    assert [a.shape for a in got] == [(5, 12), (4, 6)]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **TOL)
