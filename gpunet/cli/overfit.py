"""gpunet-overfit: the coursework's sanity check, 100% training accuracy on 50 CIFAR-10 images.

    gpunet-overfit                        # 50 images of the prepared (or converted) CIFAR-10
    gpunet-overfit --source cifar-10-python.tar.gz
    gpunet-overfit --synthetic            # CIFAR-shaped random data: runs anywhere

Exit status 0 when 100% is reached within --epochs (default 20), 1 when not.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .. import runs
from .common import UserError, add_common_args, run, setup
from .train import add_data_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpunet-overfit",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--synthetic", action="store_true", help="random CIFAR-shaped images and labels")
    p.add_argument("--num-train", type=int, default=50, help="training images (default 50)")
    p.add_argument("--epochs", type=int, default=20, help="most epochs allowed (default 20)")
    p.add_argument("--hidden", type=int, nargs="+", default=[100, 100], metavar="N", help="hidden sizes")
    p.add_argument("--optimizer", choices=runs.OPTIMIZERS, default="adam")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    add_data_args(p)
    add_common_args(p)
    return p


def _body(args):
    setup(args)
    say = (lambda m: None) if args.quiet else print
    if args.num_train < 1 or args.epochs < 1:
        raise UserError(
            f"--num-train/--epochs: expected positive numbers, got {args.num_train}/{args.epochs}"
        )
    if args.synthetic:
        rng = np.random.default_rng(args.seed)
        X = rng.integers(0, 256, (args.num_train, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, args.num_train)
        C, what = 10, "synthetic CIFAR-shaped data"
    else:
        path = runs.find_data(
            "cifar10", args.data_dir, args.source, args.download, say=lambda m: print(m, file=sys.stderr)
        )
        meta = runs.check_data(path)
        X, y = runs.load_split(path, "train", args.num_train, args.seed)
        C, what = len(meta["class_names"]), path
    reached, epochs, accs = runs.overfit_small(
        X, y, C, args.hidden, args.epochs, args.lr, args.optimizer, args.batch_size, args.seed, say=say
    )
    if reached:
        print(f"OK: 100% training accuracy on {len(y)} images of {what} after {epochs} epoch(s)")
        return 0
    print(
        f"FAILED: {max(accs) if accs else 0:.1%} training accuracy on {len(y)} images of {what} "
        f"after {epochs} epochs (target 100%)"
    )
    return 1


def main(argv=None) -> int:
    return run(_body, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
