"""gpunet-compare: is model A really better than model B on the same data?

    gpunet-compare A.npz B.npz --data FILE.h5 [--split test] [--boot N] [--seed S]
                   [--level 0.95] [--json PATH|-]

Prints both accuracies, McNemar's exact test on the samples where exactly one model
is right (two-sided, binomial with p = 1/2), and a seeded paired-bootstrap interval
of the accuracy difference A - B (see ``gpunet.compare``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from .common import UserError, add_common_args, run, setup


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpunet-compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model_a", metavar="A", help="first model file (.npz)")
    p.add_argument("model_b", metavar="B", help="second model file (.npz)")
    p.add_argument("--data", required=True, metavar="FILE.h5", help="prepared HDF5 file (gpunet-prep)")
    p.add_argument("--split", default="test", help="split to compare on: train, val or test (default test)")
    p.add_argument("--boot", type=int, default=10000, metavar="N", help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--level", type=float, default=0.95, help="interval confidence level (default 0.95)")
    p.add_argument(
        "--batch-size", type=int, default=1024, metavar="N", help="samples per batch (default 1024)"
    )
    p.add_argument(
        "--json",
        metavar="PATH",
        help="also write the numbers as JSON to PATH ('-': only JSON on standard output)",
    )
    add_common_args(p)
    return p


MAX_BOOT = 10_000_000  # resamples: one float each (80 MB), and minutes of work at the most


def _body(args) -> int:
    import json

    from ..compare import compare_models
    from ..io import write_json

    if not 1 <= args.boot <= MAX_BOOT:
        raise UserError(f"--boot: expected a number of resamples from 1 to {MAX_BOOT:,}, got {args.boot}")
    if args.seed < 0:
        raise UserError(f"--seed: expected an integer >= 0, got {args.seed}")
    if not 0 < args.level < 1:
        raise UserError(f"--level: expected a confidence level between 0 and 1, got {args.level}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    setup(args)
    result = compare_models(
        args.model_a,
        args.model_b,
        args.data,
        args.split,
        n_boot=args.boot,
        seed=args.seed,
        level=args.level,
        batch_size=args.batch_size,
    )
    report = dict(
        dataclasses.asdict(result),
        model_a=os.fspath(args.model_a),
        model_b=os.fspath(args.model_b),
        data=os.fspath(args.data),
        split=args.split,
    )
    report["ci"] = list(result.ci)
    if args.json == "-":
        print(json.dumps(report, indent=2))
        return 0
    print(result.report(args.model_a, args.model_b))
    if args.json:
        write_json(args.json, report, indent=2)
        if not args.quiet:
            print(f"report written to {args.json}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run(_body, args)


if __name__ == "__main__":
    raise SystemExit(main())
