"""``gpunet-prep``: convert CIFAR-10 or FER2013 to HDF5, or describe a converted file.

    gpunet-prep cifar10 SRC -o OUT.h5 [--val-size N] [--seed S] [--force] ...
    gpunet-prep cifar10 --download -o OUT.h5 [--cache-dir DIR]
    gpunet-prep fer2013 SRC -o OUT.h5 [--val-size N] [--resize] ...
    gpunet-prep info OUT.h5 [--json] [--verify]

Bad input prints ``error: <file>: <entry>: <problem>`` and exits with status 2,
as bad usage does; an unexpected error exits 1; Ctrl-C 130, SIGTERM 143 and SIGHUP
129 (no output, no temporary file), without a traceback unless --debug. ``info`` on a
damaged file prints what it could read, each problem, and exits 2. These are the codes of every gpunet
command (the
table is in ``gpunet/cli/common.py``; data_prep does not import gpunet).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from gpunet.cli.common import EXIT_OK, UserError, run

from .errors import PrepError
from .h5format import read_info
from .pipeline import convert
from .report import format_info, summary_line


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    p = argparse.ArgumentParser(
        prog="gpunet-prep", parents=[common], description="Convert image datasets to gpunet's HDF5 layout."
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, default_val in (("cifar10", "1000"), ("fer2013", "none")):
        s = sub.add_parser(name, parents=[common], help=f"convert {name}")
        s.add_argument("src", nargs="?", help="source file, folder or archive")
        s.add_argument("-o", "--output", required=True, help="the .h5 file to write")
        s.add_argument(
            "--val-size",
            type=int,
            default=None,
            help=f"validation samples carved from train when the source has none (default {default_val})",
        )
        s.add_argument("--seed", type=int, default=0, help="seed of the validation draw")
        s.add_argument("--force", action="store_true", help="overwrite an existing output")
        s.add_argument(
            "--resize", action="store_true", help="scale images of another size instead of failing"
        )
        s.add_argument(
            "--compress",
            choices=("gzip", "lzf"),
            default=None,
            help="compress the datasets (default: none, fastest to read)",
        )
        if name == "cifar10":
            s.add_argument(
                "--download",
                action="store_true",
                help="download the official python tarball (instead of SRC)",
            )
            s.add_argument(
                "--cache-dir",
                default=None,
                help="download folder (default $GPUNET_CACHE, else the data home $GPUNET_DATA, "
                "else ~/.cache/gpunet)",
            )
    s = sub.add_parser("info", parents=[common], help="describe a converted file")
    s.add_argument("path", help="a .h5 file written by gpunet-prep")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument(
        "--verify",
        action="store_true",
        help="read every chunk of the images (the whole file: slow for large ones); by default "
        "every label is read, and the images of a split up to 256 MiB, of a larger one a sample "
        "of chunks (the first, the last and some between)",
    )
    return p


def main(argv=None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status
    (the convention of ``gpunet.cli.common``: 0 ok, 1 failure, 2 bad input, 130, 141)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    return run(lambda a: _body(a, argv), args)


def _body(args, argv):
    try:
        if args.command == "info":
            info = read_info(args.path, strict=False, verify=args.verify)
            print(json.dumps(info, indent=2) if args.json else format_info(info))
            problems = info["problems"]
            if problems:
                more = (
                    f" (and {len(problems) - 1} more problem(s), listed above)" if len(problems) > 1 else ""
                )
                raise PrepError(f"{problems[0]}{more}")
            return EXIT_OK
        start = time.perf_counter()
        out = convert(
            args.command,
            args.src,
            args.output,
            val_size=args.val_size,
            seed=args.seed,
            force=args.force,
            resize=args.resize,
            download=getattr(args, "download", False),
            cache_dir=getattr(args, "cache_dir", None),
            compress=args.compress,
            command=" ".join(["gpunet-prep"] + argv),
        )
    except PrepError as e:
        raise UserError(str(e)) from e  # --debug shows the PrepError's traceback too
    info = read_info(out)
    print(summary_line(info, time.perf_counter() - start))
    for note in info["notes"]:
        print(f"note: {note}")
    return EXIT_OK
