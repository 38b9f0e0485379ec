"""``python -m gpunet.serve``: the same as the ``gpunet-serve`` command."""

from ..cli.serve import main

if __name__ == "__main__":
    raise SystemExit(main())
