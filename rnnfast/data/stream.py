"""Corpora larger than memory: a streamed tokenization pass into a cached, memory-mapped id file.

``load_corpus`` takes this path by itself for files of ``STREAM_THRESHOLD`` bytes or more (and for
``token='byte'``); ``load_ids`` is the entry point. The semantics are the textbook pipeline's
(``read_text`` -> ``tokenize`` -> ``Vocab`` -> ids) exactly; only the way there differs:

* the file is read in chunks of ``chunk_size`` bytes; each chunk is preprocessed with vectorized
  operations (``bytes.translate`` and numpy for the default letters-only preprocessing, which is
  pure ASCII, so a multi-byte UTF-8 character cut by a chunk boundary only ever yields non-letter
  bytes; an incremental UTF-8 decoder for ``raw=True`` and for validation);
* each chunk's tokens become *codes* (the byte for default character level, the code point for raw
  character level, the order of first appearance for words) written to a temporary file, while
  counts and first appearances accumulate; the vocabulary then follows the textbook's order
  (count descending, ties by first appearance) and one more chunked pass maps codes to ids;
* ids are stored as uint8 / uint16 / int32 (the smallest that holds the vocabulary) in a cache
  folder (``$RNNFAST_CACHE``, else ``$XDG_CACHE_HOME/rnnfast``, else ``~/.cache/rnnfast``), keyed
  by the file's SHA-256 and the preprocessing options; a later load maps the file into memory
  (no copy, no int64 conversion: the samplers convert per minibatch). The content hash of a file
  is remembered under its (path, size, mtime, inode), so a cached load does not re-read the text.

``token='byte'``: ids are the file's bytes (enwik8-style, vocabulary of 256, no decoding); the file
itself is mapped, nothing is cached. Index 0 is ``<unk>`` and also stands for the byte 0x00.
"""
from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .text import PathLike, Vocab, corpus_path

__all__ = ["STREAM_THRESHOLD", "cache_dir", "file_digest", "is_cached", "load_ids", "byte_vocab"]

#: Files of at least this many bytes are loaded through the streamed path by ``load_corpus``.
STREAM_THRESHOLD = 16 * 2**20
#: Bytes read per chunk of the streamed pass (bounds its working memory to a few times this).
CHUNK_SIZE = 4 * 2**20
_FORMAT = "rnnfast-ids-v1"

# Default preprocessing on bytes: A-Z -> a-z, a-z kept, CR and LF -> LF (a line break), everything
# else -> space. Bytes >= 0x80 (parts of multi-byte UTF-8 characters) are never letters of [A-Za-z].
_TABLE = bytes(
    b + 32 if 65 <= b <= 90 else b if 97 <= b <= 122 else 10 if b in (10, 13) else 32
    for b in range(256)
)
_SPACE, _LF = 32, 10


def cache_dir() -> Path:
    """Folder of the id-file cache: $RNNFAST_CACHE, else $XDG_CACHE_HOME/rnnfast, else ~/.cache/rnnfast."""
    env = os.environ.get("RNNFAST_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "rnnfast"


def _stat_key(path: Path) -> str:
    st = path.stat()
    ident = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"
    return hashlib.sha1(ident.encode("utf-8", "surrogateescape")).hexdigest()


def file_digest(path: PathLike, cache: Optional[Path] = None) -> str:
    """SHA-256 of a file's content (hex). Remembered in the cache under the file's path, size,
    mtime and inode, so an unchanged file is hashed once."""
    path = Path(path)
    cache = cache_dir() if cache is None else cache
    memo = cache / "stat" / _stat_key(path)
    try:
        digest = memo.read_text().strip()
        if len(digest) == 64:
            return digest
    except OSError:
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK_SIZE)
            if not block:
                break
            h.update(block)
    digest = h.hexdigest()
    _write_atomic(memo, digest)
    return digest


def _write_atomic(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def _id_dtype(vocab_size: int):
    if vocab_size <= 2**8:
        return np.uint8, torch.uint8
    if vocab_size <= 2**16:
        return np.uint16, torch.uint16
    return np.int32, torch.int32


def _map_file(path: Path, np_dtype, count: int) -> torch.Tensor:
    """A read-only-on-disk, copy-on-write memory map of `count` ids as a 1-D tensor (no copy)."""
    if count == 0:
        return torch.empty(0, dtype=torch.from_numpy(np.empty(0, np_dtype)).dtype)
    return torch.from_numpy(np.memmap(path, dtype=np_dtype, mode="c", shape=(count,)))


def byte_vocab() -> Vocab:
    """The byte-level vocabulary: id b is the byte b (latin-1 character), id 0 is <unk> (and 0x00)."""
    return Vocab.from_token_freqs([(chr(b), 0) for b in range(1, 256)])


# --------------------------------------------------------------------------------------------------
# The streamed pass: text -> codes (temporary file) + counts + first appearances
# --------------------------------------------------------------------------------------------------

class _Codes:
    """Accumulates the codes of one pass: written to `f`, counted, first appearances recorded."""

    def __init__(self, f, np_dtype):
        self.f, self.dtype = f, np_dtype
        self.count = np.zeros(0, np.int64)
        self.first = np.zeros(0, np.int64)  # position of first appearance; -1: not seen
        self.n = 0

    def add(self, codes: np.ndarray) -> None:
        if codes.size == 0:
            return
        codes.astype(self.dtype, copy=False).tofile(self.f)
        if codes.dtype == np.uint8:  # torch counts bytes without widening them to int64 first
            counts = torch.bincount(torch.from_numpy(codes)).numpy()
        else:
            counts = np.bincount(codes)
        if counts.size > self.count.size:
            self.count = np.concatenate([self.count, np.zeros(counts.size - self.count.size, np.int64)])
            self.first = np.concatenate([self.first, np.full(counts.size - self.first.size, -1, np.int64)])
        new = np.flatnonzero((counts > 0) & (self.first[:counts.size] < 0))
        if new.size > 64:  # many new symbols: one sort finds every first position
            vals, pos = np.unique(codes, return_index=True)
            keep = self.first[vals] < 0
            self.first[vals[keep]] = self.n + pos[keep]
        else:
            for v in new:
                self.first[v] = self.n + int(np.argmax(codes == v))
        self.count[:counts.size] += counts
        self.n += codes.size

    def order(self) -> np.ndarray:
        """Codes seen, by descending count, ties by first appearance (the textbook's Vocab order)."""
        seen = np.flatnonzero(self.count > 0)
        return seen[np.lexsort((self.first[seen], -self.count[seen]))]


def _decoder_error(path: Path, data: bytes, e: UnicodeDecodeError, chunk_start: int, pending: int):
    offset = chunk_start - pending + e.start
    bad = e.object[e.start] if e.start < len(e.object) else 0
    return ValueError(f"{str(path)!r} is not valid UTF-8: byte 0x{bad:02x} at byte offset "
                      f"{offset} ({e.reason})")


def _chunks(path: Path, chunk_size: int, need_text: bool = True):
    """Yield (bytes, str) per chunk, the str None unless `need_text`. UTF-8 is checked across
    chunk boundaries (ValueError naming the byte offset, as read_text does)."""
    dec = codecs.getincrementaldecoder("utf-8")()
    pos = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk_size)
            final = not data
            pending = len(dec.getstate()[0])  # bytes of a character cut by the last boundary
            try:
                if pending == 0 and data.isascii():  # ASCII is UTF-8; no decoding needed
                    text = data.decode("ascii") if need_text else None
                else:
                    text = dec.decode(data, final)
            except UnicodeDecodeError as e:
                raise _decoder_error(path, data, e, pos, pending) from e
            if final:
                if text:
                    yield b"", text
                return
            yield data, text
            pos += len(data)


def _pass_char_preprocessed(path: Path, out: _Codes, chunk_size: int) -> None:
    """Default character level: letters lowercased, runs of non-letters one space within a line,
    lines stripped and concatenated (the codes are the characters' bytes)."""
    seen_letter = False
    run_len, run_nl = 0, False  # the run of non-letters after the last letter so far
    for data, _ in _chunks(path, chunk_size, need_text=False):
        if not data:
            continue
        a = np.frombuffer(data.translate(_TABLE), np.uint8)
        letter = a > _SPACE
        first = int(np.argmax(letter))
        if not letter[first]:  # no letter in this chunk
            run_len += a.size
            run_nl = run_nl or bool((a == _LF).any())
            continue
        last = a.size - 1 - int(np.argmax(letter[::-1]))
        lead_nl = run_nl or bool((a[:first] == _LF).any())
        lead_space = seen_letter and run_len + first > 0 and not lead_nl
        core, lcore = a[first:last + 1], letter[first:last + 1]
        keep = lcore.copy()
        # Gaps (runs of non-letters between two letters of the chunk): start where a letter ends.
        starts = np.flatnonzero(lcore[:-1] & ~lcore[1:]) + 1
        if starts.size:
            # the gap holding each line break is the last gap starting before it
            gap_nl = np.zeros(starts.size, bool)
            gap_nl[np.searchsorted(starts, np.flatnonzero(core == _LF), side="right") - 1] = True
            keep[starts[~gap_nl]] = True  # one space for a gap within a line, nothing across lines
        codes = core[keep]
        if lead_space:
            codes = np.concatenate([np.array([_SPACE], np.uint8), codes])
        out.add(codes)
        seen_letter = True
        tail = a[last + 1:]
        run_len, run_nl = tail.size, bool((tail == _LF).any())


def _pass_char_raw(path: Path, out: _Codes, chunk_size: int) -> None:
    """raw=True character level: every character but line breaks; codes are code points."""
    start = True
    for _, text in _chunks(path, chunk_size):
        if start and text:
            if text.startswith("\ufeff"):
                text = text[1:]
            start = False
        text = text.replace("\r", "").replace("\n", "")
        out.add(np.frombuffer(text.encode("utf-32-le"), np.uint32))


def _pass_words(path: Path, out: _Codes, chunk_size: int, raw: bool) -> list:
    """Word level: codes are the order of first appearance of each word; returns the words."""
    ids: dict = {}

    def add(words):
        for w in dict.fromkeys(words):  # new words in order of first appearance, at C speed
            if w not in ids:
                ids[w] = len(ids)
        out.add(np.fromiter(map(ids.__getitem__, words), np.int64, len(words)))

    carry = "" if raw else b""
    start = True
    for data, text in _chunks(path, chunk_size):
        if raw:
            if start and text:
                text = text[1:] if text.startswith("\ufeff") else text
                start = False
            piece = carry + text
            words = piece.split()
            # a word touching the chunk's end may go on in the next chunk
            carry = words.pop() if words and not piece[-1].isspace() else ""
        else:
            # letters only, lowercased: the words of the preprocessed lines are the letter runs
            piece = carry + data.translate(_TABLE)
            words = piece.split()
            carry = words.pop() if words and piece[-1] > _SPACE else b""
        add(words)
    if carry:
        add([carry])
    tokens = list(ids)
    return tokens if raw else [w.decode("ascii") for w in tokens]


# --------------------------------------------------------------------------------------------------
# Building and reading a cache entry
# --------------------------------------------------------------------------------------------------

def _remap(src: Path, src_dtype, n: int, lut: np.ndarray, dst: Path, chunk: int = 2**22) -> None:
    """dst = lut[src], chunk by chunk with plain reads (a memory map would leave every page of
    src resident and count against the process's peak memory)."""
    byte_table = bytes(lut.tolist()) if (np.dtype(src_dtype) == np.uint8 and lut.dtype == np.uint8
                                          and lut.size == 256) else None
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for i in range(0, n, chunk):
            if byte_table is not None:  # bytes -> bytes: translate is the fastest lookup there is
                fout.write(fin.read(chunk).translate(byte_table))
            else:
                lut[np.fromfile(fin, dtype=src_dtype, count=min(chunk, n - i))].tofile(fout)


def _build(path: Path, token: str, raw: bool, entry: Path, chunk_size: int) -> None:
    """Run the streamed pass for `path` and publish the cache folder `entry` atomically."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".build-"))
    try:
        code_dtype = np.uint8 if (token == "char" and not raw) else (np.uint32 if token == "char" else np.int64)
        with open(work / "codes.bin", "wb") as f:
            out = _Codes(f, code_dtype)
            if token == "char":
                (_pass_char_raw if raw else _pass_char_preprocessed)(path, out, chunk_size)
                symbol = chr
            else:
                words = _pass_words(path, out, chunk_size, raw)
                symbol = words.__getitem__
        order = out.order()
        vocab = Vocab.from_token_freqs([(symbol(int(c)), int(out.count[c])) for c in order])
        np_dtype, _ = _id_dtype(len(vocab))
        lut = np.zeros(256 if code_dtype == np.uint8 else max(out.count.size, 1), np_dtype)
        lut[order] = [vocab.token_to_idx[symbol(int(c))] for c in order]
        _remap(work / "codes.bin", code_dtype, out.n, lut, work / "ids.bin")
        os.remove(work / "codes.bin")
        vocab.save(work / "vocab.json")
        meta = {"format": _FORMAT, "num_tokens": int(out.n), "dtype": np.dtype(np_dtype).name,
                "token": token, "raw": raw, "source": str(path), "size": path.stat().st_size}
        (work / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(work, entry)  # atomic publish; another process may have published first
        except OSError:
            if not (entry / "meta.json").is_file():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _read_entry(entry: Path):
    """(ids, vocab, meta) of a cache entry; None if it is damaged (truncated, foreign, half gone)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        np_dtype = np.dtype(meta["dtype"]).type
        n = int(meta["num_tokens"])
        if meta.get("format") != _FORMAT or (entry / "ids.bin").stat().st_size != n * np.dtype(np_dtype).itemsize:
            return None
        vocab = Vocab.load(entry / "vocab.json")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _map_file(entry / "ids.bin", np_dtype, n), vocab, meta


def _vocab_digest(vocab: Vocab) -> str:
    return hashlib.sha256(json.dumps(vocab.idx_to_token, ensure_ascii=False).encode()).hexdigest()[:24]


def _through_vocab(entry: Path, ids: torch.Tensor, own: Vocab, vocab: Vocab) -> torch.Tensor:
    """The corpus's ids mapped through another vocabulary (unknown tokens -> <unk>), cached too."""
    lut_list = [vocab.token_to_idx.get(t, 0) for t in own.idx_to_token]
    if lut_list == list(range(len(own))) and len(vocab) == len(own):
        return ids
    np_dtype, _ = _id_dtype(len(vocab))
    target = entry / f"ids-{_vocab_digest(vocab)}.bin"
    n = ids.numel()
    if not target.is_file():
        tmp = entry / f".tmp-{os.getpid()}-{target.name}"
        src_dtype = ids.numpy().dtype if n else np.uint8
        lut = np.zeros(max(len(lut_list), 256), np_dtype)
        lut[:len(lut_list)] = lut_list
        _remap(entry / "ids.bin", src_dtype, n, lut, tmp)
        os.replace(tmp, target)
    return _map_file(target, np_dtype, n)


def _entry(path: Path, token: str, raw: bool, cache: Path) -> Path:
    return cache / "ids" / f"{file_digest(path, cache)[:40]}-{token}-{'raw' if raw else 'd2l'}"


def is_cached(name_or_path: PathLike, token: str = "char", raw: bool = False,
              cache: Optional[PathLike] = None) -> bool:
    """Whether ``load_ids`` would find this file's ids in the cache (True for token='byte', which
    maps the file itself). Hashes the file if its content hash is not remembered yet."""
    path = corpus_path(name_or_path)
    if token == "byte":
        return True
    cache = cache_dir() if cache is None else Path(cache)
    return _read_entry(_entry(path, token, bool(raw), cache)) is not None


@contextlib.contextmanager
def _build_lock(entry: Path):
    """An exclusive lock on the cache entry being built (POSIX flock; none elsewhere)."""
    try:
        import fcntl
    except ImportError:  # no flock: concurrent builders both build, the first rename wins
        yield
        return
    locks = entry.parent.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{entry.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_ids(name_or_path: PathLike, token: str = "char", raw: bool = False,
             vocab: Optional[Vocab] = None, chunk_size: int = CHUNK_SIZE,
             cache: Optional[PathLike] = None) -> tuple[torch.Tensor, Vocab]:
    """Token ids of a text file through the streamed, cached path: ``(ids, vocab)``.

    Same ids and vocabulary as ``load_corpus(..., stream=False)`` (the textbook pipeline), but the
    ids are a memory-mapped 1-D tensor of dtype uint8 / uint16 / int32 (by vocabulary size).
    ``vocab`` maps through a given vocabulary (unknown tokens -> <unk>). ``token='byte'``: the
    file's bytes, vocabulary of 256 (``byte_vocab()``). ``cache``: overrides ``cache_dir()``.
    """
    path = corpus_path(name_or_path)
    if token == "byte":
        own = byte_vocab()
        ids = _map_file(path, np.uint8, path.stat().st_size)
        if vocab is not None and vocab != own:
            raise ValueError("token='byte' ids are bytes; a vocabulary other than byte_vocab() "
                             "does not apply")
        return ids, own
    if token not in ("char", "word"):
        raise ValueError(f"unknown token kind {token!r}; expected 'char', 'word' or 'byte'")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cache = cache_dir() if cache is None else Path(cache)
    entry = _entry(path, token, bool(raw), cache)
    found = _read_entry(entry)
    if found is None:
        with _build_lock(entry):  # ranks of a data-parallel run: one builds, the others wait
            found = _read_entry(entry)
            if found is None:
                shutil.rmtree(entry, ignore_errors=True)  # a damaged entry is rebuilt
                _build(path, token, bool(raw), entry, chunk_size)
                found = _read_entry(entry)
    if found is None:
        raise ValueError(f"the id-file cache entry {entry} could not be written or read back")
    ids, own, _ = found
    if vocab is not None:
        ids = _through_vocab(entry, ids, own, vocab)
        own = vocab
    return ids, own
