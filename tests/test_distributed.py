"""Data-parallel training on torch.distributed with 2 CPU ranks (gloo): the same per-epoch
perplexities as one process with the same global batch, resume across world sizes, rank 0 alone
writes, and a failing or hanging rank ends the run with a clear error instead of a hang.

Ranks are separate processes (torch.multiprocessing spawn for the library, torch.distributed.run
for the CLI); models are tiny and runs are a few minibatches, so the cost is mostly start-up.
"""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import rnnfast
from rnnfast import distributed
from rnnfast.data import SeqDataLoader, load_corpus
from rnnfast.train import train

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
RTOL = 1e-5  # the target for 1 vs 2 ranks

# one tiny setup shared by the single process and the ranks: a global batch of 4 rows
B, T, H, TOKENS, VALID = 4, 8, 24, 1200, 400


def _setup(use_random_iter, batch_size=B):
    corpus, vocab = load_corpus("timemachine", "char", max_tokens=TOKENS)
    valid, _ = load_corpus("war_of_the_worlds", "char", max_tokens=VALID, vocab=vocab)
    loader = SeqDataLoader(corpus, vocab, batch_size, T, use_random_iter, seed=5)
    torch.manual_seed(0)
    net = rnnfast.RNNLM(len(vocab), H, cell="lstm")
    return net, loader, vocab, valid


def _run(use_random_iter, epochs, out_dir=None, resume=None, batch_size=B):
    torch.set_num_threads(1)
    net, loader, vocab, valid = _setup(use_random_iter, batch_size)
    h = train(net, loader, vocab, epochs, lr=0.01, optimizer="adam", clip=1.0, out_dir=out_dir,
              resume=resume, progress=False, valid_corpus=valid, predict_prefixes=(), seed=0)
    return {k: h[k] for k in ("epoch", "train_ppl", "valid_ppl")}, net


def _rank_job(rank, world_size, port, folder):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init_from_env("cpu")
    folder = Path(folder)
    results = {}
    # 1. two ranks from scratch, sequential partitioning (state carried per row) and random sampling
    results["sequential"], _ = _run(False, 2, out_dir=str(folder / "ddp-seq"))
    results["random"], _ = _run(True, 2)
    results["uneven"], _ = _run(False, 2, batch_size=3)  # rows split 2 + 1
    # 2. resume at 2 ranks a checkpoint written by one process
    results["resumed_from_1"], net = _run(False, 3, out_dir=str(folder / "from-1"),
                                         resume=str(folder / "single" / "checkpoint.pt"))
    if rank == 0:
        torch.save(net.state_dict(), folder / "from-1-weights.pt")
        (folder / "ranks.json").write_text(json.dumps(results))
    distributed.shutdown()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    single = {"sequential": _run(False, 2, out_dir=str(folder / "single"))[0],
              "random": _run(True, 2)[0], "uneven": _run(False, 2, batch_size=3)[0]}
    full, full_net = _run(False, 3)
    mp.start_processes(_rank_job, args=(2, _free_port(), str(folder)), nprocs=2, join=True,
                       start_method="spawn")
    ranks = json.loads((folder / "ranks.json").read_text())
    return dict(folder=folder, single=single, full=full, full_net=full_net, ranks=ranks)


def _close(a, b):
    return all(abs(x - y) <= RTOL * abs(y) for x, y in zip(a, b)) and len(a) == len(b)


@pytest.mark.slow  # process start-up: a few seconds per rank
@pytest.mark.parametrize("mode", ["sequential", "random", "uneven"])
def test_two_ranks_match_one_process_per_epoch(runs, mode):
    one, two = runs["single"][mode], runs["ranks"][mode]
    assert two["epoch"] == [1, 2]
    assert _close(two["train_ppl"], one["train_ppl"]), (two["train_ppl"], one["train_ppl"])
    # held-out evaluation is sharded by streams across the ranks and summed
    assert _close(two["valid_ppl"], one["valid_ppl"]), (two["valid_ppl"], one["valid_ppl"])
    assert one["train_ppl"][1] < one["train_ppl"][0]  # it trains: the comparison is not vacuous


@pytest.mark.slow  # process start-up: a few seconds per rank
def test_rank_zero_alone_writes_and_the_checkpoint_resumes_in_one_process(runs):
    folder = runs["folder"]
    lines = (folder / "ddp-seq" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]  # one writer: no duplicated lines
    # a checkpoint written by 2 ranks, resumed by one process: the 3-epoch run of one process
    resumed, net = _run(False, 3, resume=str(folder / "ddp-seq" / "checkpoint.pt"))
    assert _close(resumed["train_ppl"], runs["full"]["train_ppl"])
    for p, q in zip(net.parameters(), runs["full_net"].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # process start-up: a few seconds per rank
def test_a_one_process_checkpoint_resumes_at_two_ranks(runs):
    two = runs["ranks"]["resumed_from_1"]
    assert two["epoch"] == [1, 2, 3]
    assert _close(two["train_ppl"], runs["full"]["train_ppl"])
    weights = torch.load(runs["folder"] / "from-1-weights.pt")
    for name, p in runs["full_net"].state_dict().items():
        torch.testing.assert_close(weights[name], p, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_size,rows", [(6, [2, 2, 2]), (7, [3, 2, 2]), (3, [1, 1, 1])])
def test_row_shard_splits_rows_in_contiguous_blocks(batch_size, rows):
    corpus, vocab = load_corpus("timemachine", max_tokens=500)
    # each rank has its own loader, seeded alike: the same epochs everywhere
    shards = [distributed.RowShard(SeqDataLoader(corpus, vocab, batch_size, 5, seed=1), r, 3)
              for r in range(3)]
    whole = list(SeqDataLoader(corpus, vocab, batch_size, 5, seed=1))
    assert len(shards[0]) == len(whole) and shards[1].state_dict()["seed"] == 1  # the global loader's
    parts = [list(s) for s in shards]
    assert [s.local_rows for s in shards] == rows and shards[1].global_rows == batch_size
    for i, (X, Y) in enumerate(whole):
        assert [p[i][0].shape[0] for p in parts] == rows
        assert torch.equal(torch.cat([p[i][0] for p in parts]), X)
        assert torch.equal(torch.cat([p[i][1] for p in parts]), Y)


def test_row_shard_refuses_fewer_rows_than_ranks_and_loaders_without_a_batch_size():
    corpus, vocab = load_corpus("timemachine", max_tokens=500)
    with pytest.raises(ValueError, match="global batch size 3 is smaller than the number of processes 4"):
        distributed.RowShard(SeqDataLoader(corpus, vocab, 3, 5), 0, 4)
    with pytest.raises(TypeError, match="needs a loader with an int batch_size"):
        distributed.RowShard([(corpus[:10], corpus[1:11])], 0, 2)


# --- a rank that hangs or fails ----------------------------------------------------------------

def _hang_job(rank, world_size, port, folder):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RNNFAST_DIST_TIMEOUT="3")
    distributed.init_from_env("cpu")
    if rank == 1:
        time.sleep(20)  # never joins the collective below
        return
    start = time.perf_counter()
    try:
        distributed.all_reduce_sum(torch.ones(1))
        outcome = "returned"
    except Exception as e:  # the error a waiting rank gets: a timeout
        outcome = f"{type(e).__name__}: {e}"
    Path(folder, "hang.json").write_text(json.dumps(
        {"outcome": outcome, "seconds": time.perf_counter() - start}))
    os._exit(0)


@pytest.mark.slow  # process start-up: a few seconds per rank
def test_a_hanging_rank_ends_in_a_timeout_error_not_a_hang(tmp_path):
    start = time.perf_counter()
    ctx = mp.start_processes(_hang_job, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    while not (tmp_path / "hang.json").exists() and time.perf_counter() - start < 60:
        time.sleep(0.2)
    for p in ctx.processes:
        p.terminate()
        p.join()
    r = json.loads((tmp_path / "hang.json").read_text())
    assert r["outcome"] != "returned" and r["seconds"] < 15, r


def _cli(args, env=None, timeout=240):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


TINY = ["--hidden", "16", "--epochs", "2", "--batch-size", "4", "--num-steps", "8",
        "--max-tokens", "1000", "--valid-tokens", "300", "--cell", "gru", "--quiet"]


@pytest.mark.slow  # process start-up: a few seconds per rank
def test_cli_nproc_2_matches_one_process_and_writes_once(tmp_path, capsys):
    r = _cli(["-m", "rnnfast", "train", "--nproc", "2", "--out", str(tmp_path / "two"), *TINY])
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("done in") == 1 and r.stderr == "", (r.stdout, r.stderr)
    from rnnfast.cli import main
    assert main(["train", "--out", str(tmp_path / "one"), *TINY]) == 0
    capsys.readouterr()

    def ppl(run):
        return [json.loads(x)["train_ppl"] for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert len(ppl("two")) == 2 and _close(ppl("two"), ppl("one")), (ppl("two"), ppl("one"))


@pytest.mark.slow  # process start-up: a few seconds per rank
def test_cli_a_failing_rank_ends_the_run_with_one_clear_line(tmp_path):
    # rank 1 alone gets a corpus that does not exist; rank 0 waits for it in a collective
    code = ("import sys\nfrom rnnfast.distributed import launch\n"
            "code, err = launch(2, sys.argv[1:], module='_rank_fails')\n"
            "print(f'rnnfast: error: {err}', file=sys.stderr) if err else None\nsys.exit(code)\n")
    start = time.perf_counter()
    r = _cli(["-c", code, "train", "--out", str(tmp_path), *TINY],
             env={"PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])},
             timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "rnnfast: error: rank 1: corpus file '/nonexistent/corpus.txt' does not exist; bundled "
        "corpora are 'timemachine', 'war_of_the_worlds'"], r.stderr
    assert time.perf_counter() - start < 100


def test_cli_nproc_refuses_fewer_rows_than_processes(capsys):
    from rnnfast.cli import main
    with pytest.raises(SystemExit) as e:
        main(["train", "--nproc", "3", "--batch-size", "2", "--epochs", "1"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "rnnfast: error: the global batch size 2 is smaller than the number of processes 3: "
        "every rank needs at least one row of each minibatch")
