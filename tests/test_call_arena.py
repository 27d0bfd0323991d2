"""What a small CPU call no longer allocates must never show in results (csrc/core/scratch.h
CallArena, csrc/python.cpp cpu_zero_state and with_leading_one):

- the forward's projection buffer, folded bias and step results, and an inference call's workspace
  rows, are pieces of a per-thread arena, lent for one op call and taken back when it returns;
- an inference call without initial states reads this thread's kept zeros instead of fresh ones;
- a single layer's h_n (and c_n) is the op's fresh (B, H) tensor reshaped in place to (1, B, H).

So: a call's results may not depend on the calls before it (other shapes on both sides of the
arena's size, other dtypes, grad and inference calls, the GRU's two-phase form that uses hg1), no
returned tensor may share memory with anything a later call writes (the arena, the kept zeros,
another returned tensor), and concurrent threads must not share any of it. Every result is also
held against torch.nn at explicit tolerances."""
import threading

import pytest
import torch

import rnnfast

# (cell, kwargs, I, H, B, T): xg + bias + step results well inside the 256 KiB arena, and (last
# two) LSTMs whose projection buffer alone passes it (B*T*4H*4 bytes = 256 KiB, 1 MiB), so the
# same sequence of calls also crosses to the allocating path and back.
CASES = [("GRU", {}, 1, 1, 1, 1), ("LSTM", {}, 3, 1, 2, 1), ("RNN", {}, 5, 8, 1, 1), ("RNN", {"nonlinearity": "relu"}, 64, 64, 1, 1), ("GRU", {}, 20, 20, 3, 5),
         ("GRU", {"reset_after": False}, 16, 33, 2, 4), ("LSTM", {}, 64, 64, 1, 8), ("LSTM", {}, 28, 100, 4, 3),
         ("LSTM", {}, 64, 64, 16, 16), ("LSTM", {}, 32, 128, 64, 8)]
IDS = [f"{c}{''.join(k)}-I{i}H{h}B{b}T{t}" for c, k, i, h, b, t in CASES]


def _pair(cell, kwargs, I, H, dtype, seed):
    torch.manual_seed(seed)
    ours = getattr(rnnfast, cell)(I, H, **kwargs).to(dtype)
    ref_kwargs = {k: v for k, v in kwargs.items() if k != "reset_after"}
    ref = getattr(torch.nn, cell)(I, H, **ref_kwargs).to(dtype)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _flat(r):
    out, states = r
    return [out, *(states if isinstance(states, tuple) else (states,))]


def _call(m, x, grad):
    """The outputs of an inference call, or of a grad call with the input and weight gradients."""
    if not grad:
        with torch.inference_mode():
            return _flat(m(x))
    m.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    res = _flat(m(x))
    sum(t.square().sum() for t in res).backward()
    return [t.detach() for t in res] + [x.grad] + [p.grad for p in m.parameters()]


def _inputs(case, dtype, seed):
    cell, kwargs, I, H, B, T = case
    ours, ref = _pair(cell, kwargs, I, H, dtype, seed)
    return ours, ref, torch.randn(T, B, I, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _all_calls(seed):
    """Every case, float32 and float64, inference and grad: {key: (results, reference results)}."""
    out = {}
    for i, case in enumerate(CASES):
        for dtype in (torch.float32, torch.float64):
            ours, ref, x = _inputs(case, dtype, seed + i)
            for grad in (False, True):
                if case[1].get("reset_after") is False:
                    want = None  # the textbook GRU has no torch.nn counterpart (tests/test_nn.py: scratch)
                else:
                    want = _call(ref, x, grad)
                out[(i, dtype, grad)] = (_call(ours, x, grad), want)
    return out


def test_results_match_torch_and_do_not_depend_on_earlier_calls():
    first = _all_calls(seed=10)
    kept = {k: [t.clone() for t in v[0]] for k, v in first.items()}
    _all_calls(seed=20)  # the same shapes with other weights and inputs: every piece reused
    again = _all_calls(seed=10)
    for key, (got, want) in first.items():
        tol = dict(rtol=1e-4, atol=1e-5) if key[1] == torch.float32 else dict(rtol=1e-10, atol=1e-12)
        if want is not None:
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, **tol)
        for a, b, c in zip(got, kept[key], again[key][0]):
            assert torch.equal(a, b), key  # the later calls wrote nothing into what the first returned
            assert torch.equal(c, b), key  # and the same call gives the same bits again


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_returned_tensors_own_their_memory(case):
    # In inference mode: h_n (c_n) is (1, B, H), contiguous, in storage of its own; writing into
    # every returned tensor changes neither the next call (its zero state, its arena) nor the
    # tensors another call returned.
    ours, _, x = _inputs(case, torch.float32, seed=3)
    with torch.inference_mode():
        first = _flat(ours(x))
        kept = [t.clone() for t in first]
        B, H = x.size(1), ours.hidden_size
        storages = {t.untyped_storage().data_ptr() for t in first}
        assert len(storages) == len(first)
        for state in first[1:]:
            assert state.shape == (1, B, H) and state.is_contiguous()
        for t in first:
            t.fill_(float("nan"))
        second = _flat(ours(x))
        third = _flat(ours(x))
    for a, b, c in zip(second, kept, third):
        assert torch.equal(a, b) and torch.equal(c, b)
    for a, b in zip(second, third):
        assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()


def test_zero_state_equals_explicit_zeros():
    # None and explicit zeros are the same call (the kept zeros are zeros, whatever ran before)
    for case in CASES:
        ours, _, x = _inputs(case, torch.float32, seed=4)
        B, H = x.size(1), ours.hidden_size
        zeros = torch.zeros(1, B, H)
        hx = (zeros, zeros.clone()) if case[0] == "LSTM" else zeros
        with torch.inference_mode():
            for a, b in zip(_flat(ours(x)), _flat(ours(x, hx))):
                assert torch.equal(a, b), case


def test_under_deterministic_algorithms():
    # torch.use_deterministic_algorithms fills uninitialized memory: the returned tensors are then
    # made by at::empty (core/tensors.h new_tensor); the results are the same bits.
    plain = _all_calls(seed=30)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        det = _all_calls(seed=30)
    finally:
        torch.use_deterministic_algorithms(was)
    for key in plain:
        for a, b in zip(plain[key][0], det[key][0]):
            assert torch.equal(a, b), key


def test_threads_do_not_share_arena_or_zeros():
    # each thread its own arena and kept zeros: concurrent small calls of different shapes (the
    # smallest keep the GIL, the larger let it go) give each the results of the same call alone
    made = [_inputs(case, torch.float32, seed=40 + i) for i, case in enumerate(CASES)]
    alone = [_call(m, x, False) for m, _, x in made] + [_call(m, x, True) for m, _, x in made]
    results, errors = [[] for _ in alone], []

    def work(j):
        m, _, x = made[j % len(made)]
        try:
            for _ in range(20):
                results[j].append(_call(m, x, j >= len(made)))
        except Exception as err:  # reported below, not swallowed
            errors.append(err)

    # one inference and one grad thread per module (only the grad thread writes its .grad)
    threads = [threading.Thread(target=work, args=(j,)) for j in range(len(alone))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for j in range(len(alone)):
        assert len(results[j]) == 20
        for r in results[j]:
            for a, b in zip(r, alone[j]):
                assert torch.equal(a, b)


@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_expanded_input_and_states(cell):
    # stride-0 (expanded) input and states at batch 1-2 and hidden 1-20, through the same small
    # calls, against torch.nn (outputs and, with grad, the gradients)
    for I, H, B, T in ((1, 1, 1, 1), (4, 20, 2, 3)):
        ours, ref = _pair(cell, {}, I, H, torch.float64, seed=50)
        x = torch.randn(1, 1, I, dtype=torch.float64).expand(T, B, I)
        h = torch.randn(1, 1, H, dtype=torch.float64).expand(1, B, H)
        hx = (h, h) if cell == "LSTM" else h
        with torch.inference_mode():
            for a, b in zip(_flat(ours(x, hx)), _flat(ref(x, hx))):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        got, want = _call(ours, x, True), _call(ref, x, True)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
