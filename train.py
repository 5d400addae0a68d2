#!/usr/bin/env python
"""Train or evaluate a v3d model: `python train.py --help` (the same as `python -m v3d_flax.train`)."""
from v3d_flax.train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
