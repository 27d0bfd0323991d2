"""Text pipeline of the textbook (d2l, "Text preprocessing"): read lines, tokenize, build a
vocabulary, and turn a corpus into one int64 tensor of token ids."""
from __future__ import annotations

import json
import os
import re
import stat
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence, Union

import torch

__all__ = [
    "BUNDLED_CORPORA",
    "corpus_path",
    "read_text",
    "read_time_machine",
    "tokenize",
    "Vocab",
    "load_corpus",
    "load_corpus_time_machine",
]

_DATA_DIR = Path(__file__).resolve().parent

#: Corpora shipped with the package: name -> file name next to this module.
BUNDLED_CORPORA = {
    "timemachine": "timemachine.txt",
    "war_of_the_worlds": "war_of_the_worlds.txt",
}

PathLike = Union[str, "os.PathLike[str]"]

_NON_LETTERS = re.compile("[^A-Za-z]+")


def corpus_path(name_or_path: PathLike) -> Path:
    """Resolve a bundled corpus name ('timemachine', 'war_of_the_worlds') or a file path.

    Raises FileNotFoundError naming the path (and the bundled names) when no such file exists.
    """
    if isinstance(name_or_path, str) and name_or_path in BUNDLED_CORPORA:
        path = _DATA_DIR / BUNDLED_CORPORA[name_or_path]
    elif isinstance(name_or_path, (str, os.PathLike)):
        path = Path(name_or_path)
    else:
        raise TypeError(
            f"corpus must be a bundled name or a file path, got {type(name_or_path).__name__}"
        )
    if not path.is_file():
        if path.is_dir():
            what = "is a directory, not a file"
        elif path.exists():  # a FIFO, a device, a socket: reading it could hang or never end
            what = "is not a regular file"
        else:
            what = "does not exist"
        raise FileNotFoundError(
            f"corpus file {str(path)!r} {what}; bundled corpora are "
            + ", ".join(repr(n) for n in BUNDLED_CORPORA)
        )
    return path


def _preprocess(line: str) -> str:
    # The textbook's preprocessing: letters only, runs of anything else become one space.
    return _NON_LETTERS.sub(" ", line).strip().lower()


def read_text(name_or_path: PathLike = "timemachine", raw: bool = False) -> list[str]:
    """Read a UTF-8 text file as a list of lines (newlines removed).

    By default each line gets the textbook preprocessing
    ``re.sub('[^A-Za-z]+', ' ', line).strip().lower()``; ``raw=True`` keeps lines as they are.
    Line endings follow Python's text mode (LF, CRLF and CR all end a line); a leading BOM is
    dropped. Non-UTF-8 bytes raise ValueError naming the file and the byte offset.
    """
    path = corpus_path(name_or_path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{str(path)!r} is not valid UTF-8: byte 0x{data[e.start]:02x} at byte offset "
            f"{e.start} ({e.reason})"
        ) from e
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start a new one
    if raw:
        return lines
    return [_preprocess(line) for line in lines]


def read_time_machine() -> list[str]:
    """The textbook's ``read_time_machine()``: preprocessed lines of the bundled Time Machine."""
    return read_text("timemachine")


def tokenize(lines: Sequence[str], token: str = "word") -> list[list[str]]:
    """Split each line into tokens: ``'word'`` -> ``line.split()``, ``'char'`` -> ``list(line)``."""
    if isinstance(lines, str):
        raise TypeError("tokenize expects a list of lines, got a single str; wrap it: [text]")
    if token == "word":
        return [line.split() for line in lines]
    if token == "char":
        return [list(line) for line in lines]
    raise ValueError(f"unknown token kind {token!r}; expected 'word' or 'char'")


def _flatten(tokens: Iterable) -> list:
    flat: list = []
    for item in tokens:
        if isinstance(item, list):
            flat.extend(item)
        else:
            flat.append(item)
    return flat


class Vocab:
    """Vocabulary mapping tokens to indices, as in the textbook.

    Index 0 is ``'<unk>'``, then ``reserved_tokens``, then the tokens by descending frequency,
    ties in order of first appearance; tokens seen fewer than ``min_freq`` times are left out
    (they map to ``<unk>``). ``tokens`` is a flat list or a list of lists (e.g. tokenized lines).
    """

    UNK = "<unk>"

    def __init__(self, tokens=None, min_freq: int = 0, reserved_tokens=None):
        if isinstance(tokens, str):
            raise TypeError("Vocab expects a list of tokens (or of token lists), got a str")
        counter = Counter(_flatten(tokens if tokens is not None else []))
        # sorted() is stable, and Counter keeps first-insertion order: ties stay in order of
        # first appearance.
        self._build(sorted(counter.items(), key=lambda kv: kv[1], reverse=True), min_freq,
                    reserved_tokens)

    @classmethod
    def from_token_freqs(cls, token_freqs, min_freq: int = 0, reserved_tokens=None) -> "Vocab":
        """The Vocab of already counted tokens: ``token_freqs`` is [(token, count), ...] by
        descending count, ties in order of first appearance (what ``token_freqs`` returns); the
        streamed corpus pass counts this way without keeping the tokens."""
        v = cls.__new__(cls)
        v._build([(t, int(c)) for t, c in token_freqs], min_freq, reserved_tokens)
        return v

    def _build(self, token_freqs, min_freq, reserved_tokens) -> None:
        self._token_freqs = token_freqs
        self.min_freq = min_freq
        self.reserved_tokens = list(reserved_tokens or [])
        self.idx_to_token = [self.UNK]
        self.token_to_idx = {self.UNK: 0}
        for tok in self.reserved_tokens:
            self._add(tok)
        for tok, freq in self._token_freqs:
            if freq < min_freq:
                break
            self._add(tok)

    def _add(self, tok) -> None:
        if tok not in self.token_to_idx:
            self.token_to_idx[tok] = len(self.idx_to_token)
            self.idx_to_token.append(tok)

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __contains__(self, tok) -> bool:
        return tok in self.token_to_idx

    def __getitem__(self, tokens):
        """Index of a token (``<unk>``'s index 0 if unknown); a list/tuple maps elementwise."""
        if isinstance(tokens, (list, tuple)):
            return [self.__getitem__(t) for t in tokens]
        return self.token_to_idx.get(tokens, 0)

    def to_tokens(self, indices):
        """Token of an index, or list of tokens of a list/tuple/1-D tensor of indices."""
        if isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        if isinstance(indices, (list, tuple)):
            return [self.to_tokens(i) for i in indices]
        i = int(indices)
        if not 0 <= i < len(self.idx_to_token):
            raise IndexError(f"token index {i} out of range for a vocabulary of {len(self)}")
        return self.idx_to_token[i]

    @property
    def unk(self) -> int:
        """Index of the unknown token (0)."""
        return 0

    @property
    def token_freqs(self) -> list:
        """All counted tokens as (token, count), by descending count, ties by first appearance."""
        return list(self._token_freqs)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.idx_to_token == other.idx_to_token

    __hash__ = None  # mutable-looking container with value equality

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self.idx_to_token[:8])
        more = ", ..." if len(self) > 8 else ""
        return f"Vocab(size={len(self)}, tokens=[{head}{more}])"

    # -- serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain-data form (lists, ints, str) for checkpoints; inverse of ``Vocab.from_dict``."""
        return {
            "format": "rnnfast.Vocab",
            "version": 1,
            "idx_to_token": list(self.idx_to_token),
            "token_freqs": [[t, c] for t, c in self._token_freqs],
            "min_freq": self.min_freq,
            "reserved_tokens": list(self.reserved_tokens),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        """Rebuild a Vocab from ``to_dict()`` output (indices are kept exactly).

        Raises ValueError naming the field when ``d`` is not of that form.
        """
        if not isinstance(d, dict) or "idx_to_token" not in d:
            raise ValueError("not a Vocab dict: expected a dict with an 'idx_to_token' list")
        idx_to_token = d["idx_to_token"]
        if not isinstance(idx_to_token, (list, tuple)):
            raise ValueError(f"invalid Vocab dict: idx_to_token must be a list, got {type(idx_to_token).__name__}")
        idx_to_token = list(idx_to_token)
        if not idx_to_token or idx_to_token[0] != cls.UNK:
            raise ValueError(f"invalid Vocab dict: index 0 must be {cls.UNK!r}")
        try:
            distinct = len(set(idx_to_token))
        except TypeError:
            raise ValueError("invalid Vocab dict: idx_to_token holds unhashable tokens") from None
        if distinct != len(idx_to_token):
            raise ValueError("invalid Vocab dict: idx_to_token has duplicate tokens")
        freqs = d.get("token_freqs", [])
        if not isinstance(freqs, (list, tuple)) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[1], int)
                and not isinstance(p[1], bool) for p in freqs):
            raise ValueError("invalid Vocab dict: token_freqs must be a list of [token, count] pairs")
        min_freq = d.get("min_freq", 0)
        if not isinstance(min_freq, (int, float)) or isinstance(min_freq, bool):
            raise ValueError(f"invalid Vocab dict: min_freq must be a number, got {min_freq!r}")
        reserved = d.get("reserved_tokens", [])
        if not isinstance(reserved, (list, tuple)):
            raise ValueError("invalid Vocab dict: reserved_tokens must be a list")
        v = cls.__new__(cls)
        v.idx_to_token = idx_to_token
        v.token_to_idx = {t: i for i, t in enumerate(idx_to_token)}
        v._token_freqs = [(t, c) for t, c in freqs]
        v.min_freq = min_freq
        v.reserved_tokens = list(reserved)
        return v

    def save(self, path: PathLike) -> None:
        """Write the vocabulary as JSON (tokens must be str)."""
        bad = [t for t in self.idx_to_token if not isinstance(t, str)]
        if bad:
            raise TypeError(f"Vocab.save needs str tokens for JSON, got {type(bad[0]).__name__}")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False)

    @classmethod
    def load(cls, path: PathLike) -> "Vocab":
        """Read a vocabulary written by ``save``.

        Raises FileNotFoundError when ``path`` is absent and ValueError naming the file when it is
        not a regular file (a directory, a FIFO, a device: never opened, so never a hang), not
        UTF-8, not JSON, or not a Vocab's JSON.
        """
        st = os.stat(path)  # FileNotFoundError names the path
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{str(path)!r} is not a regular file; Vocab.load reads a JSON file "
                             "written by Vocab.save")
        with open(path, "rb") as f:
            data = f.read()
        try:
            d = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{str(path)!r} is not a Vocab JSON file: not UTF-8 text (byte "
                             f"0x{data[e.start]:02x} at offset {e.start})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} is not a Vocab JSON file: {e}") from None
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{str(path)!r} is not a Vocab JSON file: {e}") from None


def load_corpus(
    name_or_path: PathLike = "timemachine",
    token: str = "char",
    max_tokens: int = -1,
    vocab: Vocab | None = None,
    raw: bool = False,
    stream: bool | None = None,
) -> tuple[torch.Tensor, Vocab]:
    """Token ids of a text as one 1-D tensor, with its vocabulary.

    Lines are read (``read_text``), tokenized and concatenated (the textbook's
    ``[vocab[token] for line in tokens for token in line]``). ``max_tokens > 0`` keeps the first
    ``max_tokens`` ids (the vocabulary is still built from the whole text, as in the textbook).
    Pass ``vocab`` to map through an existing vocabulary (unknown tokens -> ``<unk>``, index 0),
    e.g. held-out text through the training vocabulary. Returns ``(corpus, vocab)``.

    ``stream``: None (default) takes the streamed path (``rnnfast.data.stream``) for files of
    ``stream.STREAM_THRESHOLD`` bytes (16 MiB) or more, True always, False never. The streamed
    path gives the same ids and vocabulary, as a memory-mapped uint8/uint16/int32 tensor from a
    cached id file instead of an int64 tensor. ``token='byte'``: ids are the file's bytes
    (vocabulary of 256; always streamed).
    """
    if vocab is not None and not isinstance(vocab, Vocab):
        raise TypeError(f"vocab must be a rnnfast.data.Vocab, got {type(vocab).__name__}")
    if token not in ("char", "word", "byte"):
        raise ValueError(f"unknown token kind {token!r}; expected 'char', 'word' or 'byte'")
    path = corpus_path(name_or_path)
    if stream is None:
        from .stream import STREAM_THRESHOLD
        stream = token == "byte" or path.stat().st_size >= STREAM_THRESHOLD
    if stream or token == "byte":
        from .stream import load_ids
        corpus, vocab = load_ids(path, token, raw, vocab)
        flat_len = corpus.numel()
    else:
        tokens = tokenize(read_text(path, raw=raw), token)
        flat = [t for line in tokens for t in line]
        flat_len = len(flat)
    if not flat_len:
        raise ValueError(
            f"{str(path)!r} contains no tokens after preprocessing (token={token!r}, raw={raw})"
            + ("; the file is empty" if path.stat().st_size == 0 else
               "; the default preprocessing keeps only the letters A-Z/a-z")
        )
    if stream or token == "byte":
        return (corpus[:max_tokens] if max_tokens > 0 else corpus), vocab
    if vocab is None:
        vocab = Vocab(flat)
    if max_tokens > 0:
        flat = flat[:max_tokens]
    get = vocab.token_to_idx.get
    corpus = torch.tensor([get(t, 0) for t in flat], dtype=torch.int64)
    return corpus, vocab


def load_corpus_time_machine(max_tokens: int = -1) -> tuple[torch.Tensor, Vocab]:
    """The textbook's ``load_corpus_time_machine``: char-level ids of The Time Machine."""
    return load_corpus("timemachine", "char", max_tokens)
