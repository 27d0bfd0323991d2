"""Corpus statistics of the textbook: n-gram frequencies and Zipf's-law plots."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

from .text import PathLike, _flatten, corpus_path, read_text, tokenize

__all__ = ["ngram_freqs", "zipf_plot", "corpus_stats", "format_stats"]


def ngram_freqs(tokens: Sequence, n: int) -> list[tuple[tuple, int]]:
    """``(ngram_tuple, count)`` of every n-gram of consecutive tokens, by descending count,
    ties in order of first appearance. ``tokens``: a flat list or a list of lists (flattened,
    as the textbook does, so n-grams run across line ends)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if isinstance(tokens, str):
        raise TypeError("ngram_freqs expects a list of tokens, got a str")
    flat = _flatten(tokens)
    counter = Counter(zip(*(flat[i:] for i in range(n))))
    return sorted(counter.items(), key=lambda kv: kv[1], reverse=True)


def zipf_plot(token_freq_lists: Sequence, path: PathLike,
              labels: Sequence[str] = ("unigram", "bigram", "trigram")) -> Path:
    """Write a log-log plot of frequency against rank, one line per list, to a PNG at ``path``.

    Each list holds ``(token, count)`` pairs (as from ``ngram_freqs`` or ``Vocab.token_freqs``)
    or plain counts, in descending order. Needs matplotlib (``pip install rnnfast[plot]``);
    draws with the Agg backend directly, without touching pyplot's global backend.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("zipf_plot needs matplotlib: pip install rnnfast[plot]") from e
    lists = list(token_freq_lists)
    if not lists:
        raise ValueError("zipf_plot needs at least one frequency list")
    if len(labels) < len(lists):
        raise ValueError(f"{len(lists)} frequency lists but only {len(labels)} labels")
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for freqs, label in zip(lists, labels):
        counts = [f[1] if isinstance(f, (tuple, list)) else f for f in freqs]
        if not counts:
            raise ValueError(f"frequency list {label!r} is empty")
        ax.loglog(range(1, len(counts) + 1), counts, label=label)
    ax.set_xlabel("token: x (rank)")
    ax.set_ylabel("frequency: n(x)")
    ax.legend()
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def corpus_stats(name_or_path: PathLike = "timemachine", token: str = "word",
                 top: int = 10) -> dict:
    """Summary of a corpus (textbook preprocessing): path, token kind, line/token counts,
    vocabulary size (with ``<unk>``), and the ``top`` most frequent unigrams, bigrams and
    trigrams as lists of ``(ngram_tuple, count)``."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be an int >= 1, got {top!r}")
    path = corpus_path(name_or_path)
    lines = read_text(path)
    flat = [t for line in tokenize(lines, token) for t in line]
    if not flat:
        raise ValueError(f"{str(path)!r} contains no tokens after preprocessing (token={token!r})")
    unigrams = ngram_freqs(flat, 1)
    return {
        "path": str(path),
        "token": token,
        "num_lines": len(lines),
        "num_tokens": len(flat),
        "vocab_size": len(unigrams) + 1,  # + '<unk>', as Vocab(tokens) would have
        "unigrams": unigrams[:top],
        "bigrams": ngram_freqs(flat, 2)[:top],
        "trigrams": ngram_freqs(flat, 3)[:top],
    }


def format_stats(stats: dict) -> str:
    """Human-readable text of a ``corpus_stats`` dict (what ``rnnfast stats`` prints)."""
    out = [
        f"corpus:     {stats['path']}",
        f"token:      {stats['token']}",
        f"lines:      {stats['num_lines']}",
        f"tokens:     {stats['num_tokens']}",
        f"vocab size: {stats['vocab_size']} (with <unk>)",
    ]
    sep = "" if stats["token"] == "char" else " "
    for key in ("unigrams", "bigrams", "trigrams"):
        out.append(f"top {key}:")
        for gram, count in stats[key]:
            out.append(f"  {count:>8}  {sep.join(gram)!r}")
    return "\n".join(out)
