"""rnnfast.data samplers: shapes, shift by one, contiguity, coverage, reproducibility, errors.

Most checks run on corpus = arange(L), where a token id is its own position, so every batch
tells where in the corpus it came from.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnfast.data import (
    SeqDataLoader,
    Vocab,
    load_corpus_time_machine,
    load_data,
    load_data_time_machine,
    seq_data_iter_random,
    seq_data_iter_sequential,
)
from rnnfast.data.sampling import _num_batches

FAST = settings(max_examples=60, deadline=None)


@st.composite
def sizes(draw):
    batch_size = draw(st.integers(1, 6))
    num_steps = draw(st.integers(1, 8))
    length = draw(st.integers((batch_size + 1) * num_steps + 1, 200))  # enough for both samplers
    seed = draw(st.integers(0, 2**31 - 1))
    return length, batch_size, num_steps, seed


def check_random_epoch(batches, L, B, T):
    """Asserts the random-sampling contract for one epoch over arange(L); returns the offset."""
    assert batches, "at least one minibatch"
    starts = []
    for X, Y in batches:
        assert X.shape == Y.shape == (B, T) and X.dtype == torch.int64
        assert torch.equal(Y, X + 1)                          # Y is X shifted by one token
        # each row is a contiguous run of the corpus
        assert torch.equal(X, X[:, :1] + torch.arange(T))
        starts += X[:, 0].tolist()
    offset = starts[0] % T
    assert 0 <= offset < T
    num_subseqs = (L - 1 - offset) // T
    assert all(s % T == offset for s in starts)               # on the grid offset + k*T
    assert all(offset <= s and s + T <= L - 1 for s in starts)  # Y stays inside the corpus
    assert len(set(starts)) == len(starts)                    # disjoint, no repeats
    assert len(batches) == num_subseqs // B
    assert len(starts) == (num_subseqs // B) * B
    return offset


def check_sequential_epoch(batches, L, B, T):
    """Asserts the sequential-partitioning contract for one epoch over arange(L)."""
    assert batches
    offset = int(batches[0][0][0, 0])
    assert 0 <= offset <= T                                   # d2l: random.randint(0, num_steps)
    cols = (L - offset - 1) // B                              # tokens per row
    assert len(batches) == cols // T
    for i, (X, Y) in enumerate(batches):
        assert X.shape == Y.shape == (B, T)
        assert torch.equal(Y, X + 1)
        expected = offset + torch.arange(B)[:, None] * cols + i * T + torch.arange(T)
        assert torch.equal(X, expected)
        if i:
            # row r of batch i starts exactly where row r of batch i-1 ended
            assert torch.equal(X[:, 0], batches[i - 1][0][:, -1] + 1)
    return offset


# --- the textbook's own example: list(range(35)), batch_size=2, num_steps=5 -----------------

def test_textbook_example_random_and_sequential():
    for seed in range(8):
        rb = list(seq_data_iter_random(list(range(35)), 2, 5, generator=seed))
        assert len(rb) == 3
        check_random_epoch(rb, 35, 2, 5)
        sb = list(seq_data_iter_sequential(list(range(35)), 2, 5, generator=seed))
        offset = check_sequential_epoch(sb, 35, 2, 5)
        assert len(sb) == (3 if offset < 5 else 2)  # the textbook's offset 5 leaves 14 columns


@FAST
@given(sizes())
def test_random_sampler_properties(args):
    L, B, T, seed = args
    corpus = torch.arange(L)
    batches = list(seq_data_iter_random(corpus, B, T, generator=seed))
    check_random_epoch(batches, L, B, T)
    again = list(seq_data_iter_random(corpus, B, T, generator=torch.Generator().manual_seed(seed)))
    assert len(again) == len(batches)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))


@FAST
@given(sizes())
def test_sequential_sampler_properties(args):
    L, B, T, seed = args
    batches = list(seq_data_iter_sequential(torch.arange(L), B, T, generator=seed))
    check_sequential_epoch(batches, L, B, T)
    # minibatches are views of the corpus, not copies
    corpus = torch.arange(L)
    X, _ = next(iter(seq_data_iter_sequential(corpus, B, T, generator=seed)))
    assert X.untyped_storage().data_ptr() == corpus.untyped_storage().data_ptr()


@FAST
@given(st.integers(1, 6), st.integers(1, 8), st.data())
def test_size_rule_is_exact(B, T, data):
    """L >= B*T + max_offset + 1  <=>  every offset in [0, max_offset] yields >= 1 minibatch, where
    max_offset is T-1 for random sampling and T for sequential partitioning (the textbook's ranges)."""
    L = data.draw(st.integers(T + 1, (B + 3) * T))
    for random, fn, max_offset in ((True, seq_data_iter_random, T - 1),
                                   (False, seq_data_iter_sequential, T)):
        need = B * T + max_offset + 1
        every_offset_ok = all(_num_batches(L, B, T, off, random) >= 1 for off in range(max_offset + 1))
        assert every_offset_ok == (L >= need)
        if L >= need:
            assert len(list(fn(torch.arange(L), B, T, generator=0))) >= 1
        else:
            with pytest.raises(ValueError, match=rf"corpus too short.*= {need} tokens"):
                fn(torch.arange(L), B, T)


def test_offsets_cover_range_and_seeds_differ():
    corpus = torch.arange(500)
    offsets = {int(next(iter(seq_data_iter_sequential(corpus, 4, 7, generator=s)))[0][0, 0])
               for s in range(200)}
    assert offsets == set(range(8))  # sequential: [0, num_steps], as d2l's random.randint(0, num_steps)
    rand_offsets = {int(next(iter(seq_data_iter_random(corpus, 4, 7, generator=s)))[0].min()) % 7
                    for s in range(200)}
    assert rand_offsets == set(range(7))
    a = [x for x, _ in seq_data_iter_random(corpus, 4, 7, generator=1)]
    b = [x for x, _ in seq_data_iter_random(corpus, 4, 7, generator=2)]
    assert len(a) != len(b) or not all(torch.equal(x, y) for x, y in zip(a, b))
    # random sampling visits subsequences in random order, not in corpus order
    starts = torch.cat([x[:, 0] for x in a])
    assert len(starts) == 68 and not bool((starts[1:] > starts[:-1]).all())


def test_global_rng_when_no_generator():
    corpus = torch.arange(300)
    torch.manual_seed(123)
    a = [x for x, _ in seq_data_iter_random(corpus, 3, 5)]
    torch.manual_seed(123)
    b = [x for x, _ in seq_data_iter_random(corpus, 3, 5)]
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_sampler_bad_inputs():
    c = torch.arange(100)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        seq_data_iter_random(c, 2, 0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        seq_data_iter_sequential(c, 0, 5)
    with pytest.raises(TypeError, match="num_steps must be an int"):
        seq_data_iter_sequential(c, 2, 5.0)
    with pytest.raises(ValueError, match="corpus too short: 100 tokens.*need at least .* = 111 tokens"):
        seq_data_iter_sequential(c, 10, 10)
    with pytest.raises(ValueError, match="corpus too short: 0 tokens"):
        seq_data_iter_random([], 1, 1)
    with pytest.raises(TypeError, match="integer tensor"):
        seq_data_iter_random(c.float(), 2, 5)
    with pytest.raises(TypeError, match="integer tensor"):
        seq_data_iter_random("abcdef", 2, 5)
    with pytest.raises(ValueError, match="must be 1-D"):
        seq_data_iter_sequential(c.view(10, 10), 2, 3)
    with pytest.raises(TypeError, match="generator must be"):
        seq_data_iter_random(c, 2, 5, generator="seed")


# --- SeqDataLoader --------------------------------------------------------------------------

def epoch(loader):
    return [(X.clone(), Y.clone()) for X, Y in loader]


def same_epochs(a, b):
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
                                    for x, y in zip(a, b))


@pytest.mark.parametrize("use_random_iter", [False, True])
def test_loader_len_is_next_epoch_count_and_epochs_reproducible(use_random_iter):
    corpus = torch.arange(1012)
    loader = SeqDataLoader(corpus, None, 7, 9, use_random_iter, seed=5)
    twin = SeqDataLoader(corpus, None, 7, 9, use_random_iter, seed=5)
    other = SeqDataLoader(corpus, None, 7, 9, use_random_iter, seed=6)
    lengths, epochs = set(), []
    for _ in range(12):
        n = len(loader)
        assert len(loader) == n                     # asking does not consume randomness
        e = epoch(loader)
        assert len(e) == n
        lengths.add(n)
        (check_random_epoch if use_random_iter else check_sequential_epoch)(e, 1012, 7, 9)
        assert same_epochs(e, epoch(twin))
        epochs.append(e)
    assert lengths == {15, 16}  # count depends on the offset, by one
    assert not all(same_epochs(a, b) for a, b in zip(epochs, epochs[1:]))  # fresh each epoch
    assert not all(same_epochs(a, epoch(other)) for a in epochs[:4])
    assert (loader.batch_size, loader.num_steps, loader.use_random_iter) == (7, 9, use_random_iter)
    assert loader.corpus is corpus and loader.vocab is None


def test_loader_state_dict_resumes_exactly():
    corpus, vocab = load_corpus_time_machine(max_tokens=5000)
    a = SeqDataLoader(corpus, vocab, 8, 10, use_random_iter=True, seed=11)
    epoch(a)
    state = a.state_dict()
    expected = [epoch(a) for _ in range(2)]
    b = SeqDataLoader(corpus, vocab, 8, 10, use_random_iter=True, seed=999)
    b.load_state_dict(state)
    assert len(b) == len(expected[0])
    assert all(same_epochs(epoch(b), e) for e in expected)
    c = SeqDataLoader(corpus, vocab, 8, 11, use_random_iter=True)
    with pytest.raises(ValueError, match="num_steps=10"):
        c.load_state_dict(state)
    with pytest.raises(ValueError, match="generator_state"):
        a.load_state_dict({"batch_size": 8})


def test_loader_seed_none_follows_torch_manual_seed():
    corpus = torch.arange(400)
    torch.manual_seed(7)
    a = epoch(SeqDataLoader(corpus, None, 4, 5, True))
    torch.manual_seed(7)
    b = epoch(SeqDataLoader(corpus, None, 4, 5, True))
    assert same_epochs(a, b)


def test_loader_bad_inputs():
    c = torch.arange(50)
    with pytest.raises(ValueError, match="corpus too short"):
        SeqDataLoader(c, None, 10, 5)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        SeqDataLoader(c, None, 2, 0)
    with pytest.raises(ValueError, match="outside the vocabulary of 3"):
        SeqDataLoader(c, Vocab(["a", "b"]), 2, 5)
    with pytest.raises(TypeError, match="vocab must be"):
        SeqDataLoader(c % 3, ["a", "b", "c"], 2, 5)


def test_load_data_time_machine_textbook():
    loader, vocab = load_data_time_machine(32, 35, seed=0)
    assert len(vocab) == 28 and len(loader.corpus) == 10000
    # (10000 - offset - 1) // 32 is 311 or 312 columns for offsets in [0, 35] -> 8 minibatches
    batches = epoch(loader)
    assert len(batches) == len(loader) == 8
    X, Y = batches[0]
    assert X.shape == Y.shape == (32, 35)
    # Y is X shifted by one within each row; across batches rows continue
    assert torch.equal(X[:, 1:], Y[:, :-1])
    assert torch.equal(batches[1][0][:, 0], Y[:, -1])
    r_loader, _ = load_data_time_machine(32, 35, use_random_iter=True, seed=0)
    assert r_loader.use_random_iter and all(x.shape == (32, 35) for x, _ in r_loader)


def test_load_data_heldout_with_train_vocab(tmp_path):
    _, vocab = load_data_time_machine(4, 5)
    loader, v = load_data("war_of_the_worlds", 16, 20, vocab=vocab, max_tokens=3000, seed=1)
    assert v is vocab and len(loader.corpus) == 3000
    f = tmp_path / "tiny.txt"
    f.write_text("just a few words\n")
    with pytest.raises(ValueError, match="corpus too short: 16 tokens"):
        load_data(f, 4, 5)
    wl, wv = load_data(f, 1, 1, token="word")
    assert wv.idx_to_token[1:] == ["just", "a", "few", "words"] and len(wl) >= 1


@pytest.mark.cuda
@pytest.mark.parametrize("use_random_iter", [False, True])
def test_loader_on_cuda_corpus_matches_cpu(use_random_iter):
    corpus = torch.arange(2000)
    cpu = epoch(SeqDataLoader(corpus, None, 8, 12, use_random_iter, seed=3))
    gpu = epoch(SeqDataLoader(corpus.cuda(), None, 8, 12, use_random_iter, seed=3))
    assert all(x.is_cuda and y.is_cuda for x, y in gpu)
    assert same_epochs(cpu, [(x.cpu(), y.cpu()) for x, y in gpu])
