#!/usr/bin/env python3
"""Replay issue 13's bad inputs against the model readers and gpunet-train; count the outcomes.

    python scripts/fuzz_models.py [--keep DIR]

Entry points: ``load_model`` and ``test_fer_model`` (API), ``gpunet-evaluate`` and
``gpunet-predict`` (bad model files from ``tests/bad_models.py``, for a fully connected
and a convolutional model), and ``gpunet-train`` (bad options, run folders and
checkpoints). Per entry point it prints the inputs tried, clean refusals (a ValueError
or FileNotFoundError naming the file; for a command exit 2 with one ``error:`` line),
tracebacks or other exceptions, bad inputs accepted (exit 0), and for gpunet-train the
runs whose files a refused command changed (data loss). Runs in about a minute on a CPU.
"""

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), *(str(ROOT / "tests" / d) for d in ("", "reliability", "cli"))]
os.environ.setdefault("GPUNET_BACKEND", "numpy")

import numpy as np  # noqa: E402
from bad_models import variants, write_fer_inputs  # noqa: E402
from test_reliability_model import fer_cnn, fer_fc  # noqa: E402
from test_train_cli import write_h5  # noqa: E402

from gpunet import runfolder  # noqa: E402
from gpunet.cli.evaluate import main as evaluate_main  # noqa: E402
from gpunet.cli.predict import main as predict_main  # noqa: E402
from gpunet.cli.train import main as train_main  # noqa: E402
from gpunet.model import load_model  # noqa: E402
from gpunet.predict import test_fer_model  # noqa: E402


VERBOSE = False


def api_outcome(call, path, bad):
    try:
        call(path)
    except (ValueError, FileNotFoundError) as e:
        return (
            "refused"
            if bad and os.fspath(path) in str(e)
            else ("refused, file not named" if bad else "wrongly refused")
        )
    except Exception as e:  # noqa: BLE001 (counting them is the point)
        return f"exception {type(e).__name__}"
    return "accepted (exit 0)" if bad else "ok"


def cli_outcome(main, argv, bad, needle):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main([*argv, "--backend", "numpy", "-q"])
        except SystemExit as e:  # argparse's own refusals exit 2 through SystemExit
            rc = e.code if isinstance(e.code, int) else 1
        except Exception as e:  # noqa: BLE001 (an escaped exception is a crash: count it)
            return f"exception {type(e).__name__}"
    lines = err.getvalue().strip().splitlines()
    last = lines[-1] if lines else ""
    if "Traceback" in err.getvalue() or rc not in (0, 2):
        return f"traceback/exit {rc}"
    if rc == 0:
        return "accepted (exit 0)" if bad else "ok"
    if not bad:
        return "wrongly refused"
    if VERBOSE:
        print(f"  exit {rc}: {last}")
    return "refused" if last.startswith("error:") and needle in last else f"refused, unclear: {last[:80]}"


def copy_run(good, run):
    """A copy of run folder ``good``'s run files in the new folder ``run``."""
    run.mkdir()
    for f in good.iterdir():
        if f.name in runfolder.RUN_FILES:
            (run / f.name).write_bytes(f.read_bytes())
    return run


def fuzz_models(work, report):
    faces, h5 = write_fer_inputs(work)
    files = []
    for kind, model in (("fc", fer_fc()), ("cnn", fer_cnn())):
        files += variants(model.save(work / f"{kind}.npz"), work / kind)
    for name, path, bad in files:
        report["load_model / test_fer_model (API)"].append((name, api_outcome(load_model, path, bad)))
        report["load_model / test_fer_model (API)"].append(
            (name, api_outcome(lambda p: test_fer_model(faces, p), path, bad))
        )
        report["gpunet-evaluate / gpunet-predict"].append(
            (name, cli_outcome(evaluate_main, [str(path), "--data", str(h5)], bad, str(path)))
        )
        report["gpunet-evaluate / gpunet-predict"].append(
            (
                name,
                cli_outcome(predict_main, [str(path), str(faces), "-o", str(work / "p.csv")], bad, str(path)),
            )
        )


def snapshot(folder):
    return {
        p.name: p.read_bytes()
        for p in Path(folder).iterdir()
        if p.is_file() and p.name in runfolder.RUN_FILES
    }


def fuzz_train(work, report):
    data = work / "data"
    data.mkdir()
    write_h5(data / "cifar10.h5")
    fast = ["--hidden", "8", "--batch-size", "40", "--epochs", "2", "--no-plots"]
    new = ["cifar10", "--data-dir", str(data), *fast]
    good = work / "good"
    with contextlib.redirect_stdout(io.StringIO()):
        assert train_main([*new, "--out", str(good), "--backend", "numpy", "-q"]) == 0
    lost = Counter()

    def case(name, argv, needle, run=None, bad=True):
        before = snapshot(run) if run else None
        outcome = cli_outcome(train_main, argv, bad, needle)
        if run and outcome != "ok" and snapshot(run) != before:
            lost["data loss"] += 1
            outcome += " + DATA LOSS"
        report["gpunet-train"].append((name, outcome))

    options = [
        ["--crop-pad", "1000"],
        ["--crop-pad", "3"],
        ["--crop-pad", "-1"],
        ["--lr", "nan"],
        ["--lr", "inf"],
        ["--lr", "0"],
        ["--lr", "-1"],
        ["--momentum", "1.5"],
        ["--seed", "-1"],
        ["--seed", str(2**40)],
        ["--hidden", "10000000"],
        ["--hidden", "0"],
        ["--channels", "0"],
        ["--gamma", "0"],
        ["--gamma", "nan"],
        ["--step-size", "0"],
        ["--min-lr-ratio", "2"],
        ["--warmup-epochs", "9"],
        ["--dropout", "1"],
        ["--dropout", "nan"],
        ["--reg", "-1"],
        ["--reg", "inf"],
        ["--weight-decay", "-1"],
        ["--batch-size", "0"],
        ["--epochs", "0"],
        ["--patience", "0"],
    ]
    for i, opt in enumerate(options):
        case(" ".join(opt), [*new, *opt, "--out", str(work / f"o{i}")], opt[0].lstrip("-").replace("-", "_"))
    case("--out holding a run", [*new, "--out", str(good)], "already holds a run", run=good)
    case("--out is a file", [*new, "--out", str(data / "cifar10.h5")], "found a file")
    with runfolder.owned(good):
        case("second trainer, same --out", [*new, "--force", "--out", str(good)], "in use", run=good)
        case("second trainer resuming", ["--resume", str(good)], "in use", run=good)
    case(
        "--force with bad data",
        [*new, "--force", "--crop-pad", "3", "--out", str(good)],
        "crop_pad",
        run=good,
    )
    for flags, needle in (
        (["--hidden", "32"], "--hidden"),
        (["--seed", "5"], "--seed"),
        (["--batch-size", "7"], "--batch-size"),
        (["--arch", "cnn"], "--arch"),
        (["--epochs", "1"], "--epochs"),
        (["--dataset"], ""),
        (["--lr", "-1"], "lr"),
    ):
        if flags == ["--dataset"]:
            flags, needle = ["cifar10"], "--dataset"
        case(f"--resume {' '.join(flags)}", ["--resume", str(good), *flags], needle, run=good)
    case("--resume missing folder", ["--resume", str(work / "nope")], "nope")
    case("--resume a file", ["--resume", str(data / "cifar10.h5")], "config.json")
    # damaged run folders: config.json and solver.ckpt.npz
    cfg = json.loads((good / "config.json").read_text())
    damaged_configs = {
        "not JSON": "{oops",
        "a list": "[1]",
        "lr string": json.dumps({**cfg, "lr": "fast"}),
        "unknown key": json.dumps({**cfg, "evil": 1}),
        "resumes string": json.dumps({**cfg, "resumes": "x"}),
        "data missing file": json.dumps({**cfg, "data": str(work / "gone.h5")}),
        "hidden negative": json.dumps({**cfg, "hidden": [-4]}),
    }
    ckpt = (good / "solver.ckpt.npz").read_bytes()
    with np.load(good / "solver.ckpt.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
        desc = json.loads(z["__meta__"].tobytes())
    damaged_ckpts = {
        "truncated": ckpt[: len(ckpt) // 2],
        "empty": b"",
        "version 99": {**desc, "version": 99},
        "epoch string": {**desc, "epoch": "x"},
        "model is a number": {**desc, "model": 5},
        "history list": {**desc, "history": [1]},
        "seed changed": {**desc, "seed": 9},
        "opt_scalars list": {**desc, "opt_scalars": [1]},
    }
    for name, text in damaged_configs.items():
        run = copy_run(good, work / f"cfg-{len(report['gpunet-train'])}")
        (run / "config.json").write_text(text)
        case(
            f"config.json {name}",
            ["--resume", str(run)],
            "config.json" if "data" not in name else "gone.h5",
            run=run,
        )
    for name, content in damaged_ckpts.items():
        run = copy_run(good, work / f"ckpt-{len(report['gpunet-train'])}")
        if isinstance(content, bytes):
            (run / "solver.ckpt.npz").write_bytes(content)
        else:
            np.savez(
                run / "solver.ckpt.npz",
                **arrays,
                __meta__=np.frombuffer(json.dumps(content).encode(), np.uint8),
            )
        case(f"checkpoint {name}", ["--resume", str(run)], "solver.ckpt.npz", run=run)
    case(
        "diverging --lr 1000",
        [*new, "--optimizer", "sgd", "--lr", "1000", "--out", str(work / "div")],
        "training diverged",
    )
    return lost


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--keep", metavar="DIR", help="write the generated files here (default: a temporary folder)"
    )
    p.add_argument("--verbose", "-v", action="store_true", help="print every refusal's message")
    args = p.parse_args(argv)
    global VERBOSE
    VERBOSE = args.verbose
    report = {
        "load_model / test_fer_model (API)": [],
        "gpunet-evaluate / gpunet-predict": [],
        "gpunet-train": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        fuzz_models(work, report)
        lost = fuzz_train(work, report)
    print(f"{'entry point':36s} {'tried':>5s} {'refused':>8s} {'traceback':>9s} {'accepted':>8s} {'ok':>4s}")
    for entry, rows in report.items():
        c = Counter(
            "refused"
            if o == "refused"
            else "ok"
            if o == "ok"
            else "accepted"
            if o.startswith("accepted")
            else "traceback"
            if o.startswith(("traceback", "exception"))
            else "other"
            for _, o in rows
        )
        print(
            f"{entry:36s} {len(rows):5d} {c['refused']:8d} {c['traceback']:9d} {c['accepted']:8d} "
            f"{c['ok']:4d}" + (f"  other {c['other']}" if c["other"] else "")
        )
    print(f"gpunet-train data loss: {lost['data loss']}")
    odd = [(e, n, o) for e, rows in report.items() for n, o in rows if o not in ("refused", "ok")]
    for e, n, o in odd:
        print(f"  {e}: {n}: {o}")
    return 1 if odd or lost["data loss"] else 0


if __name__ == "__main__":
    sys.exit(main())
