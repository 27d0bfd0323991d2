"""The `rnnfast` command line, run in-process through rnnfast.cli.main (one subprocess for -m)."""
import json
import subprocess
import sys

import pytest
import torch

import rnnfast.cli as cli
from rnnfast.cli import main

TINY = ["--max-tokens", "3000", "--hidden", "16", "--epochs", "2", "--batch-size", "8",
        "--num-steps", "10", "--valid-tokens", "1500", "--quiet"]


# Tiny models: one intra-op thread is faster, and spares shared cores OpenMP spinning.
pytestmark = pytest.mark.usefixtures("one_thread")



def _fails_with(capsys, argv, match):
    """main(argv) exits with status 2 and exactly one stderr line `rnnfast: error: ...` holding `match`."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rnnfast: error: ") and match in lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_train_writes_checkpoint_log_plot_and_reports(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--cell", "lstm"]) == 0
    text = capsys.readouterr().out
    for what in ("train perplexity", "held-out perplexity", "tokens/s", "sample: time traveller",
                 "sample: traveller", "checkpoint.pt", "metrics.jsonl"):
        assert what in text, what
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert "valid_ppl" in records[0]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["model_config"]["cell"] == "lstm" and ck["model_config"]["num_hiddens"] == 16
    assert ck["train_config"]["cli_settings"]["max_tokens"] == 3000
    pytest.importorskip("matplotlib")
    assert (out / "perplexity.png").exists()


def test_train_resume_uses_the_checkpoint_settings(run_dir, tmp_path, capsys):
    # Copy the run, then extend it to 3 epochs giving only --resume/--epochs: the model, corpus and
    # schedule come from the checkpoint.
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    with open(run / "metrics.jsonl", "a") as f:  # an epoch logged after the last checkpoint
        f.write('{"epoch": 3, "train_ppl": 1.0}\n')
    assert main(["train", "--resume", str(run / "checkpoint.pt"), "--epochs", "3", "--quiet"]) == 0
    capsys.readouterr()
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[2]["train_ppl"] > 1.0
    assert set(records[0]) == set(records[2])
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 3
    # an explicit flag that contradicts the checkpoint's model is refused
    _fails_with(capsys, ["train", "--resume", str(run / "checkpoint.pt"), "--epochs", "4", "--hidden", "32",
                         "--quiet"], "different model")


def test_word_level_train_and_generate(tmp_path, capsys):
    out = tmp_path / "words"
    assert main(["train", "--token", "word", "--max-tokens", "1200", "--embedding", "8", "--hidden", "8",
                 "--epochs", "1", "--batch-size", "4", "--num-steps", "5", "--valid", "none", "--quiet",
                 "--out", str(out)]) == 0
    assert "held-out" not in capsys.readouterr().out
    assert main(["generate", "--checkpoint", str(out / "checkpoint.pt"), "--prefix", "the time traveller",
                 "--num", "6"]) == 0
    words = capsys.readouterr().out.split()
    assert words[:3] == ["the", "time", "traveller"] and len(words) == 9


def test_interrupted_training_says_how_to_resume(run_dir, tmp_path, monkeypatch, capsys):
    import rnnfast.train as T

    def interrupted(*a, out_dir=None, **k):
        (tmp_path / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes())
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "train", interrupted)
    assert main(["train", *TINY, "--out", str(tmp_path)]) == 130
    assert f"rnnfast train --resume {tmp_path / 'checkpoint.pt'}" in capsys.readouterr().err


def test_generate(run_dir, capsys):
    ck = str(run_dir / "checkpoint.pt")
    assert main(["generate", "--checkpoint", ck, "--prefix", "time traveller", "--num", "20"]) == 0
    greedy = capsys.readouterr().out.strip()
    assert greedy.startswith("time traveller") and len(greedy) == 14 + 20
    args = ["generate", "--checkpoint", ck, "--prefix", "The Time", "--num", "30", "--temperature", "1.0",
            "--top-k", "3", "--seed", "1"]
    assert main(args) == 0
    a = capsys.readouterr().out.strip()
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == a and a.startswith("The Time") and len(a) == 8 + 30
    _fails_with(capsys, ["generate", "--checkpoint", ck, "--prefix", ""], "non-empty")


def test_eval(run_dir, capsys):
    assert main(["eval", "--checkpoint", str(run_dir / "checkpoint.pt"), "--corpus", "war_of_the_worlds",
                 "--max-tokens", "2000"]) == 0
    out = capsys.readouterr().out
    assert "held-out perplexity" in out
    ppl = float(out.split("held-out perplexity")[1].split()[0])
    assert 1 < ppl < 28 * 1.5


def test_stats_with_zipf_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "zipf.png"
    assert main(["stats", "--corpus", "timemachine", "--token", "word", "--top", "3", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "vocab size: 4580" in out and "'the time traveller'" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_sine(tmp_path, capsys):
    assert main(["sine", "--epochs", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "k=64" in out and "multistep" in out
    pytest.importorskip("matplotlib")
    assert (tmp_path / "sine_predictions.png").exists() and (tmp_path / "sine_kstep.png").exists()


@pytest.mark.parametrize("argv,match", [
    (["train", "--corpus", "/no/such/file.txt", "--quiet"], "does not exist"),
    (["train", *TINY, "--cell", "transformer"], "unknown cell"),
    (["train", *TINY, "--backend", "nope"], "unknown backend"),
    (["train", *TINY, "--valid", "/no/such/valid.txt"], "does not exist"),
    (["train", *TINY, "--lr", "0"], "argument --lr: must be a finite number > 0, got '0'"),
    (["generate", "--checkpoint", "/no/such/checkpoint.pt"], "not found"),
    (["eval", "--checkpoint", "/no/such/checkpoint.pt"], "not found"),
    (["stats", "--corpus", "/no/such/file.txt"], "does not exist"),
    (["train", "--resume", "/no/such/checkpoint.pt"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(argv, match, capsys, tmp_path):
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    _fails_with(capsys, argv, match)


def test_corrupt_checkpoint_is_reported(tmp_path, capsys):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"\x00garbage" * 50)
    _fails_with(capsys, ["generate", "--checkpoint", str(bad)], "not a readable rnnfast checkpoint")
    _fails_with(capsys, ["eval", "--checkpoint", str(bad)], "not a readable rnnfast checkpoint")


def test_argparse_errors_are_one_line_and_exit_2(capsys):
    _fails_with(capsys, ["train", "--hidden", "0"], "train: argument --hidden: must be an integer >= 1")
    _fails_with(capsys, [], "the following arguments are required: COMMAND")
    _fails_with(capsys, ["train", "--no-such-flag"], "unrecognized arguments: --no-such-flag")
    _fails_with(capsys, ["nope"], "invalid choice: 'nope'")


def test_bench_is_not_a_command_of_the_package(capsys):
    # The benchmark runners live with bench/ (bench/run.py, `make bench`), not in the installed package:
    # `rnnfast bench` is an unknown command like any other, one line and exit 2.
    _fails_with(capsys, ["bench"], "invalid choice: 'bench'")
    _fails_with(capsys, ["bench", "-k", "gru"], "invalid choice: 'bench'")
    assert not hasattr(cli, "cmd_bench")


def test_train_help_names_the_registry_cells(capsys):
    from rnnfast._cells import NAMES
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"{', '.join(NAMES[:-1])} or {NAMES[-1]}" in out


def test_python_dash_m_help():
    r = subprocess.run([sys.executable, "-m", "rnnfast", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for cmd in ("train", "generate", "eval", "stats", "sine"):
        assert cmd in r.stdout
    assert "bench" not in r.stdout  # benchmarks: bench/run.py in the source repository
