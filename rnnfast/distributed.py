"""Data-parallel training on torch.distributed: the pieces `rnnfast.train` and `rnnfast train` use.

The contract (docs/design.md §11): N ranks compute the updates of one process with the same global batch.

* Every rank builds the same global loader (same corpus, same seed) and keeps its own contiguous
  block of rows of each minibatch (`RowShard`; B/N rows each, the first B mod N ranks one more).
  Under sequential partitioning row b of minibatch i+1 continues row b of minibatch i, so each
  row's hidden state stays on its rank.
* The model is wrapped in DistributedDataParallel (gloo on CPU, NCCL on CUDA). Each rank's loss is
  the mean over its rows, weighted by N * (its rows / B) (exactly 1 when B splits evenly); DDP
  averages the gradients over ranks, which gives the gradient of the mean over the global batch.
  Clipping (rnnfast.clip_grad_norm_) then runs on the all-reduced gradient, identically on every
  rank, and so does the optimizer step.
* Metrics are summed on the device and all-reduced once per epoch; held-out evaluation splits its
  streams (rows) across ranks and all-reduces the loss sum.
* Rank 0 alone writes checkpoints, metrics and plots and prints; the checkpoint holds the global
  loader's state, so it resumes at any world size.

Launch: `torchrun --nproc-per-node N -m rnnfast train ...` (one machine or, through torchrun's
rendezvous, several), or `rnnfast train --nproc N`, which runs the same through torch.distributed.run.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
import time
from typing import Optional

import torch
import torch.distributed as dist

__all__ = ["world", "is_main", "launched", "init_from_env", "shutdown", "RowShard", "row_slice",
           "data_parallel", "all_reduce_sum", "launch", "DEFAULT_TIMEOUT_S"]

#: Seconds a collective may wait for the other ranks before the run fails (RNNFAST_DIST_TIMEOUT).
DEFAULT_TIMEOUT_S = 300


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def launched() -> bool:
    """True in a process started by torchrun / torch.distributed.run (it sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _timeout_s() -> float:
    raw = os.environ.get("RNNFAST_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        t = float(raw)
    except ValueError:
        raise ValueError(f"RNNFAST_DIST_TIMEOUT must be a number of seconds, got {raw!r}") from None
    if not t > 0:
        raise ValueError(f"RNNFAST_DIST_TIMEOUT must be > 0, got {raw!r}")
    return t


def init_from_env(device: str = "auto") -> torch.device:
    """Join the process group described by torchrun's environment and return this rank's device.

    device 'auto': cuda:LOCAL_RANK when CUDA is available, else cpu. The backend is NCCL for CUDA
    and gloo for CPU; collectives time out after RNNFAST_DIST_TIMEOUT seconds (default 300), so a
    rank that dies or hangs ends the run with an error instead of a hang.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "auto"):
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        count = torch.cuda.device_count()
        if dev.index >= count:
            raise ValueError(f"local rank {local_rank} would use {dev}, but this machine has {count} "
                             f"GPU(s): run at most {count} processes per machine (one GPU each)")
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=_timeout_s()))
    return dev


def shutdown(barrier: bool = False) -> None:
    """Leave the process group. barrier=True (a run that ended normally on every rank): wait for all
    ranks first, so no rank tears gloo's connections down while a peer still uses them (seen once in
    CI as a rank aborting at exit: "terminate called without an active exception"). After an error
    no barrier: the other ranks may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def row_slice(batch_size: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous rows of a global minibatch of `batch_size` rows: batch_size //
    world_size each, one more for the first batch_size % world_size ranks."""
    if batch_size < world_size:
        raise ValueError(f"the global batch size {batch_size} is smaller than the number of processes "
                         f"{world_size}: every rank needs at least one row of each minibatch")
    per, extra = divmod(batch_size, world_size)
    start = rank * per + min(rank, extra)
    return slice(start, start + per + (rank < extra))


class RowShard:
    """This rank's rows of every minibatch of a global loader (a SeqDataLoader or any iterable of
    (X, Y) with a batch_size). len(), state_dict() and load_state_dict() are the global loader's:
    every rank draws the same epochs, and a checkpoint does not depend on the world size."""

    def __init__(self, loader, rank: int, world_size: int):
        if not isinstance(getattr(loader, "batch_size", None), int):
            raise TypeError("a data-parallel run needs a loader with an int batch_size (the global "
                            f"batch, e.g. a SeqDataLoader), got {type(loader).__name__}")
        self.loader, self.rank, self.world_size = loader, rank, world_size
        self.rows = row_slice(loader.batch_size, rank, world_size)
        #: rows of each minibatch here and in all (train_epoch weighs this rank's loss by their ratio)
        self.local_rows, self.global_rows = self.rows.stop - self.rows.start, loader.batch_size

    def __iter__(self):
        rows = self.rows
        for X, Y in self.loader:
            yield X[rows], Y[rows]

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):  # batch_size, num_steps, use_random_iter, state_dict, ...
        return getattr(self.loader, name)


def data_parallel(net, device):
    """`net` wrapped in DistributedDataParallel for the current process group."""
    from torch.nn.parallel import DistributedDataParallel
    device = torch.device(device)
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place (nothing without a process group); returns t."""
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# --------------------------------------------------------------------------------------------------
# Errors of worker processes, and the one-machine launcher behind `rnnfast train --nproc N`
# --------------------------------------------------------------------------------------------------

_ERROR_DIR_ENV = "RNNFAST_ERROR_DIR"


def report_worker_error(message: str, secondary: bool) -> bool:
    """In a worker launched by `launch`, record this rank's error for the launcher (which prints
    one line for the whole run) and return True; elsewhere return False (the caller prints it).
    `secondary`: the error is a consequence of another rank's failure (a collective broken off)."""
    folder = os.environ.get(_ERROR_DIR_ENV)
    if not folder:
        return False
    rank = int(os.environ.get("RANK", "0"))
    record = {"rank": rank, "message": message, "secondary": bool(secondary), "time": time.time()}
    try:
        with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
            json.dump(record, f)
    except OSError:
        return False
    return True


def is_secondary_error(e: BaseException) -> bool:
    """An error a rank gets because *another* rank failed: a broken or timed-out collective."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(e, dist_error):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(
        k in text for k in ("connection closed by peer", "connection reset", "timed out", "timeout",
                            "broken pipe", "gloo", "nccl"))


def launch(nproc: int, argv: list[str], module: str = "rnnfast") -> tuple[int, Optional[str]]:
    """Run `python -m <module> <argv>` as `nproc` ranks on this machine through torch.distributed.run
    (torchrun --standalone: a local c10d rendezvous on a free port, no restarts).

    Returns (exit status, error line or None). When a rank fails, torch.distributed.run stops the
    others; the error line names the rank whose failure came first and was not a consequence of
    another's (a broken collective), with its message.
    """
    import logging
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"--nproc must be a positive integer, got {nproc!r}")
    args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(nproc), "--max-restarts", "0",
         "--monitor-interval", "0.1", "-m", module, *argv])
    # torchrun's own choice, made here so that it does not print a banner about it
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logs = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.distributed.run")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL)  # its failure tables would repeat the one line returned
    with tempfile.TemporaryDirectory(prefix="rnnfast-ranks-") as folder:
        os.environ[_ERROR_DIR_ENV] = folder
        try:
            run(args)
            return 0, None
        except ChildFailedError as e:
            return 2, _failure_line(folder, e)
        except SignalException as e:  # Ctrl-C or a kill: the ranks were stopped
            return 128 + int(e.sigval), None
        finally:
            os.environ.pop(_ERROR_DIR_ENV, None)
            for log, level in zip(logs, levels):
                log.setLevel(level)


def _failure_line(folder: str, e) -> str:
    records = []
    for name in os.listdir(folder):
        try:
            with open(os.path.join(folder, name)) as f:
                records.append(json.load(f))
        except (OSError, ValueError):
            pass
    if records:
        records.sort(key=lambda r: (r["secondary"], r["time"]))
        r = records[0]
        return f"rank {r['rank']}: {r['message']}"
    rank, failure = min(e.failures.items(), key=lambda kv: kv[1].timestamp)
    how = (f"was killed by signal {-failure.exitcode}" if failure.exitcode < 0
           else f"exited with status {failure.exitcode}")
    return f"rank {rank} {how} (see its output above); the other ranks were stopped"
