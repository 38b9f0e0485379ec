"""gpunet-bench-data: benchmark of the HDF5 data path (``gpunet.data.bench``).

Converts the real datasets found, measures loader throughput, the cost of streaming
against memory in a training epoch, and the memory of streaming a large file; prints
a table and writes everything with ``--json PATH``.
"""

from __future__ import annotations

import argparse
import os
import json

from ..data import bench
from ..io import write_json
from .common import add_common_args, run, setup


def _body(args):
    name = setup(args)
    r = bench.run_all(
        sources=args.sources,
        tmp=args.tmp,
        big_gb=args.big_gb,
        batch_size=args.batch_size,
        repeats=args.repeats,
        block=args.block,
        skip_memory=args.skip_memory,
        skip_train=args.skip_train,
    )
    r["backend"] = name
    print(bench.table(r))
    if args.json:
        write_json(args.json, json.loads(json.dumps(r, default=str)), indent=2)  # NumPy scalars as text
        print(f"wrote {args.json}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--sources",
        default=os.environ.get("GPUNET_DATASETS"),
        help="folder of the real dataset archives (default: $GPUNET_DATASETS; none: synthetic data only)",
    )
    p.add_argument("--tmp", default=None, help="folder for temporary files (default: the system's)")
    p.add_argument("--big-gb", type=float, default=2.2, help="size of the synthetic file of the memory check")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--repeats", type=int, default=1, help="epochs timed per feeding mode (best is kept)")
    p.add_argument("--block", type=int, default=10, help="batches per interleaved timing block")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    add_common_args(p)
    args = p.parse_args(argv)
    return run(_body, args)
