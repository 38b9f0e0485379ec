#!/usr/bin/env python
"""Thin wrapper for ``gpunet-bench`` (see ``gpunet/cli/bench.py``): run from a checkout without installing."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpunet.cli.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
