"""The cell registry: every recurrent cell rnnfast knows, one row each, read by every Python room
(_ops, functional, nn, models, scratch, cli). Adding a cell on the Python side is one row here
(plus its C++ definition in csrc/core/cells.h and its reference in rnnfast.scratch; see
docs/design.md §12, "How to add a cell").

One spelling per cell: ``name`` ("rnn_tanh", "rnn_relu", "gru", "lstm") is the cell's name
everywhere in rnnfast, the prefix of its ops (``torch.ops.rnnfast.<name>_forward``) and the C++
``CellKind``. torch.nn's mode strings ("RNN_TANH", ...) and the op names map to it through
``lookup``.

A row holds what the Python layer needs to know about a cell and nothing of its math:
    gates      gate names in torch.nn's order (w_ih / w_hh have len(gates) * H rows)
    slots      the workspace the forward op saves for backward: one H-wide slot per name, so the
               workspace is (T, B, len(slots) * H), or (0,) when there are none (must equal the
               slots of csrc/core/cells.h: tests/test_cells_registry.py checks it against the ops)
    has_cell_state   an LSTM-like cell: the ops take and return cx / cy besides hx / hy
    options    op arguments between ``reverse`` and ``lengths`` (gru: reset_after)
    variants   the C++ cell kind per value of the options (gru: reset_after=False is the textbook
               form, kind "gru_reset_before")
    projection the cell whose ops also run torch.nn.LSTM's projection (proj_size): its op prefix and
               its extra slots
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

__all__ = ["Cell", "Projection", "CELLS", "NAMES", "KINDS", "lookup"]


class _Ops:
    """The op names of an entry whose `name` is an op prefix: torch.ops.rnnfast.<name>_forward / _backward."""

    @property
    def forward_op(self) -> str:
        return f"{self.name}_forward"

    @property
    def backward_op(self) -> str:
        return f"{self.name}_backward"


@dataclass(frozen=True)
class Projection(_Ops):
    """The projection variant of a cell (LSTM proj_size > 0): h_t = m_t W_hrᵀ, with m_t saved."""
    name: str                       # op prefix: torch.ops.rnnfast.<name>_forward / _backward
    extra_slots: Tuple[str, ...]    # slots after the cell's own



@dataclass(frozen=True)
class Cell(_Ops):
    name: str
    mode: str                                   # torch.nn.RNNBase.mode
    gates: Tuple[str, ...]
    slots: Tuple[str, ...]
    has_cell_state: bool = False
    nonlinearity: Optional[str] = None          # torch.nn.RNN's nonlinearity argument
    options: Tuple[str, ...] = ()
    variants: Dict[bool, str] = field(default_factory=dict)
    projection: Optional[Projection] = None

    @property
    def num_gates(self) -> int:
        """G: rows of w_ih / w_hh are G * hidden_size."""
        return len(self.gates)

    @property
    def workspace_width(self) -> int:
        """Workspace columns per hidden unit (the number of H-wide slots)."""
        return len(self.slots)

    def workspace_shape(self, T: int, B: int, H: int, projection: bool = False) -> Tuple[int, ...]:
        width = self.workspace_width + (len(self.projection.extra_slots) if projection else 0)
        return (T, B, width * H) if width else (0,)


    def kind(self, *option_values) -> str:
        """The C++ CellKind name for these option values (gru: reset_after)."""
        if not self.variants:
            return self.name
        return self.variants[bool(option_values[0]) if option_values else True]


_ROWS = (
    Cell("rnn_tanh", "RNN_TANH", gates=("a",), slots=(), nonlinearity="tanh"),
    Cell("rnn_relu", "RNN_RELU", gates=("a",), slots=(), nonlinearity="relu"),
    # slots: r, z, n after their nonlinearity; hn = W_hn h + b_hn (reset_after) or r * h (not)
    Cell("gru", "GRU", gates=("r", "z", "n"), slots=("r", "z", "n", "hn"), options=("reset_after",),
         variants={True: "gru", False: "gru_reset_before"}),
    # slots: gates after their nonlinearity and the new cell state c; the projection adds
    # m = o * tanh(c), the projection's input (h = m W_hrᵀ)
    Cell("lstm", "LSTM", gates=("i", "f", "g", "o"), slots=("i", "f", "g", "o", "c"), has_cell_state=True,
         projection=Projection("lstm_proj", extra_slots=("m",))),
)

#: name -> Cell, in a fixed order (the order of CLI help, test parametrization, ...)
CELLS: Dict[str, Cell] = {c.name: c for c in _ROWS}
#: the cell names
NAMES: Tuple[str, ...] = tuple(CELLS)

#: every C++ cell kind (csrc/core/cells.h CellKind), each cell's variants after its name:
#: rnn_tanh, rnn_relu, gru, gru_reset_before, lstm
KINDS: Tuple[str, ...] = tuple(k for c in _ROWS for k in dict.fromkeys((c.name, *c.variants.values())))

_ALIASES: Dict[str, Cell] = {}
for _c in _ROWS:
    _ALIASES[_c.mode] = _c
    for _op in (_c.forward_op, _c.backward_op):
        _ALIASES[_op] = _c
    if _c.projection is not None:
        _ALIASES[_c.projection.name] = _c
        for _op in (_c.projection.forward_op, _c.projection.backward_op):
            _ALIASES[_op] = _c
    for _kind in _c.variants.values():
        _ALIASES[_kind] = _c
del _c, _op


def lookup(name: str) -> Cell:
    """The Cell of a cell name, a torch.nn mode string ("RNN_TANH", "LSTM"), an op name
    ("gru_forward", "lstm_proj_backward") or a C++ cell kind ("gru_reset_before").
    ValueError naming the valid cells otherwise."""
    if isinstance(name, str):
        cell = CELLS.get(name) or _ALIASES.get(name)
        if cell is not None:
            return cell
    raise ValueError(f"unknown cell {name!r}; valid cells: {', '.join(NAMES)}")
