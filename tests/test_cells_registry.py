"""The cell registry (rnnfast._cells) against what it describes: every row's gates and workspace
against the compiled ops' real outputs (the slots of csrc/core/cells.h), its ops against the ops
registered, its mode against torch.nn, and one reference per row in rnnfast.scratch."""
import pytest
import torch

import rnnfast  # noqa: F401  (loads the ops)
from rnnfast import scratch
from rnnfast._cells import CELLS, KINDS, NAMES, lookup

ROWS = list(CELLS.values())
T, B, I, H, P = 3, 2, 4, 5, 2


def _forward(cell, projection=False, **options):
    """Runs a cell's forward op on small random CPU tensors; returns its outputs."""
    G = cell.num_gates
    width = P if projection else H
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = torch.randn(B, width, dtype=torch.float64)
    w_ih = torch.randn(G * H, I, dtype=torch.float64)
    w_hh = torch.randn(G * H, width, dtype=torch.float64)
    b = torch.randn(G * H, dtype=torch.float64)
    states = [hx] + ([torch.randn(B, H, dtype=torch.float64)] if cell.has_cell_state else [])
    weights = [w_ih, w_hh] + ([torch.randn(P, H, dtype=torch.float64)] if projection else [])
    op = getattr(torch.ops.rnnfast, cell.projection.forward_op if projection else cell.forward_op)
    opts = [options[name] for name in cell.options]
    return op(x, *states, *weights, b, b.clone(), False, *opts)


@pytest.mark.parametrize("cell", ROWS, ids=NAMES)
def test_workspace_width_is_the_ops_workspace(cell):
    variants = [{}] if not cell.options else [{"reset_after": v} for v in (True, False)]
    for options in variants:
        out = _forward(cell, **options)
        ws = out[-1]
        assert tuple(ws.shape) == cell.workspace_shape(T, B, H), (cell.name, options)
        assert ws.numel() == T * B * H * cell.workspace_width
        assert len(out) == 3 + cell.has_cell_state  # output, hy, [cy,] workspace


@pytest.mark.parametrize("cell", [c for c in ROWS if c.projection], ids=lambda c: c.projection.name)
def test_projection_workspace_width_is_the_ops_workspace(cell):
    ws = _forward(cell, projection=True)[-1]
    assert tuple(ws.shape) == cell.workspace_shape(T, B, H, projection=True)
    assert ws.shape[-1] == (len(cell.slots) + len(cell.projection.extra_slots)) * H


@pytest.mark.parametrize("cell", ROWS, ids=NAMES)
def test_gates_match_torch_nn(cell):
    # torch.nn's own module for the mode: its weight_ih_l0 has num_gates * H rows
    kwargs = {"nonlinearity": cell.nonlinearity} if cell.nonlinearity else {}
    cls = torch.nn.RNN if cell.nonlinearity else getattr(torch.nn, cell.mode)
    m = cls(I, H, **kwargs)
    assert m.mode == cell.mode
    assert m.weight_ih_l0.shape == (cell.num_gates * H, I)


@pytest.mark.parametrize("cell", ROWS, ids=NAMES)
def test_ops_exist_and_lookup_maps_every_spelling_to_one_cell(cell):
    names = [cell.name, cell.mode, cell.forward_op, cell.backward_op, *cell.variants.values()]
    if cell.projection:
        names += [cell.projection.name, cell.projection.forward_op, cell.projection.backward_op]
    for name in names:
        assert lookup(name) is cell, name
    for op in (cell.forward_op, cell.backward_op):
        assert hasattr(torch.ops.rnnfast, op)
    with pytest.raises(ValueError, match=r"unknown cell 'rnn'; valid cells: rnn_tanh, rnn_relu, gru, lstm"):
        lookup("rnn")


def test_every_cell_has_a_scratch_reference_and_the_same_names_everywhere():
    from rnnfast import functional, models
    assert set(scratch.REFERENCES) == set(NAMES)
    assert tuple(scratch.CELLS) == tuple(models.CELLS) == NAMES
    assert functional.GATES == {c.name: c.num_gates for c in ROWS}
    for c in ROWS:
        assert sorted(scratch.REFERENCES[c.name].textbook_order) == list(range(c.num_gates))


@pytest.mark.parametrize("cell", ROWS, ids=NAMES)
def test_scratch_reference_runs_the_registry_shapes(cell):
    # The reference's converters read the gate count from the registry: a torch.nn module's
    # parameters go to the textbook layout and back unchanged, and its forward matches torch.nn's.
    kwargs = {"nonlinearity": cell.nonlinearity} if cell.nonlinearity else {}
    cls = torch.nn.RNN if cell.nonlinearity else getattr(torch.nn, cell.mode)
    m = cls(I, H, dtype=torch.float64, **kwargs)
    params = scratch.from_torch_params(cell.name, dict(m.named_parameters()))
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(B, H, dtype=torch.float64)
    state = (h0, torch.randn(B, H, dtype=torch.float64)) if cell.has_cell_state else h0
    out, _ = scratch.layer(cell.name, x, state, params)
    ref, _ = m(x, (state[0][None], state[1][None]) if cell.has_cell_state else h0[None])
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_kinds_are_every_cell_and_variant_once():
    assert KINDS == ("rnn_tanh", "rnn_relu", "gru", "gru_reset_before", "lstm")
    for kind in KINDS:
        assert kind in NAMES or kind in lookup(kind).variants.values()
    assert CELLS["gru"].kind(False) == "gru_reset_before" and CELLS["gru"].kind(True) == "gru"
    assert CELLS["lstm"].kind() == "lstm"


@pytest.mark.parametrize("cell", ROWS, ids=NAMES)
def test_unchecked_op_call_by_registry_name_is_the_op(cell):
    # functional._run_op: the op of a registry cell by name, with no Python checks (what a module's
    # per-step path can call), gives the op's outputs minus the workspace, for every option value.
    from rnnfast import functional
    variants = [{}] if not cell.options else [{"reset_after": v} for v in (True, False)]
    for options in variants:
        torch.manual_seed(0)
        out = _forward(cell, **options)
        torch.manual_seed(0)
        G, width = cell.num_gates, H
        x = torch.randn(T, B, I, dtype=torch.float64)
        hx = torch.randn(B, width, dtype=torch.float64)
        w_ih = torch.randn(G * H, I, dtype=torch.float64)
        w_hh = torch.randn(G * H, width, dtype=torch.float64)
        b = torch.randn(G * H, dtype=torch.float64)
        cx = torch.randn(B, H, dtype=torch.float64) if cell.has_cell_state else None
        got = functional._run_op(cell.name, x, hx, cx, w_ih, w_hh, b, b.clone(), False,
                                 tuple(options[n] for n in cell.options), None)
        assert len(got) == len(out) - 1
        for g, o in zip(got, out):
            torch.testing.assert_close(g, o, rtol=0, atol=0)
