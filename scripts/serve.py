#!/usr/bin/env python3
"""Thin wrapper for ``gpunet.cli.serve``: runs from a checkout, installed or not."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpunet.cli.serve import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
