"""gpunet-evaluate: score a trained model on one split of a prepared HDF5 file.

    gpunet-evaluate MODEL.npz --data FILE.h5 [--split test] [--out DIR] [--plot PATH]
                    [--json PATH|-] [--batch-size N]

Prints the classification rate, the confusion matrix (counts and row-normalised),
per-class precision/recall/F1 and their macro averages; saves the heat map
(``--plot PATH``, or ``DIR/confusion_<split>.png`` with ``--out DIR``) and a JSON
report (``--json PATH``; ``--json -`` prints only the JSON on standard output).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..io import write_json
from .common import UserError, add_common_args, run, setup


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpunet-evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", metavar="MODEL", help="trained model file (.npz from gpunet-train)")
    p.add_argument("--data", required=True, metavar="FILE.h5", help="prepared HDF5 file (gpunet-prep)")
    p.add_argument("--split", default="test", help="split to evaluate: train, val or test (default test)")
    p.add_argument(
        "--batch-size", type=int, default=1024, metavar="N", help="samples per batch (default 1024)"
    )
    p.add_argument("--out", metavar="DIR", help="folder for confusion_<split>.png and report_<split>.json")
    p.add_argument("--plot", metavar="PATH", help="save the confusion-matrix heat map to PATH (PNG)")
    p.add_argument(
        "--json", metavar="PATH", help="write the report as JSON to PATH ('-' for standard output)"
    )
    p.add_argument("--counts", action="store_true", help="heat map of counts instead of row-normalised rates")
    add_common_args(p)
    return p


def _write_json(report: dict, path: str):
    write_json(path, report, indent=2)


def _body(args) -> int:
    from data_prep.errors import PrepError

    from .. import backend
    from ..metrics import classification_report, format_report
    from ..predict import evaluate, model_meta, resolve_model

    if args.batch_size < 1:
        raise UserError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    name = setup(args)
    to_stdout = args.json == "-"
    say = (lambda *a: print(*a, file=sys.stderr)) if to_stdout else print
    model, where = resolve_model(args.model)
    names = (model_meta(model, where, required=False) or model.meta or {}).get("class_names")
    if not names:
        from ..data import read_meta

        names = read_meta(args.data).get("class_names") or [str(i) for i in range(model.num_classes)]
    y_true, y_pred = evaluate(model, args.data, args.split, batch_size=args.batch_size)
    report = classification_report(y_true, y_pred, names)
    report.update(model=os.fspath(args.model), data=os.fspath(args.data), split=args.split, backend=name)
    backend.synchronize()

    plot = args.plot or (os.path.join(args.out, f"confusion_{args.split}.png") if args.out else None)
    json_path = args.json or (os.path.join(args.out, f"report_{args.split}.json") if args.out else None)
    try:
        if args.out:
            os.makedirs(args.out, exist_ok=True)
        if plot:
            from ..plots import confusion_heatmap  # matplotlib loads only when a plot is wanted

            confusion_heatmap(
                report["confusion_matrix"],
                names,
                plot,
                normalize=not args.counts,
                title=f"{os.path.basename(args.model)} on {args.split}",
            )
        if json_path and not to_stdout:
            _write_json(report, json_path)
    except PrepError as e:
        raise UserError(str(e)) from None
    say(f"model {args.model} on {args.data} [{args.split}]")
    say(format_report(report))
    for what, path in (("heat map", plot), ("JSON report", None if to_stdout else json_path)):
        if path:
            say(f"{what}: {path}")
    if to_stdout:
        print(json.dumps(report, indent=2))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run(_body, args)


if __name__ == "__main__":
    raise SystemExit(main())
