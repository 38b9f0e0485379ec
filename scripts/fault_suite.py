#!/usr/bin/env python3
"""The standing fault suite (issue 24): bad inputs and faults against every entry point, one
command per case, each under a timeout.

    python scripts/fault_suite.py [--fast] [--class WORD ...] [--jobs N] [--timeout S] [--markdown] [--all]

A case builds its inputs in a fresh folder, then runs one gpunet command in a subprocess
(``python -c`` calling the command's ``main``; a full disk is simulated by a fault injected
in that process), and is judged:

- ``ok``: a valid input exited 0; ``refused``: a bad input exited 2 with one ``error:`` line
  (the last line) naming the file or flag the case expects, no traceback, and nothing left
  behind or changed in the folders the case watches;
- anything else fails the suite: ``traceback`` (a Traceback, exit 1, or death by a signal),
  ``hang`` (killed at the timeout), ``exit 0 on bad input``, ``left behind: NAMES``,
  ``touched: NAMES`` (a file that was there changed or vanished), ``unnamed file``, ``secret
  printed``, ``messy message`` (no single final ``error:`` line), ``wrongly refused``.

Prints one line per failing case and a table (class, cases, outcome counts); exits 1 when any
case failed. ``--fast`` runs the CI subset (``tests/reliability/test_fault_suite.py`` runs it
in under a minute on 2 cores); ``--markdown`` prints the table as docs/RELIABILITY.md shows it;
``--all`` also runs the earlier campaigns, ``scripts/fuzz_prep.py`` (prep convert and info,
bad outputs) and ``scripts/fuzz_models.py`` (model files, gpunet-train options, run folders).

Adding a case: write a builder ``(d: Path) -> Run`` and list it in ``cases()`` under its class.
The ``gpunet-serve`` section is ``serve_cases()``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path[:0] = [str(ROOT), str(TESTS)]

import numpy as np  # noqa: E402

ENTRIES = {  # command -> module whose main(argv) it runs
    "gpunet-prep": "data_prep.cli",
    "gpunet-train": "gpunet.cli.train",
    "gpunet-evaluate": "gpunet.cli.evaluate",
    "gpunet-predict": "gpunet.cli.predict",
    "gpunet-export": "gpunet.cli.export",
    "gpunet-tune": "gpunet.cli.tune",
    "gpunet-compare": "gpunet.cli.compare",
}
PROGRAM = "import sys\n{prelude}\nfrom {module} import main\nsys.exit(main(sys.argv[1:]))\n"
FULL_DISK = (  # a fault injected before the command runs: every write of {what} fails with ENOSPC
    "import errno, os\ndef _full(*a, **k):\n    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
)
SECRET = "S3cretPW"


@dataclass
class Run:
    """What a case runs, and what its outcome must show."""

    command: str  # a key of ENTRIES, or "python" (``argv[0]`` is then a program: a check)
    argv: list
    names: list = field(default_factory=list)  # one of these must be in the error line
    watch: list = field(default_factory=list)  # folders that must hold what they held before
    bad: bool = True  # a bad input: must be refused (False: must exit 0)
    prelude: str = ""  # Python run before the command (a fault injection)
    secret: str | None = None  # must never be printed
    traceback_ok: bool = False  # --debug: a traceback is asked for
    ignore: tuple = (".gpunet-train.lock",)  # may change (the lock file holds its holder's pid)


@dataclass
class Case:
    cls: str
    name: str
    build: Callable[[Path], Run]
    fast: bool = False


# --------------------------------------------------------------------------- inputs


def _h5(path, **kw):
    from common import write_h5

    write_h5(path, **kw)
    return Path(path)


def _home(d: Path, build=None) -> Path:
    """``d/home`` holding ``cifar10.h5`` (a good small file, or what ``build(path)`` writes)."""
    home = d / "home"
    home.mkdir()
    (build or _h5)(home / "cifar10.h5")
    return home


def _model(path, shape=(3, 4, 4), classes=3, hidden=(8,)) -> str:
    from gpunet.model import FullyConnectedNet

    m = FullyConnectedNet(list(hidden), input_dim=int(np.prod(shape)), num_classes=classes, seed=0)
    m.meta = {"mean": [110.0] * shape[0], "std": [50.0] * shape[0], "image_shape": list(shape)}
    return str(m.save(path))


def _fifo(path) -> str:
    os.mkfifo(path)
    return str(path)


_GOOD_RUN = {}


def _good_run(d: Path) -> tuple[Path, Path]:
    """A copy of a finished 2-epoch run (trained once per suite, in this process) and its data home."""
    import contextlib
    import io
    import shutil

    if "run" not in _GOOD_RUN:
        base = Path(tempfile.mkdtemp(prefix="fault-suite-run-"))
        home = _home(base)
        from gpunet.cli import train

        argv = ["cifar10", "--data-dir", str(home), "--out", str(base / "run"), "--hidden", "8"]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            rc = train.main(
                [*argv, "--epochs", "2", "--batch-size", "40", "--no-plots", "--backend", "numpy"]
            )
        assert rc == 0, "the good run of the fault suite did not train"
        _GOOD_RUN.update(run=base / "run", home=home)
    run, home = d / "run", d / "home"
    shutil.copytree(_GOOD_RUN["run"], run)
    shutil.copytree(_GOOD_RUN["home"], home)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "data": str(home / "cifar10.h5")}))
    return run, home


def _cifar_src(d: Path, zero=False) -> Path:
    from prep_fixtures import cifar_batches, write_cifar_python

    batches = cifar_batches(per_batch=10)
    if zero:
        batches = {k: (np.zeros_like(x), y) for k, (x, y) in batches.items()}
    return write_cifar_python(d / "src", batches)


def _dup_zip(d: Path) -> Path:
    import warnings
    import zipfile

    from prep_fixtures import fer_rows, write_fer_csv

    csv = write_fer_csv(d / "fer2013.csv", fer_rows(6)).read_bytes()
    p = d / "fer.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(p, "w") as z:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name: that is the case
        z.writestr("fer2013.csv", csv)
        z.writestr("fer2013.csv", csv.replace(b"Training", b"PublicTest"))
    return p


def _edit_h5(path, fn):
    import h5py

    with h5py.File(path, "a") as f:
        fn(f)
    return path


# --------------------------------------------------------------------------- builders, by class


def huge(kind):
    from fault_files import huge_n_h5

    return lambda d: Run("gpunet-prep", ["info", str(huge_n_h5(d / "huge_n.h5", kind=kind))], ["huge_n.h5"])


def train_on(build, names, *extra):
    def b(d):
        home = _home(d, build)
        argv = ["cifar10", "--data-dir", str(home), "--out", str(d / "run"), "--hidden", "8", "--epochs", "1"]
        return Run("gpunet-train", [*argv, "--no-plots", "-q", *extra], [str(home / n) for n in names], [d])

    return b


def evaluate_on(build, names, split="test", shape=(3, 4, 4), classes=3):
    def b(d):
        data = build(d / "d.h5")
        model = _model(d / "m.npz", shape, classes)
        argv = [model, "--data", str(data), "--split", split, "-q"]
        return Run("gpunet-evaluate", argv, [f"{data}{n}" for n in names], [d])

    return b


def _huge(path):
    from fault_files import huge_n_h5

    return huge_n_h5(path)


def _gz(path):
    from fault_files import gzip_corrupt_h5

    return gzip_corrupt_h5(path)


def _no_names(path):
    from fault_files import no_class_names_h5

    return no_class_names_h5(path)


def tune_run(d: Path, home: Path, *extra, out=None) -> list:
    out = out or d / "tune"
    fast = ["--trials", "1", "--epochs", "1", "--hidden", "8", "--batch-size", "30", "-q"]
    return ["cifar10", "--data-dir", str(home), "--out", str(out), *fast, *extra]


SQLITE_FILLS_UP = (  # once the study is open, SQLite may not add a page to the file: SQLITE_FULL
    "import sqlite3\nfrom sqlalchemy import event\nfrom sqlalchemy.pool import Pool\n"
    "from gpunet import tuning_storage\n_armed, _reap = [], tuning_storage.reap_dead_workers\n"
    "def _no_new_pages(conn, record, proxy):\n"
    "    if _armed and isinstance(conn, sqlite3.Connection):\n"
    "        conn.execute('PRAGMA max_page_count = %d' % conn.execute('PRAGMA page_count').fetchone()[0])\n"
    "event.listen(Pool, 'checkout', _no_new_pages)\n"
    "tuning_storage.reap_dead_workers = lambda *a, **k: _armed.append(1) or _reap(*a, **k)\n"
)


def tune_sqlite_full(d: Path) -> Run:
    """Earlier trials stay in the study (not watched); the error must name the SQLite file."""
    db = d / "s.db"
    argv = tune_run(d, _home(d), "--storage", f"sqlite:///{db}", "--trials", "60", "--sampler", "random")
    return Run("gpunet-tune", argv, [str(db)], prelude=SQLITE_FILLS_UP)


def data_cases() -> list:
    from fault_files import duplicate_member_tar, two_channel_model

    def dup_tar(d):
        src, out = duplicate_member_tar(d / "cifar-10-python.tar.gz"), d / "out"
        argv = ["cifar10", str(src), "-o", str(out / "c.h5"), "--val-size", "5"]
        return Run("gpunet-prep", argv, [f"{src}: cifar-10-batches-py/data_batch_1"], [d])

    def verify(d):
        from fault_files import gzip_corrupt_h5

        path = gzip_corrupt_h5(d / "gz.h5", n=64, chunk=4, bad_chunk=1)
        prelude = "from gpunet.data import h5check\nh5check.READ_ALL_BYTES = 0  # every split is 'large'"
        return Run("gpunet-prep", ["info", "--verify", str(path)], [f"{path}: /train/x"], prelude=prelude)

    def predict_2ch(d):
        from PIL import Image

        model = two_channel_model(d / "m2.npz")
        (d / "img").mkdir()
        Image.new("L", (4, 4)).save(d / "img" / "a.png")
        return Run("gpunet-predict", [str(model), str(d / "img"), "-o", str(d / "p.csv")], [str(model)], [d])

    def shape_attr(path):
        _h5(path)
        return _edit_h5(path, lambda f: f.attrs.__setitem__("image_shape", np.array([3, 2, 8])))

    def linked_val(path):
        _h5(path)

        def link(f):
            del f["val"]
            f["val"] = f["train"]

        return _edit_h5(path, link)

    def x_group(path):
        _h5(path)

        def group(f):
            del f["test/x"]
            f.create_group("test/x")

        return _edit_h5(path, group)

    return [
        Case("#6 declared sizes", "info: 10**10 labels, gzip chunks never written", huge("gzip"), fast=True),
        Case("#6 declared sizes", "info: 10**10 labels, plain chunks", huge("plain")),
        Case("#6 declared sizes", "info: 10**10 labels, fill value", huge("fill")),
        Case("#6 declared sizes", "info: resized to 10**10 (maxshape None)", huge("resizable"), fast=True),
        Case("#6 declared sizes", "train on huge_n.h5", train_on(_huge, ["cifar10.h5"]), fast=True),
        Case("#6 declared sizes", "evaluate on huge_n.h5", evaluate_on(_huge, [""], "val", (1, 2, 2))),
        Case(
            "#11 corrupt data",
            "info: gzip-corrupt chunk",
            lambda d: Run("gpunet-prep", ["info", str(_gz(d / "gz.h5"))], [str(d / "gz.h5")]),
            fast=True,
        ),  # noqa: E501
        Case("#11 corrupt data", "info --verify: corrupt chunk outside the sample", verify, fast=True),
        Case("#11 corrupt data", "tarball with data_batch_1 twice", dup_tar, fast=True),
        Case(
            "#11 corrupt data",
            "zip with fer2013.csv twice",
            lambda d: Run(
                "gpunet-prep", ["fer2013", str(_dup_zip(d)), "-o", str(d / "o" / "f.h5")], ["fer.zip"], [d]
            ),
        ),  # noqa: E501
        Case(
            "#11 corrupt data",
            "evaluate: image_shape attribute lies",
            evaluate_on(shape_attr, [""]),
            fast=True,
        ),
        Case("#11 corrupt data", "evaluate: /val a hard link to /train", evaluate_on(linked_val, [""])),
        Case("#13 messages", "evaluate: /test/x is a group", evaluate_on(x_group, [""]), fast=True),
        Case(
            "#14 messages", "train on a gzip-corrupt file", train_on(_gz, ["cifar10.h5: /train/x"]), fast=True
        ),
        Case(
            "#14 messages",
            "evaluate a gzip-corrupt split",
            evaluate_on(_gz, [": /train/x"], "train", (1, 8, 8)),
        ),
        Case(
            "#14 messages",
            "evaluate: label 50, no class_names",
            evaluate_on(_no_names, [": /test/y"], "test", (1, 48, 48), 7),
            fast=True,
        ),  # noqa: E501
        Case("#14 messages", "predict: a 2-channel model", predict_2ch, fast=True),
        Case("#14 messages", "tune: a SQLite --storage fills the disk mid-study", tune_sqlite_full),
    ]


def leftover_cases() -> list:
    def train_full_disk(d):
        home = _home(d)
        (d / "run").mkdir()  # the user's empty folder
        prelude = FULL_DISK + "import gpunet.io\ngpunet.io.np.savez = _full"
        argv = ["cifar10", "--data-dir", str(home), "--out", str(d / "run"), "--hidden", "8", "--epochs", "1"]
        return Run("gpunet-train", [*argv, "--no-plots", "-q"], [str(d / "run")], [d], prelude=prelude)

    def source_fails(d):
        (d / "home").mkdir()
        bad = d / "cifar-10-python.tar.gz"
        bad.write_bytes(np.random.default_rng(0).bytes(4000))
        argv = ["cifar10", "--data-dir", str(d / "home"), "--source", str(bad), "--out", str(d / "run"), "-q"]
        return Run("gpunet-train", argv, [str(bad)], [d])

    def tune_unwritable(d):
        home = _home(d)
        return Run("gpunet-tune", tune_run(d, home, "--storage", "/proc/x.journal"), ["/proc/x.journal"], [d])

    def tune_full_disk(d):
        home = _home(d)
        prelude = (
            FULL_DISK + "from optuna.storages.journal import JournalFileBackend\n"
            "JournalFileBackend.append_logs = _full"
        )
        return Run(
            "gpunet-tune", tune_run(d, home), [str(d / "tune" / "study.journal")], [d], prelude=prelude
        )

    def prep_zero(d):
        src = _cifar_src(d, zero=True)
        argv = ["cifar10", str(src), "-o", str(d / "out" / "b.h5"), "--val-size", "5"]
        return Run("gpunet-prep", argv, [str(src)], [d])

    def empty_val(d):
        def build(path):
            _h5(path)

            def empty(f):  # the split emptied in place (the writer refuses 0 rows)
                shape = f["val/x"].shape[1:]
                del f["val/x"], f["val/y"]
                f["val"].create_dataset("x", shape=(0,) + shape, dtype=np.uint8)
                f["val"].create_dataset("y", shape=(0,), dtype=np.int64)

            _edit_h5(path, empty)

        return train_on(build, ["cifar10.h5"])(d)

    return [
        Case("#9 nothing left behind", "train on a full disk (empty --out)", train_full_disk, fast=True),
        Case("#9 nothing left behind", "train --source: conversion fails", source_fails, fast=True),
        Case("#9 nothing left behind", "tune: unwritable --storage", tune_unwritable, fast=True),
        Case("#9 nothing left behind", "tune: full disk writing the journal", tune_full_disk, fast=True),
        Case("#7 nothing left behind", "prep: all-zero images", prep_zero, fast=True),
        Case("#8 nothing left behind", "train: empty val split", empty_val),
    ]


def hang_cases() -> list:
    def model_fifo(command, extra):
        def b(d):
            fifo = _fifo(d / "model.npz")
            home = _home(d)
            argv = [fifo, *[str(a).format(h5=home / "cifar10.h5", d=d) for a in extra]]
            return Run(command, argv, [fifo], [d])

        return b

    def data_fifo(d):
        fifo = _fifo(d / "data.h5")
        return Run("gpunet-evaluate", [_model(d / "m.npz"), "--data", fifo, "-q"], [fifo], [d])

    return [
        Case(
            "#5 hangs",
            "evaluate: the model is a FIFO",
            model_fifo("gpunet-evaluate", ["--data", "{h5}"]),
            fast=True,
        ),  # noqa: E501
        Case(
            "#5 hangs",
            "predict: the model is a FIFO",
            model_fifo("gpunet-predict", ["{d}", "-o", "{d}/p.csv"]),
        ),
        Case("#5 hangs", "export: the model is a FIFO", model_fifo("gpunet-export", ["-o", "{d}/m.onnx"])),
        Case("#5 hangs", "evaluate: the data file is a FIFO", data_fifo, fast=True),
        Case(
            "#5 hangs",
            "info: a FIFO",
            lambda d: Run("gpunet-prep", ["info", _fifo(d / "x.h5")], [str(d / "x.h5")]),
        ),
    ]


def secret_cases() -> list:
    def storage(url, debug=False):
        def b(d):
            home = _home(d)
            extra = ["--storage", url] + (["--debug"] if debug else [])
            return Run(
                "gpunet-tune",
                tune_run(d, home, *extra),
                ["--storage"] if not debug else [""],
                [d],
                secret=SECRET,
                traceback_ok=debug,
            )

        return b

    return [
        Case(
            "#1 secrets",
            "password= in a --storage URL",
            storage(f"postgresql://alice@127.0.0.1:1/db?password={SECRET}"),
            fast=True,
        ),  # noqa: E501
        Case(
            "#1 secrets",
            "password= with --debug",
            storage(f"postgresql://alice@127.0.0.1:1/db?password={SECRET}", True),
        ),  # noqa: E501
        Case(
            "#1 secrets",
            "an unencoded @ in the password",
            storage(f"postgresql://alice:ab@{SECRET}@127.0.0.1:1/db"),
            fast=True,
        ),  # noqa: E501
    ]


def run_folder_cases() -> list:
    def torn_journal(d):
        home = _home(d)
        (d / "tune").mkdir()
        created = {"op_code": 0, "worker_id": "w", "study_name": "gpunet-tune", "directions": [2]}
        torn = '{"op_code": 4, "worker_id": "w", "study_id": 0, "datetime_start": "20'  # a kill mid-write
        (d / "tune" / "study.journal").write_text(json.dumps(created) + "\n" + torn)
        return Run("gpunet-tune", tune_run(d, home), [], bad=False)

    def garbage_journal(d):
        home = _home(d)
        (d / "tune").mkdir()
        (d / "tune" / "study.journal").write_bytes(b'{"op_code": 0}\n\x00\xff\xfe garbage\n{"op_code": 1}\n')
        return Run("gpunet-tune", tune_run(d, home), [str(d / "tune" / "study.journal")], [d])

    def foreign_folder(force):
        def b(d):
            home = _home(d)
            (d / "out").mkdir()
            (d / "out" / ("config.json" if force else "notes.txt")).write_text('{"mine": 1}')
            argv = ["cifar10", "--data-dir", str(home), "--out", str(d / "out"), "-q", "--no-plots"]
            return Run("gpunet-train", argv + (["--force"] if force else []), [str(d / "out")], [d])

        return b

    def resume_other_data(d):
        run, home = _good_run(d)
        other = _h5(d / "other.h5", seed=5)
        cfg = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**cfg, "data": str(other)}))
        return Run("gpunet-train", ["--resume", str(run), "--epochs", "3", "-q"], [str(other)], [d])

    def nan_checkpoint(d):
        run, _ = _good_run(d)
        ckpt = run / "solver.ckpt.npz"
        with np.load(ckpt) as z:
            arrays = {k: z[k] for k in z.files}
        k = next(k for k in arrays if k != "__meta__" and arrays[k].dtype.kind == "f")
        arrays[k] = np.full_like(arrays[k], np.nan)
        np.savez(ckpt, **arrays)
        return Run("gpunet-train", ["--resume", str(run), "--epochs", "3", "-q"], [str(ckpt)], [d])

    def weights_1e300(d):
        from bad_models import variants

        good = _model(d / "good.npz", (1, 48, 48), 7)
        path = next(
            p for n, p, _ in variants(good, d / "v", compress_bomb_mb=1) if n == "weights beyond float32"
        )
        home = _home(d)
        return Run("gpunet-evaluate", [path, "--data", str(home / "cifar10.h5"), "-q"], [path], [d / "home"])

    return [
        Case("#2 study journal", "tune: torn last record (repaired)", torn_journal),
        Case("#2 study journal", "tune: a garbage line", garbage_journal, fast=True),
        Case("#3 run folders", "train --out a folder of other files", foreign_folder(False), fast=True),
        Case("#3 run folders", "train --force over a foreign config.json", foreign_folder(True), fast=True),
        Case("#4 resume", "resume on other data", resume_other_data),
        Case("#12 checkpoints", "resume from a NaN checkpoint", nan_checkpoint),
        Case("#10 models", "weights of 1e300 (inf in float32)", weights_1e300, fast=True),
    ]


def flag_cases() -> list:
    def space(d):
        home = _home(d)
        return Run("gpunet-tune", tune_run(d, home, "--space", '{"lr": ["fast"]}'), ["lr"], [d])

    def compare(flag, value):
        def b(d):
            m = _model(d / "m.npz")
            home = _home(d)
            argv = [m, m, "--data", str(home / "cifar10.h5"), flag, value]
            return Run("gpunet-compare", argv, [flag], [d])

        return b

    return [
        Case("#15 messages", "tune: a choice that is not a setting", space, fast=True),
        Case("#16 messages", "compare --boot 10**12", compare("--boot", "1000000000000"), fast=True),
        Case("#16 messages", "compare --seed -1", compare("--seed", "-1")),
    ]


def model_file_cases() -> list:
    """Every bad model file of ``tests/bad_models.py`` (a fully connected FER model), gpunet-evaluate."""
    from bad_models import variants, write_fer_inputs

    from gpunet.model import FullyConnectedNet

    work = Path(tempfile.mkdtemp(prefix="fault-suite-models-"))
    _, h5 = write_fer_inputs(work)
    m = FullyConnectedNet([8], input_dim=48 * 48, num_classes=7, seed=0)
    m.meta = {"mean": [129.0], "std": [65.0], "image_shape": [1, 48, 48]}
    out = []
    for name, path, bad in variants(m.save(work / "fc.npz"), work / "fc", compress_bomb_mb=8):
        argv = [path, "--data", str(h5), "-q"]
        out.append(
            Case("model files", name, lambda d, a=argv, p=path, b=bad: Run("gpunet-evaluate", a, [p], bad=b))
        )
    return out


def serve_cases() -> list:
    """gpunet-serve: requests a client may send, answered by the application in-process (the
    Starlette test client, addressed as 127.0.0.1), each a check that exits 0 when the answer is
    a 4xx with one line of JSON naming the upload (or the Host, the limit, the content type).
    Pillow's DecompressionBombWarning is an error in the check: the refusal must come without
    that noise on the server's stderr. More cases belong here as the server grows."""
    try:
        import httpx  # noqa: F401
        import starlette  # noqa: F401
    except ImportError:
        return []
    check = (
        "import json, sys, warnings\nfrom PIL import Image\nfrom starlette.testclient import TestClient\n"
        "from gpunet.serve import create_app\n"
        "warnings.filterwarnings('error', category=Image.DecompressionBombWarning)\n"
        "c = TestClient(create_app(max_upload=100_000), base_url='http://127.0.0.1')\n"
        "r = {request}\n"
        "err = r.json().get('error', '')\n"
        "ok = r.status_code == {status} and {needle!r} in err and '\\n' not in err\n"
        "print(r.status_code, err, file=sys.stderr)\nsys.exit(0 if ok else 3)\n"
    )

    def ask(request, status, needle, write=None):
        def build(d: Path) -> Run:
            if write:
                write(d)
            return Run("python", [check.format(request=request, status=status, needle=needle)], bad=False)

        return build

    def post(name, body, status, needle=None, write=None):
        files = f"{{'photo': ({name!r}, {body}, 'application/octet-stream')}}"
        return ask(f"c.post('/api/emotions', files={files})", status, needle or name, write)

    def cut_jpeg(d: Path):  # a photo cut short in its image data
        from PIL import Image

        pixels = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(d / "full.jpg", quality=90)
        data = (d / "full.jpg").read_bytes()
        (d / "cut.jpg").write_bytes(data[: len(data) // 2])

    def bomb(d: Path):  # a PNG declaring 10,000 x 10,000 pixels (over Pillow's limit) in 200 bytes
        import struct
        import zlib

        def chunk(kind, payload):
            return (
                struct.pack(">I", len(payload))
                + kind
                + payload
                + struct.pack(">I", zlib.crc32(kind + payload))
            )

        header = struct.pack(">IIBBBBB", 10_000, 10_000, 8, 0, 0, 0, 0)
        rows = chunk(b"IDAT", zlib.compress(b"\0" * 10_001 * 4))
        (d / "bomb.png").write_bytes(
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + rows + chunk(b"IEND", b"")
        )

    serve = "gpunet-serve"
    return [  # the error names the upload, or (refused before its multipart header is read) the limit
        Case(serve, "upload: not an image", post("notes.txt", "b'not a photo\\n' * 20", 400), fast=True),
        Case(
            serve,
            "upload: 1 MB over a 100 kB limit",
            post("big.png", "b'\\x89PNG' * 250_000", 413, "the limit is 100,000 bytes"),
        ),
        Case(
            serve,
            "request: a foreign Host header (DNS rebinding)",
            ask("c.get('/api/health', headers={'host': 'evil.example'})", 400, "Host 'evil.example'"),
            fast=True,
        ),
        Case(
            serve,
            "upload: a truncated JPEG",
            post("cut.jpg", "open('cut.jpg', 'rb').read()", 400, write=cut_jpeg),
        ),
        Case(
            serve,
            "upload: a decompression bomb (10,000 x 10,000 pixels declared), no Pillow warning",
            post(
                "bomb.png", "open('bomb.png', 'rb').read()", 400, "bomb.png: refused, too many pixels", bomb
            ),
            fast=True,
        ),
        Case(
            serve,
            "upload: a wrong content type",
            ask(
                "c.post('/api/emotions', content=b'GIF89a', headers={'content-type': 'text/plain'})",
                415,
                "content type text/plain",
            ),
        ),
    ]


def cases() -> list:
    return (
        data_cases()
        + leftover_cases()
        + hang_cases()
        + secret_cases()
        + run_folder_cases()
        + flag_cases()
        + serve_cases()
    )


# --------------------------------------------------------------------------- running and judging


def _snapshot(folders) -> dict:
    files = {}
    for top in folders:
        for p in sorted(Path(top).rglob("*")):
            try:
                st = p.lstat()
            except OSError:
                continue
            files[str(p)] = None if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return files


def judge(run: Run, rc, err: str, before: dict, after: dict) -> str:
    """The outcome of one case (see the module docstring)."""
    if rc is None:
        return "hang"
    if run.secret and run.secret in err:
        return "secret printed"
    if rc < 0 or rc == 1 or ("Traceback" in err and not run.traceback_ok):
        return "traceback" if rc >= 0 else f"traceback (signal {-rc})"
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if not run.bad:
        if run.command == "python":
            return "refused" if rc == 0 else f"failed check: {(lines or ['?'])[-1][:100]}"
        return "ok" if rc == 0 else f"wrongly refused: {(lines or ['?'])[-1][:100]}"
    if rc == 0:
        return "exit 0 on bad input"
    new = sorted(set(after) - set(before))
    if new:
        return "left behind: " + ", ".join(Path(p).name for p in new[:4])
    touched = sorted(
        p for p in before if after.get(p, "gone") != before[p] and Path(p).name not in run.ignore
    )
    if touched:
        return "touched: " + ", ".join(Path(p).name for p in touched[:4])
    errors = [line for line in lines if line.startswith("error: ")]
    if rc != 2 or len(errors) != 1 or lines[-1] != errors[0]:
        return "messy message"
    if run.names and not any(n in errors[0] for n in run.names):
        return "unnamed file"
    return "refused"


def run_case(case: Case, work: Path, timeout: float) -> tuple[str, float, str]:
    """(outcome, seconds, the command's last stderr line) of one case in a fresh folder under ``work``."""
    d = Path(tempfile.mkdtemp(dir=work))
    t0 = time.perf_counter()
    try:
        run = case.build(d)
    except Exception as e:  # noqa: BLE001 (a builder that fails is the suite's bug: say so)
        return f"build failed: {type(e).__name__}: {e}", 0.0, ""
    if run.command == "python":
        cmd = [sys.executable, "-c", run.prelude + "\n" + run.argv[0]]
    else:
        cmd = [
            sys.executable,
            "-c",
            PROGRAM.format(prelude=run.prelude, module=ENTRIES[run.command]),
            *run.argv,
        ]
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        GPUNET_BACKEND="numpy",
        GPUNET_DATA=str(d / "data-home"),
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
    )
    before = _snapshot(run.watch)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=d)
        rc, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    seconds = time.perf_counter() - t0
    outcome = judge(run, rc, err, before, _snapshot(run.watch))
    last = next((line for line in reversed(err.strip().splitlines()) if line.strip()), "")
    return outcome, seconds, last


def run_suite(selected, jobs=2, timeout=60.0, work=None, say=print) -> list:
    """[(case, outcome, seconds, last line)] for ``selected`` cases, ``jobs`` at a time."""
    with tempfile.TemporaryDirectory(prefix="fault-suite-") as tmp:
        work = Path(work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for case in selected:  # the shared good run is trained once, before the threads start
            if case.build.__name__ in ("resume_other_data", "nan_checkpoint"):
                _good_run(Path(tempfile.mkdtemp(dir=work)))
                break
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            results = list(pool.map(lambda c: (c, *run_case(c, work, timeout)), selected))
    for case, outcome, seconds, last in results:
        if outcome not in ("ok", "refused"):
            say(f"  FAIL {case.cls}: {case.name}: {outcome} ({seconds:.1f} s){f' | {last}' if last else ''}")
    return results


def table(results, markdown=False) -> str:
    by = {}
    for case, outcome, seconds, _ in results:
        c = by.setdefault(case.cls, [Counter(), 0.0])
        c[0]["pass" if outcome in ("ok", "refused") else outcome.split(":")[0]] += 1
        c[1] = max(c[1], seconds)
    rows = [
        (cls, sum(c.values()), ", ".join(f"{k} {v}" for k, v in sorted(c.items())), f"{t:.1f}")
        for cls, (c, t) in by.items()
    ]
    head = ("class", "cases", "outcome", "slowest (s)")
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "| --- | ---: | --- | ---: |"]
        lines += [f"| {a} | {b} | {c} | {t} |" for a, b, c, t in rows]
        return "\n".join(lines)
    return "\n".join(f"{a:34s} {b:5} {t:>6}  {c}" for a, b, c, t in [(*head[:2], head[2], head[3])] + rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fast", action="store_true", help="only the CI subset")
    p.add_argument("--class", dest="classes", nargs="+", metavar="WORD", help="only classes containing WORD")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="cases run at once")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a case counts as a hang")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument(
        "--all", action="store_true", help="also the model-file variants and the earlier campaigns"
    )
    p.add_argument("--keep", metavar="DIR", help="build the cases here (default: a temporary folder)")
    args = p.parse_args(argv)
    selected = cases() + (model_file_cases() if args.all else [])
    if args.fast:
        selected = [c for c in selected if c.fast]
    if args.classes:
        selected = [c for c in selected if any(w in c.cls for w in args.classes)]
    t0 = time.perf_counter()
    results = run_suite(selected, args.jobs, args.timeout, args.keep)
    failed = sum(o not in ("ok", "refused") for _, o, _, _ in results)
    print(table(results, args.markdown))
    print(f"{len(results)} cases, {failed} failed, {time.perf_counter() - t0:.0f} s with {args.jobs} jobs")
    rc = 1 if failed else 0
    if args.all:
        for script in ("fuzz_prep.py", "fuzz_models.py"):
            print(f"\n== scripts/{script}", flush=True)
            r = subprocess.run(
                [sys.executable, str(ROOT / "scripts" / script)], env=dict(os.environ, PYTHONPATH=str(ROOT))
            )
            rc |= r.returncode != 0
    return rc


if __name__ == "__main__":
    sys.exit(main())
