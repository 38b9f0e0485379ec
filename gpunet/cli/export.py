"""gpunet-export: a trained model as an ONNX file that needs no gpunet to run.

    gpunet-export MODEL.npz -o MODEL.onnx

The ONNX graph takes float32 pixels (N, C, H, W) in 0..255 (input ``pixels``) and
gives class probabilities (N, classes) (output ``probabilities``): the model's
normalisation and the softmax are inside. Needs the extra: pip install 'gpunet[onnx]'.
"""

from __future__ import annotations

import argparse
import sys

from .common import UserError, add_common_args, run, setup


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpunet-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", metavar="MODEL", help="trained model file (.npz from gpunet-train)")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.onnx", help="ONNX file to write")
    add_common_args(p)
    return p


def _body(args) -> int:
    from .. import backend
    from ..export import export_onnx

    setup(args)
    backend.use("numpy")  # the weights are written from host memory anyway
    try:
        out = export_onnx(args.model, args.output)
    except ImportError as e:
        raise UserError(str(e)) from None
    if not args.quiet:
        print(f"ONNX model written to {out}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run(_body, args)


if __name__ == "__main__":
    raise SystemExit(main())
