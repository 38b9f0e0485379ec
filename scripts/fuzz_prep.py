"""Throw bad inputs at gpunet-prep (convert and info) and count what happens (issue 13).

    python scripts/fuzz_prep.py [--signals N] [--keep DIR]

Each input is a small generated file or folder that is wrong in one way. Every run
goes through the command line (``data_prep.cli.main``, in this process) and is
classified: a *clean refusal* is a non-zero exit with exactly one ``error:`` line on
stderr and nothing left in the output folder; a *traceback* is an exception escaping
the command, a ``Traceback`` on stderr, or exit 1 (the "unexpected error" code); an
*accepted* input exited 0; a *partial output* is any file left in the output folder
after a refusal (for bad outputs: any change to the folder). ``--signals N`` also sends SIGINT, SIGTERM and
SIGHUP N times each to
a conversion while HDF5 writes (a subprocess whose writes are slowed), expecting exit
130/143/129 and an empty output folder. Prints one table; exits 1 if anything was
not a clean refusal.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import h5py  # noqa: E402
import numpy as np  # noqa: E402
from prep_fixtures import (
    cifar_batches,
    fer_rows,
    make_tar,
    png_bytes,  # noqa: E402
    write_cifar_binary,
    write_cifar_python,
    write_fer_csv,
    write_image_tree,
)

from fault_files import duplicate_member_tar, gzip_corrupt_h5, huge_n_h5  # noqa: E402

from data_prep import cli  # noqa: E402
from gpunet.data import h5file as fmt  # noqa: E402


# --------------------------------------------------------------------------- convert inputs


def _csv(d: Path, edit=None, n=6, raw: bytes | None = None) -> Path:
    p = write_fer_csv(d / "fer2013.csv", fer_rows(n))
    if raw is not None:
        p.write_bytes(raw)
    elif edit:
        lines = p.read_text().splitlines()
        edit(lines)
        p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def _field(i, value):
    def edit(lines):
        parts = lines[2].split(",")
        parts[i] = value
        lines[2] = ",".join(parts)

    return edit


def _pixel(value):
    def edit(lines):
        label, pixels, usage = lines[2].split(",")
        lines[2] = ",".join([label, " ".join([value] + pixels.split()[1:]), usage])

    return edit


def _cifar(d: Path, name=None, blob=None, raw=None) -> Path:
    root = write_cifar_python(d / "src", cifar_batches(per_batch=10))
    if name:
        (root / name).write_bytes(raw if raw is not None else pickle.dumps(blob, protocol=2))
    return root


def _batch(labels=None, data=None, **extra):
    blob = {
        b"data": np.zeros((2, 3072), np.uint8) if data is None else data,
        b"labels": [0, 1] if labels is None else labels,
    }
    blob.update(extra)
    return blob


def _nested(kind, depth=60):
    x = kind([1])
    for _ in range(depth):
        x = kind([x, x])
    return x


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/fuzz_prep_pwned",))


def _tuple_key_pickle() -> bytes:
    body = pickle.dumps(_nested(tuple), protocol=2)[2:-1]
    return b"\x80\x02}" + body + b"K\x01s."


def _tar(d: Path, members) -> Path:
    """members: [(TarInfo, bytes or None)]"""
    p = d / "evil.tar"
    with tarfile.open(p, "w") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data else None)
    return p


def _info(name, size=0, **kw):
    t = tarfile.TarInfo(name)
    t.size = size
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def _huge_member_tgz(d: Path) -> Path:
    info = _info("cifar-10-batches-py/data_batch_1", 2_500_000_000)
    p = d / "small.tar.gz"
    p.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 512))
    return p


class _Zeros(io.RawIOBase):
    def __init__(self, n):
        self.n = n

    def readable(self):
        return True

    def readinto(self, b):
        k = min(len(b), self.n)
        b[:k] = bytes(k)
        self.n -= k
        return k


def _real_huge_member_tgz(d: Path) -> Path:
    """A real 11 MB tar.gz holding a 2.5 GB member of zeros (about 3 s to write)."""
    info = _info("cifar-10-batches-py/data_batch_1", 2_500_000_000)
    p = d / "big.tar.gz"
    with tarfile.open(p, "w:gz", compresslevel=1) as tf:
        tf.addfile(info, io.BufferedReader(_Zeros(info.size), 1 << 20))
    return p


def _png_header(w, h) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def _tree(d: Path, files: dict) -> Path:
    root = d / "tree"
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def _coursework(d: Path, labels: str) -> Path:
    root = write_image_tree(
        d / "cw", {"Train/a.jpg": np.zeros((48, 48), np.uint8), "Test/b.jpg": np.zeros((48, 48), np.uint8)}
    )
    (root / "labels_public.txt").write_text(labels, encoding="utf-8")
    return root


def _zip(d: Path, names) -> Path:
    p = d / "evil.zip"
    with zipfile.ZipFile(p, "w") as zf:
        for name, data in names:
            zf.writestr(name, data)
    return p


G = png_bytes(np.zeros((48, 48), np.uint8))
CONVERT = {  # name -> (dataset, build(dir) -> src)
    # FER2013 CSV
    "csv not UTF-8 (first block)": (
        "fer2013",
        lambda d: _csv(d, raw=b"emotion,pixels,Usage\n\xff\xfe0,1,Training\n"),
    ),
    "csv not UTF-8 (line 9)": (
        "fer2013",
        lambda d: _csv(d, raw=_csv(d).read_bytes() + b"0,\xe9\xe9,Training\n"),
    ),
    "csv pixel '\u00b2'": ("fer2013", lambda d: _csv(d, _pixel("\u00b2"))),
    "csv pixel '\u0663'": ("fer2013", lambda d: _csv(d, _pixel("\u0663"))),
    "csv label '\u00b2'": ("fer2013", lambda d: _csv(d, _field(0, "\u00b2"))),
    "csv label '\u0663'": ("fer2013", lambda d: _csv(d, _field(0, "\u0663"))),
    "csv label 7": ("fer2013", lambda d: _csv(d, _field(0, "7"))),
    "csv label -1": ("fer2013", lambda d: _csv(d, _field(0, "-1"))),
    "csv label empty": ("fer2013", lambda d: _csv(d, _field(0, ""))),
    "csv label 2**70": ("fer2013", lambda d: _csv(d, _field(0, str(2**70)))),
    "csv pixel 256": ("fer2013", lambda d: _csv(d, _pixel("256"))),
    "csv pixel -1": ("fer2013", lambda d: _csv(d, _pixel("-1"))),
    "csv pixel 1.5": ("fer2013", lambda d: _csv(d, _pixel("1.5"))),
    "csv pixel 1e3": ("fer2013", lambda d: _csv(d, _pixel("1e3"))),
    "csv 2303 pixels": (
        "fer2013",
        lambda d: _csv(
            d,
            lambda l: l.__setitem__(
                2, l[2].replace(" ", ",", 1).split(",", 1)[0] + l[2][l[2].index(" ") + 1 :]
            ),
        ),
    ),
    "csv 2305 pixels": ("fer2013", lambda d: _csv(d, _pixel("0 0"))),
    "csv usage Foo": ("fer2013", lambda d: _csv(d, _field(2, "Foo"))),
    "csv no pixels column": ("fer2013", lambda d: _csv(d, lambda l: l.__setitem__(0, "emotion,pix,Usage"))),
    "csv empty file": ("fer2013", lambda d: _csv(d, raw=b"")),
    "csv header only": ("fer2013", lambda d: _csv(d, raw=b"emotion,pixels,Usage\n")),
    "csv NUL byte": ("fer2013", lambda d: _csv(d, raw=b"emotion,pixels,Usage\n0,\x00,Training\n")),
    "csv huge field": (
        "fer2013",
        lambda d: _csv(d, raw=b"emotion,pixels,Usage\n0," + b"1" * 200_000 + b",Training\n"),
    ),
    "csv only PublicTest": (
        "fer2013",
        lambda d: write_fer_csv(d / "fer2013.csv", fer_rows(3, usages=("PublicTest",))),
    ),
    "csv short row": ("fer2013", lambda d: _csv(d, lambda l: l.__setitem__(2, "0"))),
    "csv binary garbage": ("fer2013", lambda d: _csv(d, raw=os.urandom(5000))),
    # CIFAR-10 python pickles
    "pickle label 2**70": ("cifar10", lambda d: _cifar(d, "data_batch_1", _batch([0, 2**70]))),
    "pickle label -1": ("cifar10", lambda d: _cifar(d, "data_batch_1", _batch([0, -1]))),
    "pickle label 10": ("cifar10", lambda d: _cifar(d, "data_batch_1", _batch([0, 10]))),
    "pickle label str": ("cifar10", lambda d: _cifar(d, "data_batch_1", _batch(["0", "1"]))),
    "pickle label float": ("cifar10", lambda d: _cifar(d, "data_batch_1", _batch([0.0, 1.5]))),
    "pickle labels nested shared lists": (
        "cifar10",
        lambda d: _cifar(d, "data_batch_1", _batch(_nested(list))),
    ),
    "pickle labels dict": ("cifar10", lambda d: _cifar(d, "data_batch_1", _batch({1: 2}))),
    "pickle labels short": ("cifar10", lambda d: _cifar(d, "data_batch_1", _batch([0]))),
    "pickle data list": ("cifar10", lambda d: _cifar(d, "data_batch_1", _batch(data=[[0] * 3072] * 2))),
    "pickle data nested shared": ("cifar10", lambda d: _cifar(d, "data_batch_1", _batch(data=_nested(list)))),
    "pickle data int64": (
        "cifar10",
        lambda d: _cifar(d, "data_batch_1", _batch(data=np.zeros((2, 3072), np.int64))),
    ),
    "pickle data (2, 3071)": (
        "cifar10",
        lambda d: _cifar(d, "data_batch_1", _batch(data=np.zeros((2, 3071), np.uint8))),
    ),
    "pickle data odd bytes": ("cifar10", lambda d: _cifar(d, "data_batch_1", _batch(data=b"\0" * 3000))),
    "pickle dict key nested tuples": (
        "cifar10",
        lambda d: _cifar(d, "data_batch_1", raw=_tuple_key_pickle()),
    ),
    "pickle os.system payload": (
        "cifar10",
        lambda d: _cifar(d, "data_batch_1", raw=pickle.dumps(_Evil(), protocol=2)),
    ),
    "pickle truncated": (
        "cifar10",
        lambda d: _cifar(d, "data_batch_1", raw=pickle.dumps(_batch(), protocol=2)[:40]),
    ),
    "pickle random bytes": ("cifar10", lambda d: _cifar(d, "data_batch_1", raw=os.urandom(3000))),
    "pickle a list": ("cifar10", lambda d: _cifar(d, "data_batch_1", [1, 2])),
    "pickle no labels key": (
        "cifar10",
        lambda d: _cifar(d, "data_batch_1", {b"data": np.zeros((2, 3072), np.uint8)}),
    ),
    "pickle set": (
        "cifar10",
        lambda d: _cifar(d, "data_batch_1", raw=pickle.dumps({b"labels": {1, 2}}, protocol=4)),
    ),
    "pickle meta 9 names": ("cifar10", lambda d: _cifar(d, "batches.meta", {b"label_names": [b"a"] * 9})),
    "pickle meta nested names": (
        "cifar10",
        lambda d: _cifar(d, "batches.meta", {b"label_names": _nested(list)}),
    ),
    "pickle meta not UTF-8": (
        "cifar10",
        lambda d: _cifar(d, "batches.meta", {b"label_names": [b"\xff"] * 10}),
    ),
    "pickle missing batch": (
        "cifar10",
        lambda d: (lambda r: ((r / "data_batch_3").unlink(), r)[1])(_cifar(d)),
    ),
    # CIFAR-10 binary
    "binary truncated record": (
        "cifar10",
        lambda d: (lambda r: ((r / "data_batch_2.bin").write_bytes(b"\0" * 3000), r)[1])(
            write_cifar_binary(d / "b", cifar_batches(per_batch=4))
        ),
    ),
    "binary label byte 10": (
        "cifar10",
        lambda d: (lambda r: ((r / "test_batch.bin").write_bytes(b"\x0a" + b"\0" * 3072), r)[1])(
            write_cifar_binary(d / "b", cifar_batches(per_batch=4))
        ),
    ),
    # archives
    "tar.gz with a 2.5 GB member header": ("cifar10", _huge_member_tgz),
    "11 MB tar.gz holding a 2.5 GB member": ("cifar10", _real_huge_member_tgz),
    "tar path traversal": ("fer2013", lambda d: _tar(d, [(_info("../../x.csv", 3), b"abc")])),
    "tar absolute path": ("fer2013", lambda d: _tar(d, [(_info("/etc/x.csv", 3), b"abc")])),
    "tar symlink": (
        "fer2013",
        lambda d: _tar(d, [(_info("fer2013.csv", type=tarfile.SYMTYPE, linkname="/etc/passwd"), None)]),
    ),
    "tar hard link": (
        "fer2013",
        lambda d: _tar(d, [(_info("fer2013.csv", type=tarfile.LNKTYPE, linkname="/etc/passwd"), None)]),
    ),
    "tar device": ("fer2013", lambda d: _tar(d, [(_info("dev", type=tarfile.CHRTYPE), None)])),
    "tar fifo": ("fer2013", lambda d: _tar(d, [(_info("fifo", type=tarfile.FIFOTYPE), None)])),
    "tar empty": ("fer2013", lambda d: _tar(d, [])),
    "tar truncated": (
        "cifar10",
        lambda d: (lambda p: (p.write_bytes(p.read_bytes()[:5000]), p)[1])(
            make_tar(_cifar(d), d / "c.tar.gz")
        ),
    ),
    "tar.gz with data_batch_1 twice": ("cifar10", lambda d: duplicate_member_tar(d / "c.tar.gz")),
    "tar.gz random bytes": (
        "cifar10",
        lambda d: (lambda p: (p.write_bytes(os.urandom(4000)), p)[1])(d / "x.tar.gz"),
    ),
    "zip path traversal": ("fer2013", lambda d: _zip(d, [("../x.csv", "a")])),
    "zip random bytes": (
        "fer2013",
        lambda d: (lambda p: (p.write_bytes(b"PK\x03\x04" + os.urandom(500)), p)[1])(d / "x.zip"),
    ),
    "zip empty": ("fer2013", lambda d: _zip(d, [])),
    # image trees
    "tree unknown class": ("fer2013", lambda d: _tree(d, {"train/joy/a.png": G})),
    "tree unknown split": ("fer2013", lambda d: _tree(d, {"extra/sad/a.png": G})),
    "tree not an image": ("fer2013", lambda d: _tree(d, {"train/sad/a.png": b"not a png"})),
    "tree truncated png": ("fer2013", lambda d: _tree(d, {"train/sad/a.png": G[:60]})),
    "tree wrong size": (
        "fer2013",
        lambda d: _tree(d, {"train/sad/a.png": png_bytes(np.zeros((40, 48), np.uint8))}),
    ),
    "tree 9000x9000 header": ("fer2013", lambda d: _tree(d, {"train/sad/a.png": _png_header(9000, 9000)})),
    "tree 100000x100000 header": (
        "fer2013",
        lambda d: _tree(d, {"train/sad/a.png": _png_header(100000, 100000)}),
    ),
    "tree too deep": ("fer2013", lambda d: _tree(d, {"train/sad/x/a.png": G})),
    "tree no images": ("fer2013", lambda d: _tree(d, {"train/README": b"x"})),
    # coursework layout
    "coursework label '\u0663'": ("fer2013", lambda d: _coursework(d, "img,emotion\nTrain/a.jpg,\u0663\n")),
    "coursework missing image": ("fer2013", lambda d: _coursework(d, "img,emotion\nTrain/zz.jpg,1\n")),
    "coursework twice": ("fer2013", lambda d: _coursework(d, "img,emotion\nTrain/a.jpg,1\nTrain/a.jpg,2\n")),
    "coursework bad line": ("fer2013", lambda d: _coursework(d, "img,emotion\nTrain/a.jpg;1;2\n")),
    "coursework not UTF-8": (
        "fer2013",
        lambda d: (lambda r: ((r / "labels_public.txt").write_bytes(b"\xff\xfe\xfa"), r)[1])(
            _coursework(d, "")
        ),
    ),
    # sources that are not there or not sources
    "missing source": ("fer2013", lambda d: d / "nope.csv"),
    "source is /dev/null": ("fer2013", lambda d: Path("/dev/null")),
    "source is an empty folder": ("cifar10", lambda d: (d / "empty").mkdir() or d / "empty"),
}


# --------------------------------------------------------------------------- info inputs


def _good_h5(p: Path, n=6) -> Path:
    with fmt.create(
        p,
        dataset="t",
        class_names=["a", "b", "c"],
        mean=[1.0],
        std=[2.0],
        image_shape=(1, 2, 2),
        splits=["train", "test"],
    ) as f:
        for s in ("train", "test"):
            fmt.write_split(f, s, np.zeros((n, 1, 2, 2), np.uint8), np.arange(n) % 3, 4)
    return p


def _h5(edit):
    def build(d: Path) -> Path:
        p = _good_h5(d / "d.h5")
        with h5py.File(p, "a") as f:
            edit(f, d)
        return p

    return build


def _set_attr(k, v):
    return _h5(lambda f, d: f.attrs.__setitem__(k, v))


def _del(k, attr=False):
    return _h5(lambda f, d: f.attrs.__delitem__(k) if attr else f.__delitem__(k))


def _y(values, s="train", dtype=np.int64):
    def edit(f, d):
        del f[f"{s}/y"]
        f[f"{s}/y"] = np.asarray(values, dtype)

    return _h5(edit)


def _x(value):
    def edit(f, d):
        del f["train/x"]
        f["train/x"] = value

    return _h5(edit)


def _external(f, d):
    (d / "pixels.bin").write_bytes(b"\x07" * 24)
    del f["train/x"]
    f.create_dataset("train/x", (6, 1, 2, 2), np.uint8, external=[("pixels.bin", 0, 24)])


def _virtual(f, d):
    layout = h5py.VirtualLayout(shape=(6, 1, 2, 2), dtype=np.uint8)
    layout[:] = h5py.VirtualSource("other.h5", "x", shape=(6, 1, 2, 2))
    del f["train/x"]
    f.create_virtual_dataset("train/x", layout)


INFO = {
    "unchunked x": _x(np.zeros((6, 1, 2, 2), np.uint8)),  # valid: described, exit 0 expected
    "negative label": _y([0, -1, 2, 0, 1, 2]),
    "label 50": _y([0, 1, 2, 50, 1, 2], "test"),
    "float labels": _y([0.5] * 6, dtype=np.float64),
    "2-D labels": _y([[0, 1]] * 6),
    "labels fewer than images": _y([0, 1]),
    "x int64": _x(np.zeros((6, 1, 2, 2), np.int64)),
    "x 3-D": _x(np.zeros((6, 2, 2), np.uint8)),
    "x other image shape": _x(np.zeros((6, 1, 3, 3), np.uint8)),
    "missing mean": _del("mean", attr=True),
    "missing std": _del("std", attr=True),
    "missing class_names": _del("class_names", attr=True),
    "missing image_shape": _del("image_shape", attr=True),
    "missing splits attribute": _del("splits", attr=True),  # optional: valid
    "missing split": _del("test"),
    "missing /train/y": _del("train/y"),
    "NaN mean": _set_attr("mean", [np.nan]),
    "inf std": _set_attr("std", [np.inf]),
    "zero std": _set_attr("std", [0.0]),
    "mean of 3 for 1 channel": _set_attr("mean", [1.0, 2.0, 3.0]),
    "mean as text": _set_attr("mean", "grey"),
    "image_shape (1, 2)": _set_attr("image_shape", [1, 2]),
    "format_version 'one'": _set_attr("format_version", "one"),
    "format_version 99": _set_attr("format_version", 99),
    "format_version 0": _set_attr("format_version", 0),
    "format_version 1.5": _set_attr("format_version", 1.5),
    "no format_version": _del("format_version", attr=True),
    "external storage": _h5(_external),
    "virtual dataset": _h5(_virtual),
    "external link split": _h5(lambda f, d: f.__setitem__("val", h5py.ExternalLink("other.h5", "/x"))),
    "not HDF5": lambda d: (lambda p: (p.write_bytes(os.urandom(4000)), p)[1])(d / "x.h5"),
    "empty file": lambda d: (lambda p: (p.write_bytes(b""), p)[1])(d / "x.h5"),
    "truncated HDF5": lambda d: (lambda p: (p.write_bytes(p.read_bytes()[:3000]), p)[1])(
        _good_h5(d / "d.h5")
    ),
    "missing file": lambda d: d / "nope.h5",
    "a folder": lambda d: d,
    # issue 24: sizes the file does not store, and a corrupt gzip chunk
    "10**10 labels declared (gzip, never written)": lambda d: huge_n_h5(d / "huge_n.h5"),
    "10**10 labels declared (plain chunks)": lambda d: huge_n_h5(d / "huge_n.h5", kind="plain"),
    "resized to 10**10 rows": lambda d: huge_n_h5(d / "huge_n.h5", kind="resizable"),
    "gzip-corrupt chunk": lambda d: gzip_corrupt_h5(d / "gz.h5"),
}
VALID_INFO = {"unchunked x", "missing splits attribute"}


# --------------------------------------------------------------------------- running


def _classify(call, out_dir: Path, valid=False) -> str:
    """'refused', 'traceback', 'accepted', 'partial' (refused but left files), or 'ok'."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = call()
    except BaseException as e:  # noqa: BLE001 - an escaping exception is what we count
        return f"traceback ({type(e).__name__})"
    text = err.getvalue()
    if "Traceback" in text or rc == 1:
        return "traceback"
    if rc == 0:
        return "ok" if valid else "accepted"
    if out_dir.exists() and any(out_dir.iterdir()):
        return "partial"
    lines = text.strip().splitlines()
    return "refused" if len(lines) == 1 and lines[0].startswith("error: ") else "messy message"


def fuzz_convert(work: Path) -> dict:
    results = {}
    for name, (dataset, build) in CONVERT.items():
        d = Path(tempfile.mkdtemp(dir=work))
        src, out_dir = build(d), d / "out"
        t0 = time.perf_counter()
        results[name] = (
            _classify(lambda: cli.main([dataset, str(src), "-o", str(out_dir / "o.h5")]), out_dir),
            time.perf_counter() - t0,
        )
    if Path("/tmp/fuzz_prep_pwned").exists():
        results["pickle os.system payload"] = ("CODE RAN", 0.0)
    return results


def fuzz_info(work: Path) -> dict:
    results = {}
    for name, build in INFO.items():
        d = Path(tempfile.mkdtemp(dir=work))
        path = build(d)
        t0 = time.perf_counter()
        results[name] = (
            _classify(lambda: cli.main(["info", str(path)]), d / "none", valid=name in VALID_INFO),
            time.perf_counter() - t0,
        )
    return results


def _full_disk(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        return (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True
            ).returncode
            == 0
        )
    except OSError:
        return False


def fuzz_outputs(work: Path) -> dict:
    """Bad outputs: a folder, an existing file, a file as parent, a full disk (a real 1 MB
    tmpfs when it can be mounted, else ENOSPC simulated), a full disk under --force."""
    src = write_cifar_python(work / "out_src", cifar_batches(per_batch=100))
    results = {}

    def trial(name, out: Path, check_dir: Path, *extra, keep=None):
        before = {p.name: p.read_bytes() for p in check_dir.iterdir()} if check_dir.exists() else {}
        t0 = time.perf_counter()
        r = _classify(
            lambda: cli.main(["cifar10", str(src), "-o", str(out), "--val-size", "50", *extra]),
            Path("/nonexistent"),
        )
        after = {p.name: p.read_bytes() for p in check_dir.iterdir()} if check_dir.exists() else {}
        if r == "refused" and after != before:
            r = "partial"
        results[name] = (r, time.perf_counter() - t0)

    d = Path(tempfile.mkdtemp(dir=work))
    trial("output is a folder", d, d)
    (d / "o.h5").write_bytes(b"precious")
    trial("output exists, no --force", d / "o.h5", d)
    trial("output under a file", d / "o.h5" / "x.h5", d)
    full = work / "full"
    if _full_disk(full):
        try:
            trial("full disk (1 MB tmpfs)", full / "o.h5", full)
            (full / "old.h5").write_bytes(b"old")
            trial("full disk under --force (1 MB tmpfs)", full / "old.h5", full, "--force")
        finally:
            subprocess.run(["umount", str(full)])
    else:

        class Full:
            def __init__(self, p, m):
                self.f = open(p, m)

            def write(self, b):
                raise OSError(28, os.strerror(28))

            def __getattr__(self, k):
                return getattr(self.f, k)

            def __enter__(self):
                return self

            def __exit__(self, *e):
                self.f.close()

        fmt.open = Full
        try:
            trial("full disk (ENOSPC simulated)", d / "n.h5", d)
            trial("full disk under --force (simulated)", d / "o.h5", d, "--force")
        finally:
            del fmt.open
    return results


SLOW = (
    "import sys, time\nfrom gpunet.data import h5file\nreal = h5file._DiskWriter.write\n"
    "def w(self, b):\n    open(sys.argv[1], 'a').close(); time.sleep(0.03); return real(self, b)\n"
    "h5file._DiskWriter.write = w\nfrom data_prep.cli import main\nsys.exit(main(sys.argv[2:]))\n"
)


def fuzz_signals(work: Path, n: int) -> dict:
    src = write_cifar_python(work / "sig_src", cifar_batches(per_batch=100))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    results = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        for i in range(n):
            d = Path(tempfile.mkdtemp(dir=work))
            marker, out_dir = d / "marker", d / "out"
            p = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    SLOW,
                    str(marker),
                    "cifar10",
                    str(src),
                    "-o",
                    str(out_dir / "o.h5"),
                    "--val-size",
                    "50",
                ],
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            while not marker.exists() and p.poll() is None:
                time.sleep(0.005)
            time.sleep(random.uniform(0, 0.1))
            p.send_signal(sig)
            err = p.communicate()[1]
            left = list(out_dir.iterdir()) if out_dir.exists() else []
            clean = p.returncode == 128 + sig and not left and "Traceback" not in err
            results[f"{signal.Signals(sig).name} #{i + 1}"] = (
                "refused" if clean else f"rc {p.returncode}, left {len(left)}",
                0.0,
            )
    return results


def report(title: str, results: dict) -> int:
    kinds = [r for r, _ in results.values()]
    bad = {k: r for k, (r, _) in results.items() if r not in ("refused", "ok")}
    slow = max((t, k) for k, (_, t) in results.items())
    other = len(bad) - sum(k.startswith("traceback") for k in bad.values()) - kinds.count("accepted")
    other -= kinds.count("partial")
    print(
        f"{title}: tried {len(kinds)}, clean refusals {kinds.count('refused')}, "
        f"valid {kinds.count('ok')}, tracebacks {sum(k.startswith('traceback') for k in kinds)}, "
        f"accepted {kinds.count('accepted')}, partial outputs {kinds.count('partial')}, "
        f"other {other}; "
        f"slowest {slow[0]:.2f} s ({slow[1]})"
    )
    for k, r in bad.items():
        print(f"  {r}: {k}")
    return len(bad)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--signals", type=int, default=0, help="signal trials per signal (subprocesses)")
    p.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    args = p.parse_args(argv)
    with contextlib.ExitStack() as stack:
        work = Path(args.keep) if args.keep else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        bad = report("gpunet-prep convert", fuzz_convert(work))
        bad += report("gpunet-prep info", fuzz_info(work))
        bad += report("gpunet-prep outputs", fuzz_outputs(work))
        if args.signals:
            bad += report("signals during the HDF5 write", fuzz_signals(work, args.signals))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
