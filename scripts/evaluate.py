#!/usr/bin/env python3
"""Same as gpunet-evaluate (kept for running from a checkout)."""
from gpunet.cli.evaluate import main

raise SystemExit(main())
