"""The CLI at every edge (issue 10 item 8): every bad argument or bad file is one stderr line
`rnnfast: error: ...` and exit status 2 — no traceback, no work started, no misleading message.

In-process through rnnfast.cli.main (fast); a few cases through a subprocess to see the real stderr.
"""
import os
import subprocess
import sys

import pytest
import torch

from rnnfast.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--max-tokens", "2000", "--hidden", "8", "--batch-size", "8", "--num-steps", "10",
        "--valid-tokens", "500", "--quiet"]


def _fails_with(capsys, argv, match):
    """main(argv) exits 2 with exactly one stderr line `rnnfast: error: ...` containing `match`."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("rnnfast: error: ") and match in lines[0], lines[0]
    return captured


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def ckpt(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def _edited(ckpt, tmp_path, edit):
    """A copy of the checkpoint with `edit(copy)` applied, saved as tmp_path/bad.pt."""
    import copy
    c = copy.deepcopy(ckpt)
    edit(c)
    path = tmp_path / "bad.pt"
    torch.save(c, path)
    return str(path)


# --------------------------------------------------------------------------------------------------
# The cases listed in the issue, one test each
# --------------------------------------------------------------------------------------------------

def test_train_device_meta(capsys, tmp_path):
    _fails_with(capsys, ["train", *TINY, "--device", "meta", "--out", str(tmp_path / "o")],
                "--device meta: rnnfast runs on 'cpu' or 'cuda' devices, not 'meta'")
    assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.parametrize("command", [["train", *TINY], ["sine", "--epochs", "1"]])
def test_out_below_a_file_cannot_be_created(command, capsys):
    _fails_with(capsys, [*command, "--out", "/dev/null/x"], "cannot create the directory")


@pytest.mark.parametrize("command", [["train", *TINY], ["sine", "--epochs", "1"]])
def test_out_an_existing_file(command, capsys, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    _fails_with(capsys, [*command, "--out", str(f)], "exists and is not a directory")
    assert f.read_text() == "keep me"


@pytest.mark.parametrize("name,edit,match", [
    ("history not a dict", lambda c: c.__setitem__("history", [1, 2]), "history must be a dict"),
    ("history values", lambda c: c["history"].__setitem__("train_ppl", ["x", "y"]),
     "history['train_ppl'] must be a list of numbers"),
    ("history length", lambda c: c["history"]["train_ppl"].pop(), "history['train_ppl'] has 1 entries for 2 epochs"),
    ("history epochs", lambda c: c["history"].__setitem__("epoch", [1, 7]), "history['epoch'] must be 1..2"),
    ("rng state type", lambda c: c.__setitem__("torch_rng_state", "seed"), "torch_rng_state must be a 1-D uint8"),
    ("rng state dtype", lambda c: c.__setitem__("torch_rng_state", c["torch_rng_state"].float()),
     "torch_rng_state must be a 1-D uint8"),
    ("rng state size", lambda c: c.__setitem__("torch_rng_state", c["torch_rng_state"][:10]),
     "torch_rng_state has 10 bytes"),
    ("loader state type", lambda c: c.__setitem__("loader_state", "junk"), "loader_state must be a dict"),
    ("loader generator", lambda c: c["loader_state"].__setitem__("generator_state", torch.zeros(3)),
     "loader_state['generator_state'] must be a 1-D uint8"),
    ("loader generator size",
     lambda c: c["loader_state"].__setitem__("generator_state", torch.zeros(3, dtype=torch.uint8)),
     "loader_state['generator_state'] has 3 bytes"),
    ("train_config type", lambda c: c.__setitem__("train_config", ["lr", 1]), "train_config must be a dict"),
    ("train_config lr", lambda c: c["train_config"].__setitem__("lr", float("inf")),
     "train_config['lr'] must be a finite number > 0"),
    ("cli_settings type", lambda c: c["train_config"].__setitem__("cli_settings", "x"),
     "train_config['cli_settings'] must be a dict"),
    ("cli_settings unknown", lambda c: c["train_config"]["cli_settings"].__setitem__("turbo", 1),
     "unknown setting 'turbo'"),
    ("cli_settings value", lambda c: c["train_config"]["cli_settings"].__setitem__("clip", float("nan")),
     "setting 'clip' must be a finite number >= 0"),
    ("cli_settings seed", lambda c: c["train_config"]["cli_settings"].__setitem__("seed", 2**70),
     "setting 'seed' must be an integer >= 0 and <= 18446744073709551615"),
    ("cli_settings choice", lambda c: c["train_config"]["cli_settings"].__setitem__("token", "syllable"),
     "setting 'token' must be one of"),
    ("epoch", lambda c: c.__setitem__("epoch", -1), "epoch must be an int >= 0"),
    ("optimizer", lambda c: c.__setitem__("optimizer", "rmsprop"), "optimizer must be one of sgd, adam"),
    ("optimizer state", lambda c: c.__setitem__("optimizer_state", "junk"), "optimizer_state must be a dict"),
    ("model_state", lambda c: c.__setitem__("model_state", {"w": "x"}), "model_state must map"),
    ("model_config", lambda c: c["model_config"].__setitem__("turbo", True), "model_config must be a dict"),
    ("vocab", lambda c: c["vocab"].__setitem__("idx_to_token", "<unk>abc"), "idx_to_token must be a list"),
])
def test_resume_refuses_a_malformed_checkpoint(name, edit, match, ckpt, capsys, tmp_path):
    bad = _edited(ckpt, tmp_path, edit)
    _fails_with(capsys, ["train", "--resume", bad, "--epochs", "3", "--out", str(tmp_path / "o")], match)
    assert not (tmp_path / "o").exists()  # validated before any work


def test_resume_without_cli_settings(ckpt, capsys, tmp_path):
    bad = _edited(ckpt, tmp_path, lambda c: c["train_config"].pop("cli_settings"))
    _fails_with(capsys, ["train", "--resume", bad, "--epochs", "3"], "was not written by `rnnfast train`")


@pytest.mark.parametrize("delta", [-1, +1])
def test_generate_with_a_vocabulary_that_does_not_fit_the_model(delta, ckpt, capsys, tmp_path):
    def edit(c):
        tokens = c["vocab"]["idx_to_token"]
        c["vocab"]["idx_to_token"] = tokens[:-1] if delta < 0 else tokens + ["@"]
    bad = _edited(ckpt, tmp_path, edit)
    V = ckpt["model_config"]["vocab_size"]
    for command in (["generate"], ["eval", "--max-tokens", "100"]):
        _fails_with(capsys, [*command, "--checkpoint", bad],
                    f"its vocabulary has {V + delta} tokens but the model was built for {V}")


@pytest.mark.parametrize("flag,value,rule", [
    ("--lr", "inf", "must be a finite number > 0"),
    ("--lr", "nan", "must be a finite number > 0"),
    ("--lr", "-0.1", "must be a finite number > 0"),
    ("--clip", "nan", "must be a finite number >= 0"),
    ("--clip", "-inf", "must be a finite number >= 0"),
    ("--clip", "-1", "must be a finite number >= 0"),
])
def test_non_finite_or_negative_rates_are_refused_by_the_parser(flag, value, rule, capsys, tmp_path):
    _fails_with(capsys, ["train", *TINY, f"{flag}={value}", "--out", str(tmp_path / "o")],
                f"argument {flag}: {rule}")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["train", *TINY], ["generate", "--checkpoint", "x.pt"], ["sine"]])
def test_seed_beyond_what_torch_takes(command, capsys):
    _fails_with(capsys, [*command, "--seed", str(2**70)],
                f"argument --seed: must be an integer >= 0 and <= {2**64 - 1}, got '{2**70}'")


def test_seed_at_the_limit_is_accepted(capsys, tmp_path):
    assert main(["sine", "--epochs", "1", "--seed", str(2**64 - 1), "--out", str(tmp_path)]) == 0


def test_epochs_zero_without_a_checkpoint(capsys, tmp_path):
    err = _fails_with(capsys, ["train", *TINY, "--epochs", "0", "--out", str(tmp_path / "o")],
                      "argument --epochs: must be an integer >= 1, got '0'").err
    assert "checkpoint" not in err


def test_resume_with_no_new_epochs_is_refused_and_claims_no_file(run_dir, capsys, tmp_path):
    other = tmp_path / "elsewhere"
    captured = _fails_with(capsys, ["train", "--resume", str(run_dir / "checkpoint.pt"), "--epochs", "2",
                                    "--out", str(other)],
                           "already has 2 epochs: pass --epochs N with N > 2")
    assert "wrote" not in captured.out and not other.exists()
    # the checkpoint's own epoch count (no --epochs) is no new epoch either
    _fails_with(capsys, ["train", "--resume", str(run_dir / "checkpoint.pt")], "already has 2 epochs")


def test_resume_elsewhere_reports_only_files_it_wrote(run_dir, capsys, tmp_path):
    other = tmp_path / "elsewhere"
    assert main(["train", "--resume", str(run_dir / "checkpoint.pt"), "--epochs", "3", "--quiet",
                 "--out", str(other)]) == 0
    wrote = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 1
    for path in wrote[0][len("wrote "):].split(", "):
        assert os.path.isfile(path) and path.startswith(str(other)), path


@pytest.mark.parametrize("flag", ["--corpus", "--valid"])
def test_a_device_file_as_corpus_is_not_a_regular_file(flag, capsys, tmp_path):
    _fails_with(capsys, ["train", *TINY, flag, "/dev/zero", "--out", str(tmp_path / "o")],
                f"{flag} '/dev/zero' is not a regular file")


def test_a_directory_as_corpus(capsys, tmp_path):
    _fails_with(capsys, ["train", *TINY, "--corpus", str(tmp_path), "--out", str(tmp_path / "o")],
                "is a directory, not a regular file")
    _fails_with(capsys, ["stats", "--corpus", str(tmp_path)], "is a directory, not a regular file")


def test_a_fifo_as_corpus_is_refused_without_blocking(tmp_path):
    # Through a subprocess with a timeout: if the CLI opened the FIFO it would block forever.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for argv in (["train", "--corpus", str(fifo), "--out", str(tmp_path / "o")],
                 ["eval", "--checkpoint", str(fifo)],
                 ["stats", "--corpus", str(fifo)]):
        r = subprocess.run([sys.executable, "-m", "rnnfast", *argv], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2, r.stderr
        assert r.stderr.splitlines() == [r.stderr.strip()] and "Traceback" not in r.stderr
        assert r.stderr.startswith("rnnfast: error: ") and "is not a regular file" in r.stderr, r.stderr


def test_device_meta_through_a_real_process():
    r = subprocess.run([sys.executable, "-m", "rnnfast", "train", "--device", "meta", "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "rnnfast: error: --device meta: rnnfast runs on 'cpu' or 'cuda' devices, not 'meta'\n"


# --------------------------------------------------------------------------------------------------
# The wider sweep: every command, every numeric option, every file it reads or writes
# --------------------------------------------------------------------------------------------------

BAD_NUMBERS = {  # option -> values the parser must refuse
    "--hidden": ["0", "-3", "1.5", "x", "nan"], "--layers": ["0", "two"], "--embedding": ["0", "-1"],
    "--epochs": ["-1", "1e3"], "--batch-size": ["0", ""], "--num-steps": ["0", "inf"],
    "--dropout": ["-0.1", "1.5", "nan", "inf"], "--lr": ["0", "1e400", "-inf"],
    "--max-tokens": ["0", "-2", "nan"], "--valid-tokens": ["0", "-5"], "--seed": ["-1", "1.0", str(2**64)],
    "--threads": ["-1", "100000"], "--log-every": ["-1", "x"], "--clip": ["-0.5", "inf", "-inf", "nan"],
}


@pytest.mark.parametrize("flag,value", [(f, v) for f, vs in BAD_NUMBERS.items() for v in vs])
def test_sweep_train_numbers(flag, value, capsys, tmp_path):
    _fails_with(capsys, ["train", *TINY, f"{flag}={value}", "--out", str(tmp_path / "o")],
                f"argument {flag}: must be")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,match", [
    (["generate", "--checkpoint", "c.pt", "--num", "-1"], "argument --num: must be an integer >= 0"),
    (["generate", "--checkpoint", "c.pt", "--temperature", "nan"], "argument --temperature: must be a finite"),
    (["generate", "--checkpoint", "c.pt", "--temperature", "-1"], "argument --temperature: must be"),
    (["generate", "--checkpoint", "c.pt", "--temperature", "inf"], "argument --temperature: must be"),
    (["generate", "--checkpoint", "c.pt", "--top-k", "0"], "argument --top-k: must be an integer >= 1"),
    (["generate", "--checkpoint", "c.pt", "--seed", "-5"], "argument --seed: must be"),
    (["eval", "--checkpoint", "c.pt", "--max-tokens", "0"], "argument --max-tokens: must be"),
    (["eval", "--checkpoint", "c.pt", "--batch-size", "0"], "argument --batch-size: must be"),
    (["eval", "--checkpoint", "c.pt", "--num-steps", "nan"], "argument --num-steps: must be"),
    (["stats", "--top", "0"], "argument --top: must be an integer >= 1"),
    (["sine", "--tau", "0"], "argument --tau: must be an integer >= 1 and <= 399"),
    (["sine", "--tau", "400"], "argument --tau: must be"),
    (["sine", "--epochs", "0"], "argument --epochs: must be"),
    (["generate"], "the following arguments are required: --checkpoint"),
    (["train", "--token", "syllable"], "argument --token: invalid choice"),
])
def test_sweep_other_commands_numbers(argv, match, capsys):
    _fails_with(capsys, argv, match)


@pytest.mark.parametrize("argv,match", [
    (["generate", "--checkpoint", "/dev/zero"], "is not a regular file"),
    (["generate", "--checkpoint", "/no/such.pt"], "not found"),
    (["eval", "--checkpoint", "/dev/null"], "is not a regular file"),
    (["train", "--resume", "/dev/zero"], "is not a regular file"),
    (["stats", "--corpus", "/dev/zero"], "is not a regular file"),
    (["stats", "--corpus", "/no/such.txt"], "does not exist"),
    (["stats", "--plot", "/dev/null/zipf.png", "--top", "1"], "is not an existing directory"),
    (["train", *TINY, "--out", "/proc/rnnfast-cannot-be-here"], "cannot create the directory"),
    (["sine", "--out", "/dev/null"], "exists and is not a directory"),
    (["train", *TINY, "--device", "cuda:x"], "invalid --device 'cuda:x'"),
    (["train", *TINY, "--device", "tpu"], "invalid --device"),
    (["generate", "--checkpoint", "c.pt", "--device", "meta"], ""),
    (["train", *TINY, "--hidden", str(10**9)], "is too large: Storage size calculation overflowed"),
    (["train", *TINY, "--hidden", str(10**6)], "needs about"),
    (["train", *TINY, "--embedding", str(10**8), "--hidden", "8"], "needs about"),
    (["train", *TINY, "--valid-tokens", "1"], "the held-out corpus has 1 token(s)"),
    (["train", *TINY, "--batch-size", str(10**6)], ""),
    (["train", *TINY, "--num-steps", str(10**6)], ""),
])
def test_sweep_files_devices_and_sizes(argv, match, capsys, tmp_path):
    if argv[0] == "train" and "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "o")]
    _fails_with(capsys, argv, match)


def test_sweep_stats_plot_into_a_directory(capsys, tmp_path):
    _fails_with(capsys, ["stats", "--plot", str(tmp_path), "--top", "1"], "is a directory, not a file name")


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_sweep_checkpoint_that_is_garbage_or_a_directory(command, capsys, tmp_path):
    extra = ["--max-tokens", "100"] if command == "eval" else []
    _fails_with(capsys, [command, "--checkpoint", str(tmp_path), *extra], "without a checkpoint.pt")
    (tmp_path / "checkpoint.pt").write_bytes(os.urandom(256))
    _fails_with(capsys, [command, "--checkpoint", str(tmp_path), *extra], "not a readable rnnfast checkpoint")


def test_eval_corpus_that_is_not_utf8(run_dir, capsys, tmp_path):
    f = tmp_path / "binary.txt"
    f.write_bytes(b"\xff\xfe\x00garbage" * 20)
    _fails_with(capsys, ["eval", "--checkpoint", str(run_dir), "--corpus", str(f)], "not valid UTF-8")


def test_an_output_directory_that_turns_out_unwritable_mid_run(run_dir, capsys, tmp_path, monkeypatch):
    # A write that fails after the checks (a full disk, a permission changed) is still one line.
    import rnnfast.checkpoint as C

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "o" / "checkpoint.pt.tmp"))

    monkeypatch.setattr(C.torch, "save", full_disk)
    _fails_with(capsys, ["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "o")],
                "No space left on device")


def test_keyboard_interrupt_outside_training_is_one_line(run_dir, capsys, monkeypatch):
    import rnnfast.train as T

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "predict", interrupted)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--checkpoint", str(run_dir)])
    assert e.value.code == 130
    assert capsys.readouterr().err == "rnnfast: interrupted\n"


def test_resume_with_a_different_lr_is_refused(run_dir, capsys):
    _fails_with(capsys, ["train", "--resume", str(run_dir), "--epochs", "3", "--lr", "0.5"],
                "--lr 0.5: a resumed run continues with its optimizer's state")


def test_a_config_far_larger_than_its_weights_is_refused_before_allocating(ckpt, capsys, tmp_path):
    # 10**6 hidden units would need terabytes; the weights in the file are for 8
    bad = _edited(ckpt, tmp_path, lambda c: c["model_config"].__setitem__("num_hiddens", 10**6))
    _fails_with(capsys, ["generate", "--checkpoint", bad], "its weights do not fit its model_config")
    bad = _edited(ckpt, tmp_path, lambda c: c["model_state"].pop("linear.bias"))
    _fails_with(capsys, ["eval", "--checkpoint", bad, "--max-tokens", "100"],
                "(linear.bias: missing in the file")


@pytest.mark.parametrize("temperature", ["1e-300", "5e-324"])
def test_generate_with_a_tiny_temperature_is_greedy(run_dir, capsys, temperature):
    assert main(["generate", "--checkpoint", str(run_dir), "--num", "30"]) == 0
    greedy = capsys.readouterr().out
    assert main(["generate", "--checkpoint", str(run_dir), "--num", "30", "--seed", "3",
                 "--temperature", temperature]) == 0
    assert capsys.readouterr().out == greedy


def test_generate_from_a_model_with_nan_weights(ckpt, capsys, tmp_path):
    def poison(c):
        c["model_state"]["linear.bias"] = torch.full_like(c["model_state"]["linear.bias"], float("nan"))
    bad = _edited(ckpt, tmp_path, poison)
    _fails_with(capsys, ["generate", "--checkpoint", bad, "--temperature", "1", "--seed", "0"],
                "the model's logits are not finite")


@pytest.mark.parametrize("key,value,match", [
    ("cell", "transformer", "unknown cell 'transformer'"),
    ("num_layers", True, "num_layers must be a positive int"),
    ("dropout", "x", "could not convert string to float"),
    ("backend", None, "unknown backend None"),
])
def test_generate_with_a_model_config_rnnlm_refuses(key, value, match, ckpt, capsys, tmp_path):
    bad = _edited(ckpt, tmp_path, lambda c: c["model_config"].__setitem__(key, value))
    line = _fails_with(capsys, ["generate", "--checkpoint", bad], match).err
    assert f"checkpoint {bad} does not describe a loadable RNNLM" in line
