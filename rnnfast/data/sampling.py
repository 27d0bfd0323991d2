"""Minibatch samplers of the textbook (d2l, "Language models and the dataset").

Both samplers cut one 1-D tensor of token ids into ``(X, Y)`` pairs of shape
``(batch_size, num_steps)`` with ``Y`` = ``X`` shifted by one token. Each epoch starts at a
random offset, as in the textbook: in ``[0, num_steps - 1]`` for random sampling and in
``[0, num_steps]`` for sequential partitioning (d2l's ``random.randint(0, num_steps - 1)`` and
``random.randint(0, num_steps)``). Batches are views or single gathers of the corpus tensor; no
Python list is built per batch.

Size rule: a corpus of ``L`` tokens gives at least one minibatch for *every* offset iff
``L >= batch_size * num_steps + max_offset + 1``, i.e. ``(batch_size + 1) * num_steps`` for random
sampling and one token more for sequential partitioning; shorter corpora are rejected with
ValueError.
"""
from __future__ import annotations

from typing import Iterator, Optional, Union

import torch

from .text import PathLike, Vocab, load_corpus

__all__ = [
    "seq_data_iter_random",
    "seq_data_iter_sequential",
    "SeqDataLoader",
    "load_data_time_machine",
    "load_data",
]

GeneratorLike = Optional[Union[torch.Generator, int]]
Batch = tuple[torch.Tensor, torch.Tensor]


def _check_corpus(corpus) -> torch.Tensor:
    if isinstance(corpus, (list, tuple, range)):
        # The textbook demonstrates the samplers on list(range(35)); accept such sequences.
        corpus = torch.as_tensor(list(corpus)) if len(corpus) else torch.empty(0, dtype=torch.int64)
    if not isinstance(corpus, torch.Tensor):
        raise TypeError(f"corpus must be a 1-D integer tensor, got {type(corpus).__name__}")
    if corpus.dtype.is_floating_point or corpus.dtype.is_complex or corpus.dtype == torch.bool:
        raise TypeError(f"corpus must be a 1-D integer tensor of token ids, got dtype {corpus.dtype}")
    if corpus.dim() != 1:
        raise ValueError(f"corpus must be 1-D, got shape {tuple(corpus.shape)}")
    return corpus


def _id_range(corpus: torch.Tensor, vocab_size: int) -> tuple[int, int]:
    """(min, max) of the ids, read in slices (a memory-mapped corpus may not fit in memory); an
    unsigned dtype whose every value is a valid id needs no pass at all."""
    if corpus.numel() == 0:
        return 0, 0
    if corpus.dtype in (torch.uint8, torch.uint16) and 2 ** (8 * corpus.element_size()) <= vocab_size:
        return 0, 0
    lo, hi, step = None, None, 1 << 24
    for i in range(0, corpus.numel(), step):
        part = corpus[i:i + step]
        if part.dtype == torch.uint16:
            part = part.int()  # min/max are not implemented for uint16
        a, b = int(part.min()), int(part.max())
        lo, hi = (a, b) if lo is None else (min(lo, a), max(hi, b))
    return lo, hi


def _max_offset(num_steps: int, random: bool) -> int:
    # The textbook's ranges: random.randint(0, num_steps - 1) and random.randint(0, num_steps).
    return num_steps - 1 if random else num_steps


def _check_sizes(num_tokens: int, batch_size: int, num_steps: int, random: bool) -> None:
    for name, v in (("batch_size", batch_size), ("num_steps", num_steps)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    max_offset = _max_offset(num_steps, random)
    need = batch_size * num_steps + max_offset + 1
    if num_tokens < need:
        raise ValueError(
            f"corpus too short: {num_tokens} tokens, but batch_size={batch_size} and "
            f"num_steps={num_steps} need at least batch_size * num_steps + {max_offset + 1} = {need} "
            f"tokens so that every random offset in [0, {max_offset}] still yields one minibatch"
        )


def _as_generator(generator: GeneratorLike) -> Optional[torch.Generator]:
    """torch.Generator as is, an int seeds a fresh one, None means torch's global RNG."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")


def _draw_offset(num_steps: int, random: bool, gen: Optional[torch.Generator]) -> int:
    # The single draw that starts every epoch of both samplers (SeqDataLoader.__len__ replays it).
    device = gen.device if gen is not None else "cpu"
    high = _max_offset(num_steps, random) + 1
    return int(torch.randint(0, high, (1,), generator=gen, device=device).item())


def _num_batches(num_tokens: int, batch_size: int, num_steps: int, offset: int, random: bool) -> int:
    """Minibatches one epoch yields from ``num_tokens`` tokens starting at ``offset``."""
    if random:
        return ((num_tokens - 1 - offset) // num_steps) // batch_size
    return ((num_tokens - offset - 1) // batch_size) // num_steps


def _random_batches(corpus, batch_size, num_steps, offset, gen) -> Iterator[Batch]:
    num_subseqs = (len(corpus) - 1 - offset) // num_steps
    n = num_subseqs * num_steps
    # Subsequence k is corpus[offset + k*num_steps : offset + (k+1)*num_steps].
    Xs = corpus[offset:offset + n].view(num_subseqs, num_steps)
    Ys = corpus[offset + 1:offset + 1 + n].view(num_subseqs, num_steps)
    device = gen.device if gen is not None else "cpu"
    order = torch.randperm(num_subseqs, generator=gen, device=device).to(corpus.device)
    num_batches = num_subseqs // batch_size
    rows = order[:num_batches * batch_size].view(num_batches, batch_size)
    for i in range(num_batches):
        # .long(): compact (memory-mapped uint8/uint16/int32) corpora become int64 per minibatch
        yield Xs[rows[i]].long(), Ys[rows[i]].long()


def _sequential_batches(corpus, batch_size, num_steps, offset) -> Iterator[Batch]:
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    Xs = corpus[offset:offset + num_tokens].view(batch_size, -1)
    Ys = corpus[offset + 1:offset + 1 + num_tokens].view(batch_size, -1)
    for i in range(Xs.shape[1] // num_steps):
        yield (Xs[:, i * num_steps:(i + 1) * num_steps].long(),
               Ys[:, i * num_steps:(i + 1) * num_steps].long())


def seq_data_iter_random(corpus, batch_size: int, num_steps: int,
                         generator: GeneratorLike = None) -> Iterator[Batch]:
    """Random sampling: disjoint subsequences of ``num_steps`` tokens in random order.

    ``corpus[offset:]`` (random offset in [0, num_steps-1]) is cut into
    ``(len - 1 - offset) // num_steps`` subsequences; yields ``num_subseqs // batch_size``
    minibatches ``(X, Y)`` of shape (batch_size, num_steps). Adjacent minibatches are not
    adjacent in the text. ``generator``: torch.Generator, int seed, or None (global RNG).
    Arguments are checked when called, the offset is drawn when called.
    """
    corpus = _check_corpus(corpus)
    _check_sizes(len(corpus), batch_size, num_steps, random=True)
    gen = _as_generator(generator)
    offset = _draw_offset(num_steps, True, gen)
    return _random_batches(corpus, batch_size, num_steps, offset, gen)


def seq_data_iter_sequential(corpus, batch_size: int, num_steps: int,
                             generator: GeneratorLike = None) -> Iterator[Batch]:
    """Sequential partitioning: minibatch i+1 continues minibatch i row by row.

    From a random offset in [0, num_steps] (the textbook's range), ``num_tokens = ((len - offset - 1) // batch_size)
    * batch_size`` tokens are laid out as ``batch_size`` rows; minibatch i is columns
    ``[i*num_steps, (i+1)*num_steps)`` (views). Use it to carry hidden state across minibatches.
    """
    corpus = _check_corpus(corpus)
    _check_sizes(len(corpus), batch_size, num_steps, random=False)
    offset = _draw_offset(num_steps, False, _as_generator(generator))
    return _sequential_batches(corpus, batch_size, num_steps, offset)


class SeqDataLoader:
    """Iterable over ``(X, Y)`` minibatches of a corpus, one epoch per ``iter()``.

    Each ``iter()`` draws a fresh offset (and, for random sampling, a fresh order) from the
    loader's own torch.Generator, seeded once with ``seed`` (None: drawn from torch's global
    RNG, so ``torch.manual_seed`` makes it reproducible). ``len(loader)`` is the exact number of
    minibatches the *next* ``iter()`` will yield (it depends on that epoch's offset, by at most
    one). ``state_dict()`` / ``load_state_dict()`` save and restore the generator, so a resumed
    run sees the same epochs.
    """

    def __init__(self, corpus, vocab: Optional[Vocab], batch_size: int, num_steps: int,
                 use_random_iter: bool = False, seed: Optional[int] = None):
        corpus = _check_corpus(corpus)
        _check_sizes(len(corpus), batch_size, num_steps, bool(use_random_iter))
        if vocab is not None:
            if not isinstance(vocab, Vocab):
                raise TypeError(f"vocab must be a rnnfast.data.Vocab or None, got {type(vocab).__name__}")
            lo, hi = _id_range(corpus, len(vocab))
            if lo < 0 or hi >= len(vocab):
                raise ValueError(f"corpus ids span [{lo}, {hi}], outside the vocabulary of {len(vocab)}")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.corpus, self.vocab = corpus, vocab
        self.batch_size, self.num_steps = batch_size, num_steps
        self.use_random_iter = bool(use_random_iter)
        self.seed = int(seed)
        self._gen = torch.Generator().manual_seed(self.seed)

    def __iter__(self) -> Iterator[Batch]:
        offset = _draw_offset(self.num_steps, self.use_random_iter, self._gen)
        if self.use_random_iter:
            return _random_batches(self.corpus, self.batch_size, self.num_steps, offset, self._gen)
        return _sequential_batches(self.corpus, self.batch_size, self.num_steps, offset)

    def __len__(self) -> int:
        peek = torch.Generator().set_state(self._gen.get_state())
        offset = _draw_offset(self.num_steps, self.use_random_iter, peek)
        return _num_batches(len(self.corpus), self.batch_size, self.num_steps, offset,
                            self.use_random_iter)

    def __repr__(self) -> str:
        return (f"SeqDataLoader(num_tokens={len(self.corpus)}, batch_size={self.batch_size}, "
                f"num_steps={self.num_steps}, use_random_iter={self.use_random_iter}, seed={self.seed})")

    def state_dict(self) -> dict:
        """Generator state and settings (restore with ``load_state_dict``)."""
        return {
            "seed": self.seed,
            "generator_state": self._gen.get_state(),
            "batch_size": self.batch_size,
            "num_steps": self.num_steps,
            "use_random_iter": self.use_random_iter,
            "num_tokens": len(self.corpus),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the generator; settings must match this loader's (ValueError otherwise)."""
        for key in ("batch_size", "num_steps", "use_random_iter", "num_tokens"):
            mine = len(self.corpus) if key == "num_tokens" else getattr(self, key)
            if key in state and state[key] != mine:
                raise ValueError(f"loader state has {key}={state[key]!r}, this loader has {mine!r}")
        if "generator_state" not in state:
            raise ValueError("loader state has no 'generator_state'")
        self._gen.set_state(state["generator_state"])
        self.seed = int(state.get("seed", self.seed))


def load_data(name_or_path: PathLike, batch_size: int, num_steps: int, token: str = "char",
              use_random_iter: bool = False, max_tokens: int = -1, seed: Optional[int] = None,
              vocab: Optional[Vocab] = None) -> tuple[SeqDataLoader, Vocab]:
    """``(SeqDataLoader, vocab)`` for a bundled corpus name or a text file.

    Pass the training ``vocab`` to load held-out text with the same ids (unknown -> ``<unk>``).
    """
    corpus, vocab = load_corpus(name_or_path, token, max_tokens, vocab=vocab)
    return SeqDataLoader(corpus, vocab, batch_size, num_steps, use_random_iter, seed), vocab


def load_data_time_machine(batch_size: int, num_steps: int, use_random_iter: bool = False,
                           max_tokens: int = 10000, seed: Optional[int] = None
                           ) -> tuple[SeqDataLoader, Vocab]:
    """The textbook's ``load_data_time_machine``: char-level Time Machine, first 10000 tokens."""
    return load_data("timemachine", batch_size, num_steps, "char", use_random_iter,
                     max_tokens, seed)
