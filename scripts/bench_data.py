#!/usr/bin/env python
"""Benchmark the HDF5 data path (conversion, streaming, epoch cost, memory): see gpunet/cli/bench_data.py."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gpunet.cli.bench_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
