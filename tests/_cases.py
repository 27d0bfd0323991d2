"""Inputs shared by the CUDA op tests and the CPU emulation of the CUDA path."""
import torch

from rnnfast._cells import KINDS, lookup

# gates per C++ cell kind, from the registry (rnnfast._cells); "gru_reset_before" is the textbook
# GRU (the gru ops with reset_after=False)
GATES = {kind: lookup(kind).num_gates for kind in KINDS}


def make_args(cell, T, B, I, H, bias=True, device="cpu", dtype=torch.float64, seed=0):
    """Inputs like torch.nn's: weights U(-1/√H, 1/√H), states and inputs N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    G = GATES[cell]
    k = H ** -0.5

    def u(*shape):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * k).to(device, dtype)

    def n(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)

    a = dict(input=n(T, B, I), hx=n(B, H), w_ih=u(G * H, I), w_hh=u(G * H, H),
             b_ih=u(G * H) if bias else None, b_hh=u(G * H) if bias else None)
    if lookup(cell).has_cell_state:
        a["cx"] = n(B, H)
    return a
