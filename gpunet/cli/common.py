"""What every gpunet command shares: backend flags and turning errors into one line.

A command's ``main(argv=None) -> int`` builds an ``argparse`` parser, adds
``add_common_args``, and runs its body through ``run``: a user error (bad
file, bad value) prints ``error: <message>`` and exits non-zero without a
traceback unless ``--debug``; Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from .. import backend


class UserError(Exception):
    """A problem the user can fix (bad file, bad flag value): reported in one line."""


# Exceptions that mean "bad input" rather than "bug": reported as one line.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError,
               backend.BackendError, OSError)


def add_common_args(parser: argparse.ArgumentParser):
    g = parser.add_argument_group("device")
    g.add_argument("--backend", default=None, choices=["auto", "numpy", "cpu", "cupy", "gpu"],
                   help="array backend (default: $GPUNET_BACKEND or auto: GPU when usable)")
    g.add_argument("--device", type=int, default=None, metavar="N", help="GPU index (default 0)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--quiet", "-q", action="store_true", help="only print errors and the final report")


def setup(args) -> str:
    """Configure logging and the backend from parsed args; return the backend's name."""
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    return backend.use(args.backend, args.device)


def run(body, args) -> int:
    """Run ``body(args)``; map user errors to a one-line message and a non-zero exit code."""
    try:
        rc = body(args)
        return 0 if rc is None else int(rc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except USER_ERRORS as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: say so, traceback only with --debug
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 1
