"""Helper of tests/test_distributed.py, run as `python -m _rank_fails train ...` by each rank:
`rnnfast train` where rank 1 alone is given a corpus file that does not exist."""
import os
import sys

from rnnfast.cli import main

argv = sys.argv[1:]
if os.environ.get("RANK") == "1":
    argv += ["--corpus", "/nonexistent/corpus.txt"]
sys.exit(main(argv))
