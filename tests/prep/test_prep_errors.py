"""Bad input: each gives one clear line naming the file and entry, and leaves nothing behind."""

import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from prep_fixtures import (
    cifar_batches,
    fer_rows,
    folder_listing,
    make_tar,
    write_cifar_binary,
    write_cifar_python,
    write_fer_csv,
    write_image_tree,
)

import data_prep
from data_prep import cli, h5format
from gpunet.data import h5file as fmt

from common import REPO


def fails(tmp_path, dataset, src, *patterns, **kw):
    """Convert, expect PrepError matching all patterns, and check no file appeared."""
    before = folder_listing(tmp_path)
    with pytest.raises(data_prep.PrepError) as e:
        data_prep.convert(dataset, src, tmp_path / "out.h5", progress=False, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    for p in patterns:
        assert p in msg, f"{p!r} not in {msg!r}"
    assert folder_listing(tmp_path) == before
    return msg


def csv_with(tmp_path, mutate_line=None, header="emotion,pixels,Usage", n=4):
    rows = fer_rows(n)
    path = write_fer_csv(tmp_path / "fer2013.csv", rows)
    lines = path.read_text().splitlines()
    lines[0] = header
    if mutate_line:
        i, fn = mutate_line
        lines[i - 1] = fn(lines[i - 1])
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_missing_column(tmp_path):
    src = csv_with(tmp_path, header="emotion,Usage")
    fails(tmp_path, "fer2013", src, "fer2013.csv line 1", "pixels")


def _drop_last_pixel(line):
    emotion, pixels, usage = line.split(",")
    return ",".join([emotion, pixels.rsplit(" ", 1)[0], usage])


def _pixel_256(line):
    emotion, _, usage = line.split(",")
    return ",".join([emotion, " ".join(["12"] * 5 + ["256"] + ["0"] * 2298), usage])


def test_csv_short_pixel_row(tmp_path):
    src = csv_with(tmp_path, (3, _drop_last_pixel))
    fails(tmp_path, "fer2013", src, "fer2013.csv line 3: expected 2304 pixel values, found 2303")


def test_csv_bad_pixel_value(tmp_path):
    src = csv_with(tmp_path, (2, _pixel_256))
    fails(tmp_path, "fer2013", src, "fer2013.csv line 2: pixel 6", "256")


def test_csv_label_out_of_range(tmp_path):
    src = csv_with(tmp_path, (4, lambda l: "7" + l[1:]))
    fails(tmp_path, "fer2013", src, "fer2013.csv line 4", "0..6", "'7'")


def test_csv_unknown_usage(tmp_path):
    src = csv_with(tmp_path, (2, lambda l: l.rsplit(",", 1)[0] + ",Holdout"))
    fails(tmp_path, "fer2013", src, "fer2013.csv line 2", "Holdout")


def test_unknown_class_folder(tmp_path):
    img = np.zeros((48, 48), np.uint8)
    src = write_image_tree(tmp_path / "t", {"train/happy/a.png": img, "train/joy/b.png": img})
    fails(tmp_path, "fer2013", src, "train/joy/", "unknown class folder")


def test_unknown_split_folder(tmp_path):
    img = np.zeros((48, 48), np.uint8)
    src = write_image_tree(tmp_path / "t", {"train/happy/a.png": img, "extra/happy/b.png": img})
    fails(tmp_path, "fer2013", src, "extra/", "unknown split folder")


def test_not_an_image(tmp_path):
    img = np.zeros((48, 48), np.uint8)
    src = write_image_tree(tmp_path / "t", {"train/happy/a.png": img})
    (src / "train/happy/b.jpg").write_text("not a jpeg")
    fails(tmp_path, "fer2013", src, "train/happy/b.jpg", "not a readable image")


def test_coursework_label_out_of_range(tmp_path):
    img = np.zeros((48, 48), np.uint8)
    root = write_image_tree(tmp_path / "cw", {"Train/a.png": img, "Train/b.png": img})
    (root / "labels_public.txt").write_text("img,emotion\nTrain/a.png,1\nTrain/b.png,9\n")
    fails(tmp_path, "fer2013", root, "labels_public.txt line 3", "'9'")


def test_coursework_missing_image(tmp_path):
    root = write_image_tree(tmp_path / "cw", {"Train/a.png": np.zeros((48, 48), np.uint8)})
    (root / "labels_public.txt").write_text("img,emotion\nTrain/zz.png,1\n")
    fails(tmp_path, "fer2013", root, "labels_public.txt line 2", "Train/zz.png")


def test_truncated_tarball(tmp_path):
    tar = make_tar(write_cifar_python(tmp_path / "s", cifar_batches(50)), tmp_path / "c.tar.gz")
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    fails(tmp_path, "cifar10", tar, "c.tar.gz", "corrupt or truncated")


def test_corrupt_zip(tmp_path):
    bad = tmp_path / "faces.zip"
    bad.write_bytes(b"PK\x03\x04" + os.urandom(200))
    fails(tmp_path, "fer2013", bad, "faces.zip", "corrupt")


def test_truncated_binary_batch(tmp_path):
    d = write_cifar_binary(tmp_path / "s", cifar_batches(5))
    p = d / "data_batch_3.bin"
    p.write_bytes(p.read_bytes()[:-10])
    fails(tmp_path, "cifar10", d, "data_batch_3.bin", "3073", "truncated")


def test_cifar_label_out_of_range(tmp_path):
    b = cifar_batches(5)
    b["test_batch"][1][2] = 10
    fails(
        tmp_path,
        "cifar10",
        write_cifar_python(tmp_path / "s", b),
        "test_batch",
        "image 2",
        "0..9",
        "found 10",
        val_size=0,
    )


def test_missing_batch(tmp_path):
    d = write_cifar_python(tmp_path / "s", cifar_batches(5))
    (d / "data_batch_4").unlink()
    fails(tmp_path, "cifar10", d, "data_batch_4", "missing")


def test_missing_source(tmp_path):
    fails(tmp_path, "cifar10", tmp_path / "nope.tar.gz", "nope.tar.gz", "no such file")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_cannot_run_code(tmp_path):
    d = write_cifar_python(tmp_path / "s", cifar_batches(5))
    marker = tmp_path / "pwned"
    (d / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2))
    msg = fails(tmp_path, "cifar10", d, "data_batch_1", "refusing to load global")
    assert "system" in msg
    assert not marker.exists()


def _tar_with(tmp_path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tf:
        tf.addfile(member, io.BytesIO(data) if data else None)
    return path


def test_archive_path_traversal_rejected(tmp_path):
    info = tarfile.TarInfo("../../escape.txt")
    info.size = 3
    fails(tmp_path, "fer2013", _tar_with(tmp_path, info, b"abc"), "../../escape.txt", "unsafe")
    assert not (tmp_path.parent / "escape.txt").exists()


def test_archive_symlink_rejected(tmp_path):
    info = tarfile.TarInfo("train/happy/link.png")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    fails(tmp_path, "fer2013", _tar_with(tmp_path, info), "link.png", "links are not allowed")


def test_existing_output_refused_then_forced(tmp_path):
    src = write_fer_csv(tmp_path / "fer2013.csv", fer_rows(6))
    out = tmp_path / "out.h5"
    out.write_bytes(b"precious")
    with pytest.raises(data_prep.PrepError, match="exists.*--force"):
        data_prep.convert("fer2013", src, out)
    assert out.read_bytes() == b"precious"
    data_prep.convert("fer2013", src, out, force=True)
    assert data_prep.info(out)["splits"]["train"]["count"] == 2


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch, exc):
    src = write_fer_csv(tmp_path / "fer2013.csv", fer_rows(6))
    real_write = fmt.write_split

    def write_then_fail(f, *a, **kw):
        real_write(f, *a, **kw)
        assert [p.name for p in tmp_path.glob(".out.h5.tmp-*.h5")]  # written to a temporary name
        raise exc("stop")

    monkeypatch.setattr(fmt, "write_split", write_then_fail)
    before = folder_listing(tmp_path)
    with pytest.raises(exc):
        data_prep.convert("fer2013", src, tmp_path / "out.h5")
    assert folder_listing(tmp_path) == before


def test_failed_write_removes_folders_it_made(tmp_path, monkeypatch):
    src = write_fer_csv(tmp_path / "fer2013.csv", fer_rows(6))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fmt, "write_split", interrupted)
    before = folder_listing(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        data_prep.convert("fer2013", src, tmp_path / "new" / "deeper" / "out.h5")
    assert folder_listing(tmp_path) == before


def test_cli_error_is_one_line_exit_2(tmp_path, capsys):
    src = csv_with(tmp_path, (4, lambda l: "9" + l[1:]))
    rc = cli.main(["fer2013", str(src), "-o", str(tmp_path / "o.h5")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "line 4" in err
    assert cli.main(["fer2013", str(src), "-o", str(tmp_path / "o.h5"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "PrepError" in err  # --debug: the traceback, as every command
    assert not (tmp_path / "o.h5").exists()


def test_module_run_no_traceback(tmp_path):
    src = csv_with(tmp_path, (3, lambda l: l[: len(l) // 2]))
    r = subprocess.run(
        [sys.executable, "-m", "data_prep", "fer2013", str(src), "-o", str(tmp_path / "o.h5")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: ")
    assert "fer2013.csv line 3" in r.stderr


def test_all_zero_images_are_refused_naming_the_source_and_writing_nothing(tmp_path):
    """Issue 24 #7: all-zero images gave "b.h5: expected root attribute std > 0" and left a complete b.h5."""
    from prep_fixtures import cifar_batches, make_tar, write_cifar_python

    batches = {k: (np.zeros_like(x), y) for k, (x, y) in cifar_batches().items()}
    src = tmp_path / "src"
    tar = make_tar(write_cifar_python(src, batches), tmp_path / "zeros.tar.gz")
    msg = fails(tmp_path, "cifar10", tar, "zeros.tar.gz", "no variation", "no output written", val_size=10)
    assert "out.h5" not in msg
