"""Vocab.load / Vocab.from_dict on files and dicts that are not a saved Vocab: a clear ValueError
(FileNotFoundError when absent), never a bare UnicodeDecodeError/KeyError, and never a hang."""
import json
import os

import pytest

from rnnfast.data import Vocab


def test_round_trip(tmp_path):
    v = Vocab(list("the time traveller"), reserved_tokens=["<bos>"])
    v.save(tmp_path / "v.json")
    w = Vocab.load(tmp_path / "v.json")
    assert w == v and w.idx_to_token == v.idx_to_token and w.token_freqs == v.token_freqs


@pytest.mark.parametrize("content,match", [
    (b"\x80\x81\xfe\xff\x00binary", r"not a Vocab JSON file: not UTF-8 text \(byte 0x80 at offset 0\)"),
    (bytes(range(256)), "not UTF-8 text"),
    (b"PK\x03\x04 a zip header", "not a Vocab JSON file"),
    (b"{not json", "not a Vocab JSON file"),
    (b"", "not a Vocab JSON file"),
    (b"[1, 2, 3]", "expected a dict with an 'idx_to_token' list"),
    (b'{"tokens": []}', "expected a dict with an 'idx_to_token' list"),
    (b'{"idx_to_token": "<unk>abc"}', "idx_to_token must be a list"),
    (b'{"idx_to_token": []}', "index 0 must be '<unk>'"),
    (b'{"idx_to_token": ["<unk>", "a", "a"]}', "duplicate tokens"),
    (b'{"idx_to_token": ["<unk>", ["a"]]}', "unhashable tokens"),
    (b'{"idx_to_token": ["<unk>"], "token_freqs": [["a"]]}', "token_freqs must be a list of"),
    (b'{"idx_to_token": ["<unk>"], "token_freqs": "a"}', "token_freqs must be a list of"),
    (b'{"idx_to_token": ["<unk>"], "min_freq": "x"}', "min_freq must be a number"),
    (b'{"idx_to_token": ["<unk>"], "reserved_tokens": 3}', "reserved_tokens must be a list"),
])
def test_load_refuses_what_is_not_a_saved_vocab(content, match, tmp_path):
    f = tmp_path / "v.json"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=match) as e:
        Vocab.load(f)
    assert str(f) in str(e.value)


def test_load_refuses_non_regular_files_without_opening_them(tmp_path):
    with pytest.raises(FileNotFoundError):
        Vocab.load(tmp_path / "absent.json")
    with pytest.raises(ValueError, match="is not a regular file"):
        Vocab.load(tmp_path)
    with pytest.raises(ValueError, match="is not a regular file"):
        Vocab.load("/dev/zero")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    with pytest.raises(ValueError, match="is not a regular file"):
        Vocab.load(fifo)


def test_from_dict_still_accepts_older_minimal_dicts():
    v = Vocab.from_dict({"idx_to_token": ["<unk>", "a", "b"]})
    assert v["b"] == 2 and v["zzz"] == 0 and v.token_freqs == [] and v.min_freq == 0
    d = json.loads(json.dumps(Vocab(list("abcab")).to_dict()))
    assert Vocab.from_dict(d) == Vocab(list("abcab"))
