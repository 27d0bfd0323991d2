"""The CPU forward's input projection in chunks of steps (csrc/cpu/backend.h
projection_chunk_steps, csrc/core/loop.h ChunkedProjection): above 8 MiB of (T*B, G*H) projection
the forward projects X W_ihᵀ a chunk of steps at a time into one reused buffer, interleaved with
the recurrence, instead of one GEMM over all T*B rows. Which path ran is read from the profiler
(each projection is one rnnfast::input_projection scope). Every variant that reads the projection
differently (both directions, lengths, the two-phase GRU, the LSTM projection hook, float64, the
batch-split recurrence at 2 threads, an inference call without workspace) against torch.nn or
float64, forward and every gradient, with chunk boundaries that do not divide T."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.profiler import ProfilerActivity, profile

import rnnfast

PROJECTION_EVENT = "rnnfast::input_projection"
MIB = 1 << 20
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def chunk_steps(T, B, row_elems, elem_bytes):
    """backend.h's rule, restated: the test checks the extension follows it."""
    row_bytes = row_elems * elem_bytes
    if T * B * row_bytes <= 8 * MIB:
        return T
    rows = max(1024, 4 * MIB // row_bytes)
    chunks = max(1, T * B // rows)
    return -(-T // chunks)


def projections(T, B, row_elems, elem_bytes):
    return -(-T // chunk_steps(T, B, row_elems, elem_bytes))


def projections_seen(fn):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name == PROJECTION_EVENT)


def test_rule_examples():
    # H = 64 LSTM, float32: 1 KiB rows; 8 MiB is 8192 rows
    assert chunk_steps(35, 128, 256, 4) == 35              # 4.4 MiB: one GEMM
    assert chunk_steps(101, 90, 256, 4) == 51              # 8.9 MiB: 2 chunks of 4096+ rows, 51 + 50 steps
    assert chunk_steps(200, 128, 1024, 4) == 8             # 100 MiB, 4 KiB rows: 1024-row chunks
    assert chunk_steps(35, 32, 4096, 4) == 35              # 17.5 MiB but 16 KiB rows: 1120 rows, one chunk
    assert chunk_steps(1, 1, 4096, 4) == 1
    assert chunk_steps(77, 120, 384, 4) == 26


# (module, kwargs, T, B, I, H): each above the threshold, T not a multiple of the chunk
CASES = [
    ("RNN", {}, 101, 90, 8, 256),                          # 1 KiB rows: 2 chunks, 51 + 50 steps
    ("RNN", {"nonlinearity": "relu", "bidirectional": True}, 101, 90, 8, 256),
    ("GRU", {}, 77, 120, 8, 128),                          # 1.5 KiB rows: 3 chunks, 26 + 26 + 25
    ("GRU", {"reset_after": False}, 77, 120, 8, 128),     # two phases: the mid-step GEMM
    ("LSTM", {}, 101, 90, 8, 64),
    ("LSTM", {"bidirectional": True, "num_layers": 2}, 101, 90, 8, 64),
    ("LSTM", {"proj_size": 16}, 101, 90, 8, 64),          # the projection hook (no batch split)
]


def make(name, kw, I, H, dtype=torch.float32):
    torch.manual_seed(0)
    ref_kw = {k: v for k, v in kw.items() if k != "reset_after"}
    got = getattr(rnnfast, name)(I, H, **kw).to(dtype)
    if kw.get("reset_after") is False:  # no torch.nn counterpart: float64 of the same module
        ref = getattr(rnnfast, name)(I, H, **kw).double()
    else:
        ref = getattr(torch.nn, name)(I, H, **ref_kw).to(dtype)
    ref.load_state_dict(got.state_dict())
    return ref, got


def run(module, x, lengths=None):
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None else x
    out, state = module(inp)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=x.size(0))
    h = state[0] if isinstance(state, tuple) else state
    (out.pow(2).sum() + 0.5 * h.sum()).backward()
    return [out, h, x.grad] + [p.grad for p in module.parameters()]


# float32: a weight gradient here sums 7,000-9,090 rows, which the two libraries' GEMMs add in orders of
# their own, and MKL's order depends on the CPU: RNN H = 256 came 5e-5 to 8e-5 apart (values ~2) on an
# AVX2 Zen 2 core, within 2e-5 on AVX-512 Sapphire Rapids.
TOL32 = 1e-4


def check_close(got, ref, tol):
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=tol, atol=tol)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name,kw,T,B,I,H", CASES, ids=lambda v: str(v))
def test_chunked_matches_reference(name, kw, T, B, I, H, threads):
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ref, got = make(name, kw, I, H)
        x = torch.randn(T, B, I)
        rows = GATES[name] * H
        layers = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
        with torch.no_grad():
            assert projections_seen(lambda: got(x)) == layers * projections(T, B, rows, 4) > layers
        ref_x = x.double() if next(ref.parameters()).dtype == torch.float64 else x
        full = run(got, x)
        check_close(full, run(ref, ref_x), TOL32)
        with torch.inference_mode():  # the forward without workspace: the same outputs, bit for bit
            torch.testing.assert_close(got(x)[0], full[0].detach(), rtol=0, atol=0)
    finally:
        torch.set_num_threads(prev)


@pytest.mark.parametrize("name,kw,H", [("LSTM", {}, 64), ("GRU", {}, 128), ("RNN", {"bidirectional": True}, 256)],
                         ids=lambda v: str(v))
def test_chunked_with_lengths(name, kw, H):
    """Variable lengths: frozen rows inside and across chunk boundaries, both directions."""
    T, B, I = 101, 90, 8
    assert projections(T, B, GATES[name] * H, 4) > 1
    ref, got = make(name, kw, I, H)
    x = torch.randn(T, B, I)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    lengths[1] = 51  # exactly a chunk boundary for the LSTM
    check_close(run(got, x, lengths), run(ref, x, lengths), TOL32)


def test_chunked_float64():
    """float64 rows are twice as wide: the threshold is reached at half the rows."""
    T, B, I, H = 60, 80, 8, 64
    assert projections(T, B, 4 * H, 8) == 2 and projections(T, B, 4 * H, 4) == 1
    ref, got = make("LSTM", {}, I, H, torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.no_grad():
        assert projections_seen(lambda: got(x)) == 2
    check_close(run(got, x), run(ref, x), 1e-10)


def test_below_threshold_one_projection():
    _, got = make("LSTM", {}, 8, 64)
    with torch.no_grad():
        assert projections_seen(lambda: got(torch.randn(35, 128, 8))) == 1
