"""``python -m data_prep ...`` is ``gpunet-prep ...``."""

import sys

from .cli import main

sys.exit(main())
