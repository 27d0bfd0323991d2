"""rnnfast.data text pipeline: the textbook's numbers on the bundled corpora, Vocab, bad input."""
import json
import os
import re
from collections import Counter

import pytest
import torch

from rnnfast import data
from rnnfast.data import (
    BUNDLED_CORPORA,
    Vocab,
    corpus_path,
    corpus_stats,
    format_stats,
    load_corpus,
    load_corpus_time_machine,
    ngram_freqs,
    read_text,
    read_time_machine,
    tokenize,
    zipf_plot,
)

LETTERS_AND_SPACE = set("abcdefghijklmnopqrstuvwxyz ")


@pytest.fixture(scope="module")
def tm_lines():
    return read_time_machine()


@pytest.fixture(scope="module")
def tm_corpus():
    return load_corpus_time_machine()


# --- bundled corpora: the textbook's numbers ------------------------------------------------

def test_time_machine_textbook_numbers(tm_lines, tm_corpus):
    corpus, vocab = tm_corpus
    assert len(tm_lines) == 3221
    assert tm_lines[0] == "the time machine by h g wells"
    assert corpus.dtype == torch.int64 and corpus.dim() == 1
    assert len(corpus) == 170580
    assert len(vocab) == 28
    assert vocab.idx_to_token[0] == "<unk>"
    assert set(vocab.idx_to_token[1:]) == LETTERS_AND_SPACE
    # The most frequent characters of the text, as the textbook shows: space, e, t, a.
    assert vocab.idx_to_token[1:5] == [" ", "e", "t", "a"]
    assert int((corpus == vocab.unk).sum()) == 0
    # The ids decode back to the preprocessed text, lines concatenated without separators.
    assert "".join(vocab.to_tokens(corpus[:29])) == tm_lines[0]
    assert "".join(vocab.to_tokens(corpus.tolist())) == "".join(tm_lines)


def test_war_of_the_worlds_numbers_and_shared_vocab(tm_corpus):
    corpus, vocab = load_corpus("war_of_the_worlds")
    assert len(corpus) == 322041
    assert len(vocab) == 28 and set(vocab.idx_to_token[1:]) == LETTERS_AND_SPACE
    # Held-out text through the training vocabulary: same length, no unknown ids.
    _, tm_vocab = tm_corpus
    held, v = load_corpus("war_of_the_worlds", vocab=tm_vocab)
    assert v is tm_vocab and len(held) == 322041
    assert int((held == 0).sum()) == 0
    assert vocab.to_tokens(corpus[:500].tolist()) == tm_vocab.to_tokens(held[:500].tolist())


def test_max_tokens_truncates_and_keeps_full_vocab(tm_corpus):
    full, vocab = tm_corpus
    part, v = load_corpus_time_machine(max_tokens=10000)
    assert len(part) == 10000 and torch.equal(part, full[:10000])
    assert v == vocab
    assert len(load_corpus("timemachine", max_tokens=-1)[0]) == 170580


def test_word_tokens_top5_match_independent_count(tm_lines):
    # Independent count from the raw file with the regex written out here.
    path = corpus_path("timemachine")
    with open(path) as f:
        words = [w for line in f for w in re.sub("[^A-Za-z]+", " ", line).strip().lower().split()]
    expected = Counter(words).most_common(5)
    assert [t for t, _ in expected] == ["the", "i", "and", "of", "a"]
    tokens = tokenize(tm_lines, "word")
    vocab = Vocab(tokens)
    assert vocab.token_freqs[:5] == expected
    assert vocab.idx_to_token[1:6] == ["the", "i", "and", "of", "a"]
    assert len(vocab) == len(set(words)) + 1
    assert sum(c for _, c in vocab.token_freqs) == len(words)


def test_corpus_path_bundled_and_user(tmp_path):
    for name, fname in BUNDLED_CORPORA.items():
        p = corpus_path(name)
        assert p.name == fname and p.is_file()
    f = tmp_path / "mine.txt"
    f.write_text("Hello, World!\n")
    assert corpus_path(str(f)) == f and corpus_path(f) == f
    with pytest.raises(TypeError, match="bundled name or a file path"):
        corpus_path(3)


# --- read_text / tokenize -------------------------------------------------------------------

def test_read_text_preprocess_and_raw(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes("\ufeffHello, World! 42\r\n  It's   fine.\rlast line\n".encode("utf-8"))
    assert read_text(f) == ["hello world", "it s fine", "last line"]
    assert read_text(f, raw=True) == ["Hello, World! 42", "  It's   fine.", "last line"]
    g = tmp_path / "no_final_newline.txt"
    g.write_text("a\n\nb")
    assert read_text(g, raw=True) == ["a", "", "b"]


def test_tokenize():
    lines = ["the time machine", "", "by h g"]
    assert tokenize(lines) == [["the", "time", "machine"], [], ["by", "h", "g"]]
    assert tokenize(["ab c"], "char") == [["a", "b", " ", "c"]]
    with pytest.raises(ValueError, match="unknown token kind 'subword'"):
        tokenize(lines, "subword")
    with pytest.raises(TypeError, match="single str"):
        tokenize("the time machine")


# --- Vocab ----------------------------------------------------------------------------------

def test_vocab_order_ties_by_first_appearance():
    # counts: b=3, a=2, c=2, d=1, e=1 ; a appears before c, d before e
    v = Vocab(["b", "a", "c", "b", "d", "c", "a", "e", "b"])
    assert v.idx_to_token == ["<unk>", "b", "a", "c", "d", "e"]
    assert v.token_freqs == [("b", 3), ("a", 2), ("c", 2), ("d", 1), ("e", 1)]
    assert v.token_to_idx == {t: i for i, t in enumerate(v.idx_to_token)}
    # A different order of first appearance flips the ties.
    assert Vocab(["c", "a", "a", "c"]).idx_to_token == ["<unk>", "c", "a"]


def test_vocab_list_of_lists_reserved_min_freq():
    lines = [["x", "y", "x"], ["z", "y", "x"], ["w"]]
    v = Vocab(lines, min_freq=2, reserved_tokens=["<pad>", "<bos>"])
    assert v.idx_to_token == ["<unk>", "<pad>", "<bos>", "x", "y"]
    assert len(v) == 5
    assert v["z"] == v["w"] == v["never"] == v.unk == 0
    assert v[["x", "nope", ("y", "<pad>")]] == [3, 0, [4, 1]]
    assert v[("x", "y")] == [3, 4]
    assert "x" in v and "z" not in v
    # token_freqs keeps every counted token, also those below min_freq
    assert v.token_freqs == [("x", 3), ("y", 2), ("z", 1), ("w", 1)]
    assert Vocab(lines, min_freq=4).idx_to_token == ["<unk>"]


def test_vocab_reserved_and_unk_never_duplicated():
    v = Vocab(["<unk>", "a", "<pad>", "a"], reserved_tokens=["<pad>", "<unk>"])
    assert v.idx_to_token == ["<unk>", "<pad>", "a"]


def test_vocab_empty_and_to_tokens():
    v = Vocab()
    assert len(v) == 1 and v.idx_to_token == ["<unk>"] and v.token_freqs == []
    v = Vocab(list("hello"))
    assert v.to_tokens(1) == "l"
    assert v.to_tokens([1, 0, 2]) == ["l", "<unk>", "h"]
    assert v.to_tokens(torch.tensor([1, 2])) == ["l", "h"]
    assert v.to_tokens(torch.tensor(3)) == "e"
    with pytest.raises(IndexError, match="out of range"):
        v.to_tokens(len(v))
    with pytest.raises(IndexError, match="out of range"):
        v.to_tokens(-1)
    with pytest.raises(TypeError):
        Vocab("hello")


def test_vocab_json_and_dict_round_trip(tmp_path):
    v = Vocab([["b", "a", "b"], ["ü", "c"]], min_freq=1, reserved_tokens=["<eos>"])
    p = tmp_path / "vocab.json"
    v.save(p)
    w = Vocab.load(p)
    assert w == v and w is not v
    assert w.idx_to_token == v.idx_to_token and w.token_to_idx == v.token_to_idx
    assert w.token_freqs == v.token_freqs and w.reserved_tokens == ["<eos>"] and w.min_freq == 1
    assert json.loads(p.read_text(encoding="utf-8"))["idx_to_token"][0] == "<unk>"
    u = Vocab.from_dict(v.to_dict())
    assert u == v and u["ü"] == v["ü"]
    assert Vocab(["a", "b"]) != Vocab(["b", "a"])
    assert Vocab(["a"]) != ["<unk>", "a"]


def test_vocab_load_rejects_bad_files(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not a Vocab JSON"):
        Vocab.load(p)
    with pytest.raises(ValueError, match="index 0 must be '<unk>'"):
        Vocab.from_dict({"idx_to_token": ["a", "<unk>"]})
    with pytest.raises(ValueError, match="duplicate"):
        Vocab.from_dict({"idx_to_token": ["<unk>", "a", "a"]})
    with pytest.raises(ValueError, match="not a Vocab dict"):
        Vocab.from_dict([1, 2])
    with pytest.raises(TypeError, match="str tokens"):
        Vocab([("a", "b")]).save(tmp_path / "t.json")


# --- load_corpus on user files and bad input ------------------------------------------------

def test_load_corpus_user_file_word_and_vocab(tmp_path):
    f = tmp_path / "u.txt"
    f.write_text("The cat; the DOG.\nA cat!\n")
    corpus, vocab = load_corpus(f, token="word")
    assert vocab.idx_to_token == ["<unk>", "the", "cat", "dog", "a"]
    assert corpus.tolist() == [1, 2, 1, 3, 4, 2]
    g = tmp_path / "held.txt"
    g.write_text("the bird and the cat\n")
    held, v = load_corpus(g, token="word", vocab=vocab)
    assert v is vocab and held.tolist() == [1, 0, 0, 1, 2]
    raw_corpus, raw_vocab = load_corpus(f, token="char", raw=True)
    assert "".join(raw_vocab.to_tokens(raw_corpus.tolist())) == "The cat; the DOG.A cat!"
    with pytest.raises(TypeError, match="vocab must be"):
        load_corpus(f, vocab={"a": 1})


def test_missing_file_names_path_and_bundled(tmp_path):
    missing = tmp_path / "nope.txt"
    for fn in (read_text, load_corpus, corpus_stats):
        with pytest.raises(FileNotFoundError) as e:
            fn(missing)
        msg = str(e.value)
        assert str(missing) in msg and "'timemachine'" in msg and "'war_of_the_worlds'" in msg
    with pytest.raises(FileNotFoundError, match="directory"):
        load_corpus(tmp_path)


def test_empty_file_and_no_tokens(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert read_text(empty) == []
    with pytest.raises(ValueError, match="contains no tokens after preprocessing.*empty"):
        load_corpus(empty)
    digits = tmp_path / "digits.txt"
    digits.write_text("1234 5678\n--- !!! ...\n\n")
    with pytest.raises(ValueError, match="digits.txt.*contains no tokens after preprocessing"):
        load_corpus(digits, token="char")
    with pytest.raises(ValueError, match="contains no tokens"):
        load_corpus(digits, token="word")
    with pytest.raises(ValueError, match="contains no tokens"):
        corpus_stats(digits)
    # raw=True keeps the digits, so the same file has tokens then.
    corpus, vocab = load_corpus(digits, token="char", raw=True)
    assert len(corpus) == len("1234 5678--- !!! ...")


def test_non_utf8_reports_file_and_byte_offset(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes(b"hello\nna\xefve caf\xe9\n")
    for fn in (read_text, load_corpus):
        with pytest.raises(ValueError, match=r"latin1\.txt.*not valid UTF-8.*byte offset 8") as e:
            fn(f)
        assert isinstance(e.value.__cause__, UnicodeDecodeError)


# --- stats ----------------------------------------------------------------------------------

def test_ngram_freqs_small():
    toks = ["a", "b", "a", "b", "c", "a"]
    assert ngram_freqs(toks, 1) == [(("a",), 3), (("b",), 2), (("c",), 1)]
    assert ngram_freqs(toks, 2) == [(("a", "b"), 2), (("b", "a"), 1), (("b", "c"), 1), (("c", "a"), 1)]
    assert ngram_freqs([["a", "b"], ["c"]], 3) == [(("a", "b", "c"), 1)]
    assert ngram_freqs(toks, 7) == []
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must be"):
            ngram_freqs(toks, bad)


def test_ngram_freqs_time_machine_matches_counter(tm_lines):
    words = [w for line in tm_lines for w in line.split()]
    bigrams = ngram_freqs(words, 2)
    assert bigrams[:3] == Counter(zip(words, words[1:])).most_common(3)
    assert bigrams[0] == (("of", "the"), 309)
    trigrams = ngram_freqs(words, 3)
    assert trigrams[0] == (("the", "time", "traveller"), 59)
    assert sum(c for _, c in trigrams) == len(words) - 2


def test_corpus_stats_and_format():
    s = corpus_stats("timemachine", top=5)
    assert s["num_lines"] == 3221 and s["num_tokens"] == 32775 and s["vocab_size"] == 4580
    assert [g for g, _ in s["unigrams"]] == [("the",), ("i",), ("and",), ("of",), ("a",)]
    assert len(s["bigrams"]) == len(s["trigrams"]) == 5
    c = corpus_stats("timemachine", token="char", top=3)
    assert c["num_tokens"] == 170580 and c["vocab_size"] == 28
    text = format_stats(s)
    assert "the time traveller" in text and "4580" in text
    with pytest.raises(ValueError, match="top must be"):
        corpus_stats("timemachine", top=0)


def test_zipf_plot_writes_png(tmp_path, tm_lines):
    words = [w for line in tm_lines[:400] for w in line.split()]
    lists = [ngram_freqs(words, n) for n in (1, 2, 3)]
    out = zipf_plot(lists, tmp_path / "zipf.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # plain counts work too
    zipf_plot([[5, 3, 1]], tmp_path / "z2.png", labels=["counts"])
    assert (tmp_path / "z2.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="labels"):
        zipf_plot([[3], [2]], tmp_path / "z3.png", labels=["one"])
    with pytest.raises(ValueError, match="empty"):
        zipf_plot([[]], tmp_path / "z4.png")


def test_zipf_plot_without_matplotlib(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install rnnfast\[plot\]"):
        zipf_plot([[3, 2, 1]], tmp_path / "z.png")


def test_public_names_reexported():
    for name in data.__all__:
        assert hasattr(data, name), name
    assert {"Vocab", "load_data_time_machine", "seq_data_iter_random", "SeqDataLoader",
            "zipf_plot", "corpus_stats", "load_data"} <= set(data.__all__)


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_corpus_path_refuses_a_file_that_is_not_regular(tmp_path, special):
    # a FIFO would hang a reader and /dev/zero never ends: both are named for what they are
    if special == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    else:
        path = special
    with pytest.raises(FileNotFoundError, match="is not a regular file"):
        corpus_path(path)
    with pytest.raises(FileNotFoundError, match="is not a regular file"):
        load_corpus(path)
