#!/usr/bin/env python3
"""Same as gpunet-predict (kept for running from a checkout)."""
from gpunet.cli.predict import main

raise SystemExit(main())
