"""`python -m rnnfast ...`: the same command line as the `rnnfast` console script."""
import os
import sys

from .cli import main

if __name__ == "__main__":
    code = main()
    from . import distributed
    if distributed.launched():
        # A rank of `rnnfast train --nproc N` (or torchrun): its work is done, files closed, the
        # process group left (cli: barrier, then destroy_process_group). Leave without the
        # interpreter's teardown, where gloo's threads have, rarely, aborted the rank ("terminate
        # called without an active exception", seen twice in CI's two-rank test), which the
        # launcher then reports as a failed run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 0)
    sys.exit(code)
