"""The streamed corpus path (rnnfast.data.stream): same ids and vocabulary as the textbook pipeline,
cached by content and options, memory-mapped compact ids, byte level, bad input."""
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnfast.data import (SeqDataLoader, Vocab, corpus_path, load_corpus, read_text,
                          seq_data_iter_random, seq_data_iter_sequential, tokenize)
from rnnfast.data import stream


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNFAST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def textbook(path, token, raw, vocab=None):
    """The reference: read_text -> tokenize -> Vocab -> ids, written out here."""
    flat = [t for line in tokenize(read_text(path, raw=raw), token) for t in line]
    vocab = Vocab(flat) if vocab is None else vocab
    return torch.tensor([vocab[t] for t in flat], dtype=torch.int64), vocab


def assert_same(ids, vocab, ref_ids, ref_vocab):
    assert vocab == ref_vocab and vocab.token_freqs == ref_vocab.token_freqs
    assert ids.dim() == 1 and ids.numel() == ref_ids.numel()
    assert torch.equal(ids.long(), ref_ids)


# --- same ids as the textbook pipeline ----------------------------------------------------------

@pytest.mark.parametrize("name", ["timemachine", "war_of_the_worlds"])
@pytest.mark.parametrize("token,raw", [("char", False), ("char", True), ("word", False), ("word", True)])
def test_bundled_corpora_same_ids_and_vocab(name, token, raw):
    ref_ids, ref_vocab = load_corpus(name, token, raw=raw, stream=False)
    ids, vocab = load_corpus(name, token, raw=raw, stream=True)
    assert_same(ids, vocab, ref_ids, ref_vocab)
    # small odd chunks put chunk boundaries inside words, runs of spaces and line breaks
    ids, vocab = stream.load_ids(corpus_path(name), token, raw, chunk_size=4099,
                                 cache=Path(os.environ["RNNFAST_CACHE"]) / "small-chunks")
    assert_same(ids, vocab, ref_ids, ref_vocab)


def test_bundled_time_machine_compact_dtype_and_textbook_numbers():
    ids, vocab = load_corpus("timemachine", "char", stream=True)
    assert ids.dtype == torch.uint8 and len(ids) == 170580 and len(vocab) == 28
    assert vocab.idx_to_token[1:5] == [" ", "e", "t", "a"]
    words, wvocab = load_corpus("timemachine", "word", stream=True)
    assert words.dtype == torch.uint16 and len(wvocab) == 4580


PIECES = ["a", "B", "z", "Zq", " ", "  ", "\n", "\r", "\r\n", "\t", ".", "9", "é", "日本", "\ufeff",
          "’", "\u2028", "\x85", "<unk>", "the", "The", "THE"]


@settings(max_examples=60, deadline=None)
@given(pieces=st.lists(st.sampled_from(PIECES), max_size=40),
       chunk_size=st.integers(1, 9),
       token=st.sampled_from(["char", "word"]), raw=st.booleans())
def test_streamed_equals_textbook_on_any_text_and_chunking(pieces, chunk_size, token, raw):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.txt"
        path.write_bytes("".join(pieces).encode("utf-8"))
        ref_ids, ref_vocab = textbook(path, token, raw)
        ids, vocab = stream.load_ids(path, token, raw, chunk_size=chunk_size, cache=Path(d) / "c")
        assert_same(ids, vocab, ref_ids, ref_vocab)


def test_held_out_through_training_vocab_and_max_tokens():
    _, tm_vocab = load_corpus("timemachine", "word", stream=False)
    ref, _ = load_corpus("war_of_the_worlds", "word", vocab=tm_vocab, stream=False)
    ids, vocab = load_corpus("war_of_the_worlds", "word", vocab=tm_vocab, stream=True)
    assert vocab is tm_vocab and int((ref == 0).sum()) > 0  # unknown words exist, map to <unk>
    assert torch.equal(ids.long(), ref)
    again, _ = load_corpus("war_of_the_worlds", "word", vocab=tm_vocab, stream=True)  # cached remap
    assert torch.equal(again.long(), ref)
    ref_head, _ = load_corpus("war_of_the_worlds", "char", max_tokens=1000, stream=False)
    head, _ = load_corpus("war_of_the_worlds", "char", max_tokens=1000, stream=True)
    assert len(head) == 1000 and torch.equal(head.long(), ref_head)


def test_id_dtype_grows_with_the_vocabulary(tmp_path):
    path = tmp_path / "many.txt"
    path.write_text(" ".join(f"w{i}" for i in range(70000)) + "\n")
    ids, vocab = load_corpus(path, "word", raw=True, stream=True)
    assert len(vocab) == 70001 and ids.dtype == torch.int32
    ref, ref_vocab = textbook(path, "word", True)
    assert_same(ids, vocab, ref, ref_vocab)


# --- the cache --------------------------------------------------------------------------------

def test_cache_is_reused_and_keyed_by_content_and_options(tmp_path, _cache, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text("Hello, world!\nHello again.\n")
    first, _ = load_corpus(path, "char", stream=True)
    entries = sorted(p.name for p in (_cache / "ids").iterdir())
    assert len(entries) == 1 and entries[0].endswith("-char-d2l")

    def no_build(*a, **k):
        raise AssertionError("rebuilt a cached corpus")
    monkeypatch.setattr(stream, "_build", no_build)
    again, _ = load_corpus(path, "char", stream=True)
    assert torch.equal(first, again)
    with pytest.raises(AssertionError, match="rebuilt"):  # other options: another entry
        load_corpus(path, "word", stream=True)
    monkeypatch.undo()
    monkeypatch.setenv("RNNFAST_CACHE", str(_cache))
    path.write_text("Goodbye, world!\n")  # new content: new hash, new entry
    ids, vocab = load_corpus(path, "char", stream=True)
    assert "".join(vocab.to_tokens(ids.long())) == "goodbye world"
    assert len(list((_cache / "ids").iterdir())) == 2  # the word build was refused above


def test_streamed_ids_are_a_memory_map_of_the_cached_file(_cache):
    ids, _ = load_corpus("timemachine", "char", stream=True)
    (entry,) = (_cache / "ids").iterdir()
    on_disk = np.fromfile(entry / "ids.bin", dtype=np.uint8)
    assert torch.equal(ids, torch.from_numpy(on_disk))
    ids[0] = 0  # copy-on-write: the file is never modified through the tensor
    assert np.fromfile(entry / "ids.bin", dtype=np.uint8)[0] == on_disk[0]


def test_load_corpus_streams_big_files_by_itself(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text("The quick brown fox.\n" * 20)
    assert load_corpus(path)[0].dtype == torch.int64
    monkeypatch.setattr(stream, "STREAM_THRESHOLD", path.stat().st_size)
    ids, vocab = load_corpus(path)
    assert ids.dtype == torch.uint8
    assert torch.equal(ids.long(), load_corpus(path, stream=False)[0])


# --- byte level -------------------------------------------------------------------------------

def test_byte_level_ids_are_the_bytes(tmp_path):
    data = "naïve\r\nCafé 日本\n".encode("utf-8") + bytes([0xff, 0x00, 0x41])  # not UTF-8: fine
    path = tmp_path / "b.bin"
    path.write_bytes(data)
    ids, vocab = load_corpus(path, "byte")
    assert len(vocab) == 256 and vocab.idx_to_token[0] == "<unk>"
    assert ids.dtype == torch.uint8 and ids.tolist() == list(data)
    assert "".join(vocab.to_tokens(ids[:8].long())) == data[:8].decode("latin-1")
    assert vocab == stream.byte_vocab()


# --- samplers on compact ids ----------------------------------------------------------------

@pytest.mark.parametrize("use_random_iter", [False, True])
def test_samplers_give_the_same_int64_batches_on_compact_ids(use_random_iter):
    ref, vocab = load_corpus("timemachine", "word", stream=False)
    ids, _ = load_corpus("timemachine", "word", stream=True)
    assert ids.dtype == torch.uint16
    a = SeqDataLoader(ref, vocab, 8, 5, use_random_iter, seed=3)
    b = SeqDataLoader(ids, vocab, 8, 5, use_random_iter, seed=3)
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xb.dtype == yb.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    it = seq_data_iter_random if use_random_iter else seq_data_iter_sequential
    for (xa, ya), (xb, yb) in zip(it(ref, 4, 7, generator=1), it(ids, 4, 7, generator=1)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_loader_checks_compact_ids_against_the_vocabulary():
    ids, vocab = load_corpus("timemachine", "word", stream=True)
    small = Vocab(["a", "b"])
    with pytest.raises(ValueError, match="outside the vocabulary of 3"):
        SeqDataLoader(ids, small, 4, 5)


# --- bad input --------------------------------------------------------------------------------

def test_invalid_utf8_names_the_same_offset_as_read_text(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"abc " * 50 + "é".encode() + b"\xe2\x82" + b" more")
    with pytest.raises(ValueError) as ref:
        read_text(path)
    for chunk_size in (1, 7, 4096):
        with pytest.raises(ValueError) as got:
            stream.load_ids(path, "char", chunk_size=chunk_size)
        assert str(got.value) == str(ref.value)
    path.write_bytes(b"ok " + b"\xc3")  # truncated at the end of the file
    with pytest.raises(ValueError, match="not valid UTF-8.*byte offset 3"):
        load_corpus(path, stream=True)


def test_no_tokens_and_unknown_token_kind(tmp_path):
    path = tmp_path / "digits.txt"
    path.write_text("1234 5678\n")
    with pytest.raises(ValueError, match="contains no tokens after preprocessing"):
        load_corpus(path, stream=True)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="the file is empty"):
        load_corpus(empty, "byte")
    with pytest.raises(ValueError, match="unknown token kind 'bpe'"):
        load_corpus(path, "bpe", stream=True)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        stream.load_ids(path, chunk_size=0)


# --- the rest of the workflow on compact ids --------------------------------------------------

def test_evaluate_reads_compact_ids_like_int64():
    from rnnfast.models import RNNLM
    from rnnfast.train import evaluate
    ref, vocab = load_corpus("timemachine", "word", max_tokens=3000, stream=False)
    ids, _ = load_corpus("timemachine", "word", max_tokens=3000, stream=True)
    assert ids.dtype == torch.uint16
    torch.manual_seed(0)
    net = RNNLM(len(vocab), 8, embedding_dim=8)
    assert evaluate(net, ids, 4, 10) == evaluate(net, ref, 4, 10)


def test_cli_train_streams_a_big_corpus_and_takes_byte_level(tmp_path, monkeypatch, capsys, _cache):
    from rnnfast.cli import main
    path = tmp_path / "big.txt"
    path.write_text("It was the best of times, it was the worst of times.\n" * 40)
    monkeypatch.setattr(stream, "STREAM_THRESHOLD", 1000)  # "big": over the threshold
    tiny = ["--hidden", "8", "--epochs", "1", "--batch-size", "4", "--num-steps", "5", "--quiet",
            "--corpus", str(path)]
    assert not stream.is_cached(path, "char")
    assert main(["train", "--out", str(tmp_path / "char"), *tiny]) == 0
    out = capsys.readouterr().out
    assert "2,000 char tokens, vocabulary 14" in out  # 13 letters and space, <unk>
    assert out.startswith(f"tokenizing {str(path)!r} (0 MiB, char level) into the cache")
    assert stream.is_cached(path, "char") and not stream.is_cached(path, "word")
    assert main(["train", "--out", str(tmp_path / "char2"), *tiny]) == 0
    assert "tokenizing" not in capsys.readouterr().out  # the second run maps the cached ids
    assert [p.name.endswith("-char-d2l") for p in (_cache / "ids").iterdir()] == [True]
    assert main(["train", "--out", str(tmp_path / "byte"), "--token", "byte", *tiny]) == 0
    out = capsys.readouterr().out
    assert f"{path.stat().st_size:,} byte tokens, vocabulary 256" in out


def test_concurrent_first_loads_build_once(tmp_path, _cache):
    # the ranks of a data-parallel run load the same new corpus at the same time
    path = tmp_path / "t.txt"
    path.write_text("The quick brown fox jumps over the lazy dog.\n" * 2000)
    code = ("import sys, time\nfrom rnnfast.data import stream\nreal = stream._build\n"
            "def counted(*a, **k):\n    print('built', flush=True)\n    time.sleep(3)  # a long build\n"
            "    return real(*a, **k)\n"
            "stream._build = counted\nids, v = stream.load_ids(sys.argv[1])\nprint(ids.numel(), len(v))\n")
    import subprocess
    import sys
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    ref, ref_vocab = textbook(path, "char", False)
    assert sum(o.count("built") for o in outs) == 1
    assert all(o.strip().endswith(f"{ref.numel()} {len(ref_vocab)}") for o in outs), outs


def test_a_damaged_cache_entry_is_rebuilt(_cache):
    ref, _ = load_corpus("timemachine", "char", stream=True)
    ref = ref.clone()
    (entry,) = (_cache / "ids").iterdir()
    with open(entry / "ids.bin", "r+b") as f:
        f.truncate(1000)  # e.g. a disk that filled up
    ids, vocab = load_corpus("timemachine", "char", stream=True)
    assert torch.equal(ids, ref) and len(vocab) == 28
    (entry / "meta.json").write_text("{not json")
    ids, _ = load_corpus("timemachine", "char", stream=True)
    assert torch.equal(ids, ref)
