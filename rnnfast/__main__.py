"""`python -m rnnfast ...`: the same command line as the `rnnfast` console script."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
