"""Issue 13 item 4: best.pt, --patience, --weight-decay and lr annealing on a held-out plateau —
in rnnfast.train.train and through the CLI, resumed exactly."""
import json
import math

import pytest
import torch
from torch import nn

import rnnfast.train as T
from rnnfast.cli import main
from rnnfast.data import SeqDataLoader, load_corpus
from rnnfast.models import RNNLM
from rnnfast.train import load_checkpoint, plateau, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    corpus, vocab = load_corpus("timemachine", "char", 2000)
    valid, _ = load_corpus("war_of_the_worlds", "char", 600, vocab=vocab)
    return corpus, vocab, valid


def _loader(corpus, vocab, seed=7):
    return SeqDataLoader(corpus, vocab, 8, 10, use_random_iter=False, seed=seed)


def _net(vocab, seed=123):
    torch.manual_seed(seed)
    return RNNLM(len(vocab), num_hiddens=12, cell="gru")


class ScriptedHeldOut:
    """Stands in for rnnfast.train.evaluate: returns the scripted held-out perplexities in order
    and keeps a copy of the weights at each call (the model of that epoch)."""

    def __init__(self, ppls):
        self.ppls, self.calls, self.weights = list(ppls), 0, []

    def __call__(self, net, corpus, batch_size, num_steps, device):
        self.weights.append({k: v.clone() for k, v in net.state_dict().items()})
        self.calls += 1
        return self.ppls[self.calls - 1]


def test_plateau_counts_epochs_since_the_strict_minimum():
    assert plateau([]) == (math.inf, 0, 0)
    assert plateau([5.0, 4.0, 4.0, 4.5]) == (4.0, 2, 2)  # an equal perplexity is no improvement
    assert plateau([math.nan, 3.0, math.nan]) == (3.0, 2, 1)  # NaN never improves
    assert plateau([math.nan, math.nan]) == (math.inf, 0, 2)


def test_anneal_divides_lr_after_each_epoch_without_improvement(tiny, tmp_path, monkeypatch):
    corpus, vocab, valid = tiny
    held_out = ScriptedHeldOut([5.0, 4.0, 4.5, 4.2, 3.9, 4.0])
    monkeypatch.setattr(T, "evaluate", held_out)
    h = train(_net(vocab), _loader(corpus, vocab), vocab, 6, 0.08, optimizer="sgd", valid_corpus=valid,
              anneal=4, out_dir=tmp_path, progress=False, predict_prefixes=())
    assert h["lr"] == [0.08, 0.08, 0.08, 0.02, 0.005, 0.005]
    assert [json.loads(l)["lr"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] == h["lr"]
    # the checkpoint holds the lr of the next epoch (annealed once more after epoch 6)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["optimizer_state"]["param_groups"][0]["lr"] == 0.00125
    assert not h["stopped_early"] and h["best_valid_ppl"] == 3.9 and h["best_epoch"] == 5


def test_patience_stops_and_best_pt_holds_the_best_epoch(tiny, tmp_path, monkeypatch):
    corpus, vocab, valid = tiny
    held_out = ScriptedHeldOut([5.0, 4.0, 4.5, 4.2, 3.0, 2.0])
    monkeypatch.setattr(T, "evaluate", held_out)
    net = _net(vocab)
    h = train(net, _loader(corpus, vocab), vocab, 6, 0.01, optimizer="adam", valid_corpus=valid,
              patience=2, out_dir=tmp_path, progress=False, predict_prefixes=())
    assert h["epoch"] == [1, 2, 3, 4] and h["stopped_early"] and held_out.calls == 4
    last = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert last["epoch"] == 4 and best["epoch"] == 2
    for k, v in held_out.weights[1].items():  # best.pt is the model evaluated at epoch 2
        assert torch.equal(best["model_state"][k], v), k
        assert torch.equal(last["model_state"][k], net.state_dict()[k]), k
    # eval/generate's loader takes either file
    net_best, _, config = load_checkpoint(tmp_path / "best.pt")
    assert config["epoch"] == 2 and config["history"]["valid_ppl"] == [5.0, 4.0]


def test_no_held_out_corpus_no_best_pt_and_patience_is_refused(tiny, tmp_path):
    corpus, vocab, _ = tiny
    h = train(_net(vocab), _loader(corpus, vocab), vocab, 1, 0.01, optimizer="adam", out_dir=tmp_path,
              progress=False, predict_prefixes=())
    assert "best.pt" not in h["paths"] and not (tmp_path / "best.pt").exists()
    for kw in ({"patience": 2}, {"anneal": 4}):
        with pytest.raises(ValueError, match="pass valid_corpus"):
            train(_net(vocab), _loader(corpus, vocab), vocab, 1, 0.01, progress=False, **kw)
    for kw, match in (({"anneal": 1.0}, "anneal"), ({"anneal": math.inf}, "anneal"),
                      ({"patience": -1}, "patience"), ({"patience": 1.5}, "patience"),
                      ({"weight_decay": -1e-3}, "weight_decay"), ({"weight_decay": math.nan}, "weight_decay")):
        with pytest.raises(ValueError, match=match):
            train(_net(vocab), _loader(corpus, vocab), vocab, 1, 0.01, progress=False, valid_corpus=tiny[2], **kw)


class ZeroGradNet(nn.Module):
    """Uniform logits with a parameter the loss does not depend on: only weight decay moves it."""

    def __init__(self, V):
        super().__init__()
        self.V = V
        self.w = nn.Parameter(torch.ones(()))
        self.config = {}

    def begin_state(self, batch_size, device):
        return torch.zeros(batch_size, 1, device=device)

    def forward(self, X, state):
        return torch.zeros(X.numel(), self.V) + 0 * self.w, state


def test_weight_decay_is_the_l2_term_of_the_optimizer(tiny):
    corpus, vocab, _ = tiny
    loader = _loader(corpus, vocab)
    net = ZeroGradNet(len(vocab))
    train(net, loader, vocab, 1, 0.1, optimizer="sgd", weight_decay=0.5, clip=0, progress=False,
          predict_prefixes=())
    # SGD with weight decay wd: w <- w - lr * wd * w per step (the gradient of (wd/2) w^2)
    expected = (1 - 0.1 * 0.5) ** len(loader)
    assert net.w.item() == pytest.approx(expected, rel=1e-5) and len(loader) > 5
    net0 = ZeroGradNet(len(vocab))
    train(net0, _loader(corpus, vocab), vocab, 1, 0.1, optimizer="sgd", clip=0, progress=False,
          predict_prefixes=())
    assert net0.w.item() == 1.0


@pytest.mark.parametrize("split", [3, 4])
def test_resume_continues_patience_anneal_and_weight_decay_exactly(tiny, tmp_path, monkeypatch, split):
    # Held-out perplexities 5, 6, 4, 7, 8: anneal after epochs 2, 4 and 5; with patience 2 the run
    # stops after epoch 5. Resumed after epoch 3 (just improved) or 4 (one epoch into the plateau),
    # it must stop at the same epoch with the same lr schedule and the same weights.
    corpus, vocab, valid = tiny
    script = [5.0, 6.0, 4.0, 7.0, 8.0, 9.0, 9.5]
    kw = dict(optimizer="adam", valid_corpus=valid, patience=2, anneal=2, weight_decay=1e-3, seed=5,
              progress=False, predict_prefixes=())

    monkeypatch.setattr(T, "evaluate", ScriptedHeldOut(script))
    net_a = _net(vocab)
    hist_a = train(net_a, _loader(corpus, vocab), vocab, 7, 0.02, **kw)
    assert hist_a["epoch"] == [1, 2, 3, 4, 5] and hist_a["stopped_early"]
    assert hist_a["lr"] == [0.02, 0.02, 0.01, 0.01, 0.005]

    shared = ScriptedHeldOut(script)  # one script across the interrupted run and its resumption
    monkeypatch.setattr(T, "evaluate", shared)
    train(_net(vocab), _loader(corpus, vocab), vocab, split, 0.02, out_dir=tmp_path, **kw)
    torch.manual_seed(999)
    net_c = _net(vocab, seed=999)
    hist_c = train(net_c, _loader(corpus, vocab, seed=1), vocab, 7, 0.02, out_dir=tmp_path,
                   resume=tmp_path / "checkpoint.pt", **kw)
    assert hist_c["epoch"] == hist_a["epoch"] and hist_c["stopped_early"]
    assert hist_c["lr"] == hist_a["lr"] and hist_c["train_ppl"] == hist_a["train_ppl"]
    assert hist_c["best_valid_ppl"] == 4.0 and hist_c["best_epoch"] == 3
    for k, v in net_a.state_dict().items():
        assert torch.equal(v, net_c.state_dict()[k]), k
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 3
    # resuming the stopped run trains nothing more
    hist_d = train(_net(vocab), _loader(corpus, vocab), vocab, 7, 0.02, out_dir=tmp_path,
                   resume=tmp_path / "checkpoint.pt", **kw)
    assert hist_d["epoch"] == [1, 2, 3, 4, 5] and hist_d["stopped_early"]


# --------------------------------------------------------------------------------------------------
# Through the CLI
# --------------------------------------------------------------------------------------------------

TINY = ["--max-tokens", "2000", "--hidden", "8", "--batch-size", "8", "--num-steps", "10",
        "--valid-tokens", "600", "--quiet"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    # lr 0.3 with Adam on a tiny GRU overshoots: held-out perplexity stalls within a few epochs.
    out = tmp_path_factory.mktemp("sched")
    assert main(["train", *TINY, "--epochs", "8", "--lr", "0.3", "--patience", "2", "--anneal", "4",
                 "--weight-decay", "0.001", "--out", str(out)]) == 0
    return out


def test_cli_train_keeps_best_pt_and_records_the_schedule(cli_run, capsys):
    records = [json.loads(l) for l in (cli_run / "metrics.jsonl").read_text().splitlines()]
    valid = [r["valid_ppl"] for r in records]
    best, best_epoch, waited = plateau(valid)
    last = torch.load(cli_run / "checkpoint.pt", weights_only=True)
    best_ck = torch.load(cli_run / "best.pt", weights_only=True)
    assert best_ck["epoch"] == best_epoch and last["epoch"] == len(records)
    assert last["train_config"]["cli_settings"]["patience"] == 2
    assert last["train_config"]["cli_settings"]["anneal"] == 4.0
    assert all(g["weight_decay"] == 0.001 for g in last["optimizer_state"]["param_groups"])
    # the lr of each epoch: divided by 4 after each epoch without improvement
    lr = 0.3
    for i, r in enumerate(records):
        assert r["lr"] == pytest.approx(lr, rel=1e-12), (i, records)
        if plateau(valid[:i + 1])[2] > 0:
            lr /= 4
    if len(records) < 8:  # stopped early: two epochs without improvement
        assert waited == 2


def test_eval_and_generate_take_either_checkpoint(cli_run, capsys):
    records = [json.loads(l) for l in (cli_run / "metrics.jsonl").read_text().splitlines()]
    best, best_epoch, _ = plateau([r["valid_ppl"] for r in records])
    results = {}
    for name in ("best.pt", "checkpoint.pt"):
        assert main(["eval", "--checkpoint", str(cli_run / name), "--max-tokens", "600"]) == 0
        results[name] = float(capsys.readouterr().out.split("held-out perplexity")[1].split()[0])
        assert main(["generate", "--checkpoint", str(cli_run / name), "--num", "5"]) == 0
        assert capsys.readouterr().out.startswith("time traveller")
    # eval recomputes exactly what training measured for that epoch (3 decimals printed)
    assert results["best.pt"] == pytest.approx(best, abs=6e-4)
    assert results["checkpoint.pt"] == pytest.approx(records[-1]["valid_ppl"], abs=6e-4)


def test_cli_patience_or_anneal_without_held_out_corpus(capsys, tmp_path):
    for flag in (["--patience", "2"], ["--anneal", "4"]):
        with pytest.raises(SystemExit) as e:
            main(["train", *TINY, "--valid", "none", *flag, "--out", str(tmp_path / "o")])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("rnnfast: error: --patience and --anneal watch the held-out") and err.count("\n") == 1
    for flag, value in (("--anneal", "1"), ("--anneal", "0.5"), ("--patience", "-1"), ("--weight-decay", "nan")):
        with pytest.raises(SystemExit):
            main(["train", *TINY, f"{flag}={value}"])
        assert capsys.readouterr().err.startswith(f"rnnfast: error: train: argument {flag}: must be")


def test_cli_resume_of_a_run_that_ran_out_of_patience(tmp_path, capsys, monkeypatch):
    held_out = ScriptedHeldOut([5.0, 6.0, 7.0, 3.0, 5.0, 6.0])
    monkeypatch.setattr(T, "evaluate", held_out)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "4", "--patience", "2", "--out", str(out)]) == 0
    assert "stopped early        after epoch 3" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["train", "--resume", str(out), "--epochs", "6"])
    assert e.value.code == 2
    assert "stopped early: no held-out improvement in its last 2 epochs" in capsys.readouterr().err
    # a larger patience goes on, counting the two epochs already waited
    assert main(["train", "--resume", str(out / "checkpoint.pt"), "--epochs", "6", "--patience", "3",
                 "--quiet"]) == 0
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["valid_ppl"] for r in records] == [5.0, 6.0, 7.0, 3.0, 5.0, 6.0]
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 4
