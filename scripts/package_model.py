#!/usr/bin/env python
"""Package a finished FER2013 run as gpunet's shipped model: python scripts/package_model.py RUN_DIR [--dest
F].

RUN_DIR is a folder written by ``gpunet-train fer2013 --arch cnn``. The model goes to
``gpunet/pretrained/fer2013.npz`` (float16 when that changes no prediction's accuracy),
with its recipe, seed and measured accuracy in the file's meta; the record is printed.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gpunet.cli.common import add_common_args, run, setup  # noqa: E402
from gpunet.pretrained import package  # noqa: E402


def _body(args):
    setup(args)
    print(json.dumps(package(args.run_dir, dest=args.dest, data=args.data, split=args.split), indent=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a finished gpunet-train run folder")
    p.add_argument("--dest", help="where to write (default: gpunet/pretrained/fer2013.npz)")
    p.add_argument("--data", help="HDF5 file to measure on (default: the run's)")
    p.add_argument("--split", help="split to measure on (default: the run's reported split)")
    add_common_args(p)
    return run(_body, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
