"""Inputs shared by the CUDA op tests and the CPU emulation of the CUDA path."""
import torch

# gates per cell; "gru_reset_before" is the textbook GRU (reset_after=False)
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "gru_reset_before": 3, "lstm": 4}


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
    if cell == "lstm":
        a["cx"] = n(B, H)
    return a
