"""`python -m v3d_flax.train`: the training command line (`v3d_flax.train.cli`)."""

import sys

from v3d_flax.train.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m v3d_flax.train"))
