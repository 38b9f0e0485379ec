"""gpunet-bench: training and inference throughput of the reference nets, beside PyTorch.

Nets (float32): the fully connected A: 3072-512-256-10, ReLU, and B: 3072-1024x3-10,
ReLU, dropout 0.5 (CIFAR-shaped, SGD momentum 0.9, with the GEMM-only bound), or
with --cnn the FER-size CNN (1x48x48 input, 3x[conv3x3-BN-ReLU-pool2] 32/64/128,
4608-256-7, dropout 0.5, Adam, batch 128). Each case is timed interleaved --
gpunet, torch, gpunet, torch ... -- and the median of the repeats is reported
with the ratio gpunet / torch. The gpunet training step is the library's own
path, the Solver's inner loop: ``model.loss(X, y)`` then ``Optimizer.step``.
The measuring code is ``gpunet.benchmark``; this command only parses arguments.

Thread count: numpy's BLAS reads it from the environment at import, so
``--threads N`` re-executes the command once with OMP_NUM_THREADS /
OPENBLAS_NUM_THREADS / MKL_NUM_THREADS set (torch gets ``set_num_threads(N)``).
"""

from __future__ import annotations

import argparse
import sys

from .. import threads
from ..benchmark import NETS, BenchConfig, format_table, machine_line, progress_line, run, set_tf32_env
from ..benchmark.machine import pin_threads
from .common import EXIT_USAGE, add_common_args, add_precision_arg, run as run_command, setup


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpunet-bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nets", nargs="+", default=["A", "B"], choices=sorted(NETS), help="reference nets")
    p.add_argument("--cnn", action="store_true", help="time the FER-size CNN instead of the FC nets")
    p.add_argument(
        "--batch-sizes",
        nargs="+",
        type=int,
        default=None,
        metavar="N",
        help="batch sizes (default: 256 1024 for the FC nets, 128 for --cnn)",
    )
    p.add_argument("--steps", type=int, default=20, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per measurement before the repeats")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for numpy's BLAS and torch (default: the CPUs this process may use)",
    )
    p.add_argument(
        "--view",
        choices=["steps", "epoch", "both"],
        default="both",
        help="FC nets: bare training steps, whole Solver.train() epochs (the headline), or both",
    )
    p.add_argument(
        "--epoch-samples",
        type=int,
        default=10240,
        metavar="N",
        help="training samples per epoch in the epoch view (default 10240)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=None,
        metavar="S",
        help="untimed sleep before each timed call, so the other library's spinning threads "
        "have gone idle (default 0.2 on the CPU, 0 on a GPU)",
    )
    p.add_argument(
        "--levers",
        action="store_true",
        help="epoch view: also time gpunet with each lever off (the update after the backward "
        "pass; batch prefetch on; every product on BLAS's own threads; threads not pinned)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="per-pass profile instead: data, each layer's forward and backward, loss, update, in ms, "
        "gpunet beside PyTorch (the FC nets at batch 256, or --cnn)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time PyTorch's training step under torch.compile (compile time reported apart)",
    )
    p.add_argument("--no-torch", dest="torch", action="store_false", help="skip the PyTorch comparison")
    p.add_argument(
        "--tf32", action="store_true", help="allow TF32 matmuls on the GPU (both libraries; off by default)"
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    add_common_args(p)
    add_precision_arg(p)
    return p


def _body(args) -> int:
    if args.precision == "tf32":
        args.tf32 = True  # TF32 on both sides
    cfg = BenchConfig(
        precision=args.precision or ("tf32" if args.tf32 else "fp32"),
        nets=args.nets,
        batch_sizes=args.batch_sizes,
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        torch=args.torch,
        tf32=args.tf32,
        cnn=args.cnn,
        view=args.view,
        compile=args.compile,
        epoch_samples=args.epoch_samples,
        settle=args.settle,
        levers=args.levers,
        profile=args.profile,
        json_path=args.json,
        command="gpunet-bench " + " ".join(sys.argv[1:]),
    )
    set_tf32_env(args.tf32)
    setup(args)
    say = None if args.quiet else (lambda r: print(progress_line(r), file=sys.stderr, flush=True))
    doc = run(cfg, say=say)
    print(machine_line(doc["machine"]))
    print(format_table(doc["results"]))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.threads is None:
        args.threads = threads.usable_cpus()
    if args.profile and args.batch_sizes is None and not args.cnn:
        args.batch_sizes = [256]
    if args.threads < 1:
        print(f"error: --threads: expected >= 1, got {args.threads}", file=sys.stderr)
        return EXIT_USAGE
    pin_threads(args.threads, "gpunet.cli.bench", argv)
    return run_command(_body, args)


if __name__ == "__main__":
    sys.exit(main())
