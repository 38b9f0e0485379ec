"""What every gpunet command shares: backend flags, and turning errors into one line and an exit code.

A command's ``main(argv=None) -> int`` builds an ``argparse`` parser, adds
``add_common_args``, and runs its body through ``run``. Messages are one line
on stderr, ``error: <message>``, with the traceback only under ``--debug``.

Exit codes, the same for every command (``gpunet-*`` and ``gpunet-prep``):

====  ==============================================================================
0     success
1     failure: an unexpected error (a bug; the line says to rerun with ``--debug``),
      or a check the command runs did not pass (``gpunet-overfit`` short of 100%)
2     bad input or usage: a bad flag (argparse's own code), a missing, foreign or
      damaged file, a value out of range; nothing half-written is left behind
130   interrupted (Ctrl-C); 143 SIGTERM, 129 SIGHUP (``gpunet.interrupts``: a clean stop,
      no half-written file)
141   stdout was closed by its reader (``| head``), as for any Unix tool
====  ==============================================================================
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from .. import backend
from ..ops import gemm
from .. import interrupts
from ..redact import guard_logging, mask


class UserError(Exception):
    """A problem the user can fix (bad file, bad flag value): reported in one line."""


# Exit codes (see the module docstring).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141

# Exceptions that mean "bad input" rather than "bug": reported as one line.
USER_ERRORS = (
    UserError,
    ValueError,
    FileNotFoundError,
    IsADirectoryError,
    PermissionError,
    backend.BackendError,
    OSError,
)


def add_common_args(parser: argparse.ArgumentParser):
    g = parser.add_argument_group("device")
    g.add_argument(
        "--backend",
        default=None,
        choices=["auto", "numpy", "cpu", "cupy", "gpu", "emulated"],
        help="array backend (default: $GPUNET_BACKEND or auto: GPU when usable; emulated: the "
        "GPU code paths run on the CPU, for testing)",
    )
    g.add_argument("--device", type=int, default=None, metavar="N", help="GPU index (default 0)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--quiet", "-q", action="store_true", help="only print errors and the final report")


def add_precision_arg(parser: argparse.ArgumentParser):
    """``--precision fp32|tf32|bf16`` (gpunet-train, -tune, -bench): the compute type of the products."""
    parser.add_argument(
        "--precision",
        choices=gemm.PRECISIONS,
        default=None,
        help="matrix products in fp32 (default), tf32 or bf16 (tensor cores; weights, optimizer state "
        "and loss stay float32); tf32/bf16 need the GPU, or the emulated GPU to check them",
    )


def setup_precision(precision, backend_name: str):
    """Check ``precision`` against the backend, then set it for this process and for the processes it
    spawns (``GPUNET_PRECISION``); ``run`` restores both when the command ends."""
    precision = precision or "fp32"
    why = gemm.precision_refusal(precision, {"cpu": "numpy"}.get(backend_name, backend_name))
    if why is not None:
        raise UserError(f"--precision {precision}: {why}")
    gemm.use_precision(precision)
    os.environ[gemm.ENV] = precision
    if precision == "tf32":  # CuPy's own float32 products (the im2col convolutions) too: read at its first
        os.environ["CUPY_TF32"] = "1"
    return precision


def setup(args) -> str:
    """Configure logging and the backend from parsed args; return the backend's name. With a
    ``precision`` argument, that too (``setup_precision``)."""
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    guard_logging("gpunet", "optuna")  # no credential in any log line
    name = backend.use(args.backend, args.device)
    if hasattr(args, "precision"):
        setup_precision(args.precision, backend.selected())
    return name


def run(body, args) -> int:
    """Run ``body(args)``; map user errors to a one-line message and a non-zero exit code. The product
    precision a command sets ends with it."""
    before, env = gemm.precision(), os.environ.get(gemm.ENV)
    try:
        with interrupts.stop_signals():  # SIGTERM and SIGHUP stop as cleanly as Ctrl-C
            return _run(body, args)
    finally:
        gemm.use_precision(before)
        if env is None:
            os.environ.pop(gemm.ENV, None)
        else:
            os.environ[gemm.ENV] = env


def _run(body, args) -> int:
    try:
        rc = body(args)
        interrupts.raise_lost()  # a signal whose exception a library swallowed
        return EXIT_OK if rc is None else int(rc)
    except KeyboardInterrupt as e:  # gpunet.interrupts.Interrupted carries its exit code
        interrupts.forget()
        print(str(e) or "interrupted", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_INTERRUPTED)
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except USER_ERRORS as e:
        if getattr(args, "debug", False):
            sys.stderr.write(mask(traceback.format_exc()))
        print(f"error: {mask(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # a bug: say so, traceback only with --debug
        if getattr(args, "debug", False):
            sys.stderr.write(mask(traceback.format_exc()))
        print(f"error: {type(e).__name__}: {mask(e)} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILURE
